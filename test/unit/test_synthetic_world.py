"""The wide world (synthetic/world.py): exact depth and normals for every primitive, layout and camera pose
(checked against surface equations written here, independent of the renderer's intersection code),
determinism per seed, and the training and shift families disjoint by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from d3_perception.geometry.intrinsics import intrinsics_from_fov
from d3_perception.synthetic import (
    FAMILIES,
    SHIFT,
    WORLD,
    Box,
    Cone,
    Cylinder,
    Ellipsoid,
    Plane,
    Rectangle,
    Scene,
    SensorModel,
    Sphere,
    SyntheticSequence,
    Texture,
    apply_sensor,
    make_scene,
    pose_angles,
    pose_from_angles,
    render,
)
from d3_perception.synthetic.world import LAYOUTS

HW = (24, 32)


# ---------------------------------------------------------------------------------------------- analytic surfaces
def _local(prim, p):
    rot = np.asarray(getattr(prim, "rotation", np.eye(3)), np.float64)
    return (p - np.asarray(prim.center, np.float64)) @ rot, rot


def _box_sdf(q, half):
    d = np.abs(q) - np.asarray(half, np.float64)
    return np.linalg.norm(np.maximum(d, 0), axis=1) + np.minimum(d.max(axis=1), 0)


def surface(prim, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points [N,3] -> (distance to the primitive's surface [N] m, analytic world normal [N,3])."""
    if isinstance(prim, Sphere):
        v = p - np.asarray(prim.center)
        r = np.linalg.norm(v, axis=1)
        return np.abs(r - prim.radius_m), v / r[:, None]
    if isinstance(prim, Plane):
        n = np.asarray(prim.normal_vec, np.float64) / np.linalg.norm(prim.normal_vec)
        return np.abs(p @ n - prim.offset_m), np.broadcast_to(n, p.shape)
    if isinstance(prim, Rectangle):
        u, v = np.asarray(prim.axis_u, np.float64), np.asarray(prim.axis_v, np.float64)
        n = np.cross(u, v)
        n /= np.linalg.norm(n)
        q = p - np.asarray(prim.center)
        out = np.maximum(np.abs(q @ u) - prim.half_u_m, 0) + np.maximum(np.abs(q @ v) - prim.half_v_m, 0)
        return np.abs(q @ n) + out, np.broadcast_to(n, p.shape)
    if isinstance(prim, Box):
        q, rot = _local(prim, p)
        k = np.argmax(np.abs(q) / np.asarray(prim.half_extents_m), axis=1)
        nl = np.zeros_like(q)
        nl[np.arange(len(q)), k] = np.sign(q[np.arange(len(q)), k])
        return np.abs(_box_sdf(q, prim.half_extents_m)), nl @ rot.T
    if isinstance(prim, Cylinder):
        q, rot = _local(prim, p)
        rho = np.hypot(q[:, 0], q[:, 1])
        d = np.stack([rho - prim.radius_m, np.abs(q[:, 2]) - prim.half_height_m], axis=1)
        sdf = np.linalg.norm(np.maximum(d, 0), axis=1) + np.minimum(d.max(axis=1), 0)
        side = np.abs(d[:, 0]) < np.abs(d[:, 1])
        nl = np.where(side[:, None], np.stack([q[:, 0] / rho, q[:, 1] / rho, 0 * rho], 1),
                      np.stack([0 * rho, 0 * rho, np.sign(q[:, 2])], 1))
        return np.abs(sdf), nl @ rot.T
    if isinstance(prim, Cone):
        q, rot = _local(prim, p)
        h, r = prim.half_height_m, prim.radius_m
        slope = r / (2 * h)  # radius per metre below the apex
        rho = np.hypot(q[:, 0], q[:, 1])
        side_gap = np.abs(rho - slope * (h - q[:, 2])) / math.hypot(1, slope) + np.maximum(np.abs(q[:, 2]) - h, 0)
        base_gap = np.abs(q[:, 2] + h) + np.maximum(rho - r, 0)
        side = side_gap < base_gap
        side_n = np.stack([q[:, 0] / rho, q[:, 1] / rho, np.full_like(rho, slope)], 1) / math.hypot(1, slope)
        nl = np.where(side[:, None], side_n, np.array([0.0, 0.0, -1.0]))
        return np.minimum(side_gap, base_gap), nl @ rot.T
    if isinstance(prim, Ellipsoid):
        q, rot = _local(prim, p)
        a = np.asarray(prim.semi_axes_m)
        g = q / a**2
        level = np.linalg.norm(q / a, axis=1)
        # |F - 1| / |grad F| with F = |q/a|: first-order distance to the surface
        dist = np.abs(level - 1) * level / np.linalg.norm(g, axis=1)
        return dist, (g / np.linalg.norm(g, axis=1, keepdims=True)) @ rot.T
    raise AssertionError(f"no analytic surface for {type(prim).__name__}")


