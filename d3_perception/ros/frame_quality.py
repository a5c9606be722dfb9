"""How far one camera's outputs can be trusted (issue #16), without rclpy: per-pixel confidence, gating, the
temporal stabiliser and the numbers behind /info and the self-check alarms of /diagnostics.

One :class:`FrameQuality` per camera (its estimator buffers, stabiliser state and previous scale are that
stream's), called by :func:`~d3_perception.ros.frame_outputs.compute_outputs` on the worker thread.
docs/confidence.md has the measurements behind the defaults.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields

import cv2
import numpy as np

from d3_perception.geometry.alignment import AlignmentResult
from d3_perception.geometry.confidence import ConfidenceEstimator, SparsePoints
from d3_perception.geometry.temporal import TemporalStabilizer

__all__ = ["FLICKER_FRAMES", "FLICKER_GRID_LONG_SIDE", "FrameQuality", "QualitySample", "quality_alarms", "worst"]

FLICKER_FRAMES = 10  # the flicker alarm averages the still-pixel flicker of this many frames
# without blending, the flicker estimate (a mean over the still pixels) runs on a grid of this long side
# (80 x 60 = 4800 pixels at 4:3): a quarter of the confidence grid's work for the same mean
FLICKER_GRID_LONG_SIDE = 80


@dataclass(frozen=True)
class QualitySample:
    """One frame's trust numbers (NaN = not known for this frame)."""

    mean_confidence: float = math.nan  # mean confidence over the valid pixels
    low_confidence_share: float = math.nan  # share of the valid pixels below min_confidence
    scale_change: float = math.nan  # |scale_t / scale_(t-1) - 1| of the applied metric scale
    blended_share: float = math.nan  # share of the valid pixels blended by the stabiliser
    flicker: float = math.nan  # still-pixel flicker, mean of the last FLICKER_FRAMES frames
    residual_rel: float = math.nan  # sparse fit residual / median metric depth


# the direction in which each number gets worse (for the worst value over several frames)
_WORSE_LOW = {"mean_confidence", "blended_share"}


def worst(a: QualitySample, b: QualitySample) -> QualitySample:
    """Field by field the worse of two samples (NaN counts as unknown: the other value wins)."""
    values = {}
    for f in fields(QualitySample):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if math.isnan(x) or math.isnan(y):
            values[f.name] = y if math.isnan(x) else x
        else:
            values[f.name] = min(x, y) if f.name in _WORSE_LOW else max(x, y)
    return QualitySample(**values)


def quality_alarms(sample: QualitySample, cfg) -> list[str]:
    """The self-check alarms ``sample`` raises under ``cfg``'s ``alarm_*`` thresholds (0 = off), one line each
    with the number; [] when all are clear."""
    checks = (("alignment_residual_rel", sample.residual_rel, cfg.alarm_max_residual_rel, "sparse fit residual"),
              ("scale_change", sample.scale_change, cfg.alarm_max_scale_change, "metric scale jump"),
              ("low_confidence_share", sample.low_confidence_share, cfg.alarm_max_low_confidence_share,
               "low-confidence share"),
              ("flicker", sample.flicker, cfg.alarm_max_flicker, "flicker"))
    return [f"{text} {key}={value:.4f} > {bound:g}" for key, value, bound, text in checks
            if bound > 0 and math.isfinite(value) and value > bound]


