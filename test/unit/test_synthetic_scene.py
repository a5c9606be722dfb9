"""Procedural scenes: determinism by seed, kinds, smooth trajectories that never enter objects, sparse depth."""

from __future__ import annotations

import numpy as np
import pytest

from d3_perception.geometry.units import m_to_mm
from d3_perception.synthetic import SyntheticSequence, make_scene, sparse_depth

HW = (30, 40)


@pytest.mark.parametrize("kind", ["room", "outdoor", "mixed"])
def test_same_seed_same_frames_different_seed_different_scene(kind):
    a = SyntheticSequence(7, HW, 10.0, kind).frame(3)
    b = SyntheticSequence(7, HW, 10.0, kind).frame(3)
    c = SyntheticSequence(8, HW, 10.0, kind).frame(3)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth_m, b.depth_m)
    assert make_scene(7, kind) == make_scene(7, kind)
    assert make_scene(7, kind) != make_scene(8, kind)
    assert not np.array_equal(a.rgb, c.rgb)


def test_kinds_have_their_character():
    room = SyntheticSequence(1, HW, 10.0, "room").frame(0)
    outdoor = SyntheticSequence(1, HW, 10.0, "outdoor").frame(0)
    assert room.valid.all()  # closed room: every ray hits something
    assert np.nanmax(room.depth_m) < 15.0
    assert (~outdoor.valid).any()  # sky
    assert np.nanmax(outdoor.depth_m) > 15.0
    kinds = {make_scene(s, "mixed").kind for s in range(12)}
    assert kinds == {"room", "outdoor"}


@pytest.mark.parametrize("kind", ["room", "outdoor"])
def test_trajectory_is_smooth_and_stays_clear_of_objects(kind):
    seq = SyntheticSequence(3, (12, 16), 10.0, kind, num_frames=40)
    poses = np.stack([seq.pose(i) for i in range(40)])
    step_m = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    assert step_m.max() < 0.3 and step_m.min() > 0.0  # moving, no jumps at 10 fps
    cos_turn = np.einsum("ij,ij->i", poses[1:, :3, 2], poses[:-1, :3, 2])
    assert np.degrees(np.arccos(np.clip(cos_turn, -1, 1))).max() < 8.0
    frames = list(seq)
    assert len(frames) == 40 and [f.index for f in frames[:3]] == [0, 1, 2]
    assert min(np.nanmin(f.depth_m) for f in frames) > 0.25  # never inside or touching an object


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"seed": -1}, "`seed`"), ({"seed": 1.5}, "`seed`"), ({"kind": "cave"}, "`kind`"),
])
def test_make_scene_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_scene(**({"seed": 0, "kind": "room"} | kwargs))


def test_sparse_depth_scan_rows_noise_and_dropout():
    depth = np.full((60, 80), 4.0, np.float32)
    depth[:5] = np.nan
    rng = np.random.default_rng(0)
    sparse = sparse_depth(depth, rng, pattern="scan", rows=8, noise_std_m=0.02, dropout=0.25)
    rows_hit = np.flatnonzero(np.isfinite(sparse).any(axis=1))
    assert 6 <= rows_hit.size <= 8 and rows_hit.min() >= 5  # invalid depth never returns
    kept = np.isfinite(sparse).sum() / (rows_hit.size * 80)
    assert 0.6 < kept < 0.9  # about 75 % survive a 25 % dropout
    err = sparse[np.isfinite(sparse)] - 4.0
    assert 0.01 < err.std() < 0.03
    rnd = sparse_depth(depth, rng, pattern="random", fraction=0.03, noise_std_m=0.0, dropout=0.0)
    n = np.isfinite(rnd).sum()
    assert 0.02 * depth.size < n <= 0.03 * depth.size
    np.testing.assert_array_equal(rnd[np.isfinite(rnd)], 4.0)
    mm = m_to_mm(rnd)
    assert (mm[np.isfinite(rnd)] == 4000).all() and (mm[~np.isfinite(rnd)] == 0).all()


def test_sparse_depth_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="`pattern`"):
        sparse_depth(np.ones((4, 4), np.float32), rng, pattern="grid")
    with pytest.raises(ValueError, match="`dropout`"):
        sparse_depth(np.ones((4, 4), np.float32), rng, dropout=1.5)
    with pytest.raises(ValueError, match="`depth_m`"):
        sparse_depth(np.ones((4, 4), np.uint16), rng)
