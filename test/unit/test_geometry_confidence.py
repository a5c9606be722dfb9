"""Per-pixel confidence (edges, normal agreement, sparse residual) and gating by it."""

from __future__ import annotations

import numpy as np
import pytest

from d3_perception.geometry import backproject, cloud_from_depth, intrinsics_from_fov, normals_from_depth
from d3_perception.geometry.confidence import (
    DEFAULT_MIN_CONFIDENCE,
    ConfidenceConfig,
    ConfidenceEstimator,
    SparsePoints,
    gate_depth,
    summarize_confidence,
)
from d3_perception.synthetic import SyntheticSequence

HW = (96, 128)
K = intrinsics_from_fov(HW, 70.0)


def _plane_depth(n, d, hw=HW, k=K):
    rays = backproject(np.ones(hw, np.float32), k)
    return (d / (rays @ np.asarray(n) / np.linalg.norm(n))).astype(np.float32)


def _discontinuity_band(depth, rel=0.05, radius=2):
    """GT pixels within ``radius`` of a relative depth jump larger than ``rel``."""
    import cv2

    d = np.nan_to_num(depth, nan=1e3)
    jump = np.zeros(d.shape, bool)
    jump[:, 1:] |= np.abs(d[:, 1:] - d[:, :-1]) > rel * np.minimum(d[:, 1:], d[:, :-1])
    jump[1:] |= np.abs(d[1:] - d[:-1]) > rel * np.minimum(d[1:], d[:-1])
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(jump.astype(np.uint8), k) > 0


def test_confidence_is_lower_on_synthetic_discontinuities_than_on_planes():
    """On exact synthetic depth + normals, pixels at depth discontinuities get far lower confidence than the
    rest (planes and smooth surfaces)."""
    est = ConfidenceEstimator()
    for i in (0, 7):
        f = SyntheticSequence(seed=5, size_hw=HW).frame(i)
        # a wrongly smeared edge, like a network's: blur the depth, keep the exact normals
        import cv2

        depth = cv2.GaussianBlur(np.nan_to_num(f.depth_m, nan=20.0), (5, 5), 1.0)
        conf = est.compute(depth, f.K, f.normals)
        band = _discontinuity_band(f.depth_m) & f.valid
        flat = ~_discontinuity_band(f.depth_m, radius=4) & f.valid
        assert band.sum() > 50 and flat.sum() > 1000
        assert conf.dtype == np.float32 and conf.shape == HW and 0 <= conf.min() and conf.max() <= 1
        assert np.median(conf[band]) < 0.5 * np.median(conf[flat]), (np.median(conf[band]), np.median(conf[flat]))


@pytest.mark.parametrize("normal", [(0.0, 0.0, -1.0), (0.3, -0.2, -0.93), (-0.4, 0.3, -0.8)])
def test_tilted_plane_with_matching_normals_has_full_normal_confidence(normal):
    depth = _plane_depth(normal, -3.0)
    model = normals_from_depth(depth, K)  # exact normals of the plane (NaN on the border)
    model[0], model[-1], model[:, 0], model[:, -1] = model[1], model[-2], model[:, 1], model[:, -2]
    parts = {}
    ConfidenceEstimator(ConfidenceConfig(sources=("normals",))).compute(depth, K, model, parts=parts)
    np.testing.assert_allclose(parts["normals"][1:-1, 1:-1], 1.0, atol=2e-3)
    # the same depth with normals 40 degrees off: low confidence
    wrong = np.broadcast_to(np.array([np.sin(0.7), 0.0, -np.cos(0.7)], np.float32), (*HW, 3))
    parts = {}
    ConfidenceEstimator(ConfidenceConfig(sources=("normals",))).compute(
        _plane_depth((0, 0, -1), -3.0), K, wrong, parts=parts)
    assert parts["normals"][1:-1, 1:-1].max() < 0.3


def test_sparse_residual_lowers_confidence_only_where_the_reference_disagrees():
    depth = np.full(HW, 2.0, np.float32)
    ref = np.full(HW, np.nan, np.float32)
    ref[10::12] = 2.0  # scan rows agree ...
    ref[10::12, 80:] = 2.6  # ... except on the right, 30 % off
    parts = {}
    conf = ConfidenceEstimator(ConfidenceConfig(sources=("sparse",))).compute(depth, sparse_m=ref, parts=parts)
    assert conf[:, :60].min() > 0.99
    assert conf[:, 100:].max() < 0.2
    # where no reference point is near, the image cues alone decide (the sparse cue does not dilute them)
    import cv2

    step = cv2.GaussianBlur(np.where(np.arange(HW[1]) < 64, 2.0, 4.0).astype(np.float32) * np.ones(HW, np.float32),
                            (5, 5), 1.0)
    top = np.full(HW, np.nan, np.float32)
    top[:8] = step[:8]  # reference in the top rows only, agreeing
    with_ref = ConfidenceEstimator().compute(step, K, sparse_m=top)
    without = ConfidenceEstimator().compute(step, K)
    np.testing.assert_allclose(with_ref[60:], without[60:], rtol=1e-5)
    assert without[60:, 62:65].max() < 0.3 < 0.9 < without[60:, :40].min()  # the edge is still marked
    # no reference at all: no evidence, confidence 1
    none = np.full(HW, np.nan, np.float32)
    assert ConfidenceEstimator(ConfidenceConfig(sources=("sparse",))).compute(depth, sparse_m=none).min() == 1.0


