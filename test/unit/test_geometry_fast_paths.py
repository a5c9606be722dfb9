"""The node's per-frame fast paths (issue 6) give the same numbers as the reference functions."""

from __future__ import annotations

import numpy as np
import pytest

from d3_perception.geometry import (
    MetricAligner,
    MetricConfig,
    backproject,
    intrinsics_from_fov,
    make_cloud,
    to_optical_frame,
)
from d3_perception.geometry.normals import interleave, to_optical_frame_planes
from d3_perception.geometry.pointcloud import fill_cloud
from d3_perception.parallel import ROWS_PER_CHUNK

RNG = np.random.default_rng(11)
HW = (ROWS_PER_CHUNK * 2 + 5, 48)  # several row blocks, the last one partial
K = intrinsics_from_fov(HW, 70.0)


@pytest.mark.parametrize("max_range_m", [20.0, float("inf")])
@pytest.mark.parametrize("stride", [1, 2])
def test_fill_cloud_with_planar_normals_matches_make_cloud_and_reports_density(stride, max_range_m):
    depth = RNG.uniform(0.05, 30.0, HW).astype(np.float32)
    depth[7, 3], depth[200, 10] = np.nan, -1.0
    rgb = RNG.integers(0, 256, (*HW, 3), dtype=np.uint8)
    normals = RNG.normal(size=(*HW, 3)).astype(np.float32)
    ref = make_cloud(backproject(depth, K), rgb, normals, stride=stride, min_range_m=0.5, max_range_m=max_range_m)
    planes = [np.ascontiguousarray(normals[..., i]) for i in range(3)]
    cloud, dense = fill_cloud(depth, K, rgb, planes, stride=stride, min_range_m=0.5, max_range_m=max_range_m)
    for name in ref.dtype.names:
        np.testing.assert_array_equal(cloud[name], ref[name], err_msg=name)
    assert dense is False and np.isnan(cloud["x"]).any()
    full, dense = fill_cloud(np.full(HW, 2.0, np.float32), K, stride=stride, max_range_m=max_range_m)
    assert not np.isnan(full["x"]).any()
    assert dense is (True if np.isfinite(max_range_m) else None)  # None: unknown without reading x


@pytest.mark.parametrize("convention", ["opengl", "optical"])
@pytest.mark.parametrize("with_k", [True, False])
def test_optical_planes_equal_the_interleaved_result_and_fill_given_buffers(convention, with_k):
    n = RNG.normal(size=(3, *HW)).astype(np.float32)
    n[:, 0, 0] = 0.0  # zero vector -> NaN
    ref = to_optical_frame(n, convention, K if with_k else None)
    out = np.empty((3, *HW), np.float32)
    planes = to_optical_frame_planes(n, convention, K if with_k else None, out=out)
    assert all(np.shares_memory(p, out) for p in planes)
    image = np.empty((*HW, 3), np.float32)
    assert interleave(planes, out=image) is image
    np.testing.assert_array_equal(image, ref)
    assert np.isnan(image[0, 0]).all()


def test_metric_apply_into_a_buffer_matches_a_fresh_result():
    rel = RNG.uniform(0, 1, HW).astype(np.float32)
    rel[3, 3] = np.nan
    sparse = np.full(HW, np.nan, np.float32)
    sparse[::9, ::5] = 4.0 * rel[::9, ::5] + 0.5
    aligner = MetricAligner(MetricConfig(mode="sparse_depth", min_points=20))
    res = aligner.update(rel, sparse)
    assert res.status == "fit" and res.scale == pytest.approx(4.0, rel=1e-4)
    buf = np.empty(HW, np.float32)
    out = MetricAligner.apply(rel, res, out=buf)
    assert out is buf
    np.testing.assert_array_equal(buf, MetricAligner.apply(rel, res))
    assert np.isnan(buf[3, 3])


@pytest.mark.parametrize("convention", ["opengl", "optical"])
@pytest.mark.parametrize("with_k", [True, False])
def test_unit_model_normals_skip_the_renormalisation_but_still_nan_invalid_vectors(convention, with_k):
    k = K if with_k else None
    n = RNG.normal(size=(3, *HW)).astype(np.float32)
    n /= np.linalg.norm(n, axis=0)  # unit, as backends return them
    ref = np.stack(to_optical_frame_planes(n, convention, k))
    fast = np.stack(to_optical_frame_planes(n, convention, k, normalise=False))
    np.testing.assert_allclose(fast, ref, rtol=0, atol=3e-7)  # only the renormalisation's rounding differs
    assert np.array_equal(np.signbit(fast), np.signbit(ref))  # same camera-facing flips
    n[:, 0, 0] = 0.0
    n[1, 5, 5], n[0, 6, 6], n[2, 200, 7] = np.nan, np.inf, -np.inf
    n[:, 9, 9] = (1.0, 0.0, 0.0)  # valid, but n_z = 0 (the test without rays): the exact check keeps it
    fast = np.stack(to_optical_frame_planes(n, convention, k, normalise=False))
    np.testing.assert_array_equal(np.abs(fast[:, 9, 9]), [1.0, 0.0, 0.0])
    for v, u in ((0, 0), (5, 5), (6, 6), (200, 7)):
        assert np.isnan(fast[:, v, u]).all(), (v, u)
    bad = np.zeros(HW, bool)
    bad[0, 0] = bad[5, 5] = bad[6, 6] = bad[200, 7] = True
    assert not np.isnan(fast[:, ~bad]).any()
    np.testing.assert_allclose(fast[:, ~bad], np.stack(to_optical_frame_planes(n, convention, k))[:, ~bad],
                               rtol=0, atol=3e-7)
