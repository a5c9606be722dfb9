"""Pinhole intrinsics ``K`` ``[3,3]``: validity checks and scaling to another image resolution."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["check_intrinsics", "intrinsics_from_fov", "scale_intrinsics"]


def check_intrinsics(K) -> np.ndarray:
    """Return ``K`` as ``[3,3]`` float64 or raise ``ValueError`` saying why it cannot project.

    Accepts a ``[3,3]`` array or the 9-element row-major list of ``sensor_msgs/CameraInfo.k``.
    Rejects NaN/inf, non-positive focal lengths (all-zero K = uncalibrated camera) and a bottom row
    other than ``[0, 0, 1]``.
    """
    arr = np.asarray(K, dtype=np.float64)
    if arr.size != 9:
        raise ValueError(f"`K` must have 9 elements ([3,3]); got shape {arr.shape}")
    arr = arr.reshape(3, 3)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`K` must be finite; got {arr.ravel().tolist()}")
    if arr[0, 0] <= 0 or arr[1, 1] <= 0:
        raise ValueError(f"`K` must have positive focal lengths fx, fy; got fx={arr[0, 0]}, fy={arr[1, 1]}"
                         " (an all-zero K means an uncalibrated camera)")
    # np.allclose's test (rtol 1e-5, atol 1e-8) on 3 finite floats in plain Python: called twice per frame
    if not all(abs(a - b) <= 1e-8 + 1e-5 * abs(b) for a, b in zip(arr[2].tolist(), (0.0, 0.0, 1.0), strict=True)):
        raise ValueError(f"`K` bottom row must be [0, 0, 1]; got {arr[2].tolist()}")
    return arr


def scale_intrinsics(K, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics of an image resized from ``from_hw`` = (H, W) to ``to_hw`` = (h, w).

    Pixel centres are kept aligned (the half-pixel convention of cv2.resize):
    ``fx' = fx * sx``, ``cx' = (cx + 0.5) * sx - 0.5`` with ``sx = w / W`` (same for y).
    """
    arr = np.asarray(K, dtype=np.float64).reshape(3, 3)
    (H, W), (h, w) = from_hw, to_hw
    if min(H, W, h, w) <= 0:
        raise ValueError(f"`from_hw` and `to_hw` must be positive; got {from_hw} -> {to_hw}")
    sx, sy = w / W, h / H
    out = arr.copy()
    out[0, 0] *= sx
    out[0, 1] *= sx
    out[1, 1] *= sy
    out[0, 2] = (arr[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (arr[1, 2] + 0.5) * sy - 0.5
    return out


def intrinsics_from_fov(hw: tuple[int, int], hfov_deg: float) -> np.ndarray:
    """A centred pinhole ``K`` ``[3,3]`` for an image ``(H, W)`` with horizontal field of view ``hfov_deg``."""
    H, W = hw
    if not 0.0 < hfov_deg < 180.0:
        raise ValueError(f"`hfov_deg` must be in (0, 180); got {hfov_deg}")
    f = 0.5 * W / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[f, 0.0, (W - 1) / 2.0], [0.0, f, (H - 1) / 2.0], [0.0, 0.0, 1.0]])
