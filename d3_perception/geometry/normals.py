"""Surface normals: from depth, and from a model's convention to the camera optical frame.

Optical frame: x right, y down, z forward. Normals of visible surfaces point toward the camera, i.e.
``dot(n, ray) < 0`` for the viewing ray through the pixel.
"""

from __future__ import annotations

import numpy as np

from d3_perception.geometry.intrinsics import check_intrinsics
from d3_perception.geometry.pointcloud import _rays, backproject

__all__ = ["NORMAL_CONVENTIONS", "normals_from_depth", "orient_toward_camera", "to_optical_frame"]

# Axis flips that take a convention to the optical frame.
# opengl (Marigold/DSINE/D3 renderers): x right, y up, z toward the viewer -> flip y and z.
NORMAL_CONVENTIONS: dict[str, tuple[float, float, float]] = {
    "optical": (1.0, 1.0, 1.0),
    "opencv": (1.0, 1.0, 1.0),
    "opengl": (1.0, -1.0, -1.0),
}


def orient_toward_camera(normals: np.ndarray, K=None) -> np.ndarray:
    """Flip ``[H,W,3]`` optical-frame normals that point away from the camera.

    With ``K`` the test uses the pixel's viewing ray; without it, the optical axis (flip if ``n_z > 0``).
    """
    n = np.asarray(normals, dtype=np.float32)
    planes = [n[:, :, i] for i in range(3)]
    return _finish(planes, K, normalise=False)


def _finish(planes: list[np.ndarray], K, normalise: bool) -> np.ndarray:
    """Planar ``nx, ny, nz`` ``[H,W]`` -> ``[H,W,3]`` unit (optionally), camera-facing normals in one pass.

    Works on planes (contiguous channel images) because per-pixel [H,W,3] arithmetic is several times
    slower in numpy; the only interleaving copy is the final stack.
    """
    nx, ny, nz = planes
    with np.errstate(invalid="ignore", divide="ignore"):
        if K is None:
            dot = nz
        else:
            rays = _rays(nx.shape[0], nx.shape[1], check_intrinsics(K).tobytes())  # [H,W,3], z = 1
            dot = nx * rays[:, :, 0]
            dot += ny * rays[:, :, 1]
            dot += nz
        factor = np.where(dot > 0, np.float32(-1.0), np.float32(1.0))
        if normalise:
            norm = nx * nx
            norm += ny * ny
            norm += nz * nz
            np.sqrt(norm, out=norm)
            norm[~(norm >= 1e-6)] = np.nan  # zero or non-finite vectors -> NaN
            factor /= norm
        out = np.empty((*nx.shape, 3), dtype=np.float32)
        np.multiply(nx, factor, out=out[:, :, 0])
        np.multiply(ny, factor, out=out[:, :, 1])
        np.multiply(nz, factor, out=out[:, :, 2])
    return out


def to_optical_frame(normals: np.ndarray, convention: str = "opengl", K=None) -> np.ndarray:
    """Model normals ``[H,W,3]`` (or backend layout ``[3,H,W]``) -> ``[H,W,3]`` float32 unit normals.

    Applies the axis flips of ``convention`` (see :data:`NORMAL_CONVENTIONS`), renormalises, orients
    toward the camera (``K`` optional, see :func:`orient_toward_camera`). Zero or non-finite vectors
    become NaN.
    """
    if convention not in NORMAL_CONVENTIONS:
        raise ValueError(f"`convention` must be one of {sorted(NORMAL_CONVENTIONS)}; got {convention!r}")
    n = np.asarray(normals, dtype=np.float32)
    if n.ndim == 3 and n.shape[0] == 3 and n.shape[2] != 3:
        planes = [n[i] for i in range(3)]  # [3,H,W]: contiguous planes
    elif n.ndim == 3 and n.shape[2] == 3:
        planes = [n[:, :, i] for i in range(3)]
    else:
        raise ValueError(f"`normals` must be [H,W,3] or [3,H,W]; got shape {np.shape(normals)}")
    flips = NORMAL_CONVENTIONS[convention]
    planes = [p if f > 0 else -p for p, f in zip(planes, flips, strict=True)]
    return _finish(planes, K, normalise=True)


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
