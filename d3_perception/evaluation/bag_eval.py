"""Evaluate a depth predictor on a ROS 2 bag: the core behind ``d3-eval-bag`` (no CLI, no ROS).

:func:`evaluate_bag` runs a :class:`~d3_perception.backends.base.Backend` frame by frame (or reads predictions
recorded in the bag), turns the relative depth into metric depth with one of the metric modes, and collects
per-frame metrics, accumulators for the plots, latency, scale/shift drift and valid-pixel fractions into a
:class:`BagEvalResult`. Optionally every prediction is written to an output bag (:class:`PredictionBagWriter`).

Metric modes (``BagEvalConfig.metric_mode``):
  ``per_frame``     least-squares scale + shift against each frame's ground truth (affine-invariant quality);
  ``global``        one least-squares scale + shift over all frames (scale consistency over time);
  ``fixed``         ``metric = fixed_scale * relative + fixed_shift`` (what the node's ``fixed`` mode publishes);
  ``sparse_depth``  the node's robust sparse fit with smoothing and hold (:class:`MetricAligner`), reference from
                    the bag's sparse depth topic: exactly what the live node would publish;
  ``none``          the prediction is already metric (e.g. a recorded ``depth`` topic of the node).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from d3_perception.evaluation.bag_source import BagError, BagFrame, BagIndex, BagSource, TopicSelection
from d3_perception.evaluation.calibration import ConfidenceCalibration, flying_points
from d3_perception.evaluation.metrics import (
    DEPTH_METRICS,
    NormalErrorAccumulator,
    Workspace,
    depth_metrics_flat,
    fit_flat,
    mean_metrics,
    normal_angles_deg,
    scratch,
    vdot,
)
from d3_perception.geometry.alignment import AlignmentResult, MetricAligner, MetricConfig
from d3_perception.geometry.confidence import ConfidenceEstimator

__all__ = ["METRIC_MODES", "BagEvalConfig", "BagEvalResult", "FrameRecord", "PredictionBagWriter", "evaluate_bag"]

logger = logging.getLogger(__name__)

METRIC_MODES = ("per_frame", "global", "fixed", "sparse_depth", "none")
#: Relative-error histogram bins (|pred - gt| / gt) and GT depth bins (m, log-spaced) of the plots.
REL_ERROR_BINS = np.linspace(0.0, 1.0, 101)
DEPTH_BINS_M = np.geomspace(0.1, 200.0, 34)
_LOG_D0 = math.log(DEPTH_BINS_M[0])
_LOG_DSTEP = math.log(DEPTH_BINS_M[1] / DEPTH_BINS_M[0])
#: Pixels per block when the valid pixels are gathered (the block's index array stays small, see _valid_pixels).
_GATHER_BLOCK = 1 << 15
#: Interleaved copies of the plot histograms: neighbouring pixels (similar depth and error) land in different copies,
#: so np.bincount's adds do not wait on each other (weighted bincount of a smooth frame: 1.0 ms -> 0.35 ms).
_HIST_LANES = 8


@dataclass(frozen=True)
class BagEvalConfig:
    """Settings of one bag evaluation (``d3-eval-bag`` options)."""

    metric_mode: str = "per_frame"
    alignment_space: str = "depth"  # per_frame / global: fit in depth or disparity space
    fixed_scale: float = 1.0
    fixed_shift: float = 0.0
    min_depth_m: float = 1e-3  # GT validity range (strict) and clip range of the metric prediction
    max_depth_m: float = math.inf
    max_dt_ms: float = 10.0  # stamp tolerance for matching ground truth to images
    batch_size: int = 1
    sparse_min_points: int = 50
    sparse_smoothing: float = 0.8
    montage_frames: int = 4
    normals_convention: str = "optical"  # frame of the model's normals (checkpoint config)
    min_confidence: float = 0.037  # the node's default gate, for the flying points before/after gating

    def __post_init__(self) -> None:
        if self.metric_mode not in METRIC_MODES:
            raise ValueError(f"`metric_mode` must be one of {METRIC_MODES}; got {self.metric_mode!r}")
        if self.alignment_space not in ("depth", "disparity"):
            raise ValueError(f"`alignment_space` must be depth or disparity; got {self.alignment_space!r}")
        if not (self.min_depth_m >= 0 and self.max_depth_m > self.min_depth_m):
            raise ValueError(f"`min_depth_m` must be >= 0 and < `max_depth_m`; got {self.min_depth_m}, {self.max_depth_m}")
        if not (self.max_dt_ms >= 0 and math.isfinite(self.max_dt_ms)):
            raise ValueError(f"`max_dt_ms` must be finite and >= 0; got {self.max_dt_ms}")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1; got {self.batch_size}")
        if self.metric_mode == "fixed" and not (math.isfinite(self.fixed_scale) and self.fixed_scale > 0):
            raise ValueError(f"`fixed_scale` must be finite and > 0; got {self.fixed_scale}")
        if self.montage_frames < 0:
            raise ValueError(f"`montage_frames` must be >= 0; got {self.montage_frames}")
        if not (0.0 <= self.min_confidence <= 1.0):
            raise ValueError(f"`min_confidence` must be in [0, 1]; got {self.min_confidence}")


@dataclass
class FrameRecord:
    """Per-frame result (one row of per_frame.csv; metrics NaN when the frame has no metric depth)."""

    index: int
    stamp_ns: int
    time_s: float  # since the first evaluated frame
    status: str  # "ok", "no_metric" (sparse mode without a fit), "no_valid_gt"
    scale: float  # applied scale/shift (metric mode)
    shift: float
    fit_scale: float  # per-frame least-squares fit against GT (drift reference), NaN if impossible
    fit_shift: float
    gt_valid_fraction: float
    pred_valid_fraction: float  # share of GT-valid pixels with a valid metric prediction
    model_ms: float  # NaN in --pred-topic mode
    record_latency_ms: float  # --pred-topic: bag receive time - header stamp; else NaN
    metrics: dict[str, float] = field(default_factory=dict)
    normals: dict[str, float] = field(default_factory=dict)


@dataclass
class BagEvalResult:
    """Everything the report needs. ``complete`` is False when the bag broke mid-way (``error`` says why)."""

    config: BagEvalConfig
    topics: TopicSelection
    counts: dict
    frames: list[FrameRecord]
    aggregate: dict[str, float]
    normals: dict[str, float] | None
    latency_ms: dict[str, dict[str, float]]
    drift: dict[str, dict[str, float]]
    valid_fraction: dict[str, float]
    timing_s: dict[str, float]
    error_hist: np.ndarray  # [len(REL_ERROR_BINS)] counts; last bin = errors >= 1
    depth_bins: dict[str, np.ndarray]  # {"edges_m", "abs_rel_sum", "count"}
    samples: list[dict]  # montage samples: {"index", "rgb", "gt", "pred", "err"}
    complete: bool = True
    error: str | None = None
    global_fit: dict[str, float] | None = None
    model: dict | None = None
    calibration: dict | None = None  # confidence: AUSE vs oracle/random, flying points before/after gating

    def summary(self) -> dict:
        """JSON-ready dict (without the arrays of the plots)."""
        return {
            "status": "complete" if self.complete else "incomplete",
            "error": self.error,
            "config": asdict(self.config),
            "topics": asdict(self.topics),
            "model": self.model,
            "counts": self.counts,
            "aggregate": self.aggregate,
            "normals": self.normals,
            "global_fit": self.global_fit,
            "calibration": self.calibration,
            "latency_ms": self.latency_ms,
            "drift": self.drift,
            "valid_fraction": self.valid_fraction,
            "timing_s": self.timing_s,
            "depth_bins": {
                "edges_m": self.depth_bins["edges_m"].tolist(),
                "abs_rel": _safe_div(self.depth_bins["abs_rel_sum"], self.depth_bins["count"]).tolist(),
                "count": self.depth_bins["count"].tolist(),
            },
            "frames": [asdict(f) for f in self.frames],
        }


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.maximum(b, 1), np.nan)


def _percentiles(values: list[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {}
    return {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "mean": float(v.mean()),
            "max": float(v.max()), "count": int(v.size)}


def _drift(times: list[float], values: list[float]) -> dict[str, float]:
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    t, v = t[ok], v[ok]
    if v.size == 0:
        return {}
    out = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
           "cv": float(v.std() / abs(v.mean())) if v.mean() != 0 else float("nan")}
    if v.size >= 2 and np.ptp(t) > 0:
        out["slope_per_s"] = float(np.polyfit(t, v, 1)[0])
    return out


class PredictionBagWriter:
    """Writes the node's output topics for each evaluated frame, plus copies of the input topics.

    Topics (``prefix`` default ``/d3``): ``depth/relative`` (32FC1, [0,1], 0 = near), ``depth`` (32FC1 metres,
    NaN invalid; when a metric depth exists), ``depth/camera_info``, ``normals`` (32FC3, optical frame), ``points``
    (organized PointCloud2 x,y,z,rgb,normal_x/y/z; needs camera_info). Header stamp and frame_id are the input
    image's; bag time is the input image's bag time. Input messages are copied once each at their bag time, so
    the output bag evaluates like a recording of the live node (``--pred-topic``).
    """

    def __init__(self, path: str | Path, storage: str, prefix: str = "/d3") -> None:
        from d3_perception.rosbag_io import BagWriter

        if not prefix.startswith("/"):
            raise ValueError(f"`prefix` must start with '/'; got {prefix!r}")
        self.prefix = prefix.rstrip("/")
        self._bag = BagWriter(path, storage=storage)
        self._bag.open()
        self._copied: set[tuple[str, int]] = set()
        self.points_skipped = 0

    def close(self) -> None:
        self._bag.close()

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._bag.counts)

    def write(self, frame: BagFrame, relative: np.ndarray | None, metric_m: np.ndarray | None,
              normals: np.ndarray | None) -> None:
        """``relative``/``metric_m`` ``[H,W]`` float32, ``normals`` ``[H,W,3]`` optical frame (any may be None)."""
        from d3_perception.geometry.pointcloud import cloud_from_depth

        for topic, (msgtype, t_ns, msg) in frame.raw.items():
            key = (topic, int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec))
            if key not in self._copied:
                self._copied.add(key)
                self._bag.write_message(topic, msgtype, msg, t_ns)
        stamp, fid, t_ns, p = frame.stamp_ns, frame.frame_id, frame.log_time_ns, self.prefix
        if relative is not None:
            self._bag.write_image(f"{p}/depth/relative", relative.astype(np.float32), "32FC1", stamp, fid, log_time_ns=t_ns)
        if metric_m is not None:
            self._bag.write_image(f"{p}/depth", metric_m.astype(np.float32), "32FC1", stamp, fid, log_time_ns=t_ns)
        if normals is not None:
            self._bag.write_image(f"{p}/normals", normals.astype(np.float32), "32FC3", stamp, fid, log_time_ns=t_ns)
        if frame.K is not None:
            h, w = frame.depth_m.shape
            self._bag.write_camera_info(f"{p}/depth/camera_info", frame.K, (h, w), stamp, fid, log_time_ns=t_ns)
            if metric_m is not None:
                rgb = frame.rgb if frame.rgb is not None and frame.rgb.shape[:2] == (h, w) else None
                # The node's one-pass cloud builder: same cloud as backproject + make_cloud, no [H,W,3] temporary.
                cloud = cloud_from_depth(metric_m, frame.K, rgb=rgb, normals=normals)  # (H,W) structured
                self._bag.write_pointcloud(f"{p}/points", cloud, stamp, fid, log_time_ns=t_ns)
                return
        self.points_skipped += 1


class _Accumulators:
    def __init__(self, montage_indices: set[int]) -> None:
        self.error_hist = np.zeros(len(REL_ERROR_BINS), dtype=np.int64)
        self.depth_sum = np.zeros(len(DEPTH_BINS_M) - 1, dtype=np.float64)
        self.depth_count = np.zeros(len(DEPTH_BINS_M) - 1, dtype=np.int64)
        self.normals = NormalErrorAccumulator()
        self.montage_indices = montage_indices
        self.samples: list[dict] = []
        self._lanes = np.zeros(0, np.float32)  # [M] lane offset of each pixel, grown as needed

    def add_depth(self, rel_err: np.ndarray, log_gt: np.ndarray, work: Workspace | None = None) -> None:
        """``[M]`` float32 per-pixel ``|pred-gt|/gt`` and ``log(gt)`` of one frame's valid pixels."""
        n = rel_err.size
        nb = len(REL_ERROR_BINS)
        nd = len(self.depth_sum)
        err = np.multiply(rel_err, nb - 1, out=scratch(work, "acc_err", n, np.float32))  # [M] error bin
        np.clip(err, 0, nb - 1, out=err)  # errors >= 1 (and inf) go to the last bin
        np.floor(err, out=err)
        # Log-spaced bins: the bin index is affine in log(gt) (cheaper than a search over the edges). Depths outside
        # the edges go to two extra bins (0 and nd+1) that are dropped, so nothing has to be gathered.
        cell = np.subtract(log_gt, _LOG_D0, out=scratch(work, "acc_cell", n, np.float32))  # [M]
        np.divide(cell, _LOG_DSTEP, out=cell)
        np.floor(cell, out=cell)
        np.clip(cell, -1, nd, out=cell)
        np.add(cell, 1, out=cell)  # depth bin + 1 in [0, nd+1]
        # One (lane, depth bin, error bin) cell index for both histograms: two bincounts instead of three. Exact:
        # integers below 2^24 in float32.
        np.multiply(cell, nb, out=cell)
        np.add(cell, err, out=cell)
        cells = (nd + 2) * nb
        if self._lanes.size < n:
            self._lanes = ((np.arange(n) % _HIST_LANES) * cells).astype(np.float32)
        np.add(cell, self._lanes[:n], out=cell)
        idx = scratch(work, "acc_idx", n, np.intp)  # np.bincount takes intp without a copy
        np.copyto(idx, cell, casting="unsafe")
        shape = (_HIST_LANES, nd + 2, nb)  # [lane, depth bin + 1, error bin]
        counts = np.bincount(idx, minlength=_HIST_LANES * cells).reshape(shape).sum(axis=0)
        self.error_hist += counts.sum(axis=0)
        self.depth_count += counts[1 : nd + 1].sum(axis=1)
        weights = scratch(work, "acc_weights", n, np.float64)  # np.bincount would make this float64 copy itself
        np.copyto(weights, rel_err)
        sums = np.bincount(idx, weights=weights, minlength=_HIST_LANES * cells).reshape(shape).sum(axis=0)
        self.depth_sum += sums[1 : nd + 1].sum(axis=1)