def test_invalid_depth_gets_zero_and_coarse_grid_matches_frame_size():
    depth = _plane_depth((0.1, 0.2, -1.0), -2.0, (480, 640), intrinsics_from_fov((480, 640), 70.0))
    depth[100:120, 200:260] = np.nan
    est = ConfidenceEstimator(ConfidenceConfig(grid_long_side=160))
    assert est.config.step((480, 640)) == 4
    out = np.empty((480, 640), np.float32)
    conf = est.compute(depth, intrinsics_from_fov((480, 640), 70.0), out=out)
    assert conf is out
    assert (conf[104:116, 204:256] == 0).all()
    assert conf[300:, :].min() > 0.9  # the plane itself is trusted


def test_gate_removes_exactly_the_pixels_below_the_threshold_from_depth_and_points():
    rng = np.random.default_rng(1)
    depth = rng.uniform(1.0, 5.0, HW).astype(np.float32)
    depth[0, :5] = np.nan
    conf = rng.uniform(0.0, 1.0, HW).astype(np.float32)
    conf[1, 0] = 0.4  # exactly at the threshold: kept
    gated = gate_depth(depth, conf, 0.4)
    below = conf < np.float32(0.4)
    assert np.isnan(gated[below]).all()
    np.testing.assert_array_equal(gated[~below], depth[~below])  # NaN == NaN for the invalid ones
    assert gated[1, 0] == depth[1, 0]
    cloud = cloud_from_depth(gated, K)
    missing = np.isnan(cloud["z"])
    np.testing.assert_array_equal(missing, below | np.isnan(depth))
    assert gate_depth(depth, conf, 0.0)[~np.isnan(depth)].size == np.count_nonzero(~np.isnan(depth))
    inplace = depth.copy()
    assert gate_depth(inplace, conf, 0.4, out=inplace) is inplace
    np.testing.assert_array_equal(np.isnan(inplace), np.isnan(gated))


def test_summary_gives_mean_and_low_share_over_valid_pixels():
    depth = np.array([[1.0, 2.0, np.nan, 3.0]], np.float32)
    conf = np.array([[0.2, 0.8, 0.0, 0.5]], np.float32)
    mean, low = summarize_confidence(conf, depth, 0.5)
    assert mean == pytest.approx(0.5) and low == pytest.approx(1 / 3)
    assert all(np.isnan(summarize_confidence(conf, np.full_like(depth, np.nan), 0.5)))


def test_estimator_summary_on_its_grid_matches_the_full_frame():
    hw, k = (480, 640), intrinsics_from_fov((480, 640), 70.0)
    depth = _plane_depth((0.0, 0.3, -1.0), -2.0, hw, k)
    depth[:, 300:308] *= 1.5  # a step: low edge confidence around it
    depth[:40] = np.nan
    est = ConfidenceEstimator()
    assert all(np.isnan(est.summary(0.5)))
    conf = est.compute(depth, k)
    full = summarize_confidence(conf, depth, 0.5)
    grid = est.summary(0.5)
    assert 0.0 < full[1] < 0.2
    np.testing.assert_allclose(grid, full, atol=0.01)
    assert est.summary(0.0)[1] == 0.0  # the invalid rows (confidence 0) are not "below" a threshold of 0


def test_rate_then_full_map_is_compute_and_the_map_is_only_made_on_request():
    hw, k = (480, 640), intrinsics_from_fov((480, 640), 70.0)
    depth = _plane_depth((0.0, 0.3, -1.0), -2.0, hw, k)
    depth[:, 300:308] *= 1.5
    expected = ConfidenceEstimator().compute(depth, k).copy()
    est = ConfidenceEstimator()
    with pytest.raises(RuntimeError, match="before rate"):
        est.full_map()
    est.rate(depth, k)
    assert est.any_below(0.5) and not est.any_below(0.0)
    out = np.empty(hw, np.float32)
    assert est.full_map(out) is out
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="`out`"):
        est.full_map(np.empty((10, 10), np.float32))


@pytest.mark.parametrize("kwargs, match", [
    ({"sources": ("edges", "nope")}, "`sources`"), ({"edge_scale": 0.0}, "`edge_scale`"),
    ({"combine": "product"}, "`combine`"), ({"grid_long_side": 8}, "`grid_long_side`"),
    ({"edge_radius_px": -1}, "`edge_radius_px`")])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConfidenceConfig(**kwargs)


