"""CameraPipeline without a node: the per-camera work the node, bench/node_overhead.py and these tests share.
Messages in and out are real sensor_msgs; no ROS graph (the node tests cover the graph)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fake_backends import GtBackend
from node_harness import Client, make_rgb

from d3_perception.backends.chain import BackendChain
from d3_perception.ros.conversions import msg_to_cloud, msg_to_numpy
from d3_perception.ros.params import config_from_values
from d3_perception.ros.pipeline import OUTPUTS, CameraPipeline, wanted_outputs

pytestmark = pytest.mark.ros

H, W = 40, 60
ALL = dict.fromkeys(OUTPUTS, 1)  # every output has one subscriber


def _client():
    return Client.__new__(Client)  # only its message helpers


def _pipeline(**params):
    warnings = []
    cfg = config_from_values({"lazy_outputs": False, "cloud_max_range_m": 100.0, **params})
    pipe = CameraPipeline(cfg, warn=warnings.append)
    chain = BackendChain(GtBackend(), [], lambda name: None)
    return pipe, chain, warnings


def _step(pipe, chain, msg, now_s=100.0, want=None):
    pipe.offer(msg, False, now_s)
    frame = pipe.next_frame(threading.Event())
    return pipe.process(frame, want or wanted_outputs(pipe.cfg, ALL), chain)


def test_outputs_carry_the_input_stamp_frame_and_size():
    pipe, chain, warnings = _pipeline(**{"metric.mode": "fixed", "metric.fixed_scale": 2.0})
    c = _client()
    rgb = make_rgb(H, W)
    pipe.on_camera_info(c.camera_info(H, W, 99.5))
    result = _step(pipe, chain, c.image_msg(rgb, "rgb8", 99.5, frame_id="cam_a"))
    try:
        assert set(result.messages) == {"depth", "relative", "camera_info", "colored", "normals",
                                         "normals_colored", "points", "confidence"}
        for msg in result.messages.values():
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (99, 500_000_000)
            assert msg.header.frame_id == "cam_a" and (msg.height, msg.width) == (H, W)
        relative = msg_to_numpy(result.messages["relative"])
        np.testing.assert_allclose(relative, rgb[..., 0] / 255.0, atol=1e-6)  # the fake model's output
        np.testing.assert_allclose(msg_to_numpy(result.messages["depth"]), 2.0 * relative, rtol=1e-5)
        assert np.isfinite(msg_to_cloud(result.messages["points"])["z"]).all()
        assert result.processing_hw == (64, 64) and result.backend_info.name == "fake_gt"
        latency_ms = pipe.finish(result, now_s=100.0)
        assert latency_ms == pytest.approx(500.0)
        snap = pipe.stats.snapshot()
        assert snap.frames_received == 1 and snap.frames_processed == 1 and snap.bad_input == {}
        assert warnings == []
    finally:
        pipe.close()


def test_bad_inputs_are_counted_per_kind_and_produce_nothing():
    pipe, chain, warnings = _pipeline(max_input_pixels=H * W)
    c = _client()
    assert _step(pipe, chain, c.image_msg(np.zeros((H, W), np.float32), "32FC1", 1.0)) is None
    pipe.offer(c.image_msg(make_rgb(H + 1, W), "rgb8", 2.0), False, 100.0)  # refused by header
    assert _step(pipe, chain, c.image_msg(make_rgb(4, 4), "rgb8", 3.0)) is None  # below MIN_SIDE_PX
    failing = make_rgb(H, W)
    failing[0, 0, 1] = 1  # the fake model raises on this image
    assert _step(pipe, chain, c.image_msg(failing, "rgb8", 0.5)) is None  # stamp went backwards, then model error
    bad = pipe.stats.snapshot().bad_input
    assert bad == {"image_encoding": 1, "image_too_large": 1, "image_decode": 1, "stamp_backwards": 1,
                   "model_error": 1}, bad
    assert any("bad input [model_error]: fake_gt: RuntimeError" in w for w in warnings)
    pipe.close()


def test_lazy_outputs_skip_what_nobody_subscribes_to():
    pipe, chain, _ = _pipeline(lazy_outputs=True)
    want = wanted_outputs(pipe.cfg, {**dict.fromkeys(OUTPUTS, 0), "relative": 2})
    assert [k for k, v in want.items() if v] == ["relative"]
    result = _step(pipe, chain, _client().image_msg(make_rgb(H, W), "rgb8", 5.0), want=want)
    assert list(result.messages) == ["relative"]
    assert _step(pipe, chain, _client().image_msg(make_rgb(H, W), "rgb8", 6.0),
                 want=dict.fromkeys(OUTPUTS, False)) is None
    pipe.close()


def test_sparse_reference_is_matched_by_stamp_in_the_pipeline():
    pipe, chain, _ = _pipeline(**{"metric.mode": "sparse_depth", "metric.min_points": 20})
    c = _client()
    rgb = make_rgb(H, W)
    rel = rgb[..., 0].astype(np.float32) / 255.0
    sparse = np.full((H, W), np.nan, np.float32)
    sparse[::3, ::3] = 3.0 * rel[::3, ::3] + 0.5
    pipe.on_sparse(c.image_msg(sparse, "32FC1", 7.0))
    result = _step(pipe, chain, c.image_msg(rgb, "rgb8", 7.0))
    align = result.outputs.align
    assert align.scale == pytest.approx(3.0, rel=1e-3) and align.shift == pytest.approx(0.5, abs=1e-3)
    assert _step(pipe, chain, c.image_msg(rgb, "rgb8", 9.0)) is not None  # 2 s away: no fresh reference
    assert pipe.stats.snapshot().bad_input == {"sparse_depth_unsynced": 1, "camera_info_missing": 2}
    pipe.close()


def _step_at(pipe, chain, rgb, stamp):
    c = _client()
    pipe.on_camera_info(c.camera_info(H, W, stamp))
    return _step(pipe, chain, c.image_msg(rgb, "rgb8", stamp))


def _step_image(rel):
    """An image whose fake model depth is ``rel`` (a step: two planes and a discontinuity between them)."""
    return make_rgb(H, W, rel)


def test_confidence_is_low_at_the_discontinuity_and_gating_removes_exactly_those_pixels():
    rel = np.full((H, W), 0.2, np.float32)
    rel[:, W // 2:] = 0.8  # a depth step: the flying pixels of back-projection
    rgb = _step_image(rel)
    params = {"metric.mode": "fixed", "metric.fixed_scale": 4.0, "metric.fixed_shift": 0.5,
              "cloud_confidence": True}
    pipe, chain, _ = _pipeline(**params, min_confidence=0.0)
    ungated = _step_at(pipe, chain, rgb, 10.0)
    conf = msg_to_numpy(ungated.messages["confidence"])
    assert conf.dtype == np.float32 and conf.shape == (H, W) and conf.min() >= 0 and conf.max() <= 1
    edge = np.abs(np.arange(W) - W // 2 + 0.5) <= 0.5  # the two columns either side of the step
    far = np.abs(np.arange(W) - W // 2) >= 4
    assert conf[:, edge].max() < 0.05 and conf[:, far].min() > 0.9  # the step is trusted far less than planes
    depth0 = msg_to_numpy(ungated.messages["depth"])
    cloud0 = msg_to_cloud(ungated.messages["points"])
    assert np.isfinite(depth0).all()
    np.testing.assert_array_equal(cloud0["confidence"], conf)  # the cloud's field is the published map
    pipe.close()

    threshold = float(np.median(conf[:, edge]))  # some step pixels below, some above
    pipe, chain, _ = _pipeline(**params, min_confidence=threshold)
    gated = _step_at(pipe, chain, rgb, 10.0)
    below = conf < np.float32(threshold)
    assert 0 < below.sum() < below.size
    depth = msg_to_numpy(gated.messages["depth"])
    np.testing.assert_array_equal(np.isnan(depth), below)
    np.testing.assert_array_equal(depth[~below], depth0[~below])
    cloud = msg_to_cloud(gated.messages["points"])
    np.testing.assert_array_equal(np.isnan(cloud["z"]), below)
    np.testing.assert_array_equal(cloud["z"][~below], cloud0["z"][~below])
    assert not gated.messages["points"].is_dense
    pipe.close()


def test_confidence_without_model_normals_or_metric_mode_still_gates_the_cloud():
    rel = np.full((H, W), 0.2, np.float32)
    rel[H // 2:] = 0.8
    pipe, chain, _ = _pipeline(min_confidence=0.3, publish_normals=False, cloud_normals=False)
    result = _step_at(pipe, chain, _step_image(rel), 11.0)
    assert "depth" not in result.messages  # metric.mode none
    conf = msg_to_numpy(result.messages["confidence"])
    cloud = msg_to_cloud(result.messages["points"])
    assert [f.name for f in result.messages["points"].fields] == ["x", "y", "z", "rgb"]
    np.testing.assert_array_equal(np.isnan(cloud["z"]), conf < np.float32(0.3))
    assert np.isnan(cloud["z"]).any() and np.isfinite(cloud["z"]).any()
    pipe.close()


def test_gating_and_info_numbers_do_not_depend_on_who_subscribes_to_the_confidence_map():
    # 240x320: the cues run on a grid 2x coarser, and the frame-size map is only made when something needs it
    h, w = 240, 320
    rel = np.full((h, w), 0.2, np.float32)
    rel[:, w // 2:] = 0.8
    rgb = make_rgb(h, w, rel)
    c = _client()
    params = {"metric.mode": "fixed", "metric.fixed_scale": 4.0, "metric.fixed_shift": 0.5, "min_confidence": 0.05}
    runs = {}
    # normals subscribed in every run: without them the model's normals (another model pass) and so the normals
    # cue are skipped, which changes the confidence on purpose
    for name, subscribed in (("all", ALL), ("depth", {"depth": 1, "normals": 1, "info": 1}),
                             ("info", {"normals": 1, "info": 1})):
        pipe, chain, _ = _pipeline(**params, lazy_outputs=True)
        pipe.on_camera_info(c.camera_info(h, w, 12.0))
        runs[name] = _step(pipe, chain, c.image_msg(rgb, "rgb8", 12.0), want=wanted_outputs(pipe.cfg, subscribed))
        pipe.close()
    conf = msg_to_numpy(runs["all"].messages["confidence"])
    below = conf < np.float32(0.05)
    assert 0 < below.sum() < below.size
    for name in ("all", "depth"):  # the depth message is gated by the same map, published or not
        np.testing.assert_array_equal(np.isnan(msg_to_numpy(runs[name].messages["depth"])), below)
    assert runs["info"].outputs.confidence is None and "confidence" not in runs["info"].messages
    for name in ("depth", "info"):  # ~/info's numbers are the same however little is published
        assert runs[name].outputs.quality.mean_confidence == runs["all"].outputs.quality.mean_confidence
        assert runs[name].outputs.quality.low_confidence_share == runs["all"].outputs.quality.low_confidence_share
    assert 0 < runs["all"].outputs.quality.low_confidence_share < 0.5
