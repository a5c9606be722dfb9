"""Analytic primitives for the synthetic renderer: ray intersection, surface normals and solid textures.

World frame: right-handed, z up (REP-103), metres. Every ``intersect`` takes ray origins ``o`` and
directions ``d`` as tuples of three broadcastable float arrays (``[H,W]`` for camera rays, ``[N]`` for
shadow rays; directions need not be unit length) and returns the ray parameter ``t`` of the nearest hit
with ``t > t_min`` (``inf`` where the ray misses). ``normal`` returns outward unit normals ``[N,3]`` at
surface points ``[N,3]``. Hand-written because no numpy/OpenCV function ray-casts analytic shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Box",
    "Cone",
    "Cylinder",
    "Ellipsoid",
    "Plane",
    "Primitive",
    "Rectangle",
    "Sphere",
    "Texture",
    "TEXTURE_KINDS",
]

TEXTURE_KINDS = ("solid", "checker", "stripes", "noise", "gradient", "fractal", "bricks", "wood", "dots", "marble")
_INF = np.float32(np.inf)


# [N,3] x small matrix products written out per column: numpy's matmul with a 3-wide inner dimension is
# 10-100x slower than these elementwise forms on large N (BLAS call overhead and threading)
def dot3(p: np.ndarray, v) -> np.ndarray:
    """``p`` [N,3] . ``v`` [3] -> [N]."""
    return p[:, 0] * v[0] + p[:, 1] * v[1] + p[:, 2] * v[2]


def mat3(p: np.ndarray, m) -> np.ndarray:
    """``p`` [N,3] @ ``m`` [3,3] -> [N,3]."""
    m = np.asarray(m, np.float32)
    return np.stack([dot3(p, m[:, k]) for k in range(3)], axis=1)


@dataclass(frozen=True)
class Texture:
    """A solid (3-D) texture evaluated at world points, so it needs no surface parameterisation.

    ``kind``: solid | checker | stripes | noise | gradient | fractal | bricks | wood | dots | marble;
    ``color_a``/``color_b`` linear RGB in [0,1]; ``scale_m``: checker cell / stripe period / noise wavelength /
    gradient length / brick height / wood ring spacing / dot cell / marble vein period, in metres;
    ``direction``: unit vector for stripes, gradients, brick rows (normal to the courses), wood grain axis and
    marble veins; ``waves``: ``[K,4]`` (dx, dy, dz, phase) for noise, fractal, wood and marble (the length of
    (dx, dy, dz) is the frequency in cycles per ``scale_m``; fractal weights each wave by 1/frequency).
    """

    kind: str = "solid"
    color_a: tuple[float, float, float] = (0.6, 0.6, 0.6)
    color_b: tuple[float, float, float] = (0.3, 0.3, 0.3)
    scale_m: float = 0.5
    direction: tuple[float, float, float] = (1.0, 0.0, 0.0)
    waves: tuple[tuple[float, float, float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in TEXTURE_KINDS:
            raise ValueError(f"`kind` must be one of {TEXTURE_KINDS}; got {self.kind!r}")
        if not self.scale_m > 0:
            raise ValueError(f"`scale_m` must be > 0; got {self.scale_m}")

    def albedo(self, p: np.ndarray) -> np.ndarray:
        """World points ``[N,3]`` -> linear RGB albedo ``[N,3]`` float32 in [0,1]."""
        a = np.asarray(self.color_a, np.float32)
        b = np.asarray(self.color_b, np.float32)
        if self.kind == "solid" or p.shape[0] == 0:
            return np.broadcast_to(a, p.shape).astype(np.float32)
        if self.kind == "checker":
            cells = np.floor(p / self.scale_m + 1e-3).astype(np.int64).sum(axis=1)
            w = (cells & 1).astype(np.float32)
        elif self.kind == "stripes":
            s = dot3(p, np.asarray(self.direction, np.float32) / np.float32(self.scale_m))
            w = (np.sin(np.float32(2 * np.pi) * s) > 0).astype(np.float32)
        elif self.kind == "noise":
            acc = np.zeros(p.shape[0], np.float32)
            for dx, dy, dz, phase in self.waves:
                k = np.array([dx, dy, dz], np.float32) * np.float32(2 * np.pi / self.scale_m)
                acc += np.sin(dot3(p, k) + np.float32(phase))
            w = 0.5 + 0.5 * acc / max(1, len(self.waves)) ** 0.5
            w = np.clip(w, 0.0, 1.0)
        elif self.kind == "gradient":
            s = dot3(p, np.asarray(self.direction, np.float32) / np.float32(self.scale_m))
            w = 0.5 + 0.5 * np.sin(s)  # smooth, bounded, repeats every 2*pi*scale_m
        else:
            w = self._pattern(p)
        return (a + (b - a) * w[:, None]).astype(np.float32)

    def _waves_sum(self, p: np.ndarray, weighted: bool) -> np.ndarray:
        """Sum of the sine ``waves`` at ``p`` [N,3] -> [N], normalised to about [-1, 1]."""
        acc = np.zeros(p.shape[0], np.float32)
        total = 0.0
        for dx, dy, dz, phase in self.waves:
            freq = max(float(np.sqrt(dx * dx + dy * dy + dz * dz)), 1e-6)
            amp = 1.0 / freq if weighted else 1.0
            k = np.array([dx, dy, dz], np.float32) * np.float32(2 * np.pi / self.scale_m)
            acc += np.float32(amp) * np.sin(dot3(p, k) + np.float32(phase))
            total += amp
        return acc / np.float32(max(total, 1e-6))

    def _axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(``direction``, e1, e2): an orthonormal frame around the texture direction, each [3] float32."""
        d = np.asarray(self.direction, np.float64)
        d /= max(np.linalg.norm(d), 1e-12)
        e1 = np.cross(d, (1.0, 0.0, 0.0) if abs(d[0]) < 0.9 else (0.0, 1.0, 0.0))
        e1 /= np.linalg.norm(e1)
        return d.astype(np.float32), e1.astype(np.float32), np.cross(d, e1).astype(np.float32)

    def _pattern(self, p: np.ndarray) -> np.ndarray:
        """Blend weight [N] in [0,1] of the kinds added for the wide world (fractal, bricks, wood, dots, marble)."""
        s = np.float32(self.scale_m)
        if self.kind == "fractal":
            return np.clip(0.5 + 0.9 * self._waves_sum(p, weighted=True), 0.0, 1.0)
        d, e1, e2 = self._axes()
        if self.kind == "bricks":
            row = dot3(p, d) / s  # courses stacked along `direction`, bricks twice as long as high
            offset = 0.5 * (np.floor(row).astype(np.int64) & 1)
            along = (dot3(p, e1) + dot3(p, e2)) / (2 * s) + offset  # the sum runs along any wall containing d
            mortar = (row - np.floor(row) < 0.12) | (along - np.floor(along) < 0.06)
            return mortar.astype(np.float32)
        if self.kind == "wood":
            radius = np.sqrt(dot3(p, e1) ** 2 + dot3(p, e2) ** 2) / s + 0.35 * self._waves_sum(p, weighted=False)
            ring = radius - np.floor(radius)
            return (ring**3).astype(np.float32)  # dark late wood at the end of every ring
        if self.kind == "dots":
            cell = p / s
            off = cell - np.floor(cell) - 0.5
            return (np.sum(off * off, axis=1) < 0.09).astype(np.float32)  # dot radius 0.3 cell
        # marble: veins = a sine along `direction` perturbed by noise
        v = np.sin(np.float32(2 * np.pi) * (dot3(p, d) / s + 1.2 * self._waves_sum(p, weighted=True)))
        return (1.0 - np.abs(v)) ** 4


