"""Vectorised analytic ray casting: a :class:`Scene` seen from a pinhole camera -> :class:`Frame`.

Outputs are exact (up to float32 rounding): z-depth along the optical axis in metres, unit normals in the
camera optical frame (x right, y down, z forward) oriented toward the camera, RGB with Lambert shading
from one directional light plus ambient, optional hard cast shadows and distance fog.

Speed: camera rays are intersected only inside each object's projected bounding-sphere rectangle and only
when that rectangle is not already fully occluded; shading is deferred to one pass over the hit pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from d3_perception.geometry.intrinsics import check_intrinsics
from d3_perception.synthetic.primitives import Primitive, dot3, mat3

__all__ = ["Frame", "Scene", "check_pose", "look_at", "render"]


@dataclass(frozen=True)
class Scene:
    """A static world (z up, metres) plus lighting.

    ``light_dir``: unit vector *toward* the light; ``ambient``/``light_rgb``: linear RGB intensities;
    ``sky_zenith``/``sky_horizon``: colours of rays that hit nothing; ``fog_m``: e-folding distance of
    aerial-perspective fog (None = off); ``max_depth_m``: hits farther than this z-depth count
    as sky (invalid), like a sensor's range limit (None = unlimited); ``shadows``: cast shadows from objects with ``casts_shadow``.
    ``trajectory``: a callable ``t_s -> [4,4]`` camera pose, used by :class:`SyntheticSequence`.
    ``point_lights``: ((position m, linear RGB, falloff m), ...): Lambert light that falls off as
    1 / (1 + (distance / falloff)^2), no shadows; ``specular``: Blinn-Phong highlight strength (0 = matte) with
    exponent ``shininess``, from the directional and point lights. ``hfov_deg``: the scene's own horizontal
    field of view (None = the viewer's default); ``sensor``: a :class:`~d3_perception.synthetic.sensor.SensorModel`
    applied by :class:`SyntheticSequence` to the RGB only (None = ideal camera); ``family``: the wide-world
    family (``world`` or ``shift``) or None.
    """

    primitives: tuple[Primitive, ...]
    light_dir: tuple[float, float, float] = (0.3, 0.2, 0.93)
    ambient: tuple[float, float, float] = (0.35, 0.35, 0.38)
    light_rgb: tuple[float, float, float] = (0.75, 0.72, 0.68)
    sky_zenith: tuple[float, float, float] = (0.35, 0.55, 0.9)
    sky_horizon: tuple[float, float, float] = (0.8, 0.85, 0.92)
    fog_m: float | None = None
    max_depth_m: float | None = None
    shadows: bool = True
    kind: str = "custom"
    seed: int | None = None
    trajectory: object | None = field(default=None, compare=False)
    point_lights: tuple = ()
    specular: float = 0.0
    shininess: float = 32.0
    hfov_deg: float | None = None
    sensor: object | None = None
    family: str | None = None

    def __post_init__(self) -> None:
        if len(self.primitives) == 0:
            raise ValueError("`primitives` must not be empty; got 0 primitives")
        ld = np.asarray(self.light_dir, np.float64)
        if ld.shape != (3,) or not np.isfinite(ld).all() or np.linalg.norm(ld) == 0:
            raise ValueError(f"`light_dir` must be a finite non-zero 3-vector; got {self.light_dir}")
        if self.fog_m is not None and not self.fog_m > 0:
            raise ValueError(f"`fog_m` must be > 0 or None; got {self.fog_m}")
        if self.max_depth_m is not None and not self.max_depth_m > 0:
            raise ValueError(f"`max_depth_m` must be > 0 or None; got {self.max_depth_m}")


@dataclass
class Frame:
    """One rendered view.

    rgb: ``[H,W,3]`` uint8 RGB. depth_m: ``[H,W]`` float32 z-depth in metres (NaN where nothing is hit).
    normals: ``[H,W,3]`` float32 unit normals in the camera optical frame (x right, y down, z forward),
    facing the camera (n . ray < 0); NaN where invalid. valid: ``[H,W]`` bool. K: ``[3,3]`` float64.
    pose: ``[4,4]`` float64 camera(optical)-to-world transform, or None. t_s: time in the sequence (s).
    """

    rgb: np.ndarray
    depth_m: np.ndarray
    normals: np.ndarray
    valid: np.ndarray
    K: np.ndarray
    pose: np.ndarray | None = None
    t_s: float = 0.0
    index: int = 0


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera(optical)-to-world ``[4,4]`` for a camera at ``eye`` looking at ``target`` (world z up)."""
    eye = np.asarray(eye, np.float64)
    f = np.asarray(target, np.float64) - eye
    if np.linalg.norm(f) == 0:
        raise ValueError(f"`target` must differ from `eye`; got both {eye.tolist()}")
    f /= np.linalg.norm(f)
    x = np.cross(f, np.asarray(up, np.float64))
    if np.linalg.norm(x) < 1e-9:
        raise ValueError(f"viewing direction {f.tolist()} must not be parallel to `up` {list(up)}")
    x /= np.linalg.norm(x)
    y = np.cross(f, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, f, eye
    return pose


def check_pose(pose) -> np.ndarray:
    """``pose`` as ``[4,4]`` float64 rigid transform, or ``ValueError`` saying why not."""
    arr = np.asarray(pose, np.float64)
    if arr.shape != (4, 4) or not np.isfinite(arr).all():
        raise ValueError(f"`pose` must be a finite [4,4] camera-to-world transform; got shape {arr.shape}")
    rot = arr[:3, :3]
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-5) or np.linalg.det(rot) < 0:
        raise ValueError("`pose` rotation must be orthonormal with det +1; got det "
                         f"{np.linalg.det(rot):.6f}")
    return arr


def _check_size(size_hw) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size_hw)
    except (TypeError, ValueError):
        raise ValueError(f"`size_hw` must be (H, W) positive integers; got {size_hw!r}") from None
    if h <= 0 or w <= 0 or h * w > 4096 * 4096:
        raise ValueError(f"`size_hw` must be (H, W) with 0 < H*W <= 4096*4096; got {size_hw!r}")
    return h, w


