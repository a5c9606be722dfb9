"""The wide procedural world: layouts, objects, textures, lights and camera poses drawn so that no layout
shortcut (floor at the bottom, far wall at the top, plain ceiling) predicts depth.

Two families, both built here from one seed each (numpy ``default_rng``), with exact depth and normals:

* ``world`` (the training recipe, :data:`WORLD`): layouts room | corridor | lshape | stairs | open; objects box,
  sphere, cylinder, cone, pole, table, stack (floating, touching, stacked, occluding); textures solid, checker,
  stripes, fractal, bricks, wood, assigned independently of the surface's role; camera pitch within ±60°,
  roll within ±30°.
* ``shift`` (:data:`SHIFT`, held out): the same layouts, but objects and textures of families the training recipe
  never produces (ellipsoid, tilted_box, lying_cylinder, hanging_cone; dots, marble, gradient) and camera roll
  of 35-50° (outside the training range) with pitch up to ±75°.

The two recipes are disjoint by construction: their object kinds, texture kinds and roll ranges do not overlap.
World frame: z up, metres, floor at z = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from d3_perception.synthetic.primitives import (
    Box,
    Cone,
    Cylinder,
    Ellipsoid,
    Plane,
    Primitive,
    Rectangle,
    Sphere,
    Texture,
)
from d3_perception.synthetic.render import Scene
from d3_perception.synthetic.sensor import SensorModel

__all__ = ["FAMILIES", "LAYOUTS", "SHIFT", "WORLD", "Recipe", "WorldTrajectory", "build_world", "pose_angles",
           "pose_from_angles"]

LAYOUTS = ("room", "corridor", "lshape", "stairs", "open")


@dataclass(frozen=True)
class Recipe:
    """What one family may produce. Angles in degrees: |pitch| <= ``max_pitch_deg`` (positive = looking up),
    ``roll_deg`` = the (lo, hi) range of |roll|; ``hfov_deg``: (lo, hi) horizontal field of view."""

    name: str
    object_kinds: tuple[str, ...]
    texture_kinds: tuple[str, ...]
    max_pitch_deg: float
    roll_deg: tuple[float, float]
    hfov_deg: tuple[float, float] = (50.0, 100.0)
    layouts: tuple[str, ...] = LAYOUTS


WORLD = Recipe("world", ("box", "sphere", "cylinder", "cone", "pole", "table", "stack"),
               ("solid", "checker", "stripes", "fractal", "bricks", "wood"), max_pitch_deg=60.0, roll_deg=(0.0, 30.0))
SHIFT = Recipe("shift", ("ellipsoid", "tilted_box", "lying_cylinder", "hanging_cone"), ("dots", "marble", "gradient"),
               max_pitch_deg=75.0, roll_deg=(35.0, 50.0))
FAMILIES = {WORLD.name: WORLD, SHIFT.name: SHIFT}


# ---------------------------------------------------------------------------------------------- camera
def pose_from_angles(eye, yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera(optical)-to-world ``[4,4]``: looking along yaw (rad, from +x toward +y) and pitch (rad, up > 0),
    turned by roll (rad) about the viewing direction; roll 0 keeps the image x axis horizontal."""
    f = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
    x0 = np.array([math.sin(yaw), -math.cos(yaw), 0.0])  # horizontal image right at roll 0
    y0 = np.cross(f, x0)  # image down
    pose = np.eye(4)
    pose[:3, 0] = math.cos(roll) * x0 + math.sin(roll) * y0
    pose[:3, 1] = -math.sin(roll) * x0 + math.cos(roll) * y0
    pose[:3, 2], pose[:3, 3] = f, np.asarray(eye, np.float64)
    return pose