def check_frame_exact(scene: Scene, frame) -> None:
    """Every valid pixel back-projects onto a primitive's surface, at the depth the renderer reports, with that
    surface's normal (turned to the camera); misses are exactly the invalid pixels."""
    assert frame.valid.any()
    v, u = np.nonzero(frame.valid)
    z = frame.depth_m[v, u].astype(np.float64)
    K, pose = frame.K, frame.pose
    cam = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=1)
    world = cam @ pose[:3, :3].T + pose[:3, 3]
    dists, normals = zip(*(surface(prim, world) for prim in scene.primitives), strict=True)
    dist = np.stack(dists)  # [P,N]
    best = np.argmin(dist, axis=0)
    nearest = dist[best, np.arange(len(best))]
    assert nearest.max() < 1e-3 * max(1.0, float(z.max())), f"pixel {nearest.argmax()} off every surface"
    n_true = np.stack(normals)[best, np.arange(len(best))] @ pose[:3, :3]  # world -> optical
    n_pix = frame.normals[v, u].astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(n_pix, axis=1), 1.0, atol=1e-4)
    assert (np.einsum("ij,ij->i", n_pix, cam) < 0).all()  # facing the camera
    agree = np.abs(np.einsum("ij,ij->i", n_pix, n_true)) > 0.9995
    # a pixel exactly on an edge is on two surfaces; the analytic pick may be the other one
    assert agree.mean() > 0.98, f"normals disagree on {(~agree).sum()} of {agree.size} pixels"


# ---------------------------------------------------------------------------------------------- primitives
POSES = [(0.3, 0.0, 0.0), (1.2, math.radians(55), math.radians(25)), (-2.0, math.radians(-58), math.radians(-30)),
         (2.6, math.radians(70), math.radians(45))]  # (yaw, pitch, roll): level, up+rolled, down, shift range


def _sweep_views(prim, centre, dist=2.2):
    """Views that look at ``centre`` from ``dist`` with the POSES' pitch and roll (the object fills the view)."""
    for yaw, pitch, roll in POSES:
        f = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
        yield pose_from_angles(np.asarray(centre) - dist * f, yaw, pitch, roll)


@pytest.mark.parametrize("prim", [
    Cone(center=(0, 0, 0.6), radius_m=0.5, half_height_m=0.6),
    Cone(center=(0, 0, 0.6), radius_m=0.4, half_height_m=0.5, rotation=((1, 0, 0), (0, -1, 0), (0, 0, -1))),
    Cone(center=(0, 0, 0.6), radius_m=0.6, half_height_m=0.3, rotation=((0.0, 0.6, 0.8), (0.0, 0.8, -0.6), (-1, 0, 0))),
    Ellipsoid(center=(0, 0, 0.6), semi_axes_m=(0.7, 0.3, 0.45)),
    Ellipsoid(center=(0, 0, 0.6), semi_axes_m=(0.2, 0.8, 0.4), rotation=((0.0, 0.6, 0.8), (0.0, 0.8, -0.6), (-1, 0, 0))),
    Box(center=(0, 0, 0.6), half_extents_m=(0.5, 0.3, 0.4), rotation=((0.0, 0.6, 0.8), (0.0, 0.8, -0.6), (-1, 0, 0))),
    Cylinder(center=(0, 0, 0.6), radius_m=0.3, half_height_m=0.6, rotation=((0, 0, 1), (1, 0, 0), (0, 1, 0))),
], ids=["cone", "cone_hanging", "cone_tilted", "ellipsoid", "ellipsoid_tilted", "box_tilted", "cylinder_lying"])
def test_new_primitives_have_exact_depth_and_normals_from_every_pose(prim):
    scene = Scene(primitives=(prim,), shadows=False)
    K = intrinsics_from_fov((48, 64), 60.0)
    for pose in _sweep_views(prim, prim.center):
        frame = render(scene, pose, K, (48, 64))
        assert 0.05 < frame.valid.mean() < 0.95  # the object is seen with background around it
        check_frame_exact(scene, frame)


