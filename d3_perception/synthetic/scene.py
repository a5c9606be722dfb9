"""Seeded procedural worlds (rooms, outdoor-like fields) and smooth camera trajectories through them.

``make_scene(seed, kind)`` is deterministic: the same seed and kind give the same primitives, lights
and trajectory on every machine (numpy ``default_rng``). World frame: z up, metres, floor/ground at z=0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from d3_perception.synthetic.primitives import Box, Cylinder, Plane, Primitive, Rectangle, Sphere, Texture
from d3_perception.synthetic.render import Scene, look_at
from d3_perception.synthetic.world import FAMILIES, build_world

__all__ = ["SCENE_KINDS", "OrbitTrajectory", "make_scene"]

# room/outdoor/mixed: the original generator (kept bit-identical: the bundled model's recorded quality uses it);
# world/shift: the wide world's training recipe and its held-out shift family (synthetic/world.py)
SCENE_KINDS = ("room", "outdoor", "mixed", "world", "shift")


@dataclass(frozen=True)
class OrbitTrajectory:
    """A smooth closed camera path: an ellipse around ``center_xy`` with a swaying gaze.

    The eye moves on the ellipse (radii ``radii_m``) at ``omega_rad_s``, bobbing ``bob_m`` in height; the
    gaze points toward the centre (``inward`` = 1) or along the path (0), turned by a yaw that sways
    ``sway_rad`` at ``sway_rad_s`` and pitched down by ``pitch_rad``. Poses are C-infinity in time.
    """

    center_xy: tuple[float, float]
    radii_m: tuple[float, float]
    height_m: float
    omega_rad_s: float
    phase_rad: float = 0.0
    bob_m: float = 0.05
    inward: float = 1.0
    sway_rad: float = 0.4
    sway_rad_s: float = 0.23
    pitch_rad: float = 0.15

    def eye(self, t_s: float) -> np.ndarray:
        a = self.phase_rad + self.omega_rad_s * t_s
        return np.array([
            self.center_xy[0] + self.radii_m[0] * math.cos(a),
            self.center_xy[1] + self.radii_m[1] * math.sin(a),
            self.height_m + self.bob_m * math.sin(2.3 * a + 0.7),
        ])

    def __call__(self, t_s: float) -> np.ndarray:
        """Camera(optical)-to-world ``[4,4]`` at time ``t_s`` seconds."""
        eye = self.eye(t_s)
        a = self.phase_rad + self.omega_rad_s * t_s
        to_center = np.array([self.center_xy[0] - eye[0], self.center_xy[1] - eye[1]])
        to_center /= max(np.linalg.norm(to_center), 1e-9)
        sgn = 1.0 if self.omega_rad_s >= 0 else -1.0
        tangent = sgn * np.array([-self.radii_m[0] * math.sin(a), self.radii_m[1] * math.cos(a)])
        tangent /= max(np.linalg.norm(tangent), 1e-9)
        base = self.inward * to_center + (1.0 - self.inward) * tangent
        yaw = math.atan2(base[1], base[0]) + self.sway_rad * math.sin(self.sway_rad_s * t_s + self.phase_rad)
        pitch = self.pitch_rad * (1.0 + 0.3 * math.sin(0.31 * t_s))
        direction = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), -math.sin(pitch)])
        return look_at(eye, eye + direction)

    def clearance_m(self, xy: np.ndarray, samples: int = 96) -> float:
        """Smallest horizontal distance from ``xy`` to the eye path."""
        a = np.linspace(0.0, 2 * math.pi, samples, endpoint=False)
        px = self.center_xy[0] + self.radii_m[0] * np.cos(a)
        py = self.center_xy[1] + self.radii_m[1] * np.sin(a)
        return float(np.min(np.hypot(px - xy[0], py - xy[1])))


def make_scene(seed: int, kind: str = "room") -> Scene:
    """A deterministic procedural :class:`Scene` for ``seed`` (int >= 0).

    ``kind``: ``room`` (closed room 4-10 m with floor, walls, ceiling, furniture-like boxes, spheres,
    cylinders, leaning boards), ``outdoor`` (textured ground, buildings, trees, poles, boulders, ramps up
    to ~60 m, sky, fog) or ``mixed`` (room or outdoor, picked by the seed); ``world`` or ``shift``: the wide
    world's training family or its held-out shift family (:mod:`d3_perception.synthetic.world`: varied layouts,
    objects, textures, lights, camera pitch/roll/FOV and sensor effects). The scene carries a smooth closed
    camera trajectory that keeps clear of every object.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0; got {seed!r}")
    if kind not in SCENE_KINDS:
        raise ValueError(f"`kind` must be one of {SCENE_KINDS}; got {kind!r}")
    rng = np.random.default_rng([int(seed), SCENE_KINDS.index(kind)])
    if kind in FAMILIES:
        return build_world(rng, int(seed), FAMILIES[kind])
    if kind == "mixed":
        kind = "room" if rng.random() < 0.5 else "outdoor"
    build = _room if kind == "room" else _outdoor
    return build(rng, int(seed))