def pose_angles(pose) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in radians of a camera(optical)-to-world ``[4,4]`` (inverse of :func:`pose_from_angles`)."""
    r = np.asarray(pose, np.float64)[:3, :3]
    f = r[:, 2]
    return (math.atan2(f[1], f[0]), math.asin(float(np.clip(f[2], -1.0, 1.0))),
            math.atan2(-r[2, 0], -r[2, 1]))


@dataclass(frozen=True)
class WorldTrajectory:
    """A smooth closed eye path (ellipse with a height wave) with independently swinging view angles.

    Eye: ellipse around ``center_xy`` (radii ``radii_m``, ``omega_rad_s``), height ``height_m`` ± ``bob_m``.
    Yaw: the path's heading + ``yaw_offset_rad`` + ``sway_rad`` sin(...); pitch: ``pitch_amp_rad`` sin(...);
    roll: ``roll_center_rad`` + ``roll_amp_rad`` sin(...). Poses are C-infinity in time.
    """

    center_xy: tuple[float, float]
    radii_m: tuple[float, float]
    height_m: float
    bob_m: float
    omega_rad_s: float
    phase_rad: float
    yaw_offset_rad: float
    sway_rad: float
    pitch_amp_rad: float
    roll_center_rad: float
    roll_amp_rad: float
    rates_rad_s: tuple[float, float, float, float]  # sway, pitch, roll, height
    phases_rad: tuple[float, float, float, float]

    def eye(self, t_s: float) -> np.ndarray:
        a = self.phase_rad + self.omega_rad_s * t_s
        return np.array([self.center_xy[0] + self.radii_m[0] * math.cos(a),
                         self.center_xy[1] + self.radii_m[1] * math.sin(a),
                         self.height_m + self.bob_m * math.sin(self.rates_rad_s[3] * t_s + self.phases_rad[3])])

    def angles(self, t_s: float) -> tuple[float, float, float]:
        """(yaw, pitch, roll) in radians at ``t_s``."""
        a = self.phase_rad + self.omega_rad_s * t_s
        sgn = 1.0 if self.omega_rad_s >= 0 else -1.0
        heading = math.atan2(sgn * self.radii_m[1] * math.cos(a), -sgn * self.radii_m[0] * math.sin(a))
        w, p = self.rates_rad_s, self.phases_rad
        return (heading + self.yaw_offset_rad + self.sway_rad * math.sin(w[0] * t_s + p[0]),
                self.pitch_amp_rad * math.sin(w[1] * t_s + p[1]),
                self.roll_center_rad + self.roll_amp_rad * math.sin(w[2] * t_s + p[2]))

    def __call__(self, t_s: float) -> np.ndarray:
        """Camera(optical)-to-world ``[4,4]`` at time ``t_s`` seconds."""
        return pose_from_angles(self.eye(t_s), *self.angles(t_s))

    def clearance_m(self, xy, samples: int = 96) -> float:
        """Smallest horizontal distance from ``xy`` to the eye path."""
        a = np.linspace(0.0, 2 * math.pi, samples, endpoint=False)
        px = self.center_xy[0] + self.radii_m[0] * np.cos(a)
        py = self.center_xy[1] + self.radii_m[1] * np.sin(a)
        return float(np.min(np.hypot(px - xy[0], py - xy[1])))


def _trajectory(rng, recipe: Recipe, center_xy, radii, z_range, along_x: bool) -> WorldTrajectory:
    lo, hi = z_range
    height = float(rng.uniform(lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo)))
    if recipe.roll_deg[0] > 0:  # roll kept inside [lo, hi] in magnitude, on one side per scene
        centre = math.radians(sum(recipe.roll_deg) / 2) * float(rng.choice([-1.0, 1.0]))
        amp = math.radians((recipe.roll_deg[1] - recipe.roll_deg[0]) / 2)
    else:
        centre, amp = 0.0, math.radians(float(rng.uniform(0.3, 1.0)) * recipe.roll_deg[1])
    # corridors: look along the corridor (heading +/- a little); elsewhere any direction relative to the path
    offset = float(rng.choice([0.0, math.pi]) + rng.normal(0, 0.2)) if along_x else float(rng.uniform(-math.pi, math.pi))
    return WorldTrajectory(
        center_xy=(float(center_xy[0]), float(center_xy[1])), radii_m=(float(radii[0]), float(radii[1])),
        height_m=height, bob_m=float(rng.uniform(0.1, 0.25) * (hi - lo)),
        omega_rad_s=float(rng.choice([-1, 1]) * rng.uniform(0.08, 0.2)), phase_rad=float(rng.uniform(0, 2 * np.pi)),
        yaw_offset_rad=offset, sway_rad=float(rng.uniform(0.2, 0.5) if along_x else rng.uniform(0.3, 1.2)),
        pitch_amp_rad=math.radians(float(rng.uniform(0.35, 1.0)) * recipe.max_pitch_deg),
        roll_center_rad=centre, roll_amp_rad=amp,
        rates_rad_s=tuple(float(v) for v in rng.uniform(0.15, 0.45, 4)),
        phases_rad=tuple(float(v) for v in rng.uniform(0, 2 * np.pi, 4)),
    )


# ---------------------------------------------------------------------------------------------- appearance
def _color(rng) -> tuple[float, float, float]:
    return tuple(float(c) for c in rng.uniform(0.05, 0.95, 3))


def _texture(rng, recipe: Recipe, scale_range=(0.08, 1.2)) -> Texture:
    """Any of the recipe's texture kinds with a random palette and scale (the surface's role plays no part)."""
    kind = str(rng.choice(recipe.texture_kinds))
    a = _color(rng)
    b = _color(rng) if rng.random() < 0.5 else tuple(float(np.clip(c + rng.uniform(-0.35, 0.35), 0.02, 0.98))
                                                       for c in a)
    direction = rng.normal(size=3)
    if kind in ("bricks", "wood") and rng.random() < 0.6:
        direction = np.array([0.0, 0.0, 1.0]) + 0.1 * direction  # courses / grain mostly level
    direction /= np.linalg.norm(direction)
    waves = []
    for octave in range(4):
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        waves.append((*(float(x) * 2.0**octave for x in v), float(rng.uniform(0, 2 * np.pi))))
    scale = float(np.exp(rng.uniform(math.log(scale_range[0]), math.log(scale_range[1]))))
    return Texture(kind=kind, color_a=a, color_b=b, scale_m=scale, direction=tuple(float(x) for x in direction),
                   waves=tuple(waves))


def _rot_z(yaw: float) -> tuple[tuple[float, float, float], ...]:
    c, s = math.cos(yaw), math.sin(yaw)
    return ((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0))


def _rot_random(rng) -> tuple[tuple[float, float, float], ...]:
    """A uniformly random rotation (QR of a Gaussian matrix, sign-fixed, det +1); by hand because scipy's
    ``Rotation.random`` would make scipy a dependency of the package for three lines."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return tuple(tuple(float(v) for v in row) for row in q)


