"""Depth units: uint16 millimetres <-> float32 metres (REP-118), one place for the invalid-value rules.

uint16 mm uses 0 for "no measurement"; float32 m uses NaN. Conversions map one to the other both ways,
like depth_image_proc's convert_metric.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_MM", "depth_to_m", "m_to_mm", "mm_to_m"]

MAX_MM = 65535  # largest depth a uint16 mm image can hold (65.535 m)


def mm_to_m(depth_mm: np.ndarray) -> np.ndarray:
    """``[H,W]`` uint16 mm -> ``[H,W]`` float32 m; 0 becomes NaN."""
    arr = np.asarray(depth_mm)
    if arr.dtype.kind not in "ui":
        raise TypeError(f"`depth_mm` must be an unsigned/signed integer array; got {arr.dtype}")
    out = arr.astype(np.float32) * np.float32(1e-3)
    out[arr <= 0] = np.nan
    return out


def m_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """``[H,W]`` float m -> ``[H,W]`` uint16 mm (rounded); NaN, inf, <= 0 and > 65.535 m become 0."""
    arr = np.asarray(depth_m)
    if arr.dtype.kind != "f":
        raise TypeError(f"`depth_m` must be a float array; got {arr.dtype}")
    with np.errstate(invalid="ignore"):
        mm = np.rint(arr.astype(np.float64) * 1000.0)
        valid = np.isfinite(mm) & (mm > 0) & (mm <= MAX_MM)
    return np.where(valid, mm, 0).astype(np.uint16)


def depth_to_m(depth: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """A depth image as stored -> ``[H,W]`` float32 metres, NaN = invalid: the one depth -> metres conversion.

    Integer arrays are millimetres (16UC1/mono16; 0 = invalid, see :func:`mm_to_m`); float arrays are metres
    (32FC1) where NaN, inf and <= 0 become NaN. ``inplace``: a float32 input may be overwritten (no copy).
    """
    arr = np.asarray(depth)
    if arr.dtype.kind in "ui":
        return mm_to_m(arr)
    if arr.dtype.kind != "f":
        raise TypeError(f"`depth` must be an integer (mm) or float (m) array; got {arr.dtype}")
    out = arr.astype(np.float32, copy=not inplace)
    # NaN where not finite and > 0: x / 0 * 0 is NaN for every x and x / 1 * 1 == x, three times faster than
    # `out[~valid] = np.nan` (0.55 ms for 640x480).
    with np.errstate(invalid="ignore", divide="ignore"):
        valid = np.greater(out, 0)
        valid &= np.less(out, np.inf)
        scale = valid.astype(np.float32)  # [H,W] 1 valid, 0 invalid
        out /= scale
        out *= scale
    return out