# ---------------------------------------------------------------------------------------------- helpers
def _color(rng, lo=0.15, hi=0.9) -> tuple[float, float, float]:
    return tuple(float(c) for c in rng.uniform(lo, hi, 3))


def _texture(rng, scale_range=(0.15, 0.8), kinds=("solid", "checker", "stripes", "noise", "gradient")):
    kind = str(rng.choice(kinds))
    a = _color(rng)
    b = tuple(float(np.clip(c + rng.uniform(-0.5, 0.5), 0.03, 0.97)) for c in a)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    waves = []
    for _ in range(4):
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        waves.append((*(float(x) * float(rng.uniform(0.5, 2.0)) for x in v), float(rng.uniform(0, 2 * np.pi))))
    return Texture(kind=kind, color_a=a, color_b=b, scale_m=float(rng.uniform(*scale_range)),
                   direction=tuple(float(x) for x in direction), waves=tuple(waves))


def _rot_z(yaw: float) -> tuple[tuple[float, float, float], ...]:
    c, s = math.cos(yaw), math.sin(yaw)
    return ((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0))


def _place(rng, traj: OrbitTrajectory, footprint_m: float, margin_m: float, sample_xy, placed, tries=40):
    """Rejection-sample an (x, y) clear of the camera path and of earlier objects; None if no room."""
    for _ in range(tries):
        xy = sample_xy()
        if traj.clearance_m(xy) < footprint_m + margin_m:
            continue
        if any(np.hypot(*(xy - q)) < footprint_m + r + 0.1 for q, r in placed):
            continue
        placed.append((xy, footprint_m))
        return xy
    return None


def _object(rng, xy, z0: float, size_m: float) -> list[Primitive]:
    """One random object standing at ``xy`` on height ``z0``, about ``size_m`` across."""
    kind = rng.choice(["box", "sphere", "cylinder", "board", "stack"], p=[0.3, 0.2, 0.2, 0.15, 0.15])
    tex = _texture(rng, scale_range=(0.05 * size_m + 0.05, 0.5 * size_m + 0.1))
    x, y = float(xy[0]), float(xy[1])
    if kind == "box":
        hx, hy, hz = (float(v) for v in rng.uniform(0.25, 0.5, 3) * size_m)
        return [Box(center=(x, y, z0 + hz), half_extents_m=(hx, hy, hz), rotation=_rot_z(rng.uniform(0, np.pi)),
                    texture=tex)]
    if kind == "sphere":
        r = float(rng.uniform(0.25, 0.5) * size_m)
        return [Sphere(center=(x, y, z0 + r + float(rng.uniform(0, 0.5)) * r * (rng.random() < 0.3)),
                       radius_m=r, texture=tex)]
    if kind == "cylinder":
        r = float(rng.uniform(0.12, 0.4) * size_m)
        hz = float(rng.uniform(0.3, 1.0) * size_m)
        return [Cylinder(center=(x, y, z0 + hz), radius_m=r, half_height_m=hz, texture=tex)]
    if kind == "board":  # a slanted plane leaning on nothing in particular
        yaw = float(rng.uniform(0, 2 * np.pi))
        tilt = float(rng.uniform(0.2, 1.2))
        hu, hv = float(rng.uniform(0.3, 0.6) * size_m), float(rng.uniform(0.3, 0.7) * size_m)
        u = (math.cos(yaw), math.sin(yaw), 0.0)
        v = (-math.sin(yaw) * math.cos(tilt), math.cos(yaw) * math.cos(tilt), math.sin(tilt))
        return [Rectangle(center=(x, y, z0 + hv * math.sin(tilt) + 0.01), axis_u=u, axis_v=v, half_u_m=hu,
                          half_v_m=hv, texture=tex)]
    # stack: a box with a sphere or cylinder on top
    h = float(rng.uniform(0.2, 0.4) * size_m)
    base = Box(center=(x, y, z0 + h), half_extents_m=(h * 1.2, h, h), rotation=_rot_z(rng.uniform(0, np.pi)),
               texture=tex)
    r = 0.7 * h
    top = (Sphere(center=(x, y, z0 + 2 * h + r), radius_m=r, texture=_texture(rng)) if rng.random() < 0.5
           else Cylinder(center=(x, y, z0 + 2 * h + r), radius_m=0.6 * r, half_height_m=r, texture=_texture(rng)))
    return [base, top]


