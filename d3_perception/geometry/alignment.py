"""Metric alignment of affine-invariant (relative) depth: ``metric_m = scale * relative + shift``.

Every fit returns ``(scale, shift, residual)`` with ``residual`` in metres (RMS for the least-squares
fit, robust sigma = 1.4826 * MAD of the inliers for the robust fit). :class:`MetricAligner` implements
the node's metric modes: ``none``, ``fixed``, ``sparse_depth`` (robust per-frame fit, temporal smoothing,
last good fit held when a frame has too few points) and ``depth_range``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "METRIC_MODES",
    "AlignmentResult",
    "MetricAligner",
    "MetricConfig",
    "fit_scale_shift",
    "fit_scale_shift_robust",
]

logger = logging.getLogger(__name__)

METRIC_MODES = ("none", "fixed", "sparse_depth", "depth_range")


def _valid_pairs(pred, target, mask) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred)
    t = np.asarray(target)
    if p.shape != t.shape:
        raise ValueError(f"`pred` and `target` must have the same shape; got {p.shape} and {t.shape}")
    # Index the (sparse) reference first and convert only those pixels to float64: no full-frame temporaries.
    with np.errstate(invalid="ignore"):
        valid = t > 0  # NaN compares False
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != p.shape:
            raise ValueError(f"`mask` must have the shape of `pred` {p.shape}; got {m.shape}")
        valid &= m
    idx = np.flatnonzero(valid)  # C order, as boolean indexing
    pv = p.reshape(-1)[idx].astype(np.float64)
    tv = t.reshape(-1)[idx].astype(np.float64)
    finite = np.isfinite(pv) & np.isfinite(tv)
    if not finite.all():
        pv, tv = pv[finite], tv[finite]
    return pv, tv


def _lstsq(p: np.ndarray, t: np.ndarray, w: np.ndarray | None = None) -> tuple[float, float]:
    # Closed-form weighted 2-parameter least squares (np.polyfit would re-validate and allocate more).
    w = np.ones_like(p) if w is None else w
    sw = w.sum()
    mp, mt = (w * p).sum() / sw, (w * t).sum() / sw
    var = (w * (p - mp) ** 2).sum()
    if not var > 1e-12 * sw:
        raise ValueError("`pred` must vary over the valid points; got a constant prediction (scale undefined)")
    scale = (w * (p - mp) * (t - mt)).sum() / var
    return float(scale), float(mt - scale * mp)


def fit_scale_shift(pred, target, mask=None, min_points: int = 2) -> tuple[float, float, float]:
    """Least-squares ``scale, shift`` so that ``scale * pred + shift ≈ target`` (metres).

    ``pred`` relative depth and ``target`` metric depth (NaN or <= 0 = no measurement) of equal shape;
    ``mask`` optional bool. Returns ``(scale, shift, rms_residual_m)``. Raises ``ValueError`` with fewer
    than ``min_points`` valid pairs or a constant prediction.
    """
    p, t = _valid_pairs(pred, target, mask)
    if p.size < max(2, min_points):
        raise ValueError(f"`target` must have at least {max(2, min_points)} valid points; got {p.size}")
    scale, shift = _lstsq(p, t)
    res = scale * p + shift - t
    return scale, shift, float(np.sqrt(np.mean(res**2)))


def fit_scale_shift_robust(
    pred,
    target,
    mask=None,
    min_points: int = 20,
    ransac_iterations: int = 64,
    inlier_threshold_m: float | None = None,
    irls_iterations: int = 5,
    max_points: int = 20000,
    ransac_points: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """RANSAC (2-point samples) then Huber IRLS on the inliers; deterministic for a given ``seed``.

    Tolerates a large fraction of outliers (reflections, edges, sensor noise). ``inlier_threshold_m``
    defaults to 5 % of the median target depth (at least 1 cm). Returns ``(scale, shift, residual_m)``
    with ``residual_m`` = 1.4826 * median absolute residual of the inliers. Raises ``ValueError`` with fewer
    than ``min_points`` valid pairs or no consistent fit.
    """
    p, t = _valid_pairs(pred, target, mask)
    return _robust_pairs(p, t, min_points, ransac_iterations, inlier_threshold_m, irls_iterations, max_points,
                         ransac_points, seed)


def _robust_pairs(p, t, min_points=20, ransac_iterations=64, inlier_threshold_m=None, irls_iterations=5,
                  max_points=20000, ransac_points=2000, seed=0) -> tuple[float, float, float]:
    if p.size < max(2, min_points):
        raise ValueError(f"`target` must have at least {max(2, min_points)} valid points; got {p.size}")
    rng = np.random.default_rng(seed)
    if p.size > max_points:
        keep = rng.choice(p.size, size=max_points, replace=False)
        p, t = p[keep], t[keep]
    thr = inlier_threshold_m if inlier_threshold_m is not None else max(0.01, 0.05 * float(np.median(t)))
    # hypotheses are scored on a subsample (enough to rank them), the winner's inliers on every point
    sub = rng.choice(p.size, size=ransac_points, replace=False) if p.size > ransac_points else slice(None)
    ps, ts = p[sub], t[sub]
    best = None
    i, j = rng.integers(0, p.size, size=(2, ransac_iterations))
    # All hypotheses scored at once ([iterations, subsample]); same arithmetic as one at a time, and argmax
    # keeps the first best like a strict ">" loop would.
    dp = p[i] - p[j]
    usable = np.abs(dp) >= 1e-9
    if usable.any():
        a, b = i[usable], j[usable]
        s = (t[a] - t[b]) / dp[usable]  # [n]
        c = t[a] - s * p[a]  # [n]
        resid = s[:, None] * ps[None, :]  # [n, subsample]
        resid += c[:, None]
        resid -= ts[None, :]
        counts = np.count_nonzero(np.abs(resid, out=resid) < thr, axis=1)
        k = int(np.argmax(counts))
        best = (s[k], c[k])
    best_inliers = np.abs(best[0] * p + best[1] - t) < thr if best is not None else None
    best_count = int(best_inliers.sum()) if best_inliers is not None else 0
    if best_inliers is None or best_count < max(2, min_points // 2):
        raise ValueError(f"no consistent scale/shift: best RANSAC model has {max(best_count, 0)} inliers "
                         f"of {p.size} (threshold {thr:.3f} m)")
    pi, ti = p[best_inliers], t[best_inliers]
    scale, shift = _lstsq(pi, ti)
    for _ in range(irls_iterations):
        r = np.abs(scale * pi + shift - ti)
        w = np.minimum(1.0, thr / np.maximum(r, 1e-12))  # Huber weights
        scale, shift = _lstsq(pi, ti, w)
    residual = 1.4826 * float(np.median(np.abs(scale * pi + shift - ti)))
    return scale, shift, residual


@dataclass(frozen=True)
class MetricConfig:
    """Settings of :class:`MetricAligner` (node parameters ``metric.*``)."""

    mode: str = "none"
    fixed_scale: float = 1.0  # fixed: metric_m = fixed_scale * relative + fixed_shift
    fixed_shift: float = 0.0
    near_m: float = 0.3  # depth_range: relative 0 -> near_m, 1 -> far_m
    far_m: float = 10.0
    min_points: int = 50  # sparse_depth: fewer valid reference points -> hold the last good fit
    smoothing: float = 0.8  # sparse_depth: weight of the previous fit in the exponential average, [0,1)
    max_residual_m: float = float("inf")  # sparse_depth: fits with a larger residual are rejected
    hold_frames: int = 0  # sparse_depth: how many frames a fit is held (0 = forever)

    def __post_init__(self) -> None:
        if self.mode not in METRIC_MODES:
            raise ValueError(f"`metric.mode` must be one of {METRIC_MODES}; got {self.mode!r}")
        if not (math.isfinite(self.fixed_scale) and self.fixed_scale > 0):
            raise ValueError(f"`metric.fixed_scale` must be finite and > 0; got {self.fixed_scale}")
        if not math.isfinite(self.fixed_shift):
            raise ValueError(f"`metric.fixed_shift` must be finite; got {self.fixed_shift}")
        if not (0 <= self.near_m < self.far_m and math.isfinite(self.far_m)):
            raise ValueError(f"`metric.near_m` must be >= 0 and < `metric.far_m` (finite); got "
                             f"{self.near_m}, {self.far_m}")
        if self.min_points < 2:
            raise ValueError(f"`metric.min_points` must be >= 2; got {self.min_points}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"`metric.smoothing` must be in [0, 1); got {self.smoothing}")
        if not self.max_residual_m > 0:
            raise ValueError(f"`metric.max_residual_m` must be > 0; got {self.max_residual_m}")
        if self.hold_frames < 0:
            raise ValueError(f"`metric.hold_frames` must be >= 0; got {self.hold_frames}")


@dataclass(frozen=True)
class AlignmentResult:
    """One frame's alignment. ``scale``/``shift`` are NaN when no metric depth can be given."""

    scale: float
    shift: float
    residual_m: float  # NaN unless a sparse fit was made or held
    points_used: int  # valid reference points of this frame (sparse_depth only)
    status: str  # "off", "fixed", "range", "fit", "held", "no_fit"

    @property
    def is_metric(self) -> bool:
        return math.isfinite(self.scale) and math.isfinite(self.shift)


