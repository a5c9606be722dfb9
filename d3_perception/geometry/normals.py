"""Surface normals: from depth, and from a model's convention to the camera optical frame.

Optical frame: x right, y down, z forward. Normals of visible surfaces point toward the camera, i.e.
``dot(n, ray) < 0`` for the viewing ray through the pixel.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from d3_perception.geometry.intrinsics import check_intrinsics
from d3_perception.geometry.pointcloud import _ray_planes, backproject
from d3_perception.parallel import RowWorkers, for_row_chunks, scratch

__all__ = [
    "NORMAL_CONVENTIONS",
    "interleave",
    "normals_from_depth",
    "to_optical_frame",
    "to_optical_frame_planes",
]

# Axis flips that take a convention to the optical frame; the one list of normals conventions (checkpoint
# configs are validated against it).
# opengl (Marigold/DSINE/D3 renderers): x right, y up, z toward the viewer -> flip y and z.
NORMAL_CONVENTIONS: dict[str, tuple[float, float, float]] = {
    "optical": (1.0, 1.0, 1.0),
    "opengl": (1.0, -1.0, -1.0),
}


def _finish(planes: list[np.ndarray], K, normalise: bool) -> np.ndarray:
    """Planar ``nx, ny, nz`` ``[H,W]`` -> ``[H,W,3]`` unit (optionally), camera-facing normals."""
    return interleave(_finish_planes(planes, K, normalise))


def _finish_planes(planes, K, normalise: bool, signs=(1.0, 1.0, 1.0), out: np.ndarray | None = None,
                   workers: RowWorkers | None = None, nan_invalid: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Planar ``nx, ny, nz`` ``[H,W]`` (times the axis ``signs``) -> three contiguous ``[H,W]`` planes of unit
    (optionally), camera-facing normals (the planes of ``out`` ``[3,H,W]`` float32 when given). Zero or
    non-finite vectors become NaN when ``normalise`` or ``nan_invalid`` (unit input, not renormalised).

    Works on planes because per-pixel [H,W,3] arithmetic is several times slower in numpy, in blocks of
    rows (:func:`~d3_perception.geometry.pointcloud.for_row_chunks`, shared with ``workers`` if given) so
    the ~20 passes run in cache. The signs are folded into the arithmetic instead of negated copies
    (``(-a) * b == -(a * b)`` exactly, so the result is bit-identical to flipping first).
    """
    nx, ny, nz = planes
    hw = nx.shape
    if out is None:
        out = np.empty((3, *hw), dtype=np.float32)
    elif out.shape != (3, *hw) or out.dtype != np.float32:
        raise ValueError(f"`out` must be a float32 array of shape {(3, *hw)}; got {out.dtype} {out.shape}")
    rays = None if K is None else _ray_planes(hw[0], hw[1], check_intrinsics(K).tobytes())  # [H,W] x, y
    signs = tuple(float(v) for v in signs)

    def rows(r0: int, r1: int) -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            _finish_rows(nx[r0:r1], ny[r0:r1], nz[r0:r1], None if rays is None else (rays[0][r0:r1], rays[1][r0:r1]),
                         normalise, signs, out[:, r0:r1], nan_invalid)

    for_row_chunks(rows, hw[0], workers)
    return out[0], out[1], out[2]