# ---------------------------------------------------------------------------------------------- kinds
def _room(rng, seed: int) -> Scene:
    lx, ly, lz = float(rng.uniform(5, 10)), float(rng.uniform(4, 8)), float(rng.uniform(2.6, 3.4))
    shell = [
        # floor, ceiling and walls as one box seen from inside; separate thin slabs give each its texture
        Box(center=(0, 0, lz / 2), half_extents_m=(lx / 2, ly / 2, lz / 2), casts_shadow=False,
            texture=_texture(rng, (0.3, 1.2), kinds=("solid", "noise", "gradient", "stripes"))),
        Rectangle(center=(0, 0, 1e-3), axis_u=(1, 0, 0), axis_v=(0, 1, 0), half_u_m=lx / 2, half_v_m=ly / 2,
                  casts_shadow=False, texture=_texture(rng, (0.3, 0.9), kinds=("checker", "stripes", "noise"))),
    ]
    if rng.random() < 0.5:  # a differently textured wall
        shell.append(Rectangle(center=(lx / 2 - 1e-3, 0, lz / 2), axis_u=(0, 1, 0), axis_v=(0, 0, 1),
                               half_u_m=ly / 2, half_v_m=lz / 2, casts_shadow=False, texture=_texture(rng)))
    traj = OrbitTrajectory(
        center_xy=(0.0, 0.0), radii_m=(float(rng.uniform(0.3, 0.4) * lx), float(rng.uniform(0.3, 0.4) * ly)),
        height_m=float(rng.uniform(1.1, 1.7)), omega_rad_s=float(rng.choice([-1, 1]) * rng.uniform(0.12, 0.25)),
        phase_rad=float(rng.uniform(0, 2 * np.pi)), inward=float(rng.uniform(0.6, 1.0)),
        sway_rad=float(rng.uniform(0.2, 0.7)), pitch_rad=float(rng.uniform(0.05, 0.35)),
    )
    objects: list[Primitive] = []
    placed: list = []
    for _ in range(int(rng.integers(3, 8))):
        size = float(rng.uniform(0.5, 1.3))

        def sample(size=size):
            return rng.uniform([-lx / 2 + size, -ly / 2 + size], [lx / 2 - size, ly / 2 - size])

        xy = _place(rng, traj, 0.75 * size, 0.35, sample, placed)
        if xy is not None:
            objects += _object(rng, xy, 0.0, size)
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(0.6, 1.0)])
    return Scene(
        primitives=tuple(shell + objects), light_dir=tuple(float(v) for v in light / np.linalg.norm(light)),
        ambient=tuple(float(v) for v in rng.uniform(0.25, 0.45) * rng.uniform(0.85, 1.0, 3)),
        light_rgb=tuple(float(v) for v in rng.uniform(0.55, 0.85) * rng.uniform(0.85, 1.0, 3)),
        fog_m=None, shadows=True, kind="room", seed=seed, trajectory=traj,
    )