class MetricAligner:
    """Per-stream state of the metric modes (not thread-safe: one worker calls it)."""

    def __init__(self, config: MetricConfig | None = None) -> None:
        self.config = config or MetricConfig()
        self.reset()

    def reset(self) -> None:
        self._scale = self._shift = self._residual = math.nan
        self._age_frames = 0

    def set_config(self, config: MetricConfig) -> None:
        """Apply new settings; a mode change forgets the last fit."""
        if config.mode != self.config.mode:
            self.reset()
        self.config = config

    def update(self, relative: np.ndarray, sparse_m: np.ndarray | None = None) -> AlignmentResult:
        """Alignment for this frame. ``relative`` ``[H,W]``; ``sparse_m`` ``[H,W]`` metres, NaN/<=0 = none."""
        c = self.config
        nan = math.nan
        if c.mode == "none":
            return AlignmentResult(nan, nan, nan, 0, "off")
        if c.mode == "fixed":
            return AlignmentResult(c.fixed_scale, c.fixed_shift, nan, 0, "fixed")
        if c.mode == "depth_range":
            return AlignmentResult(c.far_m - c.near_m, c.near_m, nan, 0, "range")
        points = 0
        if sparse_m is not None:
            try:
                p, t = _valid_pairs(relative, sparse_m, None)
                points = int(p.size)
                if points >= c.min_points:
                    scale, shift, res = _robust_pairs(p, t, min_points=c.min_points)
                    if scale > 0 and res <= c.max_residual_m:
                        self._accept(scale, shift, res)
                        return AlignmentResult(self._scale, self._shift, self._residual, points, "fit")
            except ValueError as exc:
                logger.debug("sparse fit rejected: %s", exc)
        self._age_frames += 1
        held = math.isfinite(self._scale) and (c.hold_frames == 0 or self._age_frames <= c.hold_frames)
        if held:
            return AlignmentResult(self._scale, self._shift, self._residual, points, "held")
        return AlignmentResult(nan, nan, nan, points, "no_fit")

    def _accept(self, scale: float, shift: float, residual: float) -> None:
        a = self.config.smoothing
        if math.isfinite(self._scale):
            scale = a * self._scale + (1 - a) * scale
            shift = a * self._shift + (1 - a) * shift
        self._scale, self._shift, self._residual, self._age_frames = scale, shift, residual, 0

    @staticmethod
    def apply(relative: np.ndarray, result: AlignmentResult, out: np.ndarray | None = None) -> np.ndarray:
        """``[H,W]`` metric depth (float32 m) = scale * relative + shift; NaN where invalid or <= 0.

        ``out``: optional float32 ``[H,W]`` to write into (e.g. a reused message buffer).
        """
        rel = np.asarray(relative, dtype=np.float32)
        depth = np.multiply(rel, np.float32(result.scale), out=out)
        depth += np.float32(result.shift)
        with np.errstate(invalid="ignore"):
            np.copyto(depth, np.float32(np.nan), where=depth <= 0)  # NaN stays NaN
        return depth