def test_bad_inputs_raise_one_clear_error():
    est = ConfidenceEstimator()
    with pytest.raises(ValueError, match="`depth` must be float32"):
        est.compute(np.ones(HW))
    with pytest.raises(ValueError, match="`K` must be given"):
        est.compute(np.ones(HW, np.float32), None, np.zeros((3, *HW), np.float32))
    with pytest.raises(ValueError, match="`model_normals` must be"):
        est.compute(np.ones(HW, np.float32), K, np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="`sparse_m` must have the shape"):
        est.compute(np.ones(HW, np.float32), sparse_m=np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match="`min_confidence` must be"):
        gate_depth(np.ones(HW, np.float32), np.ones(HW, np.float32), 1.5)


def _room_with_reference(outlier_share, hw=(480, 640), seed=3):
    """A synthetic room's exact depth, its intrinsics and a 12-row scan reference (1 cm noise) in which
    ``outlier_share`` of the returns are 0.3 m "reflections" (what a LiDAR sees on glass and rain)."""
    from d3_perception.synthetic import sparse_depth

    frame = SyntheticSequence(seed=seed, size_hw=hw, kind="room").frame(0)
    rng = np.random.default_rng(0)
    ref = sparse_depth(frame.depth_m, rng, pattern="scan", rows=12, noise_std_m=0.01)
    ref[(rng.random(ref.shape) < outlier_share) & np.isfinite(ref)] = 0.3
    return frame.depth_m.astype(np.float32), frame.K, ref


@pytest.mark.parametrize("outlier_share", [0.05, 0.2])
@pytest.mark.parametrize("hw", [(480, 640), (120, 160)])
def test_outlier_returns_of_the_reference_do_not_gate_a_correct_depth_map(outlier_share, hw):
    depth, k, ref = _room_with_reference(outlier_share, hw)
    valid = np.isfinite(depth) & (depth > 0)
    conf = ConfidenceEstimator().compute(depth, k, sparse_m=ref)
    kept = np.count_nonzero(conf[valid] >= DEFAULT_MIN_CONFIDENCE) / np.count_nonzero(valid)  # the node's default gate
    assert kept >= 0.95


def test_a_wrong_region_is_still_flagged_by_a_reference_with_outliers():
    depth, k, ref = _room_with_reference(0.2)
    wrong = depth.copy()
    wrong[:, 400:] *= 2.0  # the right part of the map 100 % too far (a wrong plane), the rest exact
    conf = ConfidenceEstimator().compute(wrong, k, sparse_m=ref)
    valid = np.isfinite(depth) & (depth > 0)
    right, left = valid.copy(), valid.copy()
    right[:, :460] = False  # clear of the window that straddles the boundary
    left[:, 340:] = False
    assert np.count_nonzero(conf[right] < DEFAULT_MIN_CONFIDENCE) / np.count_nonzero(right) > 0.95
    assert np.count_nonzero(conf[left] >= DEFAULT_MIN_CONFIDENCE) / np.count_nonzero(left) > 0.95


def test_sparse_points_found_once_give_the_same_map_as_the_reference_array():
    depth, k, ref = _room_with_reference(0.05, (120, 160))
    depth[:30, 100:] *= 1.5  # a wrong region, so the sparse cue matters
    depth[60:70, :20] = np.nan  # invalid depth at some returns
    points = SparsePoints(ref)
    est = ConfidenceEstimator()
    expected = est.compute(depth, k, sparse_m=ref).copy()
    assert expected.min() < DEFAULT_MIN_CONFIDENCE  # the wrong region is gated
    for _ in range(2):  # reused across frames
        np.testing.assert_array_equal(est.compute(depth, k, sparse_m=points), expected)
    assert points.index.size == np.count_nonzero(np.nan_to_num(ref) > 0)
    with pytest.raises(ValueError, match="`sparse_m` must have the shape"):
        est.compute(depth, k, sparse_m=SparsePoints(ref[:60]))


@pytest.mark.parametrize("hw", [(480, 640), (97, 131), (120, 160)])  # whole 4x4 blocks, ragged grid, step 1
def test_grid_gate_removes_exactly_what_the_frame_size_map_gates(hw):
    k = intrinsics_from_fov(hw, 70.0)
    depth = _plane_depth((0.0, 0.3, -1.0), -2.0, hw, k)
    depth[:, hw[1] // 2:] *= 1.5  # a step: low confidence around it
    est = ConfidenceEstimator(ConfidenceConfig(grid_long_side=40))  # step 4 / 4 / 4 at these sizes
    est.rate(depth, k)
    threshold = 0.3
    expected = gate_depth(depth, est.full_map().copy(), threshold)
    assert 0 < np.isnan(expected).sum() < expected.size
    gated = depth.copy()
    made = est.gate(gated, threshold)
    np.testing.assert_array_equal(np.isnan(gated), np.isnan(expected))
    np.testing.assert_array_equal(gated[~np.isnan(gated)], depth[~np.isnan(expected)])
    assert (made is None) == (hw == (480, 640) or hw == (120, 160))  # whole blocks: no frame-size map made
    strided = np.asfortranarray(depth)  # not C-contiguous: the frame-size path
    assert est.gate(strided, threshold) is not None
    np.testing.assert_array_equal(np.isnan(strided), np.isnan(expected))
    untouched = depth.copy()
    assert est.gate(untouched, 0.0) is None and not np.isnan(untouched).any()
