"""How well a confidence map ranks depth errors: sparsification curves, AUSE and flying points.

Sparsification (Ilg et al., ECCV 2018): remove the fraction ``f`` of pixels the confidence trusts least and
average the error of the rest; the oracle removes the largest true errors first, a random order keeps the
mean error. AUSE = area between a curve and the oracle's over ``f`` in [0, ``max_fraction``] (trapezoids).
Errors here are per-pixel AbsRel ``|pred - gt| / gt``.

Flying points: cloud points more than ``rel_threshold`` (10 %) of the GT range away from the GT surface along
their ray, before and after a gate, and the share of points the gate keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from d3_perception.geometry.intrinsics import check_intrinsics
from d3_perception.geometry.pointcloud import backproject

__all__ = [
    "ConfidenceCalibration",
    "FlyingPoints",
    "SparsificationAccumulator",
    "flying_points",
    "flying_points_from_depth",
    "sparsification_ause",
    "sparsification_curve",
]


def _fractions(steps: int, max_fraction: float) -> np.ndarray:
    if not (isinstance(steps, int) and steps >= 2):
        raise ValueError(f"`steps` must be an integer >= 2; got {steps!r}")
    if not 0.0 < max_fraction < 1.0:
        raise ValueError(f"`max_fraction` must be in (0, 1); got {max_fraction!r}")
    return np.linspace(0.0, max_fraction, steps)


def sparsification_curve(error: np.ndarray, confidence: np.ndarray, fractions: np.ndarray,
                         seed: int = 0) -> np.ndarray:
    """Mean ``error`` of the pixels kept after removing each fraction of the least confident ones.

    error, confidence: ``[M]`` (or any equal shape) finite values of the evaluated pixels; fractions: ``[F]`` in
    [0, 1). Ties in confidence are broken in a random order (``seed``), so a constant map scores like random.
    Returns ``[F]`` float64. Pass ``confidence = -error`` for the oracle.
    """
    e = np.ravel(np.asarray(error, np.float64))
    c = np.ravel(np.asarray(confidence, np.float64))
    if e.shape != c.shape or e.size == 0:
        raise ValueError(f"`error` and `confidence` must be non-empty and of one size; got {e.size} and {c.size}")
    if not (np.isfinite(e).all() and np.isfinite(c).all()):
        raise ValueError("`error` and `confidence` must be finite; got NaN or inf (mask invalid pixels first)")
    tie = np.random.default_rng(seed).random(e.size)
    order = np.lexsort((tie, -c))  # most confident first
    means = np.cumsum(e[order]) / np.arange(1, e.size + 1)  # [M] mean of the k most confident
    keep = np.clip(np.round((1.0 - np.asarray(fractions, np.float64)) * e.size).astype(np.int64), 1, e.size)
    return means[keep - 1]


def sparsification_ause(curve: np.ndarray, oracle: np.ndarray, fractions: np.ndarray) -> float:
    """Area between ``curve`` and ``oracle`` (``[F]`` each) over ``fractions`` (trapezoids)."""
    d = np.asarray(curve, np.float64) - np.asarray(oracle, np.float64)
    f = np.asarray(fractions, np.float64)
    return float(np.sum((d[1:] + d[:-1]) * np.diff(f)) / 2)


@dataclass
class SparsificationAccumulator:
    """Per-frame sparsification curves of several confidence maps, averaged over frames.

    ``add(error, {name: confidence})`` per frame (``[M]`` values of its evaluated pixels); ``curves()`` gives
    the mean curve of each name plus ``oracle`` and ``random``; ``ause()`` each name's AUSE (``random``'s too).
    """

    steps: int = 50
    max_fraction: float = 0.98
    seed: int = 0
    _sums: dict[str, np.ndarray] = field(default_factory=dict)
    frames: int = 0

    def __post_init__(self) -> None:
        self.fractions = _fractions(self.steps, self.max_fraction)

    def add(self, error: np.ndarray, confidences: dict[str, np.ndarray]) -> None:
        e = np.ravel(np.asarray(error, np.float64))
        if e.size == 0:
            return
        curves = {"oracle": sparsification_curve(e, -e, self.fractions),
                  "random": np.full(self.fractions.shape, e.mean())}  # the expectation of a random order
        for name, conf in confidences.items():
            if name in curves:
                raise ValueError(f"confidence name `{name}` is reserved; got it in `confidences`")
            curves[name] = sparsification_curve(e, conf, self.fractions, seed=self.seed + self.frames)
        for name, curve in curves.items():
            self._sums[name] = self._sums.get(name, 0.0) + curve
        self.frames += 1

    def curves(self) -> dict[str, np.ndarray]:
        if not self.frames:
            raise ValueError("no frame was added")
        return {name: s / self.frames for name, s in self._sums.items()}

    def ause(self) -> dict[str, float]:
        curves = self.curves()
        return {name: sparsification_ause(c, curves["oracle"], self.fractions)
                for name, c in curves.items() if name != "oracle"}


@dataclass
class FlyingPoints:
    """Counts of cloud points with GT, and of flying ones, before and after a gate (summable over frames)."""

    points: int = 0
    flying: int = 0
    kept: int = 0
    kept_flying: int = 0

    def __add__(self, other: FlyingPoints) -> FlyingPoints:
        return FlyingPoints(self.points + other.points, self.flying + other.flying, self.kept + other.kept,
                            self.kept_flying + other.kept_flying)

    @property
    def share_before(self) -> float:
        """Flying share of all points with GT."""
        return self.flying / self.points if self.points else float("nan")

    @property
    def share_after(self) -> float:
        """Flying share of the points the gate keeps."""
        return self.kept_flying / self.kept if self.kept else float("nan")

    @property
    def kept_share(self) -> float:
        return self.kept / self.points if self.points else float("nan")

    @property
    def reduction(self) -> float:
        """``share_before / share_after`` (inf when the gate keeps no flying point)."""
        if not self.flying:
            return float("nan")
        return self.share_before / self.share_after if self.kept_flying else float("inf")


def flying_points(points: np.ndarray, gt_depth_m: np.ndarray, K, keep: np.ndarray | None = None,
                  rel_threshold: float = 0.1) -> FlyingPoints:
    """Flying points of an organized cloud against GT depth.

    points: ``[H,W,3]`` float optical-frame points (metres; NaN = no point), organized like the image, so the
        point of pixel (v, u) lies on that pixel's ray, or a structured cloud with fields ``x, y, z``.
    gt_depth_m: ``[H,W]`` GT z-depth (NaN/<= 0 = none; such points are not counted). K: ``[3,3]``.
    keep: ``[H,W]`` bool, the points a gate keeps (None = all).
    A point is flying when its distance from the GT surface point on its ray, ``| |P| - range_gt |``, exceeds
    ``rel_threshold * range_gt`` (for on-ray points that is ``|z - z_gt| > rel_threshold * z_gt``).
    """
    p = np.asarray(points)
    if p.dtype.names is not None:
        p = np.stack([p["x"], p["y"], p["z"]], axis=-1)
    gt = np.asarray(gt_depth_m, np.float64)
    if p.ndim != 3 or p.shape[2] != 3 or p.shape[:2] != gt.shape:
        raise ValueError(f"`points` must be [H,W,3] (or structured [H,W]) matching `gt_depth_m` {gt.shape}; got "
                         f"{np.shape(points)}")
    if not rel_threshold > 0:
        raise ValueError(f"`rel_threshold` must be > 0; got {rel_threshold!r}")
    gt_points = backproject(np.where(gt > 0, gt, np.nan).astype(np.float32), check_intrinsics(K))
    gt_range = np.linalg.norm(gt_points.astype(np.float64), axis=-1)  # [H,W] NaN where no GT
    rng = np.linalg.norm(p.astype(np.float64), axis=-1)
    with np.errstate(invalid="ignore"):
        counted = np.isfinite(rng) & (gt_range > 0)
        flying = counted & (np.abs(rng - gt_range) > rel_threshold * gt_range)
    return _flying_counts(counted, flying, keep)


def flying_points_from_depth(pred_depth_m: np.ndarray, gt_depth_m: np.ndarray, keep: np.ndarray | None = None,
                             rel_threshold: float = 0.1) -> FlyingPoints:
    """:func:`flying_points` of the cloud back-projected from ``pred_depth_m`` ``[H,W]`` (z-depth, metres; NaN
    = no point), without intrinsics: its point of pixel (v, u) lies on the ray of GT's point there, and on one
    ray ``| |P| - range_gt | > t * range_gt`` is ``| z - z_gt | > t * z_gt`` (the ray length cancels), so the
    benchmark sets, which ship no camera matrix, get the same count."""
    pred = np.asarray(pred_depth_m, np.float64)
    gt = np.asarray(gt_depth_m, np.float64)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"`pred_depth_m` and `gt_depth_m` must be [H,W] of one shape; got {pred.shape} and "
                         f"{gt.shape}")
    if not rel_threshold > 0:
        raise ValueError(f"`rel_threshold` must be > 0; got {rel_threshold!r}")
    with np.errstate(invalid="ignore"):
        counted = np.isfinite(pred) & (gt > 0)
        flying = counted & (np.abs(np.abs(pred) - gt) > rel_threshold * gt)  # |P| = |z| |ray|
    return _flying_counts(counted, flying, keep)


def _flying_counts(counted: np.ndarray, flying: np.ndarray, keep: np.ndarray | None) -> FlyingPoints:
    """:class:`FlyingPoints` of ``[H,W]`` bool masks ``counted`` and ``flying`` (within ``counted``) under the gate
    ``keep`` (``[H,W]`` bool; None = keep all)."""
    if keep is None:
        kept = counted
    else:
        k = np.asarray(keep)
        if k.shape != counted.shape or k.dtype != bool:
            raise ValueError(f"`keep` must be bool {counted.shape}; got {k.dtype} {k.shape}")
        kept = counted & k
    return FlyingPoints(int(counted.sum()), int(flying.sum()), int(kept.sum()), int((flying & kept).sum()))


@dataclass
class ConfidenceCalibration:
    """How well one run's confidence maps rank its depth errors, frame by frame (``d3-eval``, ``d3-eval-bag``).

    ``add(pred, gt, confidence)`` per frame; ``summary()`` gives the JSON both reports print: AUSE of AbsRel
    (``combined`` = the map, beside ``random``), their ratio (target <= 0.5), and the flying points before and
    after the ``min_confidence`` gate (None when no frame had a cloud to count).
    """

    min_confidence: float
    sparsification: SparsificationAccumulator = field(default_factory=SparsificationAccumulator)
    flying: FlyingPoints = field(default_factory=FlyingPoints)

    def add(self, pred_m: np.ndarray, gt_m: np.ndarray, valid: np.ndarray, confidence: np.ndarray,
            flying: FlyingPoints | None = None) -> None:
        """One frame: ``pred_m``, ``gt_m``, ``confidence`` ``[H,W]``; ``valid`` ``[H,W]`` bool, the evaluated GT
        pixels. ``flying``: the frame's count when the caller made it from a real cloud (with intrinsics);
        None = counted here along each pixel's ray (:func:`flying_points_from_depth`)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            evaluated = valid & (pred_m > 0)  # False for NaN
            err = np.abs(pred_m[evaluated] - gt_m[evaluated]) / gt_m[evaluated]  # [M]
        if err.size:
            self.sparsification.add(err, {"combined": confidence[evaluated]})
        if flying is None:
            flying = flying_points_from_depth(pred_m, np.where(valid, gt_m, np.nan),
                                              keep=confidence >= np.float32(self.min_confidence))
        self.flying += flying

    def summary(self) -> dict | None:
        """JSON-ready result; None before any frame with evaluated pixels."""
        if not self.sparsification.frames:
            return None
        ause = self.sparsification.ause()
        f = self.flying
        return {"frames": self.sparsification.frames, "min_confidence": self.min_confidence,
                "ause": {"combined": ause["combined"], "random": ause["random"]},
                "ause_over_random": ause["combined"] / ause["random"] if ause["random"] > 0 else float("nan"),
                "flying_points": None if not f.points else {
                    "points": f.points, "share_before": f.share_before, "share_after": f.share_after,
                    "kept_share": f.kept_share, "reduction": f.reduction}}
