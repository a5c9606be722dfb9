"""Back-projection and organized point clouds as numpy structured arrays (PointCloud2-ready).

A cloud is an ``(h, w)`` structured array whose dtype has the PointCloud2 field names and byte offsets
(``x, y, z, rgb`` with rgb a packed float32 as PCL/rviz expect, ``normal_x/y/z``), so the node turns it
into a message with one ``tobytes()``: no per-point Python loop.
"""

from __future__ import annotations

import functools
import math
import sys
from functools import lru_cache

import cv2
import numpy as np

from d3_perception.geometry import kernels
from d3_perception.geometry.intrinsics import check_intrinsics
from d3_perception.parallel import RowWorkers, for_row_chunks, scratch

__all__ = [
    "CLOUD_DTYPE",
    "backproject",
    "cloud_dtype",
    "cloud_from_depth",
    "fill_cloud",
    "make_cloud",
    "pack_rgb",
    "unpack_rgb",
]


def cloud_dtype(rgb: bool = True, normals: bool = True, confidence: bool = False) -> np.dtype:
    """Structured dtype of a cloud point: x,y,z [+ rgb] [+ normal_x,y,z] [+ confidence], float32, 16-byte
    aligned step (confidence at offset 28 after the normals, else at 16)."""
    names, offsets = ["x", "y", "z"], [0, 4, 8]
    if rgb:
        names.append("rgb")
        offsets.append(12)
    if normals:
        names += ["normal_x", "normal_y", "normal_z"]
        offsets += [16, 20, 24]
    if confidence:
        names.append("confidence")
        offsets.append(28 if normals else 16)
    itemsize = 32 if normals or confidence else 16  # padded like PCL's aligned point types
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


