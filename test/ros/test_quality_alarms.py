"""Self-check alarms (issue #16): each fires as a /diagnostics WARN with its number on a constructed bad case and
clears after, driven through the real CameraPipeline and the DiagnosticArray the node publishes (no ROS graph;
test_node_outputs covers the topics). Also /info's new fields."""

from __future__ import annotations

import itertools
import math
import threading
import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from fake_backends import GtBackend
from node_harness import Client, make_rgb

from d3_perception.backends.chain import BackendChain
from d3_perception.ros.diagnostics import OK, WARN, NodeState, diagnostic_array, prediction_info
from d3_perception.ros.frame_quality import QualitySample, _every_step, _median, quality_alarms, worst
from d3_perception.ros.params import config_from_values
from d3_perception.ros.pipeline import OUTPUTS, CameraPipeline, wanted_outputs

pytestmark = pytest.mark.ros

H, W = 48, 64
ALL = dict.fromkeys(OUTPUTS, 1)


class _Camera:
    """A pipeline fed frame by frame with increasing stamps and camera_info, read back through /diagnostics."""

    def __init__(self, **params):
        cfg = config_from_values({"lazy_outputs": False, "cloud_max_range_m": 100.0, **params})
        self.pipe = CameraPipeline(cfg)
        self.chain = BackendChain(GtBackend(), [], lambda name: None)
        self.client = Client.__new__(Client)  # only its message helpers
        self.stamps = itertools.count(100)
        self.state = NodeState("/d3test/d3_perception_node", None, 0, "", True, time.monotonic())

    def step(self, rgb, sparse=None):
        stamp = float(next(self.stamps))
        self.pipe.on_camera_info(self.client.camera_info(H, W, stamp))
        if sparse is not None:
            self.pipe.on_sparse(self.client.image_msg(sparse, "32FC1", stamp))
        self.pipe.offer(self.client.image_msg(rgb, "rgb8", stamp), False, stamp)
        result = self.pipe.process(self.pipe.next_frame(threading.Event()), wanted_outputs(self.pipe.cfg, ALL),
                                   self.chain)
        assert result is not None
        self.pipe.finish(result, stamp + 0.01)
        return result

    def set(self, **values):
        self.pipe.set_config(self.pipe.cfg.with_values(values))

    def status(self):
        """(level, message, key/values) of the camera's /diagnostics status (one snapshot: one period)."""
        array = diagnostic_array(self.state, {"pipeline": (self.pipe.stats.snapshot(), self.pipe.cfg)},
                                 self.pipe.cfg, Time())
        st = array.status[0]
        return st.level[0], st.message, {kv.key: kv.value for kv in st.values}

    def close(self):
        self.pipe.close()


def _ramp(lo=0.3, hi=0.6):
    return np.broadcast_to(np.linspace(lo, hi, W, dtype=np.float32)[None, :], (H, W)).copy()


def test_scale_jump_alarm_fires_with_the_number_and_clears():
    cam = _Camera(**{"metric.mode": "fixed", "metric.fixed_scale": 4.0})
    rgb = make_rgb(H, W, _ramp())
    try:
        cam.step(rgb)
        cam.step(rgb)
        level, message, values = cam.status()
        assert level == OK, message
        assert float(values["scale_change"]) == 0.0
        cam.set(**{"metric.fixed_scale": 6.0})  # a 50 % jump of the applied scale
        info = prediction_info(cam.step(rgb), 1.0, "fixed", 0)
        assert info.scale_change == pytest.approx(0.5)
        level, message, values = cam.status()
        assert level == WARN and "scale_change=0.5000" in message, message
        assert float(values["scale_change"]) == pytest.approx(0.5)
        cam.step(rgb)  # the scale holds: clear at the next status
        level, message, _ = cam.status()
        assert level == OK, message
    finally:
        cam.close()


def test_low_confidence_share_alarm_fires_on_a_broken_depth_and_clears():
    cam = _Camera(**{"metric.mode": "fixed", "metric.fixed_scale": 4.0, "metric.fixed_shift": 0.5})
    rng = np.random.default_rng(3)
    broken = rng.uniform(0.1, 0.9, size=(H, W)).astype(np.float32)  # depth jumping at every pixel
    try:
        info = prediction_info(cam.step(make_rgb(H, W, broken)), 1.0, "fixed", 0)
        assert info.low_confidence_share > 0.3
        broken_mean = info.mean_confidence
        level, message, values = cam.status()
        assert level == WARN and "low_confidence_share" in message, message
        assert float(values["low_confidence_share"]) == pytest.approx(info.low_confidence_share, abs=1e-4)
        info = prediction_info(cam.step(make_rgb(H, W, _ramp())), 1.0, "fixed", 0)
        assert info.low_confidence_share < 0.1 and info.mean_confidence > 2 * broken_mean
        level, message, _ = cam.status()
        assert level == OK, message
    finally:
        cam.close()