def _outdoor(rng, seed: int) -> Scene:
    radius = float(rng.uniform(8, 18))
    traj = OrbitTrajectory(
        center_xy=(0.0, 0.0), radii_m=(radius, radius * float(rng.uniform(0.6, 1.0))),
        height_m=float(rng.uniform(1.2, 2.2)), omega_rad_s=float(rng.choice([-1, 1]) * 1.4 / radius),
        phase_rad=float(rng.uniform(0, 2 * np.pi)), inward=float(rng.uniform(0.0, 0.5)), bob_m=0.08,
        sway_rad=float(rng.uniform(0.2, 0.6)), pitch_rad=float(rng.uniform(0.02, 0.15)),
    )
    ground = Plane(normal_vec=(0, 0, 1), offset_m=0.0,
                   texture=_texture(rng, (0.5, 3.0), kinds=("checker", "noise", "stripes")))
    objects: list[Primitive] = []
    placed: list = []
    span = radius + 45.0
    for _ in range(int(rng.integers(14, 26))):
        roll = rng.random()
        if roll < 0.3:  # building
            hx, hy, hz = float(rng.uniform(2, 6)), float(rng.uniform(2, 6)), float(rng.uniform(3, 12))
            xy = _place(rng, traj, math.hypot(hx, hy), 2.0, lambda: rng.uniform(-span, span, 2), placed)
            if xy is not None:
                objects.append(Box(center=(float(xy[0]), float(xy[1]), hz), half_extents_m=(hx, hy, hz),
                                   rotation=_rot_z(rng.uniform(0, np.pi)),
                                   texture=_texture(rng, (0.8, 3.0), ("stripes", "checker", "solid", "noise"))))
        elif roll < 0.55:  # tree: trunk + crown
            trunk_h = float(rng.uniform(1.5, 4.0))
            crown = float(rng.uniform(1.0, 2.5))
            xy = _place(rng, traj, crown, 1.5, lambda: rng.uniform(-span, span, 2), placed)
            if xy is not None:
                x, y = float(xy[0]), float(xy[1])
                objects.append(Cylinder(center=(x, y, trunk_h / 2), radius_m=float(rng.uniform(0.12, 0.3)),
                                        half_height_m=trunk_h / 2,
                                        texture=Texture("stripes", (0.35, 0.22, 0.1), (0.25, 0.15, 0.07), 0.3,
                                                        (0.0, 0.0, 1.0))))
                green = (float(rng.uniform(0.05, 0.3)), float(rng.uniform(0.35, 0.7)), float(rng.uniform(0.05, 0.3)))
                objects.append(Sphere(center=(x, y, trunk_h + crown * 0.8), radius_m=crown,
                                      texture=Texture("noise", green, tuple(c * 0.5 for c in green), 0.6,
                                                      waves=_texture(rng).waves or ((1, 0, 0, 0),))))
        else:  # small things near the path: boulders, poles, ramps, crates
            near = float(rng.uniform(2.0, 8.0))

            def sample_near(near=near):
                a = rng.uniform(0, 2 * np.pi)
                rr = (radius + rng.choice([-1, 1]) * near) / radius
                return np.array([traj.radii_m[0] * rr * math.cos(a), traj.radii_m[1] * rr * math.sin(a)])

            size = float(rng.uniform(0.6, 2.0))
            xy = _place(rng, traj, 0.75 * size, 1.2, sample_near, placed)
            if xy is not None:
                objects += _object(rng, xy, 0.0, size)
    max_depth_m = float(rng.uniform(80, 150))
    sun_el = float(rng.uniform(0.35, 1.2))
    sun_az = float(rng.uniform(0, 2 * np.pi))
    light = (math.cos(sun_az) * math.cos(sun_el), math.sin(sun_az) * math.cos(sun_el), math.sin(sun_el))
    return Scene(
        primitives=(ground, *objects), light_dir=light,
        ambient=tuple(float(v) for v in rng.uniform(0.25, 0.4) * np.array([0.9, 0.95, 1.05])),
        light_rgb=tuple(float(v) for v in rng.uniform(0.7, 0.95) * np.array([1.0, 0.97, 0.9])),
        sky_zenith=tuple(float(v) for v in rng.uniform([0.15, 0.3, 0.6], [0.35, 0.5, 0.95])),
        sky_horizon=tuple(float(v) for v in rng.uniform([0.7, 0.75, 0.8], [0.9, 0.92, 0.98])),
        fog_m=max_depth_m / float(rng.uniform(1.8, 2.5)), max_depth_m=max_depth_m, shadows=True, kind="outdoor", seed=seed, trajectory=traj,
    )