def test_cone_silhouette_matches_the_closed_form():
    """Upright cone seen level from the side: its outline at height z has half-width r (h - z) / (2 h)."""
    cone = Cone(center=(0, 0, 1.0), radius_m=0.5, half_height_m=0.5)
    size = (201, 201)
    K = intrinsics_from_fov(size, 40.0)
    frame = render(Scene(primitives=(cone,), shadows=False), pose_from_angles((-5.0, 0, 1.0), 0.0, 0.0, 0.0), K, size)
    row = 100  # image centre row: z = 1.0, the cone's mid-height -> radius 0.25 m
    cols = np.nonzero(frame.valid[row])[0]
    # the outline is where the viewing ray grazes the cone; at 5 m and this radius, x/z = tan(asin(0.25 / 5))
    half_px = K[0, 0] * math.tan(math.asin(0.25 / 5.0))
    assert abs((cols.max() - cols.min() + 1) / 2 - half_px) < 1.5
    assert frame.depth_m[row, 100] == pytest.approx(5.0 - 0.25, abs=1e-4)  # nearest point of the side


@pytest.mark.parametrize("family", ["world", "shift"])
@pytest.mark.parametrize("seed", range(6))
def test_every_world_frame_is_exact(family, seed):
    seq = SyntheticSequence(seed, HW, 1.0, family)
    for index in (0, 9):
        check_frame_exact(seq.scene, seq.frame(index))


def test_point_lights_and_specular_change_only_the_image():
    floor = Rectangle(center=(0, 0, 0), half_u_m=5, half_v_m=5, texture=Texture("solid", (0.5, 0.5, 0.5)))
    pose = pose_from_angles((0, 0, 2.0), 0.0, math.radians(-60), 0.0)
    K = intrinsics_from_fov(HW, 60.0)
    plain = render(Scene(primitives=(floor,), shadows=False), pose, K, HW)
    lit = render(Scene(primitives=(floor,), shadows=False, point_lights=(((1.0, 0.0, 0.5), (1, 1, 1), 1.0),),
                       specular=0.8, shininess=16), pose, K, HW)
    np.testing.assert_array_equal(plain.depth_m, lit.depth_m)
    np.testing.assert_array_equal(plain.normals, lit.normals)
    gain = lit.rgb.astype(int).sum(-1) - plain.rgb.astype(int).sum(-1)
    assert (gain >= 0).all() and gain.max() > 60  # brighter, most near the lamp


# ---------------------------------------------------------------------------------------------- families
def test_families_are_disjoint_by_construction():
    assert not set(WORLD.object_kinds) & set(SHIFT.object_kinds)
    assert not set(WORLD.texture_kinds) & set(SHIFT.texture_kinds)
    assert WORLD.roll_deg[1] < SHIFT.roll_deg[0]  # every shift pose is rolled beyond the training range
    assert set(FAMILIES) == {"world", "shift"}


@pytest.mark.parametrize("recipe", [WORLD, SHIFT], ids=["world", "shift"])
def test_family_scenes_and_poses_stay_inside_their_recipe(recipe):
    layouts, objects = set(), set()
    for seed in range(30):
        scene = make_scene(seed, recipe.name)
        assert scene.family == recipe.name
        layouts.add(scene.kind)
        for prim in scene.primitives:
            assert prim.tag in (*recipe.object_kinds, "layout")
            assert prim.texture.kind in recipe.texture_kinds
            objects.add(prim.tag)
        assert recipe.hfov_deg[0] <= scene.hfov_deg <= recipe.hfov_deg[1]
        for t in np.linspace(0, 60, 25):
            _, pitch, roll = np.degrees(pose_angles(scene.trajectory(float(t))))
            assert abs(pitch) <= recipe.max_pitch_deg + 1e-6
            assert recipe.roll_deg[0] - 1e-6 <= abs(roll) <= recipe.roll_deg[1] + 1e-6
    assert layouts == set(LAYOUTS)
    assert objects == {*recipe.object_kinds, "layout"}