def _screen_rect(center_w, radius, rot, eye, K, hw):
    """Pixel rectangle (v0, v1, u0, u1) that contains a bounding sphere's projection; None = off-screen."""
    c = rot.T @ (center_w - eye)  # camera-frame centre [3]
    h, w = hw
    if c[2] - radius <= 1e-3:  # sphere reaches behind the image plane: no cheap bound
        return (0, h, 0, w), c[2] - radius
    z_lo, z_hi = c[2] - radius, c[2] + radius
    xs = [(c[0] - radius) / z for z in (z_lo, z_hi)] + [(c[0] + radius) / z for z in (z_lo, z_hi)]
    ys = [(c[1] - radius) / z for z in (z_lo, z_hi)] + [(c[1] + radius) / z for z in (z_lo, z_hi)]
    u0 = int(np.floor(K[0, 0] * min(xs) + K[0, 2])) - 1
    u1 = int(np.ceil(K[0, 0] * max(xs) + K[0, 2])) + 2
    v0 = int(np.floor(K[1, 1] * min(ys) + K[1, 2])) - 1
    v1 = int(np.ceil(K[1, 1] * max(ys) + K[1, 2])) + 2
    u0, u1, v0, v1 = max(u0, 0), min(u1, w), max(v0, 0), min(v1, h)
    if u0 >= u1 or v0 >= v1:
        return None, z_lo
    return (v0, v1, u0, u1), z_lo