def _rot_lying(yaw: float) -> tuple[tuple[float, float, float], ...]:
    """Local z axis horizontal along ``yaw``."""
    c, s = math.cos(yaw), math.sin(yaw)
    z = np.array([c, s, 0.0])
    x = np.array([0.0, 0.0, 1.0])
    y = np.cross(z, x)
    return tuple(tuple(float(v) for v in row) for row in np.stack([x, y, z], axis=1))


# ---------------------------------------------------------------------------------------------- objects
def _object(rng, recipe: Recipe, x: float, y: float, floor_z: float, size: float, ceiling_z: float) -> list[Primitive]:
    """One object of the recipe's kinds about ``size`` m across at (x, y), standing, floating or hanging."""
    kind = str(rng.choice(recipe.object_kinds))
    tex = _texture(rng, recipe, (0.04, max(0.1, 0.6 * size)))
    room = ceiling_z - floor_z if math.isfinite(ceiling_z) else 4.0
    lift = float(rng.uniform(0.2, 0.6) * room) if rng.random() < 0.2 else 0.0  # floating objects
    z0 = floor_z + lift
    if kind == "box":
        hx, hy, hz = (float(v) for v in rng.uniform(0.2, 0.5, 3) * size)
        return [Box(center=(x, y, z0 + hz), half_extents_m=(hx, hy, hz), rotation=_rot_z(rng.uniform(0, np.pi)),
                    texture=tex, tag=kind)]
    if kind == "sphere":
        r = float(rng.uniform(0.2, 0.5) * size)
        return [Sphere(center=(x, y, z0 + r), radius_m=r, texture=tex, tag=kind)]
    if kind == "cylinder":
        r, hz = float(rng.uniform(0.1, 0.4) * size), float(rng.uniform(0.25, 0.8) * size)
        return [Cylinder(center=(x, y, z0 + hz), radius_m=r, half_height_m=hz, texture=tex, tag=kind)]
    if kind == "cone":
        r, hz = float(rng.uniform(0.15, 0.45) * size), float(rng.uniform(0.25, 0.8) * size)
        return [Cone(center=(x, y, z0 + hz), radius_m=r, half_height_m=hz, texture=tex, tag=kind)]
    if kind == "pole":  # thin, floor to ceiling (or tall outdoors)
        top = ceiling_z if math.isfinite(ceiling_z) else floor_z + float(rng.uniform(2.5, 6.0))
        hz = (top - floor_z) / 2
        return [Cylinder(center=(x, y, floor_z + hz), radius_m=float(rng.uniform(0.02, 0.08)), half_height_m=hz,
                         texture=tex, tag=kind)]
    if kind == "table":
        hx, hy = float(rng.uniform(0.3, 0.6) * size), float(rng.uniform(0.25, 0.5) * size)
        top_z = floor_z + float(rng.uniform(0.45, 1.1))
        yaw = float(rng.uniform(0, np.pi))
        rot = _rot_z(yaw)
        parts: list[Primitive] = [Box(center=(x, y, top_z - 0.02), half_extents_m=(hx, hy, 0.02), rotation=rot,
                                      texture=tex, tag=kind)]
        leg_tex = _texture(rng, recipe)
        c, s = math.cos(yaw), math.sin(yaw)
        for sx, sy in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            lx, ly = sx * (hx - 0.05), sy * (hy - 0.05)
            parts.append(Cylinder(center=(x + c * lx - s * ly, y + s * lx + c * ly, floor_z + (top_z - 0.04 - floor_z) / 2),
                                  radius_m=0.025, half_height_m=(top_z - 0.04 - floor_z) / 2, texture=leg_tex, tag=kind))
        if rng.random() < 0.6:  # something on the table
            r = float(rng.uniform(0.08, 0.2) * size + 0.03)
            parts.append(Sphere(center=(x, y, top_z + r), radius_m=r, texture=_texture(rng, recipe), tag=kind))
        return parts
    if kind == "stack":  # 2-3 boxes on top of each other, each turned
        parts, z = [], z0
        h = float(rng.uniform(0.2, 0.4) * size)
        for _ in range(int(rng.integers(2, 4))):
            parts.append(Box(center=(x, y, z + h), half_extents_m=(h * 1.2, h, h), rotation=_rot_z(rng.uniform(0, np.pi)),
                             texture=_texture(rng, recipe), tag=kind))
            z += 2 * h
            h *= float(rng.uniform(0.6, 0.9))
        return parts
    if kind == "ellipsoid":
        axes = tuple(float(v) for v in rng.uniform(0.1, 0.5, 3) * size)
        return [Ellipsoid(center=(x, y, z0 + max(axes)), semi_axes_m=axes, rotation=_rot_random(rng), texture=tex,
                          tag=kind)]
    if kind == "tilted_box":
        he = tuple(float(v) for v in rng.uniform(0.15, 0.45, 3) * size)
        return [Box(center=(x, y, z0 + float(np.linalg.norm(he))), half_extents_m=he, rotation=_rot_random(rng),
                    texture=tex, tag=kind)]
    if kind == "lying_cylinder":
        r, hz = float(rng.uniform(0.1, 0.3) * size), float(rng.uniform(0.3, 0.7) * size)
        return [Cylinder(center=(x, y, z0 + r), radius_m=r, half_height_m=hz, rotation=_rot_lying(rng.uniform(0, np.pi)),
                         texture=tex, tag=kind)]
    # hanging_cone: apex down, hanging from the ceiling (or floating outdoors)
    r, hz = float(rng.uniform(0.15, 0.45) * size), float(rng.uniform(0.25, 0.6) * size)
    top = ceiling_z if math.isfinite(ceiling_z) else floor_z + float(rng.uniform(2.0, 4.0))
    flip = ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0))
    return [Cone(center=(x, y, top - hz), radius_m=r, half_height_m=hz, rotation=flip, texture=tex, tag=kind)]


