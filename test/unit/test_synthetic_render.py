"""Exactness of the analytic renderer: depth is z-depth, normals are exact and face the camera."""

from __future__ import annotations

import numpy as np
import pytest

from d3_perception.geometry.intrinsics import intrinsics_from_fov
from d3_perception.synthetic import Box, Cylinder, Plane, Rectangle, Scene, Sphere, look_at, render

HW = (48, 64)
K = intrinsics_from_fov(HW, 70.0)


def _rays_camera(K, hw):
    """[H,W,3] camera-frame rays with unit z (pixel centres at integer coordinates)."""
    v, u = np.mgrid[0 : hw[0], 0 : hw[1]].astype(np.float64)
    return np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1)


@pytest.mark.parametrize("tilt_deg", [0.0, 25.0, 60.0])
def test_plane_depth_and_normal_match_analytic(tilt_deg):
    # a tilted camera looking at a slanted infinite plane; the plane in the camera frame is n_c . X = dist
    pose = look_at(eye=(0.3, -0.2, 1.4), target=(4.0, 1.0, 0.4))
    t = np.radians(tilt_deg)
    n_w = np.array([-np.sin(t), 0.2 * np.sin(t), np.cos(t)])
    n_w /= np.linalg.norm(n_w)
    offset = -0.5
    scene = Scene(primitives=(Plane(normal_vec=tuple(n_w), offset_m=offset),), shadows=False)
    frame = render(scene, pose, K, HW)

    R, o = pose[:3, :3], pose[:3, 3]
    n_c = R.T @ n_w
    dist = offset - n_w @ o
    rays = _rays_camera(K, HW)
    z = dist / (rays @ n_c)  # analytic z-depth (ray has unit z)
    expect_valid = z > 0
    assert frame.valid.any()
    np.testing.assert_array_equal(frame.valid, expect_valid)
    np.testing.assert_allclose(frame.depth_m[expect_valid], z[expect_valid], rtol=1e-4)
    assert np.isnan(frame.depth_m[~expect_valid]).all()
    facing = -np.sign(dist) * n_c  # the side of the plane the camera is on
    np.testing.assert_allclose(frame.normals[expect_valid], np.broadcast_to(facing, (expect_valid.sum(), 3)),
                               atol=1e-5)
    assert frame.depth_m.dtype == np.float32 and frame.normals.dtype == np.float32
    assert frame.rgb.dtype == np.uint8 and frame.rgb.shape == (*HW, 3)


def test_depth_is_z_depth_not_ray_length():
    # a fronto-parallel wall 3 m ahead: every pixel (corners included) has depth 3, not 3 / cos(angle)
    pose = look_at(eye=(0.0, 0.0, 1.0), target=(1.0, 0.0, 1.0))
    wall = Rectangle(center=(3.0, 0.0, 1.0), axis_u=(0, 1, 0), axis_v=(0, 0, 1), half_u_m=50, half_v_m=50)
    frame = render(Scene(primitives=(wall,), shadows=False), pose, K, HW)
    assert frame.valid.all()
    np.testing.assert_allclose(frame.depth_m, 3.0, rtol=1e-5)
    np.testing.assert_allclose(frame.normals, np.broadcast_to([0.0, 0.0, -1.0], (*HW, 3)), atol=1e-6)


def test_sphere_normals_are_radial_and_points_on_surface():
    pose = look_at(eye=(0.0, 0.0, 1.0), target=(1.0, 0.3, 0.8))
    center_w, radius = np.array([4.0, 1.0, 0.6]), 1.1
    scene = Scene(primitives=(Sphere(center=tuple(center_w), radius_m=radius),), shadows=False)
    frame = render(scene, pose, K, HW)
    assert 0.05 < frame.valid.mean() < 0.95
    R, o = pose[:3, :3], pose[:3, 3]
    center_c = R.T @ (center_w - o)
    pts = _rays_camera(K, HW)[frame.valid] * frame.depth_m[frame.valid][:, None]  # [N,3] camera frame
    np.testing.assert_allclose(np.linalg.norm(pts - center_c, axis=1), radius, rtol=1e-4)
    np.testing.assert_allclose(frame.normals[frame.valid], (pts - center_c) / radius, atol=2e-4)
    # facing the camera: n . ray < 0 everywhere
    assert (np.einsum("ij,ij->i", frame.normals[frame.valid], pts) < 0).all()


def test_box_and_cylinder_normals_unit_and_axis_aligned():
    pose = look_at(eye=(-3.0, -2.0, 2.5), target=(0.0, 0.0, 0.5))
    scene = Scene(primitives=(Box(center=(0, 0, 0.5), half_extents_m=(0.5, 0.7, 0.5)),
                              Cylinder(center=(0.0, 1.8, 0.6), radius_m=0.4, half_height_m=0.6)), shadows=False)
    frame = render(scene, pose, K, HW)
    n = frame.normals[frame.valid]
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-5)
    n_world = n @ pose[:3, :3].T
    # every box/cylinder normal in the world is horizontal or vertical (faces, sides, caps)
    vertical = np.abs(np.abs(n_world[:, 2]) - 1.0) < 1e-4
    horizontal = np.abs(n_world[:, 2]) < 1e-4
    assert (vertical | horizontal).all()
    assert vertical.any() and horizontal.any()


def test_nothing_hit_is_nan_and_invalid():
    pose = look_at(eye=(0.0, 0.0, 1.0), target=(1.0, 0.0, 1.5))  # looking up, away from the ground
    scene = Scene(primitives=(Plane(),), shadows=False)
    frame = render(scene, pose, K, HW)
    assert (~frame.valid).any() and frame.valid.any()
    assert np.isnan(frame.depth_m[~frame.valid]).all() and np.isnan(frame.normals[~frame.valid]).all()
    assert np.isfinite(frame.depth_m[frame.valid]).all()


def test_cast_shadow_darkens_the_ground():
    pose = look_at(eye=(-4.0, 0.0, 3.0), target=(0.0, 0.0, 0.0))
    prims = (Plane(), Sphere(center=(0.0, 0.0, 1.5), radius_m=0.7))
    lit = render(Scene(primitives=prims, light_dir=(0, 0, 1), shadows=False), pose, K, HW)
    shadowed = render(Scene(primitives=prims, light_dir=(0, 0, 1), shadows=True), pose, K, HW)
    ground = (lit.rgb != shadowed.rgb).any(axis=2)
    assert ground.sum() > 20  # the shadow under the sphere is visible
    assert (shadowed.rgb[ground].astype(int).sum(1) < lit.rgb[ground].astype(int).sum(1)).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pose": np.eye(3)}, "`pose` must be a finite"),
        ({"pose": np.diag([1.0, 1.0, -1.0, 1.0])}, "`pose` rotation"),
        ({"K": np.zeros((3, 3))}, "focal"),
        ({"size_hw": (0, 10)}, "`size_hw`"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    args = {"scene": Scene(primitives=(Plane(),)), "pose": np.eye(4), "K": K, "size_hw": HW} | kwargs
    with pytest.raises(ValueError, match=match):
        render(**args)