def render(scene: Scene, pose, K, size_hw) -> Frame:
    """Ray-cast ``scene`` from camera ``pose`` ([4,4] optical-to-world) with intrinsics ``K`` [3,3].

    Returns a :class:`Frame` of size ``size_hw`` = (H, W). Pixel (u, v) integer coordinates are pixel
    centres (the ROS/OpenCV convention), so ``X = (u - cx) / fx * Z``.
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"`scene` must be a Scene; got {type(scene).__name__}")
    pose = check_pose(pose)
    K = check_intrinsics(K)
    h, w = _check_size(size_hw)
    rot, eye = pose[:3, :3], pose[:3, 3]

    # 1. camera rays with unit z in the optical frame, so the hit parameter t is the z-depth
    xc = ((np.arange(w, dtype=np.float64) - K[0, 2]) / K[0, 0]).astype(np.float32)
    yc = ((np.arange(h, dtype=np.float64) - K[1, 2]) / K[1, 1]).astype(np.float32)
    if K[0, 1] != 0.0:  # skew: x = (u - cx - s*y) / fx
        xg = xc[None, :] - np.float32(K[0, 1] / K[0, 0]) * yc[:, None]
    else:
        xg = np.broadcast_to(xc[None, :], (h, w))
    yg = np.broadcast_to(yc[:, None], (h, w))
    r32 = rot.astype(np.float32)
    d = tuple(r32[k, 0] * xg + r32[k, 1] * yg + r32[k, 2] for k in range(3))  # 3 x [H,W] world directions
    o = tuple(np.float32(v) for v in eye)

    # 2. nearest hit per pixel (z-buffer over primitives)
    t_best = np.full((h, w), np.inf, np.float32)
    prim_id = np.full((h, w), -1, np.int16)
    for k, prim in enumerate(scene.primitives):
        bound = prim.bounding_sphere()
        if bound is None:
            rect = (0, h, 0, w)
        else:
            rect, z_min = _screen_rect(bound[0], bound[1], rot, eye, K, (h, w))
            if rect is None:
                continue
        v0, v1, u0, u1 = rect
        tb = t_best[v0:v1, u0:u1]
        if bound is not None and not (tb > z_min).any():
            continue  # fully occluded by what is already drawn
        t = prim.intersect(o, tuple(c[v0:v1, u0:u1] for c in d))
        closer = t < tb
        np.minimum(tb, t, out=tb)
        np.putmask(prim_id[v0:v1, u0:u1], closer, k)

    if scene.max_depth_m is not None:
        prim_id[t_best > scene.max_depth_m] = -1
    valid = prim_id >= 0
    depth = np.where(valid, t_best, np.float32(np.nan)).astype(np.float32)

    # 3. deferred shading: hit pixels grouped by primitive (one stable radix sort), then one scatter
    flat_id = prim_id.ravel()
    order = np.argsort(flat_id, kind="stable")  # [H*W] pixel indices, misses (-1) first
    n_miss = int(np.count_nonzero(flat_id < 0))
    pix = order[n_miss:]  # [N] flat indices of hit pixels
    bounds = np.searchsorted(flat_id[pix], np.arange(len(scene.primitives) + 1))
    dirs = np.stack([c.reshape(-1)[pix] for c in d], axis=1)  # [N,3] world ray directions (unit z in camera)
    tt = t_best.reshape(-1)[pix][:, None]  # [N,1] z-depth
    pts = np.asarray(o, np.float32)[None, :] + tt * dirs  # [N,3] world hit points
    n_w = np.empty_like(pts)
    albedo = np.empty_like(pts)
    for k, prim in enumerate(scene.primitives):
        s0, s1 = int(bounds[k]), int(bounds[k + 1])
        if s1 > s0:
            n_w[s0:s1] = prim.normal(pts[s0:s1])
            albedo[s0:s1] = prim.texture.albedo(pts[s0:s1])
    facing = np.einsum("ij,ij->i", n_w, dirs)  # [N]
    n_w *= np.where(facing > 0, np.float32(-1.0), np.float32(1.0))[:, None]  # face the camera
    light = np.asarray(scene.light_dir, np.float32)
    light /= np.linalg.norm(light)
    lambert = np.clip(dot3(n_w, light), 0.0, None)
    if scene.shadows:
        lambert *= ~_shadowed(scene, pts + n_w * (1e-3 * np.maximum(tt, 1.0)), light, lambert > 0)
    shade = np.asarray(scene.ambient, np.float32) + lambert[:, None] * np.asarray(scene.light_rgb, np.float32)
    if scene.point_lights or scene.specular > 0:
        shade, highlight = _extra_light(scene, pts, n_w, dirs, light, lambert)
        color = albedo * shade + highlight
    else:
        color = albedo * shade
    if scene.fog_m is not None:
        ray_len = tt[:, 0] * np.linalg.norm(dirs, axis=1)
        fog = np.exp(-ray_len / np.float32(scene.fog_m))[:, None]
        color = color * fog + np.asarray(scene.sky_horizon, np.float32) * (1 - fog)
    rgb_lin = np.empty((h * w, 3), np.float32)
    rgb_lin[pix] = color
    normals = np.full((h * w, 3), np.nan, np.float32)
    normals[pix] = mat3(n_w, r32)  # world -> optical frame: R^T n

    # 4. sky for rays that hit nothing: blend horizon -> zenith with elevation
    if n_miss:
        miss = order[:n_miss]
        dm = [c.reshape(-1)[miss] for c in d]
        a = np.clip(dm[2] / np.sqrt(dm[0] ** 2 + dm[1] ** 2 + dm[2] ** 2), 0.0, 1.0)[:, None] ** 0.6
        rgb_lin[miss] = np.asarray(scene.sky_horizon, np.float32) * (1 - a) + np.asarray(scene.sky_zenith, np.float32) * a

    rgb = _GAMMA_LUT[(np.clip(rgb_lin, 0.0, 1.0) * (_GAMMA_LUT.size - 1) + 0.5).astype(np.uint16)]
    return Frame(rgb=rgb.reshape(h, w, 3), depth_m=depth, normals=normals.reshape(h, w, 3), valid=valid, K=K,
                 pose=pose)


# linear [0,1] quantised to 12 bits -> sRGB-like gamma 1/2.2 uint8 (a table lookup instead of a pow per pixel)
_GAMMA_LUT = (np.linspace(0.0, 1.0, 4096) ** (1 / 2.2) * 255.0 + 0.5).astype(np.uint8)


def _length(v: np.ndarray) -> np.ndarray:
    """Row lengths ``[N,1]`` of ``v`` [N,3] (np.linalg.norm's generic path is several times slower here)."""
    return np.sqrt(np.einsum("ij,ij->i", v, v))[:, None]


def _extra_light(scene: Scene, pts, n_w, dirs, light, lambert) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse shade [N,3] including the point lights, and the specular highlight [N,3] (linear RGB)."""
    shade = np.asarray(scene.ambient, np.float32) + lambert[:, None] * np.asarray(scene.light_rgb, np.float32)
    highlight = np.zeros_like(pts)
    to_eye = -dirs / _length(dirs)  # [N,3] unit, from the point to the camera
    exponent = np.float32(scene.shininess)
    strength = np.float32(scene.specular)

    def blinn(to_light, weight):
        half = to_light + to_eye
        half /= np.maximum(_length(half), 1e-6)
        return strength * weight * np.clip(np.einsum("ij,ij->i", n_w, half), 0.0, 1.0) ** exponent

    if strength > 0:  # the directional light's highlight exists only where its Lambert term (shadow included) does
        highlight += (blinn(np.broadcast_to(light, pts.shape), (lambert > 0).astype(np.float32)))[:, None] \
            * np.asarray(scene.light_rgb, np.float32)
    for position, rgb, falloff_m in scene.point_lights:
        to_light = np.asarray(position, np.float32) - pts
        dist = _length(to_light)
        to_light /= np.maximum(dist, 1e-6)
        fall = 1.0 / (1.0 + (dist[:, 0] / np.float32(falloff_m)) ** 2)
        diffuse = np.clip(np.einsum("ij,ij->i", n_w, to_light), 0.0, None) * fall
        shade = shade + diffuse[:, None] * np.asarray(rgb, np.float32)
        if strength > 0:
            highlight += (blinn(to_light, fall * (diffuse > 0)))[:, None] * np.asarray(rgb, np.float32)
    return shade, highlight


def _shadowed(scene: Scene, pts: np.ndarray, light: np.ndarray, lit: np.ndarray) -> np.ndarray:
    """``[N]`` bool: a ray from each point toward the (directional) light hits a shadow caster."""
    out = np.zeros(pts.shape[0], bool)
    casters = [prim for prim in scene.primitives if prim.casts_shadow]
    idx = np.flatnonzero(lit)
    if not casters or idx.size == 0:
        return out
    q = pts[idx]  # [M,3] lit points
    # coordinates across (e1, e2) and along the light: a caster can only shadow points whose projection
    # along the light falls inside its bounding sphere's disc and that lie below its far side
    e1 = np.cross(light, (1.0, 0.0, 0.0) if abs(light[0]) < 0.9 else (0.0, 1.0, 0.0)).astype(np.float32)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(light, e1).astype(np.float32)
    a1, a2, along = dot3(q, e1), dot3(q, e2), dot3(q, light)
    for prim in casters:
        bound = prim.bounding_sphere()
        if bound is None:
            sub = np.arange(idx.size)
        else:
            c, r = bound[0].astype(np.float32), np.float32(bound[1])
            cand = (a1 - c @ e1) ** 2 + (a2 - c @ e2) ** 2 <= r * r
            cand &= along <= c @ light + r
            sub = np.flatnonzero(cand)
            if sub.size == 0:
                continue
        p = q[sub]
        t = prim.intersect((p[:, 0], p[:, 1], p[:, 2]), tuple(np.float32(v) for v in light), t_min=1e-3)
        out[idx[sub[np.isfinite(t)]]] = True
    return out