def _finish_rows(nx, ny, nz, rays, normalise: bool, signs, out, nan_invalid: bool) -> None:
    sx, sy, sz = signs
    hw = nx.shape
    factor, t = scratch.get("normals.factor", hw), scratch.get("normals.t", hw)
    if rays is None:
        dot, ds = nz, sz  # flip where ds * dot > 0 (the optical axis)
    else:
        dot, ds = scratch.get("normals.dot", hw), 1.0  # flip where n . ray > 0
        np.multiply(nx, rays[0], out=dot)
        if sx < 0:
            np.negative(dot, out=dot)
        np.multiply(ny, rays[1], out=t)
        (np.add if sy > 0 else np.subtract)(dot, t, out=dot)
        (np.add if sz > 0 else np.subtract)(dot, nz, out=dot)
    check = nan_invalid and not normalise  # unit input: the norm is only needed to find invalid vectors
    if check and _nonzero_and_finite(dot, (nx, ny) if rays is None else None, t):
        # No zero or non-finite dot: the factor (-1 where ds * dot > 0, else 1) is -ds * sign(dot), exactly;
        # sign(dot) = dot's sign bit | the bits of 1.0 (two integer passes; np.copysign is 4x slower here).
        bits = t.view(np.uint32)
        np.bitwise_and(dot.view(np.uint32), np.uint32(0x80000000), out=bits)
        bits |= np.uint32(0x3F800000)
        base, base_sign = t, -ds  # base = factor (ds < 0) or -factor (ds > 0)
    else:
        flip = scratch.get("normals.flip", hw, bool)
        (np.greater if ds > 0 else np.less)(dot, 0, out=flip)
        base = np.multiply(flip, np.float32(-2.0), out=factor)  # flip -> -1, else 1 (exact)
        base += np.float32(1.0)
        base_sign = 1.0
        if normalise or check:  # zero or non-finite vectors -> NaN (and divided by the norm if normalise)
            _invalid_to_nan(nx, ny, nz, scratch.get("normals.norm", hw), flip, t, base, divide=normalise)
    other = None  # -base, if some axis needs it
    if any(s_ * base_sign < 0 for s_ in signs):
        other = np.negative(base, out=factor if base is t else t)
    for i, (n, s_) in enumerate(zip((nx, ny, nz), (sx, sy, sz), strict=True)):
        np.multiply(n, base if s_ * base_sign > 0 else other, out=out[i])


def _nonzero_and_finite(dot, others, t) -> bool:
    """Cheap test (one pass, two reductions) for unit input that no vector is zero or has a NaN/inf component and
    no ``dot`` (the flip test's value, ``n . ray`` or ``n_z``) is 0: a zero vector gives ``dot == 0`` and a
    non-finite component a non-finite ``dot``; ``others``: the components ``dot`` does not include
    (without rays). False for a few valid vectors too (``dot == 0``): those only cost the exact test.
    ``t``: scratch."""
    if dot.size == 0:
        return True
    a = np.abs(dot, out=t)
    ok = bool(a.min() > 0) and bool(a.max() < np.inf)  # NaN fails both
    if ok and others is None:
        return True
    return ok and math.isfinite(float(others[0].sum()) + float(others[1].sum()))


def _invalid_to_nan(nx, ny, nz, norm, bad, t, factor, divide: bool) -> None:
    """``factor`` = NaN where the vector's norm is < 1e-6 or NaN, and divided by the norm if ``divide``
    (an infinite component then gives 0 or NaN components), else also NaN where the norm is infinite
    (``bad``, ``t``: scratch)."""
    np.multiply(nx, nx, out=norm)
    norm += np.multiply(ny, ny, out=t)
    norm += np.multiply(nz, nz, out=t)
    np.sqrt(norm, out=norm)
    np.greater_equal(norm, np.float32(1e-6), out=bad)
    if not divide:
        bad &= np.less(norm, np.float32(np.inf), out=scratch.get("normals.finite", norm.shape, bool))
    if not bad.all():
        np.logical_not(bad, out=bad)
        np.copyto(norm if divide else factor, np.float32(np.nan), where=bad)  # zero or non-finite vectors -> NaN
    if divide:
        factor /= norm


def interleave(planes, out: np.ndarray | None = None) -> np.ndarray:
    """Three ``[H,W]`` float32 planes -> ``[H,W,3]`` (into ``out`` if given: a C-contiguous float32 array)."""
    shape = (*planes[0].shape, 3)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"`out` must be a C-contiguous float32 array of shape {shape}; got {out.dtype} {out.shape}")
    if out.size and out.ndim == 3 and all(p.dtype == np.float32 for p in planes):
        res = cv2.merge([np.ascontiguousarray(p) for p in planes], dst=out)  # one SIMD pass
        if res is out or np.shares_memory(res, out):
            return out
    for i, p in enumerate(planes):  # other dtypes, empty, or OpenCV did not write into `out`
        out[..., i] = p
    return out


