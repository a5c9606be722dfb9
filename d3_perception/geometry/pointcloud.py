"""Back-projection and organized point clouds as numpy structured arrays (PointCloud2-ready).

A cloud is an ``(h, w)`` structured array whose dtype has the PointCloud2 field names and byte offsets
(``x, y, z, rgb`` with rgb a packed float32 as PCL/rviz expect, ``normal_x/y/z``), so the node turns it
into a message with one ``tobytes()``: no per-point Python loop.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from d3_perception.geometry.intrinsics import check_intrinsics

__all__ = ["CLOUD_DTYPE", "backproject", "cloud_dtype", "cloud_from_depth", "make_cloud", "pack_rgb", "unpack_rgb"]


def cloud_dtype(rgb: bool = True, normals: bool = True) -> np.dtype:
    """Structured dtype of a cloud point: x,y,z [+ rgb] [+ normal_x,y,z], float32, 16-byte aligned step."""
    names, offsets = ["x", "y", "z"], [0, 4, 8]
    if rgb:
        names.append("rgb")
        offsets.append(12)
    if normals:
        names += ["normal_x", "normal_y", "normal_z"]
        offsets += [16, 20, 24]
    itemsize = 32 if normals else 16  # padded like PCL's aligned point types
    return np.dtype({"names": names, "formats": ["<f4"] * len(names), "offsets": offsets, "itemsize": itemsize})


CLOUD_DTYPE = cloud_dtype(rgb=True, normals=True)


@lru_cache(maxsize=8)
def _rays(h: int, w: int, k_bytes: bytes) -> np.ndarray:
    K = np.frombuffer(k_bytes, dtype=np.float64).reshape(3, 3)
    fx, fy, cx, cy, skew = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    y = (v - cy) / fy
    x = (u - cx - skew * y) / fx
    rays = np.stack([x, y, np.ones_like(x)], axis=-1).astype(np.float32)  # [H,W,3], z = 1
    rays.setflags(write=False)
    return rays


def backproject(depth_m: np.ndarray, K) -> np.ndarray:
    """``[H,W]`` depth (metres along the optical axis, NaN invalid) -> ``[H,W,3]`` float32 points.

    Points are in the camera optical frame (x right, y down, z forward); ``K`` ``[3,3]`` must match the
    depth resolution (see :func:`~d3_perception.geometry.intrinsics.scale_intrinsics`). Invalid depth
    (NaN, inf, <= 0) gives NaN points.
    """
    depth = np.asarray(depth_m)
    if depth.ndim != 2:
        raise ValueError(f"`depth_m` must be [H,W]; got shape {depth.shape}")
    K = check_intrinsics(K)
    rays = _rays(depth.shape[0], depth.shape[1], K.tobytes())  # [H,W,3]
    d = depth.astype(np.float32, copy=False)
    with np.errstate(invalid="ignore"):
        d = np.where(np.isfinite(d) & (d > 0), d, np.float32(np.nan))
    return rays * d[:, :, None]  # [H,W,3]


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """``[...,3]`` uint8 RGB -> ``[...]`` float32 whose bits are ``0x00RRGGBB`` (PCL/rviz ``rgb`` field)."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.shape[-1] != 3:
        raise ValueError(f"`rgb` must be uint8 [...,3]; got {arr.dtype} {arr.shape}")
    # bytes B,G,R,0 read as little-endian uint32 = 0x00RRGGBB (faster than shifting uint32 copies)
    quad = np.zeros((*arr.shape[:-1], 4), dtype=np.uint8)
    quad[..., 0], quad[..., 1], quad[..., 2] = arr[..., 2], arr[..., 1], arr[..., 0]
    return quad.view("<u4")[..., 0].astype(np.uint32, copy=False).view(np.float32)


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_rgb`: ``[...]`` float32 -> ``[...,3]`` uint8 RGB."""
    bits = np.ascontiguousarray(packed, dtype=np.float32).view(np.uint32)
    return np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=-1).astype(np.uint8)


def make_cloud(
    points: np.ndarray,
    rgb: np.ndarray | None = None,
    normals: np.ndarray | None = None,
    stride: int = 1,
    min_range_m: float = 0.0,
    max_range_m: float = float("inf"),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Organized cloud ``(h, w)`` structured array from ``[H,W,3]`` points (optical frame, metres).

    ``rgb`` ``[H,W,3]`` uint8 and ``normals`` ``[H,W,3]`` float32 are optional and add fields.
    ``stride`` keeps every stride-th row and column (``h = ceil(H/stride)``). Points whose distance from
    the camera centre lies outside ``[min_range_m, max_range_m]`` get NaN coordinates (the organized
    layout is kept, like depth_image_proc); their normals become NaN too.

    ``out``: optional C-contiguous float32 ``[h, w, point_step/4]`` block to fill (e.g. a view of a message
    buffer reused across frames); the result is then a structured view of it.
    """
    pts = np.asarray(points)
    if pts.ndim != 3 or pts.shape[2] != 3:
        raise ValueError(f"`points` must be [H,W,3]; got shape {pts.shape}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"`stride` must be an integer >= 1; got {stride}")
    if not (0.0 <= min_range_m < max_range_m):
        raise ValueError(f"`min_range_m` must be >= 0 and < `max_range_m`; got {min_range_m}, {max_range_m}")
    for name, arr in (("rgb", rgb), ("normals", normals)):
        if arr is not None and np.shape(arr) != pts.shape:
            raise ValueError(f"`{name}` must have the shape of `points` {pts.shape}; got {np.shape(arr)}")
    s = int(stride)
    p = pts[::s, ::s].astype(np.float32, copy=False)  # [h,w,3]
    dtype = cloud_dtype(rgb is not None, normals is not None)
    # Fill a [h,w,k] float32 block and view it as the structured dtype: whole-row slice writes are much
    # faster than field-by-field strided writes.
    shape = (*p.shape[:2], dtype.itemsize // 4)
    if out is None:
        block = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"`out` must be a writable C-contiguous float32 array of shape {shape}; "
                         f"got {out.dtype} {out.shape}")
    else:
        block = out
    block[:, :, 0:3] = p
    if rgb is not None:
        block[:, :, 3] = pack_rgb(np.asarray(rgb)[::s, ::s])
    if normals is not None:
        block[:, :, 4:7] = np.asarray(normals)[::s, ::s]
    if rgb is None:
        block[:, :, 3] = 0.0  # padding (no rgb field): never ship uninitialised memory
    if normals is not None:
        block[:, :, 7] = 0.0  # padding
    with np.errstate(invalid="ignore"):
        x, y, z = p[:, :, 0], p[:, :, 1], p[:, :, 2]
        r2 = x * x
        r2 += y * y
        r2 += z * z  # squared range [h,w]
        clip = ~((r2 >= np.float32(min_range_m) ** 2) & (r2 <= np.float32(max_range_m) ** 2))  # NaN -> clipped
    if clip.any():
        block[clip, 0:3] = np.nan
        if normals is not None:
            block[clip, 4:7] = np.nan
    return block.view(dtype).reshape(p.shape[:2])


@lru_cache(maxsize=8)
def _ray_norm2(h: int, w: int, k_bytes: bytes) -> np.ndarray:
    rays = _rays(h, w, k_bytes)
    n2 = np.einsum("hwc,hwc->hw", rays, rays)  # [H,W] |ray|^2 (z = 1)
    n2.setflags(write=False)
    return n2


def cloud_from_depth(
    depth_m: np.ndarray,
    K,
    rgb: np.ndarray | None = None,
    normals: np.ndarray | None = None,
    stride: int = 1,
    min_range_m: float = 0.0,
    max_range_m: float = float("inf"),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Same result as ``make_cloud(backproject(depth_m, K), rgb, normals, ...)``, computed in one pass.

    Back-projects only the kept (strided) pixels straight into the cloud block (no ``[H,W,3]`` temporary);
    the range test uses cached ray lengths. ``out`` as in :func:`make_cloud`.
    """
    depth = np.asarray(depth_m)
    if depth.ndim != 2:
        raise ValueError(f"`depth_m` must be [H,W]; got shape {depth.shape}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"`stride` must be an integer >= 1; got {stride}")
    if not (0.0 <= min_range_m < max_range_m):
        raise ValueError(f"`min_range_m` must be >= 0 and < `max_range_m`; got {min_range_m}, {max_range_m}")
    for name, arr in (("rgb", rgb), ("normals", normals)):
        if arr is not None and np.shape(arr) != (*depth.shape, 3):
            raise ValueError(f"`{name}` must be [H,W,3] matching `depth_m` {depth.shape}; got {np.shape(arr)}")
    K = check_intrinsics(K)
    s = int(stride)
    kb = K.tobytes()
    rays = _rays(depth.shape[0], depth.shape[1], kb)[::s, ::s]  # [h,w,3]
    n2 = _ray_norm2(depth.shape[0], depth.shape[1], kb)[::s, ::s]  # [h,w]
    d = depth[::s, ::s].astype(np.float32, copy=False)
    dtype = cloud_dtype(rgb is not None, normals is not None)
    shape = (*d.shape, dtype.itemsize // 4)
    if out is None:
        block = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"`out` must be a writable C-contiguous float32 array of shape {shape}; "
                         f"got {out.dtype} {out.shape}")
    else:
        block = out
    with np.errstate(invalid="ignore"):
        r2 = d * d
        r2 *= n2  # squared range
        keep = (d > 0) & (r2 >= np.float32(min_range_m) ** 2) & (r2 <= np.float32(max_range_m) ** 2)
    dk = np.where(keep, d, np.float32(np.nan))  # NaN, <= 0 and out-of-range -> NaN point
    np.multiply(rays[:, :, 0], dk, out=block[:, :, 0])
    np.multiply(rays[:, :, 1], dk, out=block[:, :, 1])
    block[:, :, 2] = dk
    block[:, :, 3] = pack_rgb(np.asarray(rgb)[::s, ::s]) if rgb is not None else 0.0
    if normals is not None:
        block[:, :, 4:7] = np.asarray(normals)[::s, ::s]
        block[:, :, 7] = 0.0
        if not keep.all():
            block[~keep, 4:7] = np.nan
    return block.view(dtype).reshape(d.shape)
