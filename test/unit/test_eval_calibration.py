"""Sparsification / AUSE against hand-computed cases; flying points of a constructed cloud."""

from __future__ import annotations

import numpy as np
import pytest

from d3_perception.evaluation.calibration import (
    FlyingPoints,
    SparsificationAccumulator,
    flying_points,
    sparsification_ause,
    sparsification_curve,
)
from d3_perception.geometry import backproject, intrinsics_from_fov

FR = np.array([0.0, 0.25, 0.5, 0.75])
ERR = np.array([4.0, 3.0, 2.0, 1.0])


def test_sparsification_curves_and_ause_by_hand():
    # oracle: remove the largest error first -> means of {1,2,3,4}, {1,2,3}, {1,2}, {1}
    oracle = sparsification_curve(ERR, -ERR, FR)
    np.testing.assert_allclose(oracle, [2.5, 2.0, 1.5, 1.0])
    # a confidence that trusts the worst pixels most: remove 1, then 2, then 3
    worst = sparsification_curve(ERR, ERR, FR)
    np.testing.assert_allclose(worst, [2.5, 3.0, 3.5, 4.0])
    # differences 0, 1, 2, 3 with spacing 0.25: 0.25 * (0/2 + 1 + 2 + 3/2) = 1.125
    assert sparsification_ause(worst, oracle, FR) == pytest.approx(1.125)
    # random (flat 2.5): differences 0, 0.5, 1, 1.5 -> 0.5625
    assert sparsification_ause(np.full(4, 2.5), oracle, FR) == pytest.approx(0.5625)
    # a perfect confidence scores like the oracle
    perfect = sparsification_curve(ERR, 1.0 / ERR, FR)
    assert sparsification_ause(perfect, oracle, FR) == pytest.approx(0.0)


def test_accumulator_averages_frames_and_reports_random():
    acc = SparsificationAccumulator(steps=4, max_fraction=0.75)
    np.testing.assert_allclose(acc.fractions, FR)
    acc.add(ERR, {"good": 1.0 / ERR, "bad": ERR})
    acc.add(2 * ERR, {"good": 1.0 / ERR, "bad": ERR})  # the same ranking, errors doubled
    a = acc.ause()
    assert a["good"] == pytest.approx(0.0)
    assert a["bad"] == pytest.approx(1.5 * 1.125)  # mean of 1.125 and 2.25
    assert a["random"] == pytest.approx(1.5 * 0.5625)
    # a constant map, ties broken at random, lands near random on many pixels
    rng = np.random.default_rng(0)
    e = rng.exponential(size=20000)
    acc2 = SparsificationAccumulator()
    acc2.add(e, {"const": np.ones_like(e)})
    assert acc2.ause()["const"] == pytest.approx(acc2.ause()["random"], rel=0.03)
    with pytest.raises(ValueError, match="reserved"):
        acc2.add(e, {"oracle": e})


def test_sparsification_rejects_non_finite():
    with pytest.raises(ValueError, match="finite"):
        sparsification_curve(np.array([1.0, np.nan]), np.array([1.0, 2.0]), FR)