# ---------------------------------------------------------------------------------------------- layouts
def _rect_xy(cx, cy, z, hx, hy, tex, up=True) -> Rectangle:
    """Horizontal rectangle (floor or ceiling) centred at (cx, cy, z)."""
    return Rectangle(center=(cx, cy, z), axis_u=(1.0, 0.0, 0.0), axis_v=(0.0, 1.0, 0.0), half_u_m=hx, half_v_m=hy,
                     casts_shadow=False, texture=tex, tag="layout")


def _wall(p0, p1, height, tex) -> Rectangle:
    """Vertical rectangle from floor to ``height`` over the segment p0 -> p1 (xy)."""
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    u = p1 - p0
    half = float(np.linalg.norm(u)) / 2
    u /= 2 * half
    mid = (p0 + p1) / 2
    return Rectangle(center=(float(mid[0]), float(mid[1]), height / 2), axis_u=(float(u[0]), float(u[1]), 0.0),
                     axis_v=(0.0, 0.0, 1.0), half_u_m=half, half_v_m=height / 2, casts_shadow=False, texture=tex,
                     tag="layout")


def _polygon_walls(rng, recipe, corners, height) -> list[Primitive]:
    return [_wall(corners[i], corners[(i + 1) % len(corners)], height, _texture(rng, recipe))
            for i in range(len(corners))]


