"""The compiled confidence and stabiliser kernels give the numpy reference's results bit for bit, and the
estimator falls back to numpy without numba."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from d3_perception.geometry import kernels
from d3_perception.geometry.confidence import (
    RESIDUAL_CAP,
    ConfidenceConfig,
    ConfidenceEstimator,
    SparsePoints,
)
from d3_perception.geometry.temporal import StabilizerConfig, TemporalStabilizer
from d3_perception.synthetic import SyntheticSequence

pytest.importorskip("numba", reason="numba is not installed: the estimator uses its numpy path only")


def _frame(hw, seed):
    """Synthetic depth + exact normals ([H,W,3]), made hard: NaN, 0, negative and infinite depth, normals off by noise,
    and a scan-row reference with 3 % outlier returns and rows of wrong depth."""
    f = SyntheticSequence(seed=seed, size_hw=hw).frame(3)
    rng = np.random.default_rng(seed)
    depth = np.array(f.depth_m, np.float32)
    depth[rng.random(hw) < 0.01] = np.nan
    depth[rng.random(hw) < 0.005] = 0.0
    depth[rng.random(hw) < 0.002] = -1.0
    depth[:2, :3] = np.inf
    normals = np.array(f.normals, np.float32) + rng.normal(0, 0.05, f.normals.shape).astype(np.float32)
    reference = np.full(hw, np.nan, np.float32)
    rows = np.linspace(0, hw[0] - 1, 12).round().astype(int)[1:-1]
    reference[rows] = f.depth_m[rows] * (1 + rng.normal(0, 0.02, (rows.size, hw[1]))).astype(np.float32)
    reference[rows] = np.where(rng.random((rows.size, hw[1])) < 0.03, 0.3, reference[rows])
    reference[rows[:2]] *= 1.5
    return depth, f.K, normals, reference


CONFIGS = [ConfidenceConfig(), ConfidenceConfig(combine="min"), ConfidenceConfig(sources=("edges",)),
           ConfidenceConfig(sources=("normals", "sparse")), ConfidenceConfig(sources=("sparse",)),
           ConfidenceConfig(edge_radius_px=0), ConfidenceConfig(edge_radius_px=3, sparse_weight=1.0),
           ConfidenceConfig(grid_long_side=64)]


@pytest.mark.parametrize("hw", [(480, 640), (97, 131), (6, 5)])
def test_compiled_maps_equal_the_numpy_reference_bit_for_bit(hw):
    """Every cue combination, combine rule, erosion radius and grid step, with and without normals and a
    reference (as an array and as SparsePoints), on depth with every kind of invalid value."""
    depth, K, normals, reference = _frame(hw, seed=hw[0])
    points = SparsePoints(reference)
    checked = 0
    for cfg in CONFIGS:
        compiled, numpy_only = ConfidenceEstimator(cfg), ConfidenceEstimator(cfg, compiled=False)
        assert compiled._kernel is not None and numpy_only._kernel is None
        for model_normals in (np.moveaxis(normals, -1, 0), normals, None):  # [3,H,W], [H,W,3], none
            for ref in (reference, points, None):
                want = numpy_only.compute(depth, K, model_normals, ref).copy()
                got = compiled.compute(depth, K, model_normals, ref)
                np.testing.assert_array_equal(got, want, err_msg=f"{cfg} normals={model_normals is not None}")
                assert compiled.summary(0.3) == numpy_only.summary(0.3)
                checked += 1
    assert checked == len(CONFIGS) * 9


def test_compiled_gate_removes_what_the_reference_gate_removes():
    depth, K, normals, reference = _frame((480, 640), seed=4)
    gated = {}
    for compiled in (True, False):
        est = ConfidenceEstimator(compiled=compiled)
        est.rate(depth, K, normals, reference)
        d = depth.copy()
        est.gate(d, 0.2)
        gated[compiled] = np.isnan(d)
    assert gated[True].sum() > gated[False].size * 0.05  # the gate removed something
    np.testing.assert_array_equal(gated[True], gated[False])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 31, 64])
def test_cell_medians_equal_numpy_medians_with_ties_and_invalid_depth(n):
    """The in-place quickselect against np.median per cell: runs of length n, many ties (residuals rounded to
    two decimals), capped residuals and returns on invalid depth (skipped, not counted)."""
    rng = np.random.default_rng(n)
    cells = 7
    bins = np.repeat(np.arange(cells), n)
    bins = bins[rng.random(bins.size) < 0.8] if n > 2 else bins  # uneven runs, some cells empty
    index = np.arange(bins.size)
    values = rng.uniform(1, 5, bins.size).astype(np.float32)
    z = (values * (1 + np.round(rng.normal(0, 0.3, bins.size), 2))).astype(np.float32)
    z[rng.random(z.size) < 0.1] = np.nan
    z[::9] = values[::9] * 4  # 300 % off: capped at RESIDUAL_CAP
    median, count = np.empty(cells, np.float32), np.empty(cells, np.float32)
    kernels.load().cell_medians(z, index, values, bins, cells, RESIDUAL_CAP, median, count)
    r = np.minimum(np.abs(z - values) / values, RESIDUAL_CAP)
    for c in range(cells):
        mine = r[(bins == c) & np.isfinite(r)]
        assert count[c] == mine.size
        assert median[c] == (np.float32(np.median(mine.astype(np.float64))) if mine.size else 0.0)


def test_without_numba_the_estimator_uses_numpy(monkeypatch):
    """A machine without numba (e.g. a Jetson image without it) still rates frames, with the same maps."""
    depth, K, normals, reference = _frame((96, 128), seed=1)
    expected = ConfidenceEstimator().compute(depth, K, normals, reference).copy()
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba -> ImportError
    kernels.load.cache_clear()
    try:
        assert kernels.load() is None
        est = ConfidenceEstimator()
        assert est._kernel is None
        np.testing.assert_array_equal(est.compute(depth, K, normals, reference), expected)
    finally:
        kernels.load.cache_clear()


@pytest.mark.parametrize("blend", [0.0, 0.7])
def test_compiled_stabiliser_equals_the_numpy_reference(blend):
    """Frame by frame on a still view with sensor noise, a moving object, a camera jump and invalid depth: the
    same outputs bit for bit, the same moving / blended shares, the same flicker (summed in another order)."""
    rng = np.random.default_rng(3)
    hw = (120, 160)
    base = rng.uniform(1.0, 6.0, hw).astype(np.float32)
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    compiled = TemporalStabilizer(StabilizerConfig(blend=blend))
    numpy_only = TemporalStabilizer(StabilizerConfig(blend=blend), compiled=False)
    assert compiled._kernel is not None and numpy_only._kernel is None
    for t in range(8):
        depth = base * (1 + rng.normal(0, 0.02, hw)).astype(np.float32)
        depth[rng.random(hw) < 0.02] = np.nan
        depth[rng.random(hw) < 0.01] = 0.0
        depth[0, :4] = np.inf
        rgb = image.copy()
        if t in (3, 4):
            rgb[40:60, 50:80] = 255 - rgb[40:60, 50:80]  # a moving object: those pixels pass through
            depth[40:60, 50:80] *= 0.5
        if t == 6:
            rgb = np.roll(image, 9, axis=1)  # the camera moves: the whole frame passes through
        want = numpy_only.update(depth, rgb)
        got = compiled.update(depth, rgb)
        np.testing.assert_array_equal(got, want, err_msg=f"frame {t}")
        assert (compiled.blended_share, np.isnan(compiled.moving_share)) == (
            numpy_only.blended_share, np.isnan(numpy_only.moving_share))
        assert compiled.moving_share == numpy_only.moving_share or t == 0
        if np.isnan(numpy_only.still_flicker):
            assert np.isnan(compiled.still_flicker), t
        else:
            assert compiled.still_flicker == pytest.approx(numpy_only.still_flicker, rel=1e-12)
    assert numpy_only.moving_share > 0.5  # the camera jump was seen as motion (frame 7 vs the jumped frame 6)


def test_warm_up_compiles_what_a_node_frame_uses():
    """After warm_up() (the node calls it while configuring), a 640x480 frame as the node rates it (normals as
    three planes, a SparsePoints reference), stabiliser frames and the node's clouds (with and without colour,
    rows on helper threads) compile nothing more: the first camera frame does not wait for numba. Run in a
    fresh process, where no other test compiled anything."""
    import subprocess

    code = """