def test_flying_points_of_a_constructed_cloud():
    hw = (4, 5)
    K = intrinsics_from_fov(hw, 60.0)
    gt = np.full(hw, 2.0, np.float32)
    gt[0, 0] = np.nan  # no GT: not counted
    depth = gt.copy()
    depth[0, 0] = 2.0
    depth[1, 1] = 2.0 * 1.05  # 5 % along the ray: not flying
    depth[1, 2] = 2.0 * 1.15  # 15 %: flying
    depth[2, 2] = 2.0 * 0.5  # half way to the camera: flying
    depth[3, 4] = 2.0 * 1.5  # flying
    depth[3, 3] = np.nan  # no point
    points = backproject(depth, K)
    keep = np.ones(hw, bool)
    keep[1, 2] = keep[2, 2] = False  # the gate drops two flying points ...
    keep[0, 1] = False  # ... and one good one
    fp = flying_points(points, gt, K, keep)
    assert (fp.points, fp.flying, fp.kept, fp.kept_flying) == (18, 3, 15, 1)
    assert fp.share_before == pytest.approx(3 / 18)
    assert fp.share_after == pytest.approx(1 / 15)
    assert fp.kept_share == pytest.approx(15 / 18)
    assert fp.reduction == pytest.approx((3 / 18) / (1 / 15))
    total = fp + flying_points(points, gt, K)
    assert (total.points, total.flying, total.kept, total.kept_flying) == (36, 6, 33, 4)
    # scaling a point moves it along its ray: 20 % farther is flying
    moved = points.copy()
    moved[2, 0] *= 1.2
    assert flying_points(moved, gt, K).flying == 4
    assert FlyingPoints().share_before != FlyingPoints().share_before  # NaN without points


def test_flying_points_checks_shapes():
    K = intrinsics_from_fov((4, 5), 60.0)
    with pytest.raises(ValueError, match="`points` must be"):
        flying_points(np.zeros((4, 5)), np.ones((4, 5)), K)
    with pytest.raises(ValueError, match="`keep` must be bool"):
        flying_points(np.zeros((4, 5, 3)), np.ones((4, 5)), K, keep=np.ones((4, 5)))


def test_flying_points_from_depth_equal_those_of_the_back_projected_cloud():
    from d3_perception.evaluation.calibration import flying_points_from_depth

    rng = np.random.default_rng(3)
    h, w = 30, 40
    K = intrinsics_from_fov((h, w), 70.0)
    gt = rng.uniform(1.0, 5.0, (h, w))
    gt[rng.random((h, w)) < 0.1] = np.nan  # no GT
    pred = (gt * rng.uniform(0.8, 1.2, (h, w))).astype(np.float32)  # about half beyond 10 %
    pred[rng.random((h, w)) < 0.1] = np.nan  # no point
    keep = rng.random((h, w)) < 0.7
    from_cloud = flying_points(backproject(pred, K), gt, K, keep)
    assert 0 < from_cloud.flying < from_cloud.points
    assert flying_points_from_depth(pred, gt, keep) == from_cloud
    assert flying_points_from_depth(pred, gt) == flying_points(backproject(pred, K), gt, K)
    with pytest.raises(ValueError, match="one shape"):
        flying_points_from_depth(pred[:-1], gt)


def test_confidence_calibration_summarises_ause_and_gated_flying_points():
    from d3_perception.evaluation.calibration import ConfidenceCalibration

    gt = np.full((20, 20), 2.0)
    pred = gt.copy()
    pred[:, 10:12] = 3.0  # two wrong columns: 50 % off, flying
    conf = np.ones_like(gt, np.float32)
    conf[:, 10:12] = 0.01  # the map distrusts exactly them: it ranks like the oracle
    cal = ConfidenceCalibration(min_confidence=0.5)
    assert cal.summary() is None
    valid = np.ones(gt.shape, bool)
    cal.add(pred.astype(np.float32), gt, valid, conf)
    s = cal.summary()
    assert s["frames"] == 1 and s["min_confidence"] == 0.5
    assert s["ause"]["combined"] == pytest.approx(0.0, abs=1e-9) and s["ause"]["random"] > 0
    assert s["ause_over_random"] == pytest.approx(0.0, abs=1e-9)
    fly = s["flying_points"]
    cal.add(pred.astype(np.float32), gt, valid, np.ones_like(conf))  # a map that trusts everything: random-like
    assert cal.summary()["ause"]["combined"] > 0
    assert fly["points"] == 400 and fly["share_before"] == pytest.approx(0.1)
    assert fly["share_after"] == 0.0 and fly["kept_share"] == pytest.approx(0.9) and fly["reduction"] == float("inf")