def _model_planes(normals, convention: str) -> tuple[list[np.ndarray], tuple[float, float, float]]:
    if convention not in NORMAL_CONVENTIONS:
        raise ValueError(f"`convention` must be one of {sorted(NORMAL_CONVENTIONS)}; got {convention!r}")
    n = np.asarray(normals, dtype=np.float32)
    if n.ndim == 3 and n.shape[0] == 3 and n.shape[2] != 3:
        planes = [n[i] for i in range(3)]  # [3,H,W]: contiguous planes
    elif n.ndim == 3 and n.shape[2] == 3:
        planes = [n[:, :, i] for i in range(3)]
    else:
        raise ValueError(f"`normals` must be [H,W,3] or [3,H,W]; got shape {np.shape(normals)}")
    return planes, NORMAL_CONVENTIONS[convention]


def to_optical_frame(normals: np.ndarray, convention: str = "opengl", K=None, out: np.ndarray | None = None
                     ) -> np.ndarray:
    """Model normals ``[H,W,3]`` (or backend layout ``[3,H,W]``) -> ``[H,W,3]`` float32 unit normals.

    Applies the axis flips of ``convention`` (see :data:`NORMAL_CONVENTIONS`), renormalises, orients
    toward the camera (``K`` optional: with it the test uses the pixel's viewing ray, without it the optical axis). Zero or non-finite vectors
    become NaN. ``out``: optional C-contiguous float32 ``[H,W,3]`` to write into.
    """
    return interleave(to_optical_frame_planes(normals, convention, K), out)


def to_optical_frame_planes(normals: np.ndarray, convention: str = "opengl", K=None, out: np.ndarray | None = None,
                            workers: RowWorkers | None = None, normalise: bool = True
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`to_optical_frame` as three contiguous ``[H,W]`` planes (nx, ny, nz): what the cloud and the
    ``[H,W,3]`` image are both filled from without re-reading an interleaved array. ``out``: optional
    float32 ``[3,H,W]`` to write into (reused across frames by the node). ``workers``: share the row blocks
    with helper threads (:class:`~d3_perception.geometry.pointcloud.RowWorkers`). ``normalise=False``: the
    input is already unit length (a backend's output: :func:`d3_perception.model.processing.postprocess`
    renormalises), so the norm is not recomputed (~40 % fewer passes); zero or non-finite vectors still
    become NaN."""
    planes, flips = _model_planes(normals, convention)
    return _finish_planes(planes, K, normalise=normalise, signs=flips, out=out, workers=workers, nan_invalid=True)


def normals_from_depth(depth_m: np.ndarray, K, max_rel_jump: float = 0.1) -> np.ndarray:
    """``[H,W]`` depth (m, NaN invalid) -> ``[H,W,3]`` float32 unit normals in the optical frame.

    Cross product of the central differences of the back-projected points. Pixels next to an invalid
    pixel or across a depth jump larger than ``max_rel_jump`` (relative) are NaN. Normals face the camera.
    Works for any positive depth scale (relative depth gives the shape up to the affine ambiguity).
    """
    depth = np.asarray(depth_m, dtype=np.float32)
    if depth.ndim != 2 or min(depth.shape) < 3:
        raise ValueError(f"`depth_m` must be [H,W] with H, W >= 3; got shape {depth.shape}")
    K = check_intrinsics(K)
    p = backproject(depth, K)  # [H,W,3]
    du = np.full_like(p, np.nan)
    dv = np.full_like(p, np.nan)
    du[:, 1:-1] = p[:, 2:] - p[:, :-2]  # [H,W-2,3]
    dv[1:-1, :] = p[2:, :] - p[:-2, :]  # [H-2,W,3]
    n = np.cross(dv, du)  # faces -z for a fronto-parallel plane
    if max_rel_jump > 0:
        with np.errstate(invalid="ignore"):
            jump = np.zeros(depth.shape, dtype=bool)
            jump[:, 1:-1] |= np.abs(depth[:, 2:] - depth[:, :-2]) > max_rel_jump * depth[:, 1:-1]
            jump[1:-1, :] |= np.abs(depth[2:, :] - depth[:-2, :]) > max_rel_jump * depth[1:-1, :]
        n[jump] = np.nan
    return _finish([n[:, :, 0], n[:, :, 1], n[:, :, 2]], K, normalise=True)