def pack_rgb(rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``[...,3]`` uint8 RGB -> ``[...]`` float32 whose bits are ``0x00RRGGBB`` (PCL/rviz ``rgb`` field).

    ``out``: optional C-contiguous float32 array of the result's shape to write into.
    """
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.shape[-1] != 3:
        raise ValueError(f"`rgb` must be uint8 [...,3]; got {arr.dtype} {arr.shape}")
    shape = arr.shape[:-1]
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"`out` must be a C-contiguous float32 array of shape {shape}; got {out.dtype} {out.shape}")
    # bytes B,G,R,0 read as little-endian uint32 = 0x00RRGGBB
    quad = out.reshape(-1).view(np.uint8).reshape(*shape, 4)  # [...,4] bytes of out
    if arr.ndim == 3 and arr.size:
        res = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2BGRA, dst=quad)  # one SIMD pass, alpha 255
        if res is not quad and not np.shares_memory(res, quad):
            quad[...] = res
        bits = out.reshape(-1).view("<u4")
        np.bitwise_and(bits, np.uint32(0x00FFFFFF), out=bits)  # alpha byte -> 0
    else:
        quad[..., 0], quad[..., 1], quad[..., 2], quad[..., 3] = arr[..., 2], arr[..., 1], arr[..., 0], 0
    if sys.byteorder != "little":  # the bytes are little-endian 0x00RRGGBB: make the value native
        out.reshape(-1).view(np.uint32).byteswap(inplace=True)
    return out


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


@lru_cache(maxsize=4)
def _zeros(hw: tuple[int, int]) -> np.ndarray:
    z = np.zeros(hw, dtype=np.float32)
    z.setflags(write=False)
    return z


def _merge(planes: list[np.ndarray], block: np.ndarray) -> None:
    """``k`` ``[h,w]`` float32 planes -> the ``[h,w,k]`` C-contiguous ``block`` in one pass."""
    planes = [np.ascontiguousarray(p, dtype=np.float32) for p in planes]
    if block.size and len(planes) <= 512:
        res = cv2.merge(planes, dst=block)
        if res is block or np.shares_memory(res, block):
            return
    for i, p in enumerate(planes):  # fallback (empty or OpenCV reallocated): strided writes
        block[:, :, i] = p


@lru_cache(maxsize=8)
def _ray_planes(h: int, w: int, k_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous ``[H,W]`` x and y planes of :func:`_rays` (whole-plane ufuncs run at full SIMD speed)."""
    rays = _rays(h, w, k_bytes)
    rx, ry = np.ascontiguousarray(rays[:, :, 0]), np.ascontiguousarray(rays[:, :, 1])
    rx.setflags(write=False)
    ry.setflags(write=False)
    return rx, ry


def _normal_planes(normals, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``[H,W,3]`` array or a sequence of three ``[H,W]`` planes -> three ``[H,W]`` views (None stays None)."""
    if normals is None:
        return None
    if isinstance(normals, list | tuple):
        planes = tuple(np.asarray(p) for p in normals)
        if len(planes) != 3 or any(p.shape != shape for p in planes):
            raise ValueError(f"`normals` planes must be three [H,W] arrays matching `depth_m` {shape}; got "
                             f"{[np.shape(p) for p in planes]}")
        return planes  # type: ignore[return-value]
    arr = np.asarray(normals)
    if arr.shape != (*shape, 3):
        raise ValueError(f"`normals` must be [H,W,3] matching `depth_m` {shape}; got {arr.shape}")
    return arr[:, :, 0], arr[:, :, 1], arr[:, :, 2]


def cloud_from_depth(
    depth_m: np.ndarray,
    K,
    rgb: np.ndarray | None = None,
    normals=None,
    stride: int = 1,
    min_range_m: float = 0.0,
    max_range_m: float = float("inf"),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Same result as ``make_cloud(backproject(depth_m, K), rgb, normals, ...)``, computed in one pass.

    Back-projects only the kept (strided) pixels straight into the cloud block (no ``[H,W,3]`` temporary);
    the range test uses cached ray lengths. ``normals``: ``[H,W,3]`` or three ``[H,W]`` planes (nx, ny, nz).
    ``out`` as in :func:`make_cloud`.
    """
    return fill_cloud(depth_m, K, rgb, normals, stride, min_range_m, max_range_m, out)[0]


def fill_cloud(
    depth_m: np.ndarray,
    K,
    rgb: np.ndarray | None = None,
    normals=None,
    stride: int = 1,
    min_range_m: float = 0.0,
    max_range_m: float = float("inf"),
    out: np.ndarray | None = None,
    workers: RowWorkers | None = None,
    compiled: bool = True,
) -> tuple[np.ndarray, bool | None]:
    """:func:`cloud_from_depth` that also says whether the cloud is dense (no NaN ``x``), known for free
    from the range test: True/False, or None when it cannot tell without reading ``x`` (infinite max range).
    ``workers``: share the row blocks with a helper thread (:class:`RowWorkers`). ``compiled``: write the rows
    with :mod:`~d3_perception.geometry.kernels`' one-pass kernel when numba is installed (the same bytes);
    False = numpy and OpenCV only (the reference).
    """
    depth = np.asarray(depth_m)
    if depth.ndim != 2:
        raise ValueError(f"`depth_m` must be [H,W]; got shape {depth.shape}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"`stride` must be an integer >= 1; got {stride}")
    if not (0.0 <= min_range_m < max_range_m):
        raise ValueError(f"`min_range_m` must be >= 0 and < `max_range_m`; got {min_range_m}, {max_range_m}")
    if rgb is not None and np.shape(rgb) != (*depth.shape, 3):
        raise ValueError(f"`rgb` must be [H,W,3] matching `depth_m` {depth.shape}; got {np.shape(rgb)}")
    nplanes = _normal_planes(normals, depth.shape)
    K = check_intrinsics(K)
    s = int(stride)
    kb = K.tobytes()
    rx, ry = _ray_planes(depth.shape[0], depth.shape[1], kb)  # [H,W] each
    n2 = _ray_norm2(depth.shape[0], depth.shape[1], kb)  # [H,W]
    d = depth.astype(np.float32, copy=False)
    if s > 1:
        rx, ry, n2, d = rx[::s, ::s], ry[::s, ::s], n2[::s, ::s], d[::s, ::s]  # [h,w]
    dtype = cloud_dtype(rgb is not None, nplanes is not None)
    k = dtype.itemsize // 4  # float32 slots per point: 8 (x,y,z,rgb|pad,nx,ny,nz,pad) or 4 (x,y,z,rgb|pad)
    shape = (*d.shape, k)
    if out is None:
        block = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"`out` must be a writable C-contiguous float32 array of shape {shape}; "
                         f"got {out.dtype} {out.shape}")
    else:
        block = out
    rgb_s = None if rgb is None else np.asarray(rgb)[::s, ::s]  # [h,w,3]
    n_s = None if nplanes is None else [p[::s, ::s] if s > 1 else p for p in nplanes]  # [h,w] each
    min2, max2 = np.float32(min_range_m) ** 2, np.float32(max_range_m) ** 2
    kernel = kernels.load() if compiled else None
    if kernel is not None and d.size:
        bits = block.view(np.uint32)
        # unused inputs: any array of the right kind (not read); the kernel releases the GIL, so row blocks on
        # helper threads run in parallel
        colour = rgb_s if rgb_s is not None else np.zeros((1, 1, 3), np.uint8)
        n0, n1, nz = n_s if n_s is not None else (d, d, d)

        def rows(r0: int, r1: int) -> bool:
            return kernel.cloud_rows(d, rx, ry, n2, min2, max2, colour, rgb_s is not None, n0, n1, nz,
                                     n_s is not None, r0, r1, block, bits)
    else:
        rows = functools.partial(_numpy_rows, d, rx, ry, n2, min2, max2, rgb_s, n_s, block)
    all_kept = all(for_row_chunks(rows, d.shape[0], workers))
    dense = (True if math.isfinite(max_range_m) else None) if all_kept else False
    return block.view(dtype).reshape(d.shape), dense


def _numpy_rows(d, rx, ry, n2, min2, max2, rgb_s, n_s, block: np.ndarray, r0: int, r1: int) -> bool:
    """Rows ``r0:r1`` of :func:`fill_cloud`'s block by numpy and OpenCV (the reference of the compiled
    ``kernels.cloud_rows``, and the path without numba). Returns whether every point was kept."""
    # Planar math on contiguous [rows,w] planes (per-thread scratch reused across frames), then one
    # cv2.merge pass writes the block rows: the block (10 MB at 640x480) is streamed once instead of
    # once per field (measured 1.4 vs 2.2 ms cold). Measured slower in the node's sequence although
    # faster alone: cv2.transpose of [8, n] planar rows; [1,W]/[H,1] ray axes instead of [H,W] ray
    # planes (broadcasting costs more than the memory it saves).
    hw = (r1 - r0, d.shape[1])
    dr = d[r0:r1]
    r2 = scratch.get("cloud.r2", hw)
    with np.errstate(invalid="ignore"):
        np.multiply(dr, dr, out=r2)
        r2 *= n2[r0:r1]  # squared range
        # all kept <=> min(d) > 0 and min2 <= r2 <= max2 everywhere: read-only reductions (NaN fails)
        kept = dr.size == 0 or bool(dr.min() > 0 and r2.min() >= min2 and r2.max() <= max2)
    drop = None
    dk = dr
    if not kept:  # NaN, <= 0 and out-of-range -> NaN point
        keep, drop = scratch.get("cloud.keep", hw, bool), scratch.get("cloud.drop", hw, bool)
        with np.errstate(invalid="ignore"):
            np.greater(dr, 0, out=keep)
            keep &= np.greater_equal(r2, min2, out=drop)
            keep &= np.less_equal(r2, max2, out=drop)
        np.logical_not(keep, out=drop)
        dk = scratch.get("cloud.dk", hw)
        np.copyto(dk, dr)
        np.copyto(dk, np.float32(np.nan), where=drop)
    fields = [np.multiply(rx[r0:r1], dk, out=scratch.get("cloud.x", hw)),
              np.multiply(ry[r0:r1], dk, out=scratch.get("cloud.y", hw)), dk]
    if rgb_s is not None:
        fields.append(pack_rgb(rgb_s[r0:r1], out=scratch.get("cloud.rgb", hw)))
    elif n_s is not None:
        fields.append(_zeros(hw))  # padding: never ship uninitialised memory
    for i, plane in enumerate(n_s or ()):
        src = plane[r0:r1]
        if not kept:  # normals of dropped points are NaN too
            masked = scratch.get(f"cloud.n{i}", hw)
            np.copyto(masked, src)
            np.copyto(masked, np.float32(np.nan), where=drop)
            src = masked
        fields.append(src)
    fields += [_zeros(hw)] * (block.shape[2] - len(fields))  # padding
    _merge(fields, block[r0:r1])
    return kept
