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

import cv2
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


# Multiply-adds per BLAS call. OpenBLAS runs larger calls on several threads (its default GEMM threshold is
# 65536 * 4; measured here: one thread up to 7.7e5, several from 1.5e6; a threaded np.dot of 10240 float64
# cost ~2 ms of CPU per call on average in spinning helpers), so the sums stay below it; there, one small
# GEMM is the cheapest way to get many dot products in one pass.
_GEMM_MACS = 1 << 18


def _gemm_nt(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x @ y.T`` for ``x`` ``[a,n]``, ``y`` ``[b,n]`` (one pass over both), in column blocks of at most
    :data:`_GEMM_MACS` multiply-adds so that BLAS stays on this thread."""
    n = x.shape[1]
    step = max(1, _GEMM_MACS // (x.shape[0] * y.shape[0]))
    if n <= step:
        return x @ y.T
    return sum(x[:, i:i + step] @ y[:, i:i + step].T for i in range(0, n, step))


def _centred(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``[p - p0; t - t0; 1]`` ``[3,n]`` float64 with ``p0, t0`` the means (centred, the moments of
    :func:`_centred_lstsq` cancel nothing), and ``p0, t0``."""
    p0, t0 = float(p.mean()), float(t.mean())
    data = np.empty((3, p.size))
    np.subtract(p, p0, out=data[0])
    np.subtract(t, t0, out=data[1])
    data[2] = 1.0
    return data, p0, t0


def _abs_residual(p: np.ndarray, t: np.ndarray, scale: float, shift: float, out: np.ndarray | None = None
                  ) -> np.ndarray:
    """``|scale * p + shift - t|`` (into ``out`` if given)."""
    r = np.multiply(p, scale, out=out)
    r += shift
    r -= t
    return np.abs(r, out=r)


def _lstsq(p: np.ndarray, t: np.ndarray, w: np.ndarray | None = None) -> tuple[float, float]:
    """Closed-form (weighted) 2-parameter least squares ``scale * p + shift ≈ t`` (float64 vectors)."""
    data, p0, t0 = _centred(p, t)
    weights = None
    if w is not None:
        weights = np.empty((2, p.size))
        weights[0] = w
    scale, shift = _centred_lstsq(data, weights)
    return scale, shift + t0 - scale * p0


def _centred_lstsq(data: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """:func:`_lstsq` on ``data`` = ``[p - p0; t - t0; 1]`` ``[3,n]`` float64, centred near 0 (so the
    moments cancel nothing); ``weights`` ``[2,n]``: row 0 the weights, row 1 is overwritten with
    ``w * p``. The weighted sums are one small GEMM (np.polyfit would re-validate and allocate more).
    Returns ``(scale, shift)`` in the centred frame."""
    if weights is None:
        m = _gemm_nt(data[:2], data)  # [[Spp, Spt, Sp], [Stp, Stt, St]]
        sw, sp, st, spp, spt = float(data.shape[1]), m[0, 2], m[1, 2], m[0, 0], m[0, 1]
    else:
        np.multiply(weights[0], data[0], out=weights[1])
        m = _gemm_nt(weights, data)  # [[Swp, Swt, Sw], [Swpp, Swpt, Swp]]
        sw, sp, st, spp, spt = m[0, 2], m[0, 0], m[0, 1], m[1, 0], m[1, 1]
    sw, sp, st, spp, spt = float(sw), float(sp), float(st), float(spp), float(spt)
    mp, mt = sp / sw, st / sw
    var = spp - sp * mp  # sum w (p - mp)^2
    if not var > 1e-12 * sw:
        raise ValueError("`pred` must vary over the valid points; got a constant prediction (scale undefined)")
    scale = (spt - sp * mt) / var  # sum w (p - mp)(t - mt) / var
    return scale, mt - scale * mp


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
    best = None
    i, j = rng.integers(0, p.size, size=(2, ransac_iterations))
    dp = p[i] - p[j]
    usable = np.abs(dp) >= 1e-9
    if usable.any():
        a, b = i[usable], j[usable]
        s = (t[a] - t[b]) / dp[usable]  # [n] hypotheses, float64
        c = t[a] - s * p[a]
        # All hypotheses scored at once: residuals [n, subsample] = [s, c, -1] @ [p; 1; t] as float32 GEMMs
        # (the output stays in cache; float32 rounding, ~1e-7 of the depth, is far below `thr`), then
        # |r| < thr counted per row. argmax keeps the first best, like a strict ">" loop.
        ps = p[sub]
        sample = np.empty((3, ps.size), np.float32)
        sample[0], sample[1], sample[2] = ps, 1.0, t[sub]
        lines = np.empty((s.size, 3), np.float32)
        lines[:, 0], lines[:, 1], lines[:, 2] = s, c, -1.0
        counts = np.zeros(s.size, np.int32)
        step = max(1, _GEMM_MACS // (3 * s.size))
        for c0 in range(0, ps.size, step):
            resid = lines @ sample[:, c0:c0 + step]
            inl = np.less(np.abs(resid, out=resid), np.float32(thr)).view(np.uint8)
            counts += cv2.reduce(inl, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[:, 0]  # row sums (numpy's: ~5x slower)
        k = int(np.argmax(counts))
        best = (float(s[k]), float(c[k]))
    best_inliers = None if best is None else _abs_residual(p, t, *best) < thr
    best_count = int(np.count_nonzero(best_inliers)) if best_inliers is not None else 0
    if best_inliers is None or best_count < max(2, min_points // 2):
        raise ValueError(f"no consistent scale/shift: best RANSAC model has {max(best_count, 0)} inliers "
                         f"of {p.size} (threshold {thr:.3f} m)")
    # IRLS on the inliers, centred once (every fit below is in the centred frame)
    pi, ti = p[best_inliers], t[best_inliers]
    data, p0, t0 = _centred(pi, ti)
    pc, tc = data[0], data[1]
    weights = np.empty((2, pi.size))
    r, w = np.empty_like(pc), weights[0]
    scale, shift = _centred_lstsq(data)
    floor, weighted = max(thr, 1e-12), False
    for _ in range(irls_iterations):
        _abs_residual(pc, tc, scale, shift, out=r)
        if float(r.max()) <= floor:  # every Huber weight is equal: the least-squares fit, a fixed point
            if not weighted:
                break
            scale, shift = _centred_lstsq(data)
            weighted = False
            continue
        # Huber weights min(1, thr / max(|r|, 1e-12)) = thr / max(|r|, thr, 1e-12) (1 exactly within thr)
        np.divide(thr, np.maximum(r, floor, out=w), out=w)
        scale, shift = _centred_lstsq(data, weights)
        weighted = True
    residual = 1.4826 * float(np.median(_abs_residual(pc, tc, scale, shift, out=r), overwrite_input=True))
    return scale, shift + t0 - scale * p0, residual


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
        if depth.size and not depth.min() > 0:  # one read-only reduction when all are valid (NaN fails it)
            with np.errstate(invalid="ignore"):
                np.copyto(depth, np.float32(np.nan), where=depth <= 0)  # NaN stays NaN
        return depth
