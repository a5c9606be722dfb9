"""The metrics core against hand-computed values, invariances and the protocol details users rely on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from d3_perception.evaluation.metrics import (
    DepthProtocol,
    NormalErrorAccumulator,
    Workspace,
    align_depth,
    crop_mask,
    depth_metrics,
    depth_metrics_flat,
    evaluate_depth,
    fit_flat,
    fit_scale_shift_lstsq,
    mean_metrics,
    normal_angles_deg,
    normal_metrics,
)


def test_depth_metrics_match_hand_computed_values():
    target = np.array([[1.0, 2.0], [4.0, 5.0]])
    pred = np.array([[1.1, 2.0], [3.0, 10.0]])
    mask = np.array([[True, True], [True, False]])  # the 10 m pixel is not evaluated
    m = depth_metrics(pred, target, mask)
    # pixels: (1.1 vs 1), (2 vs 2), (3 vs 4)
    assert m["abs_rel"] == pytest.approx((0.1 / 1 + 0 + 1 / 4) / 3)
    assert m["sq_rel"] == pytest.approx((0.01 / 1 + 0 + 1 / 4) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((0.01 + 0 + 1) / 3))
    logs = [math.log(1.1), 0.0, math.log(3 / 4)]
    assert m["rmse_log"] == pytest.approx(math.sqrt(sum(v * v for v in logs) / 3))
    assert m["log10"] == pytest.approx(sum(abs(v) for v in logs) / 3 / math.log(10))
    # ratios 1.1, 1, 1.333: two under 1.25, all under 1.5625
    assert m["delta1"] == pytest.approx(2 / 3)
    assert m["delta2"] == pytest.approx(1.0)
    assert m["delta3"] == pytest.approx(1.0)


def test_prediction_equal_to_gt_is_perfect():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 8.0, size=(12, 16))
    m = depth_metrics(gt, gt, np.ones_like(gt, dtype=bool))
    assert m["abs_rel"] == 0.0 and m["rmse"] == 0.0 and m["delta1"] == 1.0


@pytest.mark.parametrize("scale, shift", [(0.1, 0.0), (3.0, -2.0), (-0.5, 7.0)])
def test_alignment_makes_metrics_invariant_to_scale_and_shift(scale, shift):
    rng = np.random.default_rng(1)
    gt = rng.uniform(1.0, 9.0, size=(20, 30))
    noisy = gt + rng.normal(0, 0.2, size=gt.shape)
    mask = np.ones_like(gt, dtype=bool)
    proto = DepthProtocol(min_depth_m=1e-3, max_depth_m=10.0)
    base, _ = evaluate_depth(noisy, gt, mask, proto)
    moved, _ = evaluate_depth(scale * noisy + shift, gt, mask, proto)
    for key in ("abs_rel", "rmse", "delta1", "rmse_log"):
        assert moved[key] == pytest.approx(base[key], rel=1e-9, abs=1e-12)
    assert base["abs_rel"] > 0.005  # the noise is visible, so the invariance is not trivial


def test_affine_prediction_is_recovered_exactly():
    gt = np.linspace(1.0, 5.0, 48).reshape(6, 8)
    rel = (gt - 1.0) / 4.0  # relative depth in [0,1], 0 = near
    m, aligned = evaluate_depth(rel, gt, np.ones_like(gt, dtype=bool), DepthProtocol(max_depth_m=10.0))
    assert m["abs_rel"] < 1e-7 and m["delta1"] == 1.0
    assert m["scale"] == pytest.approx(4.0) and m["shift"] == pytest.approx(1.0)
    np.testing.assert_allclose(aligned, gt, rtol=1e-6)


def test_fit_uses_only_valid_pixels_and_reports_residual():
    pred = np.array([0.0, 1.0, 2.0, 100.0])
    target = np.array([1.0, 3.0, 5.0, -50.0])
    mask = np.array([True, True, True, False])
    scale, shift, res = fit_scale_shift_lstsq(pred, target, mask)
    assert (scale, shift) == pytest.approx((2.0, 1.0))
    assert res == pytest.approx(0.0, abs=1e-12)


def test_fit_rejects_constant_prediction_and_too_few_pixels():
    with pytest.raises(ValueError, match="non-constant"):
        fit_scale_shift_lstsq(np.ones(5), np.arange(5.0), np.ones(5, bool))
    with pytest.raises(ValueError, match="at least 2"):
        fit_scale_shift_lstsq(np.arange(5.0), np.arange(5.0), np.eye(5, dtype=bool)[0])


def test_flat_metrics_and_fit_with_a_reused_workspace_equal_fresh_computation():
    rng = np.random.default_rng(7)
    work = Workspace()
    for n in (500, 120, 900):  # grow, shrink (a slice of the same buffers), grow again
        t = rng.uniform(0.5, 9.0, n).astype(np.float32)
        p = (t * rng.uniform(0.7, 1.4, n)).astype(np.float32)
        metrics, rel_err, log_t = depth_metrics_flat(p, t, work)
        fresh, fresh_rel_err, fresh_log_t = depth_metrics_flat(p, t)
        assert metrics == fresh
        np.testing.assert_array_equal(rel_err, fresh_rel_err)
        np.testing.assert_array_equal(log_t, fresh_log_t)
        assert metrics == pytest.approx(depth_metrics(p.astype(np.float64), t.astype(np.float64), np.ones(n, bool)),
                                        rel=1e-6)
        assert fit_flat(p, 2.0 * t + 1.0, work) == fit_flat(p, 2.0 * t + 1.0)
    assert work.nbytes > 0


def test_disparity_alignment_recovers_affine_disparity():
    gt = np.linspace(1.0, 8.0, 40).reshape(5, 8)
    disparity_like = 3.0 / gt + 0.2  # what a disparity model (e.g. Lotus) predicts
    aligned, scale, shift = align_depth(disparity_like, gt, np.ones_like(gt, bool), space="disparity", max_depth_m=10)
    np.testing.assert_allclose(aligned, gt, rtol=1e-5)
    # the same prediction aligned in depth space is clearly worse
    m_depth = depth_metrics(align_depth(disparity_like, gt, np.ones_like(gt, bool), max_depth_m=10)[0], gt,
                            np.ones_like(gt, bool))
    assert m_depth["abs_rel"] > 0.05


def test_aligned_prediction_is_clipped_to_the_depth_cap():
    gt = np.array([[1.0, 2.0, 3.0, 40.0]])
    rel = np.array([[0.0, 1.0, 2.0, 39.0]])  # exactly gt - 1
    aligned, _, _ = align_depth(rel, gt, np.array([[True, True, True, False]]), max_depth_m=10.0)
    assert aligned.max() == pytest.approx(10.0)  # the 40 m extrapolation is capped like the Marigold protocol


def test_kitti_eigen_and_garg_crops_have_the_published_bounds():
    eigen = crop_mask((352, 1216), "eigen")
    rows, cols = np.where(eigen)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (117, 321, 43, 1172)
    garg = crop_mask((352, 1216), "garg")
    rows, _ = np.where(garg)
    assert (rows.min(), rows.max() + 1) == (143, 349)


def test_protocol_mask_combines_range_crop_box_and_dataset_mask():
    gt = np.full((480, 640), 5.0, np.float32)
    gt[100, 100] = 0.0  # no measurement
    gt[200, 200] = 12.0  # beyond the NYU cap
    gt[300, 300] = np.nan
    proto = DepthProtocol(min_depth_m=1e-3, max_depth_m=10.0, crop_box=(45, 471, 41, 601))
    mask = proto.valid_mask(gt)
    assert mask.sum() == (471 - 45) * (601 - 41) - 3
    assert not mask[0, 0] and not mask[470, 601] and mask[45, 41]
    extra = np.zeros_like(mask)
    extra[50:60, 50:60] = True
    assert proto.valid_mask(gt, extra).sum() == 100
    with pytest.raises(ValueError, match="inside the frame"):
        proto.valid_mask(np.ones((48, 64), np.float32))


def test_diode_style_protocol_ignores_the_range_for_the_mask():
    gt = np.array([[0.3, 2.0, 400.0]], np.float32)
    proto = DepthProtocol(min_depth_m=0.6, max_depth_m=350.0, range_mask=False)
    assert proto.valid_mask(gt).tolist() == [[True, True, True]]
    assert DepthProtocol(min_depth_m=0.6, max_depth_m=350.0).valid_mask(gt).tolist() == [[False, True, False]]


def test_protocol_rejects_bad_settings_with_named_fields():
    with pytest.raises(ValueError, match="`crop`"):
        DepthProtocol(crop="square")
    with pytest.raises(ValueError, match="`min_depth_m`"):
        DepthProtocol(min_depth_m=5.0, max_depth_m=1.0)
    with pytest.raises(ValueError, match="unknown depth protocol keys"):
        DepthProtocol.from_dict({"max_depth": 10})
    assert DepthProtocol.from_dict({"max_depth_m": ".inf"}).max_depth_m == math.inf


def test_normal_angles_hand_computed():
    target = np.zeros((1, 4, 3))
    target[..., 2] = 1.0
    pred = np.array([[[0, 0, 2.0], [1, 0, 0], [0, 0, -1], [1, 0, 1]]], dtype=np.float64)  # 0, 90, 180, 45 deg
    angles = normal_angles_deg(pred, target)
    np.testing.assert_allclose(angles, [0.0, 90.0, 180.0, 45.0], atol=1e-6)
    m = normal_metrics(pred, target)
    assert m["mean"] == pytest.approx(78.75)
    assert m["median"] == pytest.approx(67.5)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 90**2 + 180**2 + 45**2) / 4))
    assert m["a11.25"] == pytest.approx(0.25) and m["a30"] == pytest.approx(0.25)


def test_normal_metrics_skip_invalid_gt_and_masked_pixels():
    target = np.zeros((2, 2, 3))
    target[0, 0] = (0, 0, 1)
    target[0, 1] = (0, 1, 0)
    # target[1, :] zero vectors = invalid
    pred = np.zeros((2, 2, 3))
    pred[..., 2] = 1.0
    assert normal_angles_deg(pred, target).tolist() == pytest.approx([0.0, 90.0])
    mask = np.array([[True, False], [True, True]])
    assert normal_angles_deg(pred, target, mask).tolist() == pytest.approx([0.0])


def test_pooled_accumulator_equals_direct_computation():
    rng = np.random.default_rng(3)
    chunks = [rng.uniform(0, 60, size=n) for n in (1000, 17, 4321)]
    acc = NormalErrorAccumulator()
    for c in chunks:
        acc.update(c)
    allv = np.concatenate(chunks)
    res = acc.result()
    assert res["mean"] == pytest.approx(allv.mean())
    assert res["rmse"] == pytest.approx(math.sqrt(np.mean(allv**2)))
    assert res["a11.25"] == pytest.approx(np.mean(allv < 11.25))
    assert abs(res["median"] - np.median(allv)) <= 0.01
    with pytest.raises(ValueError):
        NormalErrorAccumulator().result()


def test_mean_metrics_averages_images_and_skips_nan():
    per = [{"abs_rel": 0.1, "delta1": 0.9}, {"abs_rel": 0.3, "delta1": float("nan")}]
    assert mean_metrics(per) == pytest.approx({"abs_rel": 0.2, "delta1": 0.9})


def test_shape_and_dtype_errors_name_the_argument():
    with pytest.raises(ValueError, match="same shape"):
        depth_metrics(np.ones((2, 2)), np.ones((2, 3)), np.ones((2, 2), bool))
    with pytest.raises(TypeError, match="`valid_mask` must be bool"):
        depth_metrics(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="at least one pixel"):
        depth_metrics(np.ones((2, 2)), np.ones((2, 2)), np.zeros((2, 2), bool))
