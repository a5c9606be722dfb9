"""LiDAR-like sparse metric depth from exact depth: scan rows or random pixels, noise, dropout."""

from __future__ import annotations

import numpy as np

__all__ = ["SPARSE_PATTERNS", "sparse_depth"]

SPARSE_PATTERNS = ("scan", "random")


def sparse_depth(depth_m: np.ndarray, rng: np.random.Generator, *, pattern: str = "scan", rows: int = 16,
                 fraction: float = 0.03, noise_std_m: float = 0.01, noise_rel: float = 0.0,
                 dropout: float = 0.1, max_range_m: float = 100.0) -> np.ndarray:
    """``[H,W]`` float32 m with NaN where there is no return.

    ``pattern="scan"``: ``rows`` evenly spaced image rows (a projected multi-beam LiDAR), every pixel of a
    row; ``"random"``: a ``fraction`` (0-1) of all pixels. Each kept return gets Gaussian noise of
    ``noise_std_m + noise_rel * depth`` standard deviation; a ``dropout`` fraction (0-1) and everything
    invalid or beyond ``max_range_m`` is removed.
    """
    depth = np.asarray(depth_m)
    if depth.ndim != 2 or depth.dtype.kind != "f":
        raise ValueError(f"`depth_m` must be float [H,W]; got {depth.dtype} {depth.shape}")
    if pattern not in SPARSE_PATTERNS:
        raise ValueError(f"`pattern` must be one of {SPARSE_PATTERNS}; got {pattern!r}")
    for name, value in (("fraction", fraction), ("dropout", dropout)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"`{name}` must be in [0, 1]; got {value}")
    if noise_std_m < 0 or noise_rel < 0:
        raise ValueError(f"`noise_std_m` and `noise_rel` must be >= 0; got {noise_std_m}, {noise_rel}")
    if rows < 1:
        raise ValueError(f"`rows` must be >= 1; got {rows}")
    h, w = depth.shape
    keep = np.zeros((h, w), bool)
    if pattern == "scan":
        keep[np.linspace(0, h - 1, min(rows, h) + 2)[1:-1].round().astype(int)] = True
    else:
        keep.flat[rng.choice(h * w, size=int(round(fraction * h * w)), replace=False)] = True
    keep &= rng.random((h, w)) >= dropout
    with np.errstate(invalid="ignore"):
        keep &= np.isfinite(depth) & (depth > 0) & (depth <= max_range_m)
    out = np.full((h, w), np.nan, np.float32)
    d = depth[keep]
    out[keep] = d + rng.normal(size=d.shape) * (noise_std_m + noise_rel * d)
    out[keep & ~(out > 0)] = np.nan  # noise never makes a negative range
    return out
