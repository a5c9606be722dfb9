"""Depth and surface-normal metrics: the one metrics core behind ``d3-eval`` and ``d3-eval-bag``.

Every metric takes ``(pred, target, valid_mask)`` (STYLE rule 6) and works on one image with vectorised numpy.

Depth protocol (Marigold / E2E-FT / Lotus, see docs/evaluation.md):
  1. valid mask = ``min_depth_m < target < max_depth_m`` (strict), AND the dataset crop (Eigen / Garg), AND any
     mask the dataset ships;
  2. least-squares scale + shift of the affine-invariant prediction to the target over the valid mask, in depth
     space (default) or disparity space; the fit is applied to the whole prediction;
  3. the aligned prediction is clipped to ``[min_depth_m, max_depth_m]`` and to >= 1e-6;
  4. AbsRel, SqRel, RMSE, RMSE-log, log10, delta1..3 over the valid pixels; averaged over images by the caller.

Normals: angular error ``acos(clip(<p/|p|, t/|t|>))`` in degrees on valid pixels (|target| > 0 and the mask);
mean, median, RMSE and the share of pixels under 5, 7.5, 11.25, 22.5 and 30 degrees. DSINE pools all pixels of a
data set; :class:`NormalErrorAccumulator` does that in constant memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEPTH_METRICS",
    "NORMAL_METRICS",
    "NORMAL_THRESHOLDS_DEG",
    "DepthProtocol",
    "NormalErrorAccumulator",
    "Workspace",
    "align_depth",
    "crop_mask",
    "depth_metrics",
    "evaluate_depth",
    "depth_metrics_flat",
    "fit_flat",
    "fit_scale_shift_lstsq",
    "mean_metrics",
    "normal_angles_deg",
    "normal_metrics",
    "scratch",
    "vdot",
]

#: Depth metric keys in report order. Relative errors are fractions (AbsRel 0.055 = 5.5 %), RMSE in metres.
DEPTH_METRICS: tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")
#: Angular thresholds (degrees) for the "% of pixels under" normal metrics.
NORMAL_THRESHOLDS_DEG: tuple[float, ...] = (5.0, 7.5, 11.25, 22.5, 30.0)
#: Normal metric keys in report order; angles in degrees, ``a*`` are fractions in [0,1].
NORMAL_METRICS: tuple[str, ...] = ("mean", "median", "rmse", "a5", "a7.5", "a11.25", "a22.5", "a30")

_ALIGN_SPACES = ("depth", "disparity", "none")


_CROPS = ("none", "eigen", "garg")


def vdot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product of two ``[M]`` vectors without BLAS: ``np.dot`` wakes OpenBLAS threads, which measured
    50x slower than einsum's single loop on a loaded 2-core machine (300k pixels: 7.5 ms vs 0.14 ms).
    float32 inputs are multiplied and summed in float64 (exact products, no float64 copy of the inputs)."""
    return float(np.einsum("i,i->", a, b, dtype=np.float64))


