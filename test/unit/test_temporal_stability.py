"""Flicker metrics, exact-pose reprojection, and the temporal stabiliser (static: less flicker; moving: no lag)."""

from __future__ import annotations

import numpy as np
import pytest

from d3_perception.evaluation.temporal import flicker, reproject_depth
from d3_perception.geometry.temporal import StabilizerConfig, TemporalStabilizer
from d3_perception.synthetic import SyntheticSequence

HW = (72, 96)


def test_flicker_by_hand():
    d = np.array([[2.0, 4.0, np.nan, 1.0]], np.float32)
    p = np.array([[1.0, 4.0, 3.0, 0.0]], np.float32)
    assert flicker(d, p) == pytest.approx((0.5 + 0.0) / 2)  # NaN and 0 pixels are left out
    assert np.isnan(flicker(np.full((2, 2), np.nan), np.ones((2, 2))))


def test_reprojection_with_the_exact_pose_explains_the_motion():
    seq = SyntheticSequence(seed=2, size_hw=HW, fps=10)
    f0, f1 = seq.frame(10), seq.frame(13)  # 11 cm apart; nearest-pixel splatting leaves a ~0.4 % floor
    same = reproject_depth(f0.depth_m, f0.K, f0.pose, f0.pose)
    np.testing.assert_allclose(same[f0.valid], f0.depth_m[f0.valid], rtol=1e-5)
    moved = reproject_depth(f0.depth_m, f0.K, f0.pose, f1.pose)
    raw = flicker(f1.depth_m, f0.depth_m)  # what the motion alone changes
    exact = flicker(f1.depth_m, moved)
    assert np.isfinite(moved).mean() > 0.8
    assert exact < 0.01 and exact < raw / 3, (exact, raw)
    # a wrong pose (the one of two frames later) does not explain it
    assert flicker(f1.depth_m, reproject_depth(f0.depth_m, f0.K, f0.pose, seq.pose(16))) > 2 * exact


def _noisy(rng, rgb, depth):
    img = np.clip(rgb.astype(np.float32) + rng.normal(0, 2.0, rgb.shape), 0, 255).astype(np.uint8)
    return img, (depth * (1 + rng.normal(0, 0.02, depth.shape))).astype(np.float32)


def test_stabiliser_halves_static_flicker_and_passes_a_moving_camera_through():
    seq = SyntheticSequence(seed=4, size_hw=HW, fps=10)
    rng = np.random.default_rng(0)
    f = seq.frame(0)
    depth = np.nan_to_num(f.depth_m, nan=0.0).astype(np.float32)
    stab = TemporalStabilizer()
    raw_prev = out_prev = None
    raw_fl, out_fl = [], []
    for _ in range(12):  # static camera, fresh sensor and network noise every frame
        img, d = _noisy(rng, f.rgb, depth)
        out = stab.update(d, img)
        if raw_prev is not None:
            raw_fl.append(flicker(d, raw_prev))
            out_fl.append(flicker(out, out_prev))
        raw_prev, out_prev = d, out
    assert stab.blended_share > 0.9
    # the pose-free estimate matches the measured raw flicker of the still frames
    assert stab.still_flicker == pytest.approx(raw_fl[-1], rel=0.05)
    assert np.mean(out_fl[3:]) < 0.5 * np.mean(raw_fl[3:]), (np.mean(out_fl), np.mean(raw_fl))
    # blend 0: the output is the input, the flicker estimate is still there
    off = TemporalStabilizer(StabilizerConfig(blend=0.0))
    frames = [_noisy(rng, f.rgb, depth) for _ in range(2)]
    off.update(frames[0][1], frames[0][0])
    np.testing.assert_array_equal(off.update(frames[1][1], frames[1][0]), frames[1][1])
    assert off.still_flicker == pytest.approx(flicker(frames[1][1], frames[0][1]), rel=0.05)
    assert off.blended_share == 0.0
    # the camera moves: the output is this frame's depth, unchanged
    g = seq.frame(3)
    img, d = _noisy(rng, g.rgb, np.nan_to_num(g.depth_m, nan=0.0).astype(np.float32))
    out = stab.update(d, img)
    assert stab.moving_share > stab.config.max_moving_share and np.isnan(stab.still_flicker)
    np.testing.assert_array_equal(out, d)


def test_stabiliser_passes_changed_pixels_through_in_a_still_frame():
    rgb = np.full((*HW, 3), 100, np.uint8)
    depth = np.full(HW, 2.0, np.float32)
    stab = TemporalStabilizer(StabilizerConfig(blend=0.5))
    stab.update(depth, rgb)
    d2 = depth.copy()
    d2[:, :10] = 2.02  # small change: blended
    d2[:, 10:12] = 3.0  # a new surface: passes through
    d2[0, 50] = np.nan  # invalid stays invalid
    out = stab.update(d2, rgb)
    np.testing.assert_allclose(out[:, :10], 2.01, rtol=1e-6)
    assert (out[:, 10:12] == 3.0).all() and np.isnan(out[0, 50])
    # a moving object in the image: those pixels pass through, the rest still blend
    rgb2 = rgb.copy()
    rgb2[20:30, 60:70] = 200
    d3 = d2.copy()
    d3[20:30, 60:70] = 2.05
    out = stab.update(d3, rgb2)
    assert (out[21:29, 61:69] == np.float32(2.05)).all()
    assert out[5, 5] == pytest.approx(0.5 * 2.01 + 0.5 * 2.02)


@pytest.mark.parametrize("kwargs, match", [({"blend": 1.0}, "`blend`"), ({"image_threshold": 0}, "`image_threshold`"),
                                           ({"max_moving_share": 2.0}, "`max_moving_share`")])
def test_stabiliser_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StabilizerConfig(**kwargs)
