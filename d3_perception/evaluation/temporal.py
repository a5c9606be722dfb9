"""Temporal stability of a depth stream: flicker of a static view and of a moving camera with known poses.

Flicker between two frames = mean ``|d_t - d_(t-1)| / d_t`` over the pixels valid in both. For a moving
camera, frame t-1's depth is first carried into frame t with the exact relative pose
(:func:`reproject_depth`: forward splat with a z-buffer), so only the change that is not explained by the
motion counts.
"""

from __future__ import annotations

import math

import numpy as np

from d3_perception.geometry.intrinsics import check_intrinsics
from d3_perception.geometry.pointcloud import backproject

__all__ = ["flicker", "reproject_depth"]


def flicker(depth: np.ndarray, previous: np.ndarray) -> float:
    """Mean ``|depth - previous| / depth`` over pixels where both are finite and > 0 (NaN when none)."""
    d = np.asarray(depth, np.float64)
    p = np.asarray(previous, np.float64)
    if d.shape != p.shape:
        raise ValueError(f"`depth` and `previous` must have one shape; got {d.shape} and {p.shape}")
    with np.errstate(invalid="ignore"):
        valid = (d > 0) & (p > 0) & np.isfinite(d) & np.isfinite(p)
    if not valid.any():
        return math.nan
    return float(np.mean(np.abs(d[valid] - p[valid]) / d[valid]))


def reproject_depth(depth_prev: np.ndarray, K, pose_prev: np.ndarray, pose_now: np.ndarray,
                    hw: tuple[int, int] | None = None) -> np.ndarray:
    """Frame t-1's z-depth ``[H,W]`` (m, NaN invalid) seen from frame t: ``[H,W]`` float32, NaN where nothing lands.

    Poses are ``[4,4]`` camera(optical)-to-world transforms (:class:`~d3_perception.synthetic.SyntheticSequence`
    gives them). Each pixel's point is moved into frame t and rounded to the nearest pixel; where several land
    on one pixel the nearest wins (z-buffer), so surfaces hidden at t do not count.
    """
    d = np.asarray(depth_prev, np.float32)
    if d.ndim != 2:
        raise ValueError(f"`depth_prev` must be [H,W]; got shape {d.shape}")
    K = check_intrinsics(K)
    h, w = hw if hw is not None else d.shape
    rel = np.linalg.inv(np.asarray(pose_now, np.float64)) @ np.asarray(pose_prev, np.float64)  # t-1 -> t
    pts = backproject(d, K).reshape(-1, 3).astype(np.float64)  # [N,3] in frame t-1
    pts = pts[np.isfinite(pts).all(axis=1)]
    q = pts @ rel[:3, :3].T + rel[:3, 3]  # [N,3] in frame t
    q = q[q[:, 2] > 1e-6]
    u = np.round(K[0, 0] * q[:, 0] / q[:, 2] + K[0, 1] * q[:, 1] / q[:, 2] + K[0, 2]).astype(np.int64)
    v = np.round(K[1, 1] * q[:, 1] / q[:, 2] + K[1, 2]).astype(np.int64)
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    pix, z = v[inside] * w + u[inside], q[inside, 2]
    order = np.lexsort((z, pix))  # by pixel, nearest first
    pix, z = pix[order], z[order]
    first = np.ones(pix.size, bool)
    first[1:] = pix[1:] != pix[:-1]
    out = np.full(h * w, np.nan, np.float32)
    out[pix[first]] = z[first]
    return out.reshape(h, w)
