"""Normals from depth and model-convention conversion to the optical frame."""

from __future__ import annotations

import numpy as np
import pytest

from d3_perception.geometry import backproject, intrinsics_from_fov, normals_from_depth, to_optical_frame

HW = (120, 160)
K = intrinsics_from_fov(HW, 70.0)


def _plane_depth(n, d):
    """z-depth of the plane n.X = d (optical frame) seen through every pixel."""
    rays = backproject(np.ones(HW, np.float32), K)  # z = 1 rays
    return (d / (rays @ np.asarray(n))).astype(np.float32)


@pytest.mark.parametrize("normal", [(0.0, 0.0, -1.0), (0.3, -0.2, -0.93), (-0.5, 0.4, -0.77)])
def test_normals_of_a_tilted_plane_are_exact_and_face_the_camera(normal):
    n = np.asarray(normal) / np.linalg.norm(normal)
    depth = _plane_depth(n, -3.0)
    assert (depth > 0).all()
    est = normals_from_depth(depth, K)
    inner = est[2:-2, 2:-2]
    np.testing.assert_allclose(inner, np.broadcast_to(n, inner.shape), atol=1e-3)
    assert np.isnan(est[0]).all() and np.isnan(est[:, -1]).all()  # border: no central difference


def test_depth_jumps_and_holes_give_nan():
    depth = np.full(HW, 2.0, np.float32)
    depth[:, 80:] = 5.0  # occlusion edge
    depth[50, 50] = np.nan
    est = normals_from_depth(depth, K)
    assert np.isnan(est[60, 79]).all() and np.isnan(est[60, 80]).all()
    assert np.isnan(est[49, 50]).all() and np.isnan(est[51, 50]).all()
    np.testing.assert_allclose(est[60, 20], [0, 0, -1], atol=1e-6)


def test_opengl_normals_become_optical_and_oriented():
    gl = np.zeros((3, 4, 5), np.float32)  # backend layout [3,H,W]
    gl[1] = 1.0  # opengl +y = up
    gl[2] = 1.0  # opengl +z = toward the viewer
    out = to_optical_frame(gl, "opengl")
    assert out.shape == (4, 5, 3)
    np.testing.assert_allclose(out[0, 0], np.array([0, -1, -1]) / np.sqrt(2), atol=1e-6)


def test_normals_pointing_away_are_flipped_per_pixel_ray():
    n = np.zeros((*HW, 3), np.float32)
    n[..., 0] = 1.0  # +x everywhere: faces the camera only left of the principal point
    out = to_optical_frame(n, "optical", K)
    rays = backproject(np.ones(HW, np.float32), K)
    assert (np.einsum("hwc,hwc->hw", out, rays) <= 1e-6).all()
    assert out[60, 0, 0] == 1.0 and out[60, -1, 0] == -1.0


def test_zero_vectors_are_nan_and_unknown_convention_is_rejected():
    out = to_optical_frame(np.zeros((2, 2, 3), np.float32), "optical")
    assert np.isnan(out).all()
    with pytest.raises(ValueError, match="convention"):
        to_optical_frame(np.zeros((2, 2, 3), np.float32), "dx")
    with pytest.raises(ValueError, match="normals"):
        to_optical_frame(np.zeros((2, 2, 4), np.float32), "optical")