def _montage_indices(n: int, k: int) -> set[int]:
    if n <= 0 or k <= 0:
        return set()
    return {int(round(x)) for x in np.linspace(0, n - 1, min(k, n))}


def _downsample(arr: np.ndarray, max_side: int = 320) -> np.ndarray:
    step = max(1, math.ceil(max(arr.shape[:2]) / max_side))
    return np.ascontiguousarray(arr[::step, ::step])


class _Evaluator:
    """State of one run; see :func:`evaluate_bag`."""

    def __init__(self, cfg: BagEvalConfig, idx: BagIndex, writer: PredictionBagWriter | None) -> None:
        self.cfg = cfg
        self.idx = idx
        self.writer = writer
        self.records: list[FrameRecord] = []
        self.acc = _Accumulators(_montage_indices(len(idx.matches), cfg.montage_frames))
        self.t0_ns: int | None = None
        self.timing = {"model": 0.0, "read_decode": 0.0, "metrics": 0.0, "write_bag": 0.0}
        mode = {"fixed": "fixed", "sparse_depth": "sparse_depth"}.get(cfg.metric_mode, "none")
        self.aligner = MetricAligner(MetricConfig(mode=mode, fixed_scale=cfg.fixed_scale, fixed_shift=cfg.fixed_shift,
                                                  min_points=cfg.sparse_min_points, smoothing=cfg.sparse_smoothing))
        self.global_sums = np.zeros(5, dtype=np.float64)  # n, sum p, sum t, sum pp, sum pt over valid pixels
        # Per-frame buffers (grown to the largest frame): no full-frame temporaries in the metrics stage.
        self.work = Workspace()
        # confidence calibration (issue #16): the node's estimator on the metric prediction
        self.confidence = ConfidenceEstimator()
        self.calibration_acc = ConfidenceCalibration(cfg.min_confidence)

    def gt_mask(self, gt: np.ndarray) -> np.ndarray:
        """``[H,W]`` bool: GT finite and strictly inside the depth range. A workspace view, valid for this frame."""
        mask = self.work.get("gt_mask", gt.size, np.bool_).reshape(gt.shape)
        inside = self.work.get("gt_mask_below_max", gt.size, np.bool_).reshape(gt.shape)
        with np.errstate(invalid="ignore"):
            np.greater(gt, self.cfg.min_depth_m, out=mask)  # False for NaN and -inf
            np.less(gt, self.cfg.max_depth_m, out=inside)  # False for NaN and +inf
        mask &= inside
        return mask

    def _valid_pixels(self, mask: np.ndarray, n_valid: int, arrays: tuple[np.ndarray, ...],
                      names: tuple[str, ...], copy: bool = False) -> list[np.ndarray]:
        """``[M]`` values of each ``[H,W]`` array on ``mask`` (``M = n_valid``), in order.

        Views of the arrays when every pixel is valid and not ``copy``, else copies in the workspace buffers
        ``names``. Gathered block by block: ``a[mask]`` or a whole-frame ``flatnonzero`` would allocate ``[M]``
        arrays at every frame.
        """
        flat = [np.ravel(a) for a in arrays]
        if n_valid == mask.size and not copy:
            return flat
        outs = [self.work.get(name, n_valid, a.dtype) for a, name in zip(flat, names, strict=True)]
        if n_valid == mask.size:
            for a, o in zip(flat, outs, strict=True):
                np.copyto(o, a)
            return outs
        m = mask.ravel()
        off = 0
        for start in range(0, m.size, _GATHER_BLOCK):
            ix = np.flatnonzero(m[start : start + _GATHER_BLOCK])  # [<=block] int
            k = ix.size
            for a, o in zip(flat, outs, strict=True):
                # mode="clip" (indices are in range anyway): with the default "raise", `out` is written via a copy.
                np.take(a[start : start + _GATHER_BLOCK], ix, out=o[off : off + k], mode="clip")
            off += k
        return outs

    def add_global(self, rel: np.ndarray, gt: np.ndarray) -> None:
        if rel.shape != gt.shape:
            raise BagError(f"prediction size {rel.shape} must equal the ground-truth size {gt.shape}")
        mask = self.gt_mask(gt)
        n = int(np.count_nonzero(mask))
        p, t = self._valid_pixels(mask, n, (rel, gt), ("rel_v", "gt_v"))  # [M] each
        if self.cfg.alignment_space == "disparity":
            t = np.divide(1.0, t, out=self.work.get("global_target", n, t.dtype))  # [M] 1/m, in the GT's dtype
        f64 = np.float64
        self.global_sums += (n, np.sum(p, dtype=f64), np.sum(t, dtype=f64), vdot(p, p), vdot(p, t))

    def global_fit(self) -> tuple[float, float]:
        n, sp, st, spp, spt = self.global_sums
        var = spp - sp * sp / max(n, 1)
        if n < 2 or var <= 1e-12 * n:
            raise BagError("global alignment needs a non-constant prediction on at least 2 valid ground-truth pixels")
        scale = (spt - sp * st / n) / var
        return float(scale), float((st - scale * sp) / n)

    def to_metric(self, rel: np.ndarray, frame: BagFrame, fit: tuple[float, float]) -> tuple[np.ndarray | None, float, float, str]:
        """Metric depth ``[H,W]`` float32 (NaN invalid) for the configured mode, with its scale/shift/status.

        ``fit`` is this frame's least-squares fit against the ground truth (NaN when impossible).
        """
        cfg = self.cfg
        if cfg.metric_mode == "none":
            return rel.astype(np.float32, copy=True), 1.0, 0.0, "ok"
        if cfg.metric_mode in ("per_frame", "global"):
            scale, shift, status = self._affine(fit)
            return (self._apply(rel, scale, shift) if status == "ok" else None), scale, shift, status
        result: AlignmentResult = self.aligner.update(rel, frame.sparse_m)
        if not result.is_metric:
            return None, math.nan, math.nan, "no_metric"
        return MetricAligner.apply(rel, result), result.scale, result.shift, "ok"

    def _affine(self, fit: tuple[float, float]) -> tuple[float, float, str]:
        """``scale, shift, status`` of the element-wise modes (per_frame: this frame's ``fit``; global)."""
        if self.cfg.metric_mode == "global":
            return (*self._global, "ok")
        if not math.isfinite(fit[0]):
            return math.nan, math.nan, "no_metric"
        return fit[0], fit[1], "ok"

    def _apply(self, rel: np.ndarray, scale: float, shift: float, work: Workspace | None = None) -> np.ndarray:
        """``scale * rel + shift`` in float64 (inverted in disparity space) -> float32 metres, NaN where not > 0.

        Element-wise, so the ``[M]`` valid pixels give exactly the values of the ``[H,W]`` frame on the mask; with
        ``work`` the result and its temporaries are workspace buffers.
        """
        n = rel.size
        lin = scratch(work, "apply_f64", n, np.float64).reshape(rel.shape)
        np.multiply(rel, scale, out=lin, dtype=np.float64)
        np.add(lin, shift, out=lin)
        flag = scratch(work, "apply_flag", n, np.bool_).reshape(rel.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.cfg.alignment_space == "disparity":
                np.less_equal(lin, 0, out=flag)  # NaN stays NaN below
                np.maximum(lin, 1e-12, out=lin)
                np.divide(1.0, lin, out=lin)
                np.copyto(lin, np.nan, where=flag)
            metric = scratch(work, "metric_v", n, np.float32).reshape(rel.shape)
            np.copyto(metric, lin, casting="same_kind")
            np.greater(metric, 0, out=flag)
            np.logical_not(flag, out=flag)
            np.copyto(metric, np.nan, where=flag)
        return metric

    def _clip_valid(self, metric_v: np.ndarray) -> tuple[np.ndarray, float]:
        """Protocol clip of ``[M]`` float32 metric depth, in place; returns it and the share that was valid.

        Every GT-valid pixel is clipped to the depth range, so missing or non-positive predictions count as errors
        at min_depth_m (never silently dropped) and +inf as max_depth_m.
        """
        cfg = self.cfg
        lo = max(cfg.min_depth_m, 1e-6)
        hi = cfg.max_depth_m if math.isfinite(cfg.max_depth_m) else float(np.finfo(np.float32).max)
        n = metric_v.size
        positive = self.work.get("clip_positive", n, np.bool_)
        finite = self.work.get("clip_finite", n, np.bool_)
        with np.errstate(invalid="ignore"):
            np.greater(metric_v, 0, out=positive)  # False for NaN
            np.less(metric_v, np.inf, out=finite)
        finite &= positive
        valid_share = float(np.count_nonzero(finite)) / n
        np.logical_not(positive, out=positive)
        np.copyto(metric_v, lo, where=positive)  # NaN, -inf, <= 0 -> lo
        np.clip(metric_v, lo, hi, out=metric_v)  # +inf -> hi
        return metric_v, valid_share

    def finish(self, frame: BagFrame, rel: np.ndarray, normals_hw3: np.ndarray | None, model_ms: float) -> None:
        """Metrics, accumulators, montage and output bag for one frame."""
        t_start = time.perf_counter()
        cfg = self.cfg
        gt = frame.depth_m
        if rel.shape != gt.shape:
            raise BagError(f"prediction size {rel.shape} must equal the ground-truth size {gt.shape} (frame {frame.index})")
        if self.t0_ns is None:
            self.t0_ns = frame.stamp_ns
        work = self.work
        montage = frame.index in self.acc.montage_indices
        mask = self.gt_mask(gt)  # [H,W]
        n_valid = int(np.count_nonzero(mask))
        gt_v, rel_v = self._valid_pixels(mask, n_valid, (gt, rel), ("gt_v", "rel_v"))  # [M] each; GT in m
        fit_scale = fit_shift = math.nan
        if n_valid >= 2 and cfg.metric_mode != "none":
            target_v = gt_v
            if cfg.alignment_space == "disparity":
                target_v = np.divide(1.0, gt_v, out=work.get("fit_target", n_valid, np.float64), dtype=np.float64)
            try:
                fit_scale, fit_shift, _ = fit_flat(rel_v, target_v, work)
            except ValueError:
                pass
        # Metric depth of the valid pixels ([M], workspace) and of the whole frame when the montage or the output
        # bag needs it. per_frame/global are element-wise, so only the valid pixels are computed for the metrics.
        metric = metric_v = None
        if cfg.metric_mode in ("per_frame", "global"):
            scale, shift, status = self._affine((fit_scale, fit_shift))
            if status == "ok":
                metric_v = self._apply(rel_v, scale, shift, work) if n_valid else None
                if montage or self.writer is not None:
                    metric = self._apply(rel, scale, shift)
        else:
            metric, scale, shift, status = self.to_metric(rel, frame, (fit_scale, fit_shift))
            if metric is not None and n_valid:
                metric_v = self._valid_pixels(mask, n_valid, (np.asarray(metric, np.float32),), ("metric_v",),
                                              copy=True)[0]
        if n_valid == 0:
            status = "no_valid_gt"
        metrics: dict[str, float] = dict.fromkeys(DEPTH_METRICS, math.nan)
        pred_valid = 0.0
        if metric_v is not None:
            clipped_v, pred_valid = self._clip_valid(metric_v)  # [M]
            with np.errstate(over="ignore"):  # a prediction clipped to float32 max has an infinite error
                metrics, rel_err, log_gt = depth_metrics_flat(clipped_v, gt_v, work)
                self.acc.add_depth(rel_err, log_gt, work)
        if metric_v is not None and n_valid >= 10:
            if metric is None:
                metric = self._apply(rel, scale, shift)
            self._calibrate(frame, np.asarray(metric, np.float32), mask, normals_hw3)
        normal_metrics: dict[str, float] = {}
        if normals_hw3 is not None and frame.normals is not None:
            angles = normal_angles_deg(normals_hw3, frame.normals, np.all(np.isfinite(normals_hw3), axis=-1))
            if angles.size:
                self.acc.normals.update(angles)
                normal_metrics = {"mean": float(angles.mean()), "median": float(np.median(angles)),
                                  "a11.25": float(np.mean(angles < 11.25)), "a30": float(np.mean(angles < 30.0))}
        record_ms = math.nan
        if frame.pred_log_time_ns is not None:
            record_ms = (frame.pred_log_time_ns - frame.stamp_ns) / 1e6
        self.records.append(FrameRecord(
            index=frame.index, stamp_ns=frame.stamp_ns, time_s=(frame.stamp_ns - self.t0_ns) / 1e9, status=status,
            scale=scale, shift=shift, fit_scale=fit_scale, fit_shift=fit_shift,
            gt_valid_fraction=n_valid / gt.size, pred_valid_fraction=pred_valid, model_ms=model_ms,
            record_latency_ms=record_ms, metrics=metrics, normals=normal_metrics))
        if montage:
            err = np.full(gt.shape, np.nan, np.float32)
            if metric is not None:
                with np.errstate(invalid="ignore", divide="ignore"):
                    err = np.where(mask, np.abs(metric - gt) / gt, np.nan).astype(np.float32)
            self.acc.samples.append({
                "index": frame.index, "rgb": None if frame.rgb is None else _downsample(frame.rgb),
                "gt": _downsample(np.where(mask, gt, np.nan)), "rel": _downsample(rel),
                "pred": None if metric is None else _downsample(metric), "err": _downsample(err)})
        t_metrics = time.perf_counter()
        self.timing["metrics"] += t_metrics - t_start
        if self.writer is not None:
            self.writer.write(frame, rel, None if cfg.metric_mode == "none" else metric, normals_hw3)
            self.timing["write_bag"] += time.perf_counter() - t_metrics


    def _calibrate(self, frame: BagFrame, metric: np.ndarray, mask: np.ndarray, normals_hw3) -> None:
        """Confidence of one frame's ``[H,W]`` metric prediction: its sparsification against |pred-gt|/gt and the
        flying points of its cloud before and after the ``min_confidence`` gate (the real cloud with
        camera_info, else counted along each pixel's ray: the same number)."""
        K = frame.K
        sparse = frame.sparse_m if self.cfg.metric_mode == "sparse_depth" else None
        metric = np.where(np.isfinite(metric), metric, np.float32(np.nan))  # an infinite prediction is no point
        conf = self.confidence.compute(metric, K, normals_hw3 if K is not None else None, sparse)  # [H,W]
        flying = None
        if K is not None:
            from d3_perception.geometry.pointcloud import backproject

            flying = flying_points(backproject(metric, K), np.where(mask, frame.depth_m, np.nan), K,
                                   keep=conf >= np.float32(self.cfg.min_confidence))
        self.calibration_acc.add(metric, frame.depth_m, mask, conf, flying)

    def calibration(self) -> dict | None:
        return self.calibration_acc.summary()


def _timed(iterator: Iterator, timing: dict, key: str) -> Iterator:
    while True:
        t = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            timing[key] += time.perf_counter() - t
            return
        timing[key] += time.perf_counter() - t
        yield item


def _batches(frames: Iterator[BagFrame], size: int) -> Iterator[list[BagFrame]]:
    """Groups of up to ``size`` same-sized frames; a full group is yielded at once (nothing waits on the bag)."""
    batch: list[BagFrame] = []
    for f in frames:
        if batch and f.rgb.shape != batch[0].rgb.shape:
            yield batch
            batch = []
        batch.append(f)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate_bag(
    source: BagSource,
    topics: TopicSelection,
    cfg: BagEvalConfig,
    backend=None,
    *,
    write_bag: str | Path | None = None,
    write_storage: str | None = None,
    write_prefix: str = "/d3",
    progress: Callable[[int], Callable[[int], object]] | None = None,
    scratch_dir: str | Path | None = None,
) -> BagEvalResult:
    """Evaluate ``backend`` (or the recorded ``topics.pred``) on the matched frames of ``source``.

    Raises :class:`BagError` when nothing can be matched. A bag that breaks mid-way gives a result with
    ``complete=False`` and ``error`` set (the frames evaluated so far are kept, never presented as complete).
    ``progress(total)`` is called once with the number of matched frames and returns a callable that gets the
    number of frames finished in each step (e.g. ``lambda n: tqdm(total=n).update``).
    """
    if backend is None and topics.pred is None:
        raise ValueError("`backend` is required unless `topics.pred` names recorded predictions")
    if cfg.metric_mode == "sparse_depth" and topics.sparse is None:
        raise BagError("metric mode sparse_depth needs a sparse depth topic (--sparse-topic)")
    t_all = time.perf_counter()
    t_index = time.perf_counter()
    idx = source.index(topics, int(round(cfg.max_dt_ms * 1e6)))
    index_s = time.perf_counter() - t_index
    if not idx.matches:
        key = idx.key_topic
        raise BagError(
            f"no ground truth within {cfg.max_dt_ms:g} ms of any {key} message "
            f"({idx.counts.get(key, 0)} on {key}, first stamp {idx.first_stamps.get(key)}; "
            f"{idx.counts.get(topics.depth, 0)} on {topics.depth}, first stamp {idx.first_stamps.get(topics.depth)}); "
            f"check --depth-topic and --max-dt-ms; available: {source.listing()}"
        )
    step = progress(len(idx.matches)) if progress is not None else None
    writer = None
    if write_bag is not None:
        writer = PredictionBagWriter(write_bag, write_storage or source.storage, write_prefix)
    ev = _Evaluator(cfg, idx, writer)
    ev.timing["read_decode"] += index_s
    complete, error = True, None
    model_info = None if backend is None else asdict(backend.info)

    def predict(batch: list[BagFrame]) -> list[tuple[np.ndarray, np.ndarray | None, float]]:
        if backend is None:
            out = []
            for f in batch:
                n = None
                if f.pred_normals is not None:
                    from d3_perception.geometry.normals import to_optical_frame

                    n = to_optical_frame(f.pred_normals, "optical", f.K)
                out.append((f.pred, n, math.nan))
            return out
        # [N,H,W,3] uint8; one frame is passed as a view (np.stack would copy the image at every frame)
        images = batch[0].rgb[None] if len(batch) == 1 else np.stack([f.rgb for f in batch])
        t = time.perf_counter()
        result = backend.predict(images)
        dt = time.perf_counter() - t
        ev.timing["model"] += dt
        depth = result["depth"]  # [N,H,W] in [0,1], 0 = near
        normals = result.get("normals")  # [N,3,H,W] in the checkpoint's convention
        out = []
        for k, f in enumerate(batch):
            n = None
            if normals is not None:
                from d3_perception.geometry.normals import to_optical_frame

                n = to_optical_frame(normals[k], cfg.normals_convention, f.K)  # [H,W,3]
            out.append((np.asarray(depth[k], np.float32), n, dt * 1e3 / len(batch)))
        return out

    try:
        with tempfile.TemporaryDirectory(dir=scratch_dir, prefix="d3_eval_") as scratch:
            frames = _timed(source.frames(idx, keep_raw=writer is not None), ev.timing, "read_decode")
            batches = ([f] for f in frames) if backend is None else _batches(frames, cfg.batch_size)
            if cfg.metric_mode == "global":
                stored = []
                for batch in batches:
                    for f, (rel, n, ms) in zip(batch, predict(batch), strict=True):
                        ev.add_global(rel, f.depth_m)
                        path = Path(scratch) / f"{f.index:08d}.npz"
                        np.savez(path, rel=rel, normals=n if n is not None else np.zeros(0), ms=ms)
                        stored.append(f.index)
                    if step:
                        step(len(batch))
                ev._global = ev.global_fit()
                stored_set = set(stored)
                frames2 = _timed(source.frames(idx, keep_raw=writer is not None), ev.timing, "read_decode")
                for f in frames2:
                    if f.index not in stored_set:
                        continue
                    data = np.load(Path(scratch) / f"{f.index:08d}.npz")
                    n = data["normals"] if data["normals"].size else None
                    ev.finish(f, data["rel"], n, float(data["ms"]))
            else:
                for batch in batches:
                    for f, (rel, n, ms) in zip(batch, predict(batch), strict=True):
                        ev.finish(f, rel, n, ms)
                    if step:
                        step(len(batch))
    except BagError as exc:
        if not ev.records:
            raise
        complete, error = False, str(exc)
    finally:
        if writer is not None:
            writer.close()
    return _result(ev, source, idx, topics, cfg, complete, error, model_info, writer, time.perf_counter() - t_all)


def _result(ev: _Evaluator, source: BagSource, idx: BagIndex, topics: TopicSelection, cfg: BagEvalConfig,
            complete: bool, error: str | None, model_info: dict | None, writer: PredictionBagWriter | None,
            total_s: float) -> BagEvalResult:
    recs = ev.records
    ok = [r for r in recs if r.status == "ok"]
    aggregate = mean_metrics([r.metrics for r in ok], DEPTH_METRICS) if ok else dict.fromkeys(DEPTH_METRICS, math.nan)
    normals = ev.acc.normals.result() if ev.acc.normals.count else None
    times = [r.time_s for r in recs]
    counts = {
        "messages": idx.counts,
        "matched": len(idx.matches),
        "evaluated": len(recs),
        "with_metrics": len(ok),
        "no_metric": sum(r.status == "no_metric" for r in recs),
        "no_valid_gt": sum(r.status == "no_valid_gt" for r in recs),
        "unmatched_frames": idx.unmatched_frames,
        "unmatched_gt": idx.unmatched_gt,
        "missing_partner": idx.missing,
        "duplicate_stamps": idx.duplicates,
        "skipped_undecodable": dict(source.skipped),
        "match_dt_ms": _percentiles([d / 1e6 for d in idx.dts_ns]),
    }
    if writer is not None:
        counts["written"] = writer.counts
        counts["points_skipped_no_camera_info"] = writer.points_skipped
    model_s = ev.timing["model"]
    timing = dict(ev.timing, total=total_s)
    timing["outside_model_share"] = (1.0 - model_s / total_s) if (total_s > 0 and model_s > 0) else float("nan")
    drift = {
        "fit_scale": _drift(times, [r.fit_scale for r in recs]),
        "fit_shift": _drift(times, [r.fit_shift for r in recs]),
    }
    if cfg.metric_mode in ("sparse_depth", "fixed", "global"):
        drift["applied_scale"] = _drift(times, [r.scale for r in recs])
        drift["applied_shift"] = _drift(times, [r.shift for r in recs])
    global_fit = None
    if cfg.metric_mode == "global" and hasattr(ev, "_global"):
        global_fit = {"scale": ev._global[0], "shift": ev._global[1]}
    return BagEvalResult(
        config=cfg, topics=topics, counts=counts, frames=recs, aggregate=aggregate, normals=normals,
        latency_ms={"model": _percentiles([r.model_ms for r in recs]),
                    "recorded_stamp_to_bag": _percentiles([r.record_latency_ms for r in recs])},
        drift=drift,
        valid_fraction={"gt": float(np.mean([r.gt_valid_fraction for r in recs])) if recs else math.nan,
                        "pred": float(np.mean([r.pred_valid_fraction for r in recs])) if recs else math.nan},
        timing_s=timing, error_hist=ev.acc.error_hist,
        depth_bins={"edges_m": DEPTH_BINS_M, "abs_rel_sum": ev.acc.depth_sum, "count": ev.acc.depth_count},
        samples=ev.acc.samples, complete=complete, error=error, global_fit=global_fit, model=model_info,
        calibration=ev.calibration(),
    )