def test_pose_angles_invert_pose_from_angles():
    for yaw, pitch, roll in [(0.4, 1.0, -0.5), (-2.5, -1.2, 0.8), (3.0, 0.0, 0.0)]:
        pose = pose_from_angles((1, 2, 3), yaw, pitch, roll)
        np.testing.assert_allclose(pose[:3, :3].T @ pose[:3, :3], np.eye(3), atol=1e-12)
        assert np.linalg.det(pose[:3, :3]) == pytest.approx(1.0)
        np.testing.assert_allclose(pose_angles(pose), (yaw, pitch, roll), atol=1e-9)
    level = pose_from_angles((0, 0, 0), 0.0, 0.0, 0.0)
    np.testing.assert_allclose(level[:3, 1], (0, 0, -1), atol=1e-12)  # image down = world down


@pytest.mark.parametrize("family", ["world", "shift"])
def test_world_frames_are_deterministic_per_seed(family):
    a = SyntheticSequence(4, HW, 1.0, family).frame(5)
    b = SyntheticSequence(4, HW, 1.0, family).frame(5)
    c = SyntheticSequence(5, HW, 1.0, family).frame(5)
    np.testing.assert_array_equal(a.rgb, b.rgb)  # sensor effects included
    np.testing.assert_array_equal(a.depth_m, b.depth_m)
    assert make_scene(4, family) == make_scene(4, family)
    assert make_scene(4, family) != make_scene(5, family)
    assert not np.array_equal(a.rgb, c.rgb)


def test_world_trajectory_is_smooth_and_keeps_clear_of_objects():
    for family in ("world", "shift"):
        for seed in range(4):
            seq = SyntheticSequence(seed, (12, 16), 10.0, family, num_frames=30)
            poses = np.stack([seq.pose(i) for i in range(30)])
            assert np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1).max() < 0.3
            cos_turn = np.einsum("ij,ij->i", poses[1:, :3, 2], poses[:-1, :3, 2])
            assert np.degrees(np.arccos(np.clip(cos_turn, -1, 1))).max() < 8.0
            assert min(np.nanmin(f.depth_m) for f in seq if f.valid.any()) > 0.1


# ---------------------------------------------------------------------------------------------- sensor, textures
def test_sensor_effects_are_seeded_and_bounded():
    rgb = np.full((40, 50, 3), 128, np.uint8)
    rgb[:, 25:] = 30
    model = SensorModel()
    a = apply_sensor(rgb, model, np.random.default_rng(1))
    b = apply_sensor(rgb, model, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == rgb.shape and a.dtype == np.uint8 and not np.array_equal(a, rgb)
    dark = apply_sensor(rgb, SensorModel(exposure=(0.5, 0.5), gamma=(1, 1), vignetting=(0, 0), blur_px=(0, 0),
                                         noise=(0, 0), jpeg_probability=0.0), np.random.default_rng(0))
    np.testing.assert_allclose(dark.astype(int), np.round(rgb * 0.5), atol=1)  # exposure only: half intensity
    with pytest.raises(ValueError, match="`rgb`"):
        apply_sensor(rgb.astype(np.float32), model, np.random.default_rng(0))
    with pytest.raises(ValueError, match="`noise`"):
        SensorModel(noise=(0.1, 0.0))


@pytest.mark.parametrize("kind", ["fractal", "bricks", "wood", "dots", "marble"])
def test_new_texture_kinds_vary_within_their_two_colours(kind):
    p = np.random.default_rng(0).uniform(-3, 3, (4000, 3)).astype(np.float32)
    tex = Texture(kind, (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), 0.4, (0.0, 0.0, 1.0),
                  ((1.0, 0.0, 0.0, 0.1), (0.0, 2.0, 0.0, 0.5), (0.0, 0.0, 4.0, 1.0)))
    alb = tex.albedo(p)
    assert alb.shape == (4000, 3) and alb.dtype == np.float32
    np.testing.assert_allclose(alb[:, 0] + alb[:, 2], 1.0, atol=1e-5)  # a blend of colour a and colour b
    assert alb[:, 0].std() > 0.1  # a pattern, not a flat colour
