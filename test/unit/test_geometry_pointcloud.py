"""Back-projection, organized clouds, units and intrinsics."""

from __future__ import annotations

import numpy as np
import pytest

from d3_perception.geometry import (
    CLOUD_DTYPE,
    backproject,
    check_intrinsics,
    intrinsics_from_fov,
    m_to_mm,
    make_cloud,
    mm_to_m,
    pack_rgb,
    scale_intrinsics,
    unpack_rgb,
)

K = np.array([[500.0, 0.0, 319.5], [0.0, 480.0, 239.5], [0.0, 0.0, 1.0]])


def test_backprojected_points_project_back_to_their_pixels():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 8.0, (480, 640)).astype(np.float32)
    pts = backproject(depth, K)  # [H,W,3]
    assert pts.shape == (480, 640, 3) and pts.dtype == np.float32
    proj = pts @ K.T  # [H,W,3]
    v, u = np.mgrid[0:480, 0:640]
    np.testing.assert_allclose(proj[..., 0] / proj[..., 2], u, atol=1e-3)
    np.testing.assert_allclose(proj[..., 1] / proj[..., 2], v, atol=1e-3)
    np.testing.assert_allclose(pts[..., 2], depth)
    # optical frame: top-left pixel is left (x < 0) and up (y < 0)
    assert pts[0, 0, 0] < 0 and pts[0, 0, 1] < 0


def test_invalid_depth_gives_nan_points():
    depth = np.ones((4, 5), np.float32)
    depth[0, 0], depth[1, 1], depth[2, 2] = np.nan, 0.0, -1.0
    pts = backproject(depth, np.array([[2.0, 0, 2], [0, 2.0, 1.5], [0, 0, 1]]))
    bad = np.isnan(pts[..., 2])
    assert bad.sum() == 3 and bad[0, 0] and bad[1, 1] and bad[2, 2]


def test_scaled_intrinsics_backproject_the_same_geometry():
    depth = np.full((480, 640), 2.0, np.float32)
    K2 = scale_intrinsics(K, (480, 640), (240, 320))
    full, half = backproject(depth, K), backproject(depth[::2, ::2], K2)
    # half-resolution pixel (i, j) covers full-resolution pixels 2i..2i+1: its centre is their mean
    centre = 0.25 * (full[0::2, 0::2] + full[1::2, 0::2] + full[0::2, 1::2] + full[1::2, 1::2])
    np.testing.assert_allclose(half, centre, atol=1e-5)


def test_make_cloud_layout_stride_and_range_clip():
    depth = np.linspace(0.5, 30.0, 48 * 64, dtype=np.float32).reshape(48, 64)
    K_small = intrinsics_from_fov((48, 64), 60.0)
    pts = backproject(depth, K_small)
    rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    normals = np.zeros((48, 64, 3), np.float32)
    normals[..., 2] = -1
    cloud = make_cloud(pts, rgb, normals, stride=3, min_range_m=1.0, max_range_m=20.0)
    assert cloud.dtype == CLOUD_DTYPE and cloud.dtype.itemsize == 32 and cloud.shape == (16, 22)
    rng = np.linalg.norm(pts[::3, ::3], axis=-1)
    kept = ~np.isnan(cloud["x"])
    np.testing.assert_array_equal(kept, (rng >= 1.0) & (rng <= 20.0))
    assert np.isnan(cloud["normal_z"][~kept]).all() and (cloud["normal_z"][kept] == -1).all()
    np.testing.assert_array_equal(unpack_rgb(cloud["rgb"]), rgb[::3, ::3])  # colour kept for clipped points
    xyz_only = make_cloud(pts)
    assert xyz_only.dtype.names == ("x", "y", "z") and xyz_only.dtype.itemsize == 16


def test_pack_rgb_is_the_pcl_bit_layout():
    packed = pack_rgb(np.array([[1, 2, 3]], np.uint8))
    assert packed.dtype == np.float32 and packed.view(np.uint32)[0] == 0x010203


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(stride=0), "stride"),
        (dict(min_range_m=5.0, max_range_m=1.0), "min_range_m"),
        (dict(rgb=np.zeros((2, 2, 3), np.uint8)), "rgb"),
    ],
)
def test_make_cloud_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_cloud(np.zeros((4, 4, 3), np.float32), **kwargs)


def test_units_round_trip_and_invalid_values():
    mm = np.array([[0, 1, 1500, 65535]], np.uint16)
    m = mm_to_m(mm)
    assert np.isnan(m[0, 0]) and m[0, 2] == pytest.approx(1.5)
    np.testing.assert_array_equal(m_to_mm(m), mm)
    assert m_to_mm(np.array([np.nan, -1.0, np.inf, 70.0, 0.0004], np.float32)).tolist() == [0, 0, 0, 0, 0]
    with pytest.raises(TypeError, match="depth_mm"):
        mm_to_m(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="depth_m"):
        m_to_mm(np.ones(3, np.uint16))


@pytest.mark.parametrize(
    "k, match",
    [([0.0] * 9, "focal"), ([np.nan] * 9, "finite"), ([1, 0, 0, 0, 1, 0, 0, 1, 1], "bottom row"), ([1, 2], "9")],
)
def test_check_intrinsics_rejects_unusable_K(k, match):
    with pytest.raises(ValueError, match=match):
        check_intrinsics(k)
    with pytest.raises(ValueError):
        backproject(np.ones((3, 3), np.float32), np.zeros((3, 3)))


@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("with_extras", [True, False])
def test_fused_cloud_from_depth_equals_backproject_then_make_cloud(stride, with_extras):
    from d3_perception.geometry import cloud_from_depth

    rng = np.random.default_rng(2)
    depth = rng.uniform(0.05, 25.0, (48, 64)).astype(np.float32)
    depth[3, 4], depth[5, 6] = np.nan, -1.0
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) if with_extras else None
    normals = rng.normal(size=(48, 64, 3)).astype(np.float32) if with_extras else None
    Ks = intrinsics_from_fov((48, 64), 75.0)
    ref = make_cloud(backproject(depth, Ks), rgb, normals, stride=stride, min_range_m=0.5, max_range_m=20.0)
    out = np.empty((*ref.shape, ref.dtype.itemsize // 4), np.float32)
    fused = cloud_from_depth(depth, Ks, rgb, normals, stride=stride, min_range_m=0.5, max_range_m=20.0, out=out)
    assert fused.dtype == ref.dtype and fused.shape == ref.shape
    assert np.shares_memory(fused, out)
    for name in ref.dtype.names:
        np.testing.assert_allclose(fused[name], ref[name], rtol=1e-6, atol=1e-6, err_msg=name)