def _layout(rng, recipe: Recipe, layout: str):
    """-> (shell primitives, placement rectangles [(x0, y0, x1, y1)], ceiling z (inf = open), path box, along_x)."""
    if layout == "open":
        ground = Plane(normal_vec=(0.0, 0.0, 1.0), offset_m=0.0, texture=_texture(rng, recipe, (0.2, 3.0)), tag="layout")
        span = float(rng.uniform(8, 16))
        return [ground], [(-span, -span, span, span)], math.inf, (-0.5 * span, -0.5 * span, 0.5 * span, 0.5 * span), False
    if layout == "corridor":
        lx, ly, lz = float(rng.uniform(12, 30)), float(rng.uniform(1.6, 3.0)), float(rng.uniform(2.3, 3.5))
    else:
        lx, ly, lz = float(rng.uniform(3.5, 12)), float(rng.uniform(3.0, 10)), float(rng.uniform(2.2, 4.5))
    if layout == "lshape":  # the big rectangle minus its +x,+y corner: floor A (full width) and B (left part)
        cx, cy = float(rng.uniform(0.4, 0.7) * lx), float(rng.uniform(0.4, 0.7) * ly)
        corners = [(0, 0), (lx, 0), (lx, cy), (cx, cy), (cx, ly), (0, ly)]
        shell: list[Primitive] = []
        tex_floor, tex_ceiling = _texture(rng, recipe), _texture(rng, recipe)
        for x0, y0, x1, y1 in ((0, 0, lx, cy), (0, cy, cx, ly)):
            shell.append(_rect_xy((x0 + x1) / 2, (y0 + y1) / 2, 0.0, (x1 - x0) / 2, (y1 - y0) / 2, tex_floor))
            shell.append(_rect_xy((x0 + x1) / 2, (y0 + y1) / 2, lz, (x1 - x0) / 2, (y1 - y0) / 2, tex_ceiling))
        shell += _polygon_walls(rng, recipe, corners, lz)
        return shell, [(0, 0, lx, cy), (0, cy, cx, ly)], lz, (0, 0, lx, cy), False
    corners = [(0, 0), (lx, 0), (lx, ly), (0, ly)]
    shell = [_rect_xy(lx / 2, ly / 2, 0.0, lx / 2, ly / 2, _texture(rng, recipe)),
             _rect_xy(lx / 2, ly / 2, lz, lx / 2, ly / 2, _texture(rng, recipe))]
    shell += _polygon_walls(rng, recipe, corners, lz)
    places = [(0, 0, lx, ly)]
    if layout == "stairs":  # steps up along one wall, up to about 2/3 of the room height
        steps = int(rng.integers(4, 10))
        rise = float(rng.uniform(0.15, 0.22))
        run = float(rng.uniform(0.25, 0.4))
        width = float(min(rng.uniform(0.8, 1.6), ly / 3))
        tex = _texture(rng, recipe)
        for i in range(min(steps, int(0.66 * lz / rise))):
            h = (i + 1) * rise
            shell.append(Box(center=(0.2 + (i + 0.5) * run, width / 2, h / 2), half_extents_m=(run / 2, width / 2, h / 2),
                             texture=tex, tag="layout"))
        places = [(0, width + 0.1, lx, ly)]
        return shell, places, lz, (0, width + 0.1, lx, ly), False
    return shell, places, lz, (0, 0, lx, ly), layout == "corridor"