@dataclass(frozen=True)
class Primitive:
    """Base class. ``casts_shadow``: used by shadow rays (objects yes; room shell and ground no);
    ``tag``: what the primitive is part of (``layout`` or an object kind of the wide world; "" = untagged)."""

    texture: Texture = field(default_factory=Texture)
    casts_shadow: bool = True
    tag: str = ""

    def bounding_sphere(self) -> tuple[np.ndarray, float] | None:
        """(centre [3], radius m) containing the primitive, or None when unbounded."""
        return None

    def intersect(self, o, d, t_min: float = 1e-4):  # pragma: no cover - abstract
        raise NotImplementedError

    def normal(self, p: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def _local(rot: np.ndarray, center: np.ndarray, o, d):
    """World rays -> rays in a local frame with axes = columns of ``rot`` and origin ``center``."""
    r = rot.astype(np.float32)
    ox, oy, oz = (o[0] - center[0], o[1] - center[1], o[2] - center[2])
    lo = [r[0, k] * ox + r[1, k] * oy + r[2, k] * oz for k in range(3)]
    ld = [r[0, k] * d[0] + r[1, k] * d[1] + r[2, k] * d[2] for k in range(3)]
    return lo, ld


@dataclass(frozen=True)
class Sphere(Primitive):
    center: tuple[float, float, float] = (0.0, 0.0, 1.0)
    radius_m: float = 0.5

    def bounding_sphere(self):
        return np.asarray(self.center, np.float64), float(self.radius_m)

    def intersect(self, o, d, t_min: float = 1e-4):
        c = self.center
        ocx, ocy, ocz = o[0] - c[0], o[1] - c[1], o[2] - c[2]
        a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
        b = ocx * d[0] + ocy * d[1] + ocz * d[2]
        cc = ocx * ocx + ocy * ocy + ocz * ocz - np.float32(self.radius_m**2)
        disc = b * b - a * cc
        with np.errstate(invalid="ignore"):
            sq = np.sqrt(disc)
            t0 = (-b - sq) / a
            t1 = (-b + sq) / a
        t = np.where(t0 > t_min, t0, np.where(t1 > t_min, t1, _INF))
        return np.where(disc >= 0, t, _INF)

    def normal(self, p):
        n = (p - np.asarray(self.center, np.float32)) / np.float32(self.radius_m)
        return n / np.linalg.norm(n, axis=1, keepdims=True)


@dataclass(frozen=True)
class Plane(Primitive):
    """Infinite plane ``n . x = offset_m`` (ground)."""

    normal_vec: tuple[float, float, float] = (0.0, 0.0, 1.0)
    offset_m: float = 0.0
    casts_shadow: bool = False

    def intersect(self, o, d, t_min: float = 1e-4):
        n = self.normal_vec
        dn = d[0] * n[0] + d[1] * n[1] + d[2] * n[2]
        on = o[0] * n[0] + o[1] * n[1] + o[2] * n[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (np.float32(self.offset_m) - on) / dn
        return np.where(np.isfinite(t) & (t > t_min), t, _INF)

    def normal(self, p):
        n = np.asarray(self.normal_vec, np.float32)
        return np.broadcast_to(n / np.linalg.norm(n), p.shape).copy()


@dataclass(frozen=True)
class Rectangle(Primitive):
    """Finite double-sided rectangle: ``center`` + a*``axis_u`` + b*``axis_v``, |a| <= half_u, |b| <= half_v."""

    center: tuple[float, float, float] = (0.0, 0.0, 1.0)
    axis_u: tuple[float, float, float] = (1.0, 0.0, 0.0)
    axis_v: tuple[float, float, float] = (0.0, 1.0, 0.0)
    half_u_m: float = 0.5
    half_v_m: float = 0.5

    def bounding_sphere(self):
        return np.asarray(self.center, np.float64), float(np.hypot(self.half_u_m, self.half_v_m))

    def _n(self) -> np.ndarray:
        n = np.cross(np.asarray(self.axis_u, np.float64), np.asarray(self.axis_v, np.float64))
        return n / np.linalg.norm(n)

    def intersect(self, o, d, t_min: float = 1e-4):
        n = self._n().astype(np.float32)
        c, u, v = self.center, self.axis_u, self.axis_v
        dn = d[0] * n[0] + d[1] * n[1] + d[2] * n[2]
        oc = (o[0] - c[0], o[1] - c[1], o[2] - c[2])
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -(oc[0] * n[0] + oc[1] * n[1] + oc[2] * n[2]) / dn
        px, py, pz = oc[0] + t * d[0], oc[1] + t * d[1], oc[2] + t * d[2]
        a = px * u[0] + py * u[1] + pz * u[2]
        b = px * v[0] + py * v[1] + pz * v[2]
        ok = np.isfinite(t) & (t > t_min) & (np.abs(a) <= self.half_u_m) & (np.abs(b) <= self.half_v_m)
        return np.where(ok, t, _INF)

    def normal(self, p):
        return np.broadcast_to(self._n().astype(np.float32), p.shape).copy()


@dataclass(frozen=True)
class Box(Primitive):
    """Oriented box: ``rotation`` [3,3] (columns = local axes in world), ``half_extents_m`` along them.

    Seen from inside (a room) the far faces are hit, so the same class draws the room shell.
    """

    center: tuple[float, float, float] = (0.0, 0.0, 0.5)
    half_extents_m: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rotation: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def bounding_sphere(self):
        return np.asarray(self.center, np.float64), float(np.linalg.norm(self.half_extents_m))

    def intersect(self, o, d, t_min: float = 1e-4):
        lo, ld = _local(np.asarray(self.rotation), self.center, o, d)
        tnear, tfar = None, None
        with np.errstate(divide="ignore", invalid="ignore"):
            for k in range(3):
                h = np.float32(self.half_extents_m[k])
                dk = np.where(ld[k] == 0, np.float32(1e-30), ld[k])
                t1 = (-h - lo[k]) / dk
                t2 = (h - lo[k]) / dk
                lo_k, hi_k = np.minimum(t1, t2), np.maximum(t1, t2)
                tnear = lo_k if tnear is None else np.maximum(tnear, lo_k)
                tfar = hi_k if tfar is None else np.minimum(tfar, hi_k)
        hit = (tnear <= tfar) & (tfar > t_min)
        t = np.where(tnear > t_min, tnear, tfar)
        return np.where(hit, t, _INF)

    def normal(self, p):
        rot = np.asarray(self.rotation, np.float32)
        pl = mat3(p - np.asarray(self.center, np.float32), rot)  # [N,3] local coordinates
        q = np.abs(pl) / np.asarray(self.half_extents_m, np.float32)
        axis = np.argmax(q, axis=1)
        nl = np.zeros_like(pl)
        rows = np.arange(p.shape[0])
        nl[rows, axis] = np.sign(pl[rows, axis])
        return mat3(nl, rot.T)


@dataclass(frozen=True)
class Cylinder(Primitive):
    """Capped cylinder around the local z axis (``rotation`` columns = local axes; identity = upright)."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.5)
    radius_m: float = 0.3
    half_height_m: float = 0.5
    rotation: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def bounding_sphere(self):
        return np.asarray(self.center, np.float64), float(np.hypot(self.radius_m, self.half_height_m))

    def intersect(self, o, d, t_min: float = 1e-4):
        lo, ld = _local(np.asarray(self.rotation), self.center, o, d)
        r2, hz = np.float32(self.radius_m**2), np.float32(self.half_height_m)
        a = ld[0] * ld[0] + ld[1] * ld[1]
        b = lo[0] * ld[0] + lo[1] * ld[1]
        c = lo[0] * lo[0] + lo[1] * lo[1] - r2
        disc = b * b - a * c
        shape = np.broadcast(a, lo[2]).shape
        out = np.full(shape, _INF, np.float32)
        # only rays whose line comes within the radius of the axis can hit the side or a cap (disc >= 0, with a
        # margin for rounding): the remaining work runs on those alone, which for thin poles and legs is a few %
        near = np.nonzero(disc >= np.float32(-1e-4) * (b * b + np.abs(a * c)))
        if near[0].size == 0:
            return out
        lo, ld = [np.broadcast_to(v, shape)[near] for v in lo], [np.broadcast_to(v, shape)[near] for v in ld]
        a, b, disc = (np.broadcast_to(v, shape)[near] for v in (a, b, disc))
        best = np.full(a.shape, _INF, np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            sq = np.sqrt(disc)
            for sgn in (-1.0, 1.0):
                t = (-b + np.float32(sgn) * sq) / a
                z = lo[2] + t * ld[2]
                ok = (disc >= 0) & (a > 0) & (t > t_min) & (np.abs(z) <= hz)
                best = np.where(ok & (t < best), t, best)
            for cap in (-hz, hz):
                t = (cap - lo[2]) / ld[2]
                x, y = lo[0] + t * ld[0], lo[1] + t * ld[1]
                ok = np.isfinite(t) & (t > t_min) & (x * x + y * y <= r2)
                best = np.where(ok & (t < best), t, best)
        out[near] = best
        return out

    def normal(self, p):
        rot = np.asarray(self.rotation, np.float32)
        pl = mat3(p - np.asarray(self.center, np.float32), rot)
        rho = np.hypot(pl[:, 0], pl[:, 1])
        cap = np.abs(np.abs(pl[:, 2]) - self.half_height_m) < np.abs(rho - self.radius_m)
        nl = np.zeros_like(pl)
        safe = np.maximum(rho, 1e-12)
        nl[:, 0] = np.where(cap, 0.0, pl[:, 0] / safe)
        nl[:, 1] = np.where(cap, 0.0, pl[:, 1] / safe)
        nl[:, 2] = np.where(cap, np.sign(pl[:, 2]), 0.0)
        return mat3(nl, rot.T)


@dataclass(frozen=True)
class Cone(Primitive):
    """Capped cone around the local z axis: base disc of ``radius_m`` at local z = -half_height, apex at
    +half_height (``rotation`` columns = local axes in world; identity = upright, apex up)."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.5)
    radius_m: float = 0.3
    half_height_m: float = 0.5
    rotation: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def bounding_sphere(self):
        return np.asarray(self.center, np.float64), float(np.hypot(self.radius_m, self.half_height_m))

    def intersect(self, o, d, t_min: float = 1e-4):
        lo, ld = _local(np.asarray(self.rotation), self.center, o, d)
        hz = np.float32(self.half_height_m)
        k2 = np.float32((self.radius_m / (2.0 * self.half_height_m)) ** 2)  # (radius per metre below the apex)^2
        below = hz - lo[2]  # distance below the apex at t = 0; it shrinks by ld[2] per unit t
        # x^2 + y^2 = k^2 (hz - z)^2 along the ray: a t^2 + 2 b t + c = 0
        a = ld[0] * ld[0] + ld[1] * ld[1] - k2 * ld[2] * ld[2]
        b = lo[0] * ld[0] + lo[1] * ld[1] + k2 * below * ld[2]
        c = lo[0] * lo[0] + lo[1] * lo[1] - k2 * below * below
        best = np.full(np.broadcast(a, lo[2]).shape, _INF, np.float32)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            disc = b * b - a * c
            sq = np.sqrt(disc)
            linear = np.abs(a) < 1e-12  # ray parallel to a generator line: one root of 2 b t + c = 0
            for root in ((-b - sq) / a, (-b + sq) / a, np.where(linear, -c / (2 * b), np.nan)):
                z = lo[2] + root * ld[2]
                ok = np.isfinite(root) & (root > t_min) & (z >= -hz) & (z <= hz)
                best = np.where(ok & (root < best), root, best)
            t = (-hz - lo[2]) / ld[2]  # base cap
            x, y = lo[0] + t * ld[0], lo[1] + t * ld[1]
            ok = np.isfinite(t) & (t > t_min) & (x * x + y * y <= np.float32(self.radius_m**2))
            best = np.where(ok & (t < best), t, best)
        return best.astype(np.float32)

    def normal(self, p):
        rot = np.asarray(self.rotation, np.float32)
        pl = mat3(p - np.asarray(self.center, np.float32), rot)
        k = self.radius_m / (2.0 * self.half_height_m)
        below = self.half_height_m - pl[:, 2]
        rho = np.hypot(pl[:, 0], pl[:, 1])
        cap = np.abs(pl[:, 2] + self.half_height_m) < np.abs(rho - k * below)  # nearer the base than the side
        safe = np.maximum(rho, 1e-12)
        # side: gradient of x^2 + y^2 - k^2 (hz - z)^2 = (x, y, k^2 (hz - z)) up to a factor, i.e. radial
        # unit vector times cos(half-angle) plus z times sin(half-angle)
        nl = np.stack([np.where(cap, 0.0, pl[:, 0] / safe), np.where(cap, 0.0, pl[:, 1] / safe),
                       np.where(cap, -1.0, k)], axis=1).astype(np.float32)
        nl /= np.linalg.norm(nl, axis=1, keepdims=True)
        return mat3(nl, rot.T)


@dataclass(frozen=True)
class Ellipsoid(Primitive):
    """Ellipsoid with semi-axes ``semi_axes_m`` along the local axes (``rotation`` columns, in world)."""

    center: tuple[float, float, float] = (0.0, 0.0, 1.0)
    semi_axes_m: tuple[float, float, float] = (0.5, 0.3, 0.2)
    rotation: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def bounding_sphere(self):
        return np.asarray(self.center, np.float64), float(max(self.semi_axes_m))

    def intersect(self, o, d, t_min: float = 1e-4):
        lo, ld = _local(np.asarray(self.rotation), self.center, o, d)
        s = [np.float32(1.0 / v) for v in self.semi_axes_m]
        qo = [lo[k] * s[k] for k in range(3)]  # scaled to the unit sphere; t is unchanged by the scaling
        qd = [ld[k] * s[k] for k in range(3)]
        a = qd[0] * qd[0] + qd[1] * qd[1] + qd[2] * qd[2]
        b = qo[0] * qd[0] + qo[1] * qd[1] + qo[2] * qd[2]
        c = qo[0] * qo[0] + qo[1] * qo[1] + qo[2] * qo[2] - np.float32(1.0)
        disc = b * b - a * c
        with np.errstate(invalid="ignore"):
            sq = np.sqrt(disc)
            t0 = (-b - sq) / a
            t1 = (-b + sq) / a
        t = np.where(t0 > t_min, t0, np.where(t1 > t_min, t1, _INF))
        return np.where(disc >= 0, t, _INF).astype(np.float32)

    def normal(self, p):
        rot = np.asarray(self.rotation, np.float32)
        pl = mat3(p - np.asarray(self.center, np.float32), rot)
        nl = pl / np.asarray(self.semi_axes_m, np.float32) ** 2  # gradient of sum (x_k / a_k)^2
        nl /= np.linalg.norm(nl, axis=1, keepdims=True)
        return mat3(nl, rot.T)