def test_sparse_fit_residual_alarm_fires_on_a_noisy_reference_and_clears():
    cam = _Camera(**{"metric.mode": "sparse_depth", "metric.min_points": 20, "metric.smoothing": 0.0,
                     "alarm.max_residual_rel": 0.01})
    rel = _ramp()
    rgb = make_rgb(H, W, rel)
    true_m = 3.0 * (np.round(rel * 255) / 255) + 0.5
    rng = np.random.default_rng(5)
    rows = np.zeros((H, W), bool)
    rows[::4] = True
    noisy = np.where(rows, true_m * rng.uniform(0.96, 1.04, size=(H, W)), np.nan).astype(np.float32)
    clean = np.where(rows, true_m, np.nan).astype(np.float32)
    try:
        result = cam.step(rgb, noisy)
        assert result.outputs.align.status == "fit"
        level, message, values = cam.status()
        assert level == WARN and "alignment_residual_rel" in message, message
        assert float(values["alignment_residual_rel"]) > 0.01
        cam.step(rgb, clean)
        level, message, values = cam.status()
        assert level == OK, message
        assert float(values["alignment_residual_rel"]) < 0.001
    finally:
        cam.close()


def test_flicker_alarm_fires_on_a_flickering_still_view_and_clears():
    cam = _Camera(**{"metric.mode": "fixed", "metric.fixed_scale": 1.0, "temporal.blend": 0.0})
    base = np.full((H, W), 100, np.uint8)
    a = make_rgb(H, W, base / 255.0)
    b = a.copy()
    b[..., 0] = 106  # 6 % depth change, grey change 1.8 levels: the image is still, the depth flickers
    try:
        for rgb in (a, b, a, b):
            cam.step(rgb)
        level, message, values = cam.status()
        assert level == WARN and "flicker" in message, message
        assert float(values["flicker"]) == pytest.approx(6 / 106, rel=0.1)
        for _ in range(10):  # the estimate averages the last 10 frames
            cam.step(a)
        cam.status()  # the status judges the worst frame since the previous one: this period still had flicker
        cam.step(a)
        level, message, values = cam.status()
        assert level == OK, message
        assert float(values["flicker"]) == 0.0
    finally:
        cam.close()


def test_stabiliser_blends_a_still_view_and_reports_its_share():
    cam = _Camera(**{"metric.mode": "fixed", "metric.fixed_scale": 1.0, "temporal.blend": 0.5,
                     "min_confidence": 0.0})
    a = make_rgb(H, W, np.full((H, W), 100 / 255.0))
    b = a.copy()
    b[..., 0] = 106
    try:
        cam.step(a)
        result = cam.step(b)
        depth = result.outputs.depth_m
        np.testing.assert_allclose(depth, 0.5 * (100 + 106) / 255, rtol=1e-5)  # half the previous frame
        assert prediction_info(result, 1.0, "fixed", 0).blended_share == pytest.approx(1.0)
        cam.set(**{"temporal.blend": 0.0})
        result = cam.step(a)
        np.testing.assert_allclose(result.outputs.depth_m, 100 / 255, rtol=1e-5)  # off: the raw frame
        assert math.isnan(prediction_info(result, 1.0, "fixed", 0).blended_share)
    finally:
        cam.close()


def test_alarm_rules_and_worst_of_two_samples():
    cfg = config_from_values({})
    assert quality_alarms(QualitySample(), cfg) == []  # nothing known: nothing raised
    bad = QualitySample(residual_rel=0.2, scale_change=0.3, low_confidence_share=0.5, flicker=0.05)
    assert [a.split()[-3].split("=")[0] for a in quality_alarms(bad, cfg)] == [
        "alignment_residual_rel", "scale_change", "low_confidence_share", "flicker"]
    off = cfg.with_values({"alarm.max_flicker": 0.0, "alarm.max_scale_change": 0.0})
    assert len(quality_alarms(bad, off)) == 2
    w = worst(QualitySample(mean_confidence=0.8, scale_change=0.01), QualitySample(mean_confidence=0.3))
    assert w.mean_confidence == 0.3 and w.scale_change == 0.01 and math.isnan(w.flicker)


@pytest.mark.parametrize(("hw", "step"), [((480, 640), 4), ((481, 641), 4), ((120, 160), 1), ((1080, 1920), 12)])
def test_flicker_grid_sample_is_every_step_th_pixel(hw, step):
    """The flicker estimate's image grid (cv2 where the step divides the size) is exactly rgb[::step, ::step]."""
    rgb = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    grid = _every_step(rgb, step)
    np.testing.assert_array_equal(grid, rgb[::step, ::step])
    assert grid.flags.c_contiguous


@pytest.mark.parametrize("n", [1, 2, 3, 4, 1199, 1200])
def test_residual_median_is_numpys_median(n):
    """The alignment residual's scale (residual / median depth) uses a one-partition median: np.median's value."""
    values = np.random.default_rng(n).uniform(0.5, 20.0, n).astype(np.float32)
    values[: n // 3] = values[0]  # ties
    assert _median(values) == pytest.approx(float(np.median(values)), rel=1e-6)