def _every_step(rgb: np.ndarray, step: int) -> np.ndarray:
    """``rgb[::step, ::step]`` ``[h,w,3]`` uint8, contiguous. Where ``step`` divides the size, cv2's nearest
    resize picks exactly these pixels at a quarter of numpy's cost for a strided 3-channel copy."""
    h, w = rgb.shape[:2]
    if step > 1 and h % step == 0 and w % step == 0 and rgb.flags.c_contiguous:
        return cv2.resize(rgb, (w // step, h // step), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(rgb[::step, ::step])


class FrameQuality:
    """Per-camera state; the methods run on the worker thread, in the order :meth:`begin`, :meth:`stabilise` (with
    ``temporal.blend`` > 0: it changes the depth the confidence rates), :meth:`confidence`, :meth:`stabilise`
    (blend 0: the flicker estimate alone, before the gate), :meth:`gate`, :meth:`finish`. ``reference`` is the
    frame's sparse metric reference (``[H,W]`` metres, NaN = none), set by the pipeline's alignment when it looked
    one up."""

    def __init__(self, cfg) -> None:
        self._estimator = ConfidenceEstimator(cfg.confidence)
        self._stabilizer = TemporalStabilizer(cfg.temporal)
        self._stream: tuple | None = None
        self.reference: np.ndarray | None = None
        self._points: SparsePoints | None = None  # of the array _points_of (kept: identity, not a reused id)
        self._points_of: np.ndarray | None = None
        self._map: np.ndarray | None = None  # this frame's frame-size confidence, once made
        self._map_out: np.ndarray | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the stream (stabiliser state, previous scale, flicker history)."""
        self._stabilizer.reset()
        self._prev_scale = math.nan
        self._flicker: deque[float] = deque(maxlen=FLICKER_FRAMES)
        self._computed = False

    def begin(self, cfg, out_hw: tuple[int, int]) -> None:
        """Take ``cfg``'s settings (a parameter change applies at the next frame); a new size or metric mode
        restarts the stream."""
        if self._estimator.config != cfg.confidence:
            self._estimator = ConfidenceEstimator(cfg.confidence)
        self._stabilizer.config = cfg.temporal
        stream = (tuple(out_hw), cfg.metric.mode, cfg.temporal.blend > 0)  # blend on/off: another grid
        if stream != self._stream:
            self._stream = stream
            self.reset()
        self.reference = None
        self._computed = False
        self._map = self._map_out = None

    def stabilise(self, depth_m: np.ndarray, rgb: np.ndarray, cfg) -> None:
        """Blend ``depth_m`` ``[H,W]`` float32 metres in place with the previous frame where image and depth are
        still (``temporal.blend`` > 0), and update the flicker estimate (``alarm.max_flicker`` > 0)."""
        if cfg.temporal.blend <= 0 and cfg.alarm_max_flicker <= 0:
            return
        if cfg.temporal.blend > 0:
            np.copyto(depth_m, self._stabilizer.update(depth_m, rgb))
        else:  # the estimate alone: on a coarse grid (1/64 of the pixels at 640x480)
            step = max(1, -(-max(depth_m.shape) // FLICKER_GRID_LONG_SIDE))
            self._stabilizer.update(np.ascontiguousarray(depth_m[::step, ::step]), _every_step(rgb, step))
        if math.isfinite(self._stabilizer.still_flicker):  # NaN while the camera moves: skipped
            self._flicker.append(self._stabilizer.still_flicker)

    def confidence(self, geo_depth: np.ndarray, K, model_normals, out: np.ndarray | None = None) -> None:
        """Rate ``geo_depth`` ``[H,W]`` (metres, or the depth_range proxy) on the confidence grid; the frame-size
        map is made only when asked for (:meth:`confidence_map`, or :meth:`gate` with a pixel to remove).
        model_normals: the model's optical-frame normals (three planes) or None (no normals cue; also without
        ``K``); the sparse cue uses :attr:`reference`. ``out``: where the frame-size map goes when made (the
        confidence message buffer), else the estimator's buffer."""
        normals = model_normals if K is not None else None
        points = None
        if self.reference is not None:
            # one reference message serves several frames, as the same array (SparseReference's cache, never
            # written to): its returns are found once, not by a full-frame scan per frame
            if self._points_of is not self.reference:
                self._points, self._points_of = SparsePoints(self.reference), self.reference
            points = self._points
        self._estimator.rate(geo_depth, K, normals, points)
        self._computed = True
        self._map, self._map_out = None, out

    def confidence_map(self) -> np.ndarray:
        """This frame's ``[H,W]`` float32 confidence in [0, 1] (made once per frame, after :meth:`confidence`)."""
        if self._map is None:
            self._map = self._estimator.full_map(self._map_out)
        return self._map

    def gate(self, depth: np.ndarray, min_confidence: float) -> None:
        """NaN in ``depth`` (in place) where this frame's confidence is below ``min_confidence``: gone from depth
        and the cloud. Without the frame-size map (not published) the estimator gates on its grid."""
        if min_confidence > 0 and self._estimator.any_below(min_confidence):
            full = self._estimator.gate(depth, min_confidence, out=self._map_out)
            if full is not None:  # made for the gate (the frame is not whole grid blocks): kept for publishing
                self._map = full

    def finish(self, cfg, align: AlignmentResult, depth_m: np.ndarray | None) -> QualitySample:
        """This frame's numbers (after :meth:`confidence`; ``depth_m`` the published metric depth or None)."""
        mean, low = self._estimator.summary(cfg.min_confidence) if self._computed else (math.nan, math.nan)
        scale = float(align.scale) if align.is_metric else math.nan
        change = abs(scale / self._prev_scale - 1.0) if self._prev_scale > 0 and scale > 0 else math.nan
        self._prev_scale = scale
        residual_rel = math.nan
        if depth_m is not None and math.isfinite(align.residual_m):
            with np.errstate(invalid="ignore"):
                sample = depth_m[::16, ::16]  # 1200 pixels at 640x480: the scene's median depth, cheaply
                sample = sample[sample > 0]  # NaN compares False
                median = _median(sample) if sample.size else 0.0
            residual_rel = align.residual_m / median if median > 0 else math.nan
        stab = cfg.temporal.blend > 0 and depth_m is not None
        return QualitySample(
            mean_confidence=mean, low_confidence_share=low, scale_change=change,
            blended_share=self._stabilizer.blended_share if stab else math.nan,
            flicker=math.fsum(self._flicker) / len(self._flicker) if self._flicker else math.nan,
            residual_rel=residual_rel)


def _median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D array without NaN, by one partition (np.median's checks and copies took 3x as long
    on the node's 1200 samples)."""
    n = values.size
    part = np.partition(values, (n - 1) // 2 if n % 2 else [n // 2 - 1, n // 2])
    return float(part[n // 2]) if n % 2 else (float(part[n // 2 - 1]) + float(part[n // 2])) / 2.0