class Workspace:
    """Named work buffers reused from frame to frame by the ``*_flat`` functions (the evaluator's hot path).

    A fresh 640x480 temporary per operation is memory the allocator hands back to the OS and faults in again at
    the next frame (measured next to the tiny model: ~5000 page faults, ~7 ms per frame); buffers kept here are
    faulted in once. ``get(name, n, dtype)`` returns the first ``n`` elements of the named buffer, reallocated
    only when it is too small or of another dtype, so frames of any size can follow each other.

    Arrays that a function returns from a workspace are views into it: valid until the next call that uses the
    same workspace. Without a workspace (``work=None``) the functions allocate, as plain numpy code would.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, n: int, dtype: np.dtype | type) -> np.ndarray:
        """``[n]`` buffer ``name`` of ``dtype`` (uninitialised)."""
        buf = self._buffers.get(name)
        if buf is None or buf.size < n or buf.dtype != dtype:
            buf = np.empty(n, dtype)
            self._buffers[name] = buf
        return buf[:n]

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())


def scratch(work: Workspace | None, name: str, n: int, dtype: np.dtype | type) -> np.ndarray:
    """``[n]`` buffer ``name`` from ``work``, or a fresh array without a workspace."""
    return np.empty(n, dtype) if work is None else work.get(name, n, dtype)


def _check_pair(pred: np.ndarray, target: np.ndarray, valid_mask: np.ndarray | None, what: str) -> np.ndarray:
    """Same-shape check; returns the boolean mask (all True when ``valid_mask`` is None)."""
    if pred.shape != target.shape:
        raise ValueError(f"`pred` and `target` must have the same shape for {what}; got {pred.shape} and {target.shape}")
    if valid_mask is None:
        return np.ones(target.shape[:2] if what == "normals" else target.shape, dtype=bool)
    mask = np.asarray(valid_mask)
    if mask.dtype != bool:
        raise TypeError(f"`valid_mask` must be bool; got {mask.dtype}")
    return mask


def fit_scale_shift_lstsq(
    pred: np.ndarray, target: np.ndarray, valid_mask: np.ndarray
) -> tuple[float, float, float]:
    """Plain least-squares ``scale * pred + shift ~= target`` over ``valid_mask`` (the benchmark protocol).

    Args:
        pred: ``[H,W]`` affine-invariant prediction (any float dtype).
        target: ``[H,W]`` target in the same space (metres for depth, 1/m for disparity).
        valid_mask: ``[H,W]`` bool; at least 2 pixels and a non-constant prediction are required.

    Returns:
        ``(scale, shift, residual)``: residual = RMS of ``scale * pred + shift - target`` on the mask (target units).

    The node's robust fit (``d3_perception.geometry.alignment``) is for sparse, outlier-prone references; the
    benchmark protocol is the ordinary least-squares fit of Marigold, so it is computed here in float64.
    """
    mask = _check_pair(pred, target, valid_mask, "alignment")
    return fit_flat(pred[mask], target[mask])


def fit_flat(pred_v: np.ndarray, target_v: np.ndarray, work: Workspace | None = None) -> tuple[float, float, float]:
    """:func:`fit_scale_shift_lstsq` on already-masked ``[M]`` vectors (the evaluator's hot path).

    Any float dtype; the centred moments are computed in float64 (into ``work`` buffers when given).
    """
    p = np.ravel(pred_v)  # [M]
    t = np.ravel(target_v)  # [M]
    n = p.size
    if n < 2:
        raise ValueError(f"alignment needs at least 2 valid pixels; got {n}")
    f64 = np.float64
    p_mean = float(np.mean(p, dtype=f64))
    t_mean = float(np.mean(t, dtype=f64))
    dp = np.subtract(p, p_mean, out=scratch(work, "fit_dp", n, f64), dtype=f64)  # [M] float64
    dt = np.subtract(t, t_mean, out=scratch(work, "fit_dt", n, f64), dtype=f64)  # [M] float64
    var = vdot(dp, dp)
    if var <= 1e-12 * n:
        raise ValueError("alignment needs a non-constant prediction on the valid pixels; got a constant one")
    cov = vdot(dp, dt)
    scale = cov / var
    shift = float(t_mean - scale * p_mean)
    # RMS residual from the centred moments: sum (s*dp - dt)^2 = var_t - cov^2 / var (no extra pass).
    residual = math.sqrt(max(vdot(dt, dt) - cov * cov / var, 0.0) / n)
    return scale, shift, residual


def _downsample_nearest(arrays: tuple[np.ndarray, ...], max_res: int | None) -> tuple[np.ndarray, ...]:
    """Nearest-neighbour subsample of ``[H,W]`` arrays so that max(H,W) <= max_res (ETH3D: fit on <= 1024)."""
    if max_res is None:
        return arrays
    h, w = arrays[0].shape[:2]
    step = math.ceil(max(h, w) / max_res)
    if step <= 1:
        return arrays
    return tuple(a[::step, ::step] for a in arrays)


def align_depth(
    pred: np.ndarray,
    target_m: np.ndarray,
    valid_mask: np.ndarray,
    *,
    space: str = "depth",
    min_depth_m: float = 1e-6,
    max_depth_m: float = math.inf,
    fit_max_res: int | None = None,
) -> tuple[np.ndarray, float, float]:
    """Align an affine-invariant prediction to metric ground truth (protocol steps 2-3).

    Args:
        pred: ``[H,W]`` relative prediction; depth-like (``space="depth"``) or disparity-like
            (``space="disparity"``, fit against 1/target and inverted after clipping at 1/max_depth_m, >= 1e-3).
        target_m: ``[H,W]`` ground-truth depth in metres.
        valid_mask: ``[H,W]`` bool, pixels used for the fit.
        space: ``"depth"``, ``"disparity"`` or ``"none"`` (the prediction is already metric).
        min_depth_m, max_depth_m: clip range of the aligned depth.
        fit_max_res: fit on a nearest-neighbour subsample whose long side is at most this (None = full).

    Returns:
        ``(aligned_m [H,W] float32, scale, shift)``; scale/shift are in the fitted space (1 and 0 for ``none``).
    """
    if space not in _ALIGN_SPACES:
        raise ValueError(f"`space` must be one of {_ALIGN_SPACES}; got {space!r}")
    pred = np.asarray(pred, dtype=np.float64)
    target_m = np.asarray(target_m, dtype=np.float64)
    mask = _check_pair(pred, target_m, valid_mask, "alignment")
    if space == "none":
        aligned, scale, shift = pred, 1.0, 0.0
    elif space == "depth":
        p, t, m = _downsample_nearest((pred, target_m, mask), fit_max_res)
        scale, shift, _ = fit_scale_shift_lstsq(p, t, m)
        aligned = scale * pred + shift
    else:
        with np.errstate(divide="ignore"):
            target_disp = np.where(mask, 1.0 / np.where(mask, target_m, 1.0), 0.0)
        p, t, m = _downsample_nearest((pred, target_disp, mask), fit_max_res)
        scale, shift, _ = fit_scale_shift_lstsq(p, t, m)
        disp_floor = max(1e-3, 1.0 / max_depth_m) if math.isfinite(max_depth_m) else 1e-3
        aligned = 1.0 / np.maximum(scale * pred + shift, disp_floor)
    aligned = np.clip(aligned, min_depth_m, max_depth_m)
    aligned = np.maximum(aligned, 1e-6)
    return aligned.astype(np.float32), scale, shift


def depth_metrics(pred_m: np.ndarray, target_m: np.ndarray, valid_mask: np.ndarray) -> dict[str, float]:
    """Depth errors of a metric prediction on the valid pixels of one image.

    Args:
        pred_m: ``[H,W]`` predicted depth in metres, > 0 on the mask (e.g. the output of :func:`align_depth`).
        target_m: ``[H,W]`` ground truth in metres, > 0 on the mask.
        valid_mask: ``[H,W]`` bool; at least one pixel.

    Returns:
        ``{abs_rel, sq_rel, rmse (m), rmse_log, log10, delta1, delta2, delta3}``; relative errors and deltas are
        fractions (multiply by 100 for the published tables).
    """
    mask = _check_pair(pred_m, target_m, valid_mask, "depth metrics")
    return depth_metrics_flat(np.asarray(pred_m)[mask], np.asarray(target_m)[mask])[0]


_LOG_125 = math.log(1.25)


def depth_metrics_flat(
    pred_v: np.ndarray, target_v: np.ndarray, work: Workspace | None = None
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """:func:`depth_metrics` on masked ``[M]`` vectors; also returns ``|p-t|/t`` and ``log t`` (``[M]`` float32 each).

    delta_k uses ``max(p/t, t/p) < 1.25^k  <=>  |log p - log t| < k log 1.25``, sharing the logs of RMSE-log.
    With ``work``, every ``[M]`` temporary (and the two returned arrays) lives in its buffers.
    """
    # Element-wise work in float32 (half the memory traffic; values are metres), every mean accumulated in float64.
    f32, f64 = np.float32, np.float64
    p = np.ravel(np.asarray(pred_v, dtype=f32))  # [M]
    t = np.ravel(np.asarray(target_v, dtype=f32))  # [M]
    n = t.size
    if n == 0:
        raise ValueError("`valid_mask` must select at least one pixel; got none")
    if p.size != n:
        raise ValueError(f"`pred_m` and `target_m` must have the same number of valid pixels; got {p.size} and {n}")
    if not (float(t.min()) > 0 and float(p.min()) > 0):  # min is NaN if any value is NaN
        raise ValueError("`pred_m` and `target_m` must be > 0 on the valid pixels; got zero/negative/NaN values")
    sq = np.subtract(p, t, out=scratch(work, "dm_sq", n, f32))  # [M] p - t
    rel_err = np.abs(sq, out=scratch(work, "dm_rel_err", n, f32))  # [M] |p - t| / t after the division
    np.divide(rel_err, t, out=rel_err)
    np.multiply(sq, sq, out=sq)  # [M] (p - t)^2
    rmse = math.sqrt(float(np.mean(sq, dtype=f64)))
    np.divide(sq, t, out=sq)  # [M] (p - t)^2 / t
    log_t = np.log(t, out=scratch(work, "dm_log_t", n, f32))  # [M]
    log_ratio = np.log(p, out=scratch(work, "dm_log_ratio", n, f32))  # [M] |log p - log t| after the next two
    np.subtract(log_ratio, log_t, out=log_ratio)
    np.abs(log_ratio, out=log_ratio)
    below = scratch(work, "dm_below", n, np.bool_)
    metrics = {
        "abs_rel": float(np.mean(rel_err, dtype=f64)),
        "sq_rel": float(np.mean(sq, dtype=f64)),
        "rmse": rmse,
        "rmse_log": math.nan,
        "log10": float(np.mean(log_ratio, dtype=f64)) / math.log(10.0),
        "delta1": float(np.count_nonzero(np.less(log_ratio, _LOG_125, out=below))) / n,
        "delta2": float(np.count_nonzero(np.less(log_ratio, 2 * _LOG_125, out=below))) / n,
        "delta3": float(np.count_nonzero(np.less(log_ratio, 3 * _LOG_125, out=below))) / n,
    }
    metrics["rmse_log"] = math.sqrt(float(np.mean(np.multiply(log_ratio, log_ratio, out=log_ratio), dtype=f64)))
    return metrics, rel_err, log_t


def crop_mask(shape_hw: tuple[int, int], crop: str) -> np.ndarray:
    """``[H,W]`` bool evaluation crop: ``eigen`` / ``garg`` (KITTI, fractions of the cropped frame) or ``none``.

    The NYUv2 Eigen crop is a fixed pixel window and is expressed with ``crop_box`` of :class:`DepthProtocol`.
    """
    if crop not in _CROPS:
        raise ValueError(f"`crop` must be one of {_CROPS}; got {crop!r}")
    h, w = shape_hw
    mask = np.zeros((h, w), dtype=bool)
    if crop == "none":
        mask[:] = True
    elif crop == "eigen":
        mask[int(0.3324324 * h) : int(0.91351351 * h), int(0.0359477 * w) : int(0.96405229 * w)] = True
    else:
        mask[int(0.40810811 * h) : int(0.99189189 * h), int(0.0359477 * w) : int(0.96405229 * w)] = True
    return mask


@dataclass(frozen=True)
class DepthProtocol:
    """Per-dataset depth evaluation settings (``config/eval/<dataset>.yaml``, key ``depth``).

    Attributes:
        min_depth_m, max_depth_m: strict validity range of the GT and clip range of the aligned prediction.
        crop: ``none``, ``eigen`` or ``garg`` (fractional KITTI crops of the evaluated frame).
        crop_box: optional fixed ``(top, bottom, left, right)`` pixel window (end excluded), e.g. NYUv2 Eigen
            crop ``(45, 471, 41, 601)`` of a 480x640 frame; a frame that does not contain the box is an error.
        alignment: ``depth`` (least squares in depth space), ``disparity`` or ``none``.
        fit_max_res: long side of the nearest-neighbour subsample used for the fit (ETH3D: 1024), None = full.
        range_mask: whether the depth range is part of the valid mask (DIODE: False, its shipped mask is the only
            mask and the range only clips the prediction).
    """

    min_depth_m: float = 1e-3
    max_depth_m: float = math.inf
    crop: str = "none"
    crop_box: tuple[int, int, int, int] | None = None
    alignment: str = "depth"
    fit_max_res: int | None = None
    range_mask: bool = True

    def __post_init__(self) -> None:
        if not (self.min_depth_m >= 0 and self.max_depth_m > self.min_depth_m):
            raise ValueError(
                f"`min_depth_m` must be >= 0 and below `max_depth_m`; got {self.min_depth_m} and {self.max_depth_m}"
            )
        if self.crop not in _CROPS:
            raise ValueError(f"`crop` must be one of {_CROPS}; got {self.crop!r}")
        if self.alignment not in _ALIGN_SPACES:
            raise ValueError(f"`alignment` must be one of {_ALIGN_SPACES}; got {self.alignment!r}")
        if self.crop_box is not None:
            box = tuple(int(v) for v in self.crop_box)
            if len(box) != 4 or not (0 <= box[0] < box[1] and 0 <= box[2] < box[3]):
                raise ValueError(f"`crop_box` must be (top, bottom, left, right) with top<bottom, left<right; got {self.crop_box}")
            object.__setattr__(self, "crop_box", box)
        if self.fit_max_res is not None and int(self.fit_max_res) < 2:
            raise ValueError(f"`fit_max_res` must be >= 2 or null; got {self.fit_max_res}")

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> DepthProtocol:
        """From the ``depth`` section of a YAML config; unknown keys are an error (typos must not pass)."""
        known = {"min_depth_m", "max_depth_m", "crop", "crop_box", "alignment", "fit_max_res", "range_mask"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown depth protocol keys {sorted(unknown)}; expected some of {sorted(known)}")
        kwargs = dict(data)
        for key in ("min_depth_m", "max_depth_m"):
            if key in kwargs:
                value = kwargs[key]
                if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string; accept it and ".inf"
                    value = value.strip().lstrip(".") if value.strip().lower() in (".inf", "+.inf") else value
                try:
                    kwargs[key] = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"`{key}` must be a number (metres); got {kwargs[key]!r}") from None
        if kwargs.get("crop_box") is not None:
            kwargs["crop_box"] = tuple(kwargs["crop_box"])
        return cls(**kwargs)

    def valid_mask(self, target_m: np.ndarray, extra_mask: np.ndarray | None = None) -> np.ndarray:
        """``[H,W]`` bool: finite GT strictly inside the range, inside the crop, and in ``extra_mask``."""
        with np.errstate(invalid="ignore"):
            mask = np.isfinite(target_m) & (target_m > 0)
            if self.range_mask:
                mask &= (target_m > self.min_depth_m) & (target_m < self.max_depth_m)
        if self.crop != "none":
            mask &= crop_mask(target_m.shape, self.crop)
        if self.crop_box is not None:
            top, bottom, left, right = self.crop_box
            if bottom > mask.shape[0] or right > mask.shape[1]:
                raise ValueError(
                    f"`crop_box` {self.crop_box} must lie inside the frame; got a {mask.shape[0]}x{mask.shape[1]} frame"
                )
            box = np.zeros_like(mask)
            box[top:bottom, left:right] = True
            mask &= box
        if extra_mask is not None:
            mask &= extra_mask.astype(bool)
        return mask


def evaluate_depth(
    pred: np.ndarray, target_m: np.ndarray, valid_mask: np.ndarray, protocol: DepthProtocol
) -> tuple[dict[str, float], np.ndarray]:
    """Protocol steps 2-4 on one image: ``(metrics + {"scale","shift"}, aligned_m [H,W] float32)``.

    ``valid_mask`` is the final mask (usually ``protocol.valid_mask(target_m, dataset_mask)``).
    """
    aligned, scale, shift = align_depth(
        pred,
        target_m,
        valid_mask,
        space=protocol.alignment,
        min_depth_m=max(protocol.min_depth_m, 1e-6),
        max_depth_m=protocol.max_depth_m,
        fit_max_res=protocol.fit_max_res,
    )
    metrics = depth_metrics(aligned, target_m, valid_mask)
    metrics.update(scale=scale, shift=shift)
    return metrics, aligned


def normal_angles_deg(pred: np.ndarray, target: np.ndarray, valid_mask: np.ndarray | None = None) -> np.ndarray:
    """Angular errors in degrees of the valid pixels, ``[M]`` float64.

    Args:
        pred: ``[H,W,3]`` predicted normals (any length; normalised here) in the same frame as ``target``.
        target: ``[H,W,3]`` ground-truth normals; pixels with a zero or non-finite vector are invalid.
        valid_mask: optional ``[H,W]`` bool further restricting the pixels.
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"`pred` must be [H,W,3] normals; got shape {pred.shape}")
    mask = _check_pair(pred, target, valid_mask, "normals")
    t_norm = np.linalg.norm(target, axis=-1)  # [H,W]
    p_norm = np.linalg.norm(pred, axis=-1)  # [H,W]
    mask = mask & np.isfinite(t_norm) & (t_norm > 0) & np.isfinite(p_norm)
    t = target[mask] / t_norm[mask, None]  # [M,3]
    p = pred[mask] / np.maximum(p_norm[mask, None], 1e-12)  # [M,3]; a zero prediction counts as 90 deg
    cos = np.clip(np.einsum("mc,mc->m", p, t), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def _angle_summary(angles: np.ndarray) -> dict[str, float]:
    if angles.size == 0:
        raise ValueError("normal metrics need at least one valid pixel; got none")
    out = {
        "mean": float(np.mean(angles)),
        "median": float(np.median(angles)),
        "rmse": float(np.sqrt(np.mean(angles * angles))),
    }
    for thr in NORMAL_THRESHOLDS_DEG:
        out[f"a{thr:g}"] = float(np.mean(angles < thr))
    return out


def normal_metrics(pred: np.ndarray, target: np.ndarray, valid_mask: np.ndarray | None = None) -> dict[str, float]:
    """``{mean, median, rmse (deg), a5, a7.5, a11.25, a22.5, a30 (fractions)}`` for one image."""
    return _angle_summary(normal_angles_deg(pred, target, valid_mask))


class NormalErrorAccumulator:
    """Pools angular errors over a whole data set (DSINE protocol) in constant memory.

    Mean and RMSE are exact (running sums), threshold shares are exact (counted per update), the median comes
    from a 0.01 degree histogram (error <= 0.005 deg). A histogram is used because the pooled angles of a
    benchmark (e.g. Sintel: 1064 x 436 x 1024 pixels) do not fit in memory.
    """

    _BIN_DEG = 0.01

    def __init__(self) -> None:
        self._hist = np.zeros(int(round(180.0 / self._BIN_DEG)) + 1, dtype=np.int64)
        self._count = 0
        self._sum = 0.0
        self._sumsq = 0.0
        self._below = dict.fromkeys(NORMAL_THRESHOLDS_DEG, 0)

    def update(self, angles_deg: np.ndarray) -> None:
        """Add ``[M]`` angular errors in degrees."""
        a = np.asarray(angles_deg, dtype=np.float64).ravel()
        if a.size == 0:
            return
        self._count += a.size
        self._sum += float(a.sum())
        self._sumsq += float(vdot(a, a))
        for thr in NORMAL_THRESHOLDS_DEG:
            self._below[thr] += int(np.count_nonzero(a < thr))
        idx = np.clip((a / self._BIN_DEG).astype(np.int64), 0, self._hist.size - 1)
        self._hist += np.bincount(idx, minlength=self._hist.size)

    @property
    def count(self) -> int:
        return self._count

    def result(self) -> dict[str, float]:
        """Pooled ``{mean, median, rmse, a5, ..., a30}``; raises when nothing was added."""
        if self._count == 0:
            raise ValueError("normal metrics need at least one valid pixel; got none")
        cum = np.cumsum(self._hist)
        median_bin = int(np.searchsorted(cum, (self._count + 1) / 2.0))
        out = {
            "mean": self._sum / self._count,
            "median": (median_bin + 0.5) * self._BIN_DEG,
            "rmse": math.sqrt(self._sumsq / self._count),
        }
        for thr in NORMAL_THRESHOLDS_DEG:
            out[f"a{thr:g}"] = self._below[thr] / self._count
        return out


def mean_metrics(per_item: Iterable[Mapping[str, float]], keys: Iterable[str] | None = None) -> dict[str, float]:
    """Average per-image metric dicts key by key (the Marigold protocol averages images, not pixels).

    Non-finite values are skipped per key; a key with no finite value maps to NaN.
    """
    items = list(per_item)
    keys = list(keys) if keys is not None else (list(items[0]) if items else [])
    out: dict[str, float] = {}
    for key in keys:
        vals = np.array([float(it[key]) for it in items if key in it], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        out[key] = float(vals.mean()) if vals.size else float("nan")
    return out