def build_world(rng: np.random.Generator, seed: int, recipe: Recipe) -> Scene:
    """A scene of ``recipe``'s family from ``rng`` (see the module docstring)."""
    layout = str(rng.choice(recipe.layouts))
    shell, places, ceiling, box, along_x = _layout(rng, recipe, layout)
    x0, y0, x1, y1 = box
    margin = 0.35
    center = ((x0 + x1) / 2, (y0 + y1) / 2)
    radii = (float(rng.uniform(0.15, 1.0)) * max((x1 - x0) / 2 - margin, 0.1),
             float(rng.uniform(0.15, 1.0)) * max((y1 - y0) / 2 - margin, 0.1))
    z_range = (0.3, ceiling - 0.3) if math.isfinite(ceiling) else (0.4, 3.0)
    traj = _trajectory(rng, recipe, center, radii, z_range, along_x)

    objects: list[Primitive] = []
    placed: list[tuple[np.ndarray, float]] = []
    count = int(rng.integers(6, 18))
    for _ in range(count):
        size = float(np.exp(rng.uniform(math.log(0.3), math.log(1.6))))
        foot = 0.8 * size  # covers every object kind's footprint, turned or tilted
        px0, py0, px1, py1 = places[int(rng.integers(len(places)))]
        for _try in range(30):
            xy = rng.uniform([px0 + foot, py0 + foot], [max(px1 - foot, px0 + foot + 1e-3), max(py1 - foot, py0 + foot + 1e-3)])
            if traj.clearance_m(xy) < foot + 0.3:
                continue
            # most objects stand alone; some may touch or overlap their neighbours (occlusion, contact)
            if rng.random() < 0.7 and any(np.hypot(*(xy - q)) < foot + r for q, r in placed):
                continue
            placed.append((xy, foot))
            objects += _object(rng, recipe, float(xy[0]), float(xy[1]), 0.0, size, ceiling)
            break
    if not math.isfinite(ceiling):  # distant blocks on the open ground
        for _ in range(int(rng.integers(6, 16))):
            a, dist = float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(15, 40))
            hx, hy, hz = (float(v) for v in rng.uniform([2, 2, 2], [6, 6, 12]))
            objects.append(Box(center=(center[0] + dist * math.cos(a), center[1] + dist * math.sin(a), hz),
                               half_extents_m=(hx, hy, hz), rotation=_rot_z(rng.uniform(0, np.pi)),
                               texture=_texture(rng, recipe, (0.5, 4.0)), tag="layout"))

    sun = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.7), rng.uniform(0.3, 1.0)])
    points = []
    if math.isfinite(ceiling):
        for _ in range(int(rng.integers(0, 3))):
            pos = (float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1)), float(ceiling - 0.15))
            points.append((pos, tuple(float(v) for v in rng.uniform(0.3, 0.8) * rng.uniform(0.8, 1.0, 3)),
                           float(rng.uniform(1.5, 5.0))))
    outdoor = not math.isfinite(ceiling)
    max_depth = float(rng.uniform(50, 70)) if outdoor else None  # farther ground counts as sky (invalid)
    haze = rng.random() < 0.3
    fog = (float(rng.uniform(30, 90)) if outdoor else float(rng.uniform(6, 30))) if haze else None
    return Scene(
        primitives=tuple(shell + objects), light_dir=tuple(float(v) for v in sun / np.linalg.norm(sun)),
        ambient=tuple(float(v) for v in rng.uniform(0.12, 0.4) * rng.uniform(0.85, 1.0, 3)),
        light_rgb=tuple(float(v) for v in rng.uniform(0.4, 0.9) * rng.uniform(0.85, 1.0, 3)),
        sky_zenith=tuple(float(v) for v in rng.uniform([0.1, 0.2, 0.45], [0.4, 0.55, 0.95])),
        sky_horizon=tuple(float(v) for v in rng.uniform([0.55, 0.6, 0.65], [0.92, 0.92, 0.98])),
        fog_m=fog, max_depth_m=max_depth, shadows=bool(rng.random() < 0.7), kind=layout, seed=seed,
        trajectory=traj, point_lights=tuple(points),
        specular=float(rng.uniform(0.1, 0.6)) if rng.random() < 0.5 else 0.0,
        shininess=float(rng.uniform(8, 64)), hfov_deg=float(rng.uniform(*recipe.hfov_deg)),
        sensor=SensorModel(), family=recipe.name,
    )