import numpy as np
from d3_perception.geometry import kernels as ck
from d3_perception.geometry.confidence import ConfidenceEstimator, SparsePoints
from d3_perception.geometry.temporal import StabilizerConfig, TemporalStabilizer
assert ck.warm_up()
k = ck.load()
names = ("image_cues", "combine", "cell_medians", "changed_pixels", "still_blend", "cloud_rows")
before = [len(getattr(k, n).signatures) for n in names]
assert all(before), before
rng = np.random.default_rng(0)
depth = rng.uniform(1, 5, (480, 640)).astype(np.float32)
normals = rng.normal(size=(3, 480, 640)).astype(np.float32)
reference = np.full((480, 640), np.nan, np.float32)
reference[::30] = depth[::30]
K = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
ConfidenceEstimator().rate(depth, K, (normals[0], normals[1], normals[2]), SparsePoints(reference))
stabilizer = TemporalStabilizer(StabilizerConfig(blend=0.5))
rgb = np.zeros((480, 640, 3), np.uint8)
for _ in range(3):
    stabilizer.update(depth, rgb)
from d3_perception.geometry.pointcloud import fill_cloud
from d3_perception.parallel import RowWorkers
workers = RowWorkers(2)
for colour in (rgb, None):
    fill_cloud(depth, K, colour, (normals[0], normals[1], normals[2]), 1, 0.1, 20.0, workers=workers)
workers.close()
after = [len(getattr(k, n).signatures) for n in names]
assert after == before, (before, after)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_compiled_cloud_bytes_equal_the_numpy_reference(stride):
    """The cloud kernel writes the organized cloud byte for byte as the numpy/OpenCV rows do: with and without
    colour and normals (planes or [H,W,3]), with a range limit or none, on depth with NaN, negative, zero and
    out-of-range values, alone and shared with helper threads; the density flag agrees too."""
    from d3_perception.geometry.pointcloud import fill_cloud
    from d3_perception.parallel import RowWorkers

    rng = np.random.default_rng(stride)
    hw = (97, 131)
    K = np.array([[120.0, 0, 65.0], [0, 118.0, 48.5], [0, 0, 1]])
    depth = rng.uniform(0.05, 30.0, hw).astype(np.float32)
    depth[rng.random(hw) < 0.05] = np.nan
    depth[:2] = -1.0
    depth[5, :7] = 0.0
    rgb = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    n = rng.normal(size=(3, *hw)).astype(np.float32)
    still = np.full(hw, 3.0, np.float32)  # every point kept: the dense flag is True
    workers = RowWorkers(2)
    try:
        for d in (depth, still):
            for colour in (rgb, None):
                for normals in ((n[0], n[1], n[2]), np.moveaxis(n, 0, -1), None):
                    for limits in ((0.0, float("inf")), (0.5, 20.0)):
                        want, want_dense = fill_cloud(d, K, colour, normals, stride, *limits, compiled=False)
                        for w in (None, workers):
                            got, dense = fill_cloud(d, K, colour, normals, stride, *limits, workers=w)
                            assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
                            assert dense == want_dense
        assert fill_cloud(still, K, rgb, None, stride, 0.5, 20.0)[1] is True
        assert fill_cloud(depth, K, rgb, None, stride, 0.5, 20.0)[1] is False
    finally:
        workers.close()
