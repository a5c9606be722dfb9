"""Node behaviour through real DDS: latest-frame policy, STALE, lifecycle services, backend fallback,
sparse-depth metric recovery on a synthetic scene, runtime parameters, and the real tiny checkpoint."""

from __future__ import annotations

import time

import numpy as np
import pytest
from node_harness import Client, make_rgb, node_log, start_node, stop_node

from d3_perception.ros.conversions import msg_to_numpy

pytestmark = pytest.mark.ros


def _send_until(client, rgb, stamp, topic="depth/relative", h=None, w=None, tries=40):
    h, w = h or rgb.shape[0], w or rgb.shape[1]
    for _ in range(tries):
        client.pub_info.publish(client.camera_info(h, w, stamp))
        client.pub_image.publish(client.image_msg(rgb, "rgb8", stamp))
        out = client.wait_stamp(topic, stamp, 0.5)
        if out is not None:
            return out
    return None


def test_slow_model_keeps_latency_bounded_and_counts_drops_exactly(ros_env, rclpy_context, tmp_path, fake_checkpoint):
    delay_s = 0.25
    proc = start_node(ros_env, tmp_path, {"backend": "python:fake_backends:gt", "checkpoint": str(fake_checkpoint),
                                          "lazy_outputs": False, "diagnostics_period_s": 0.2,
                                          "stale_timeout_s": 1.0, "qos_reliability": "reliable",
                                          "qos_depth": 100},
                      extra_env={"D3_FAKE_DELAY_S": str(delay_s)})
    client = Client(rclpy_context, outputs=["depth/relative"], reliable_input=True)
    try:
        assert client.wait_for_subscribers(30.0), node_log(proc)
        rgb = make_rgb(48, 64)
        n_frames, period_s = 60, 1 / 30
        t_start = time.time()
        for i in range(n_frames):  # 30 Hz for 2 s, stamps = wall clock (the node's clock)
            client.pub_image.publish(client.image_msg(rgb, "rgb8", time.time()))
            time.sleep(max(0.0, t_start + (i + 1) * period_s - time.time()))
        # every frame reached the node (reliable input): received = processed + dropped once it is idle
        d = client.wait_diag(lambda lvl, msg, v: int(v["frames_received"]) == n_frames and
                             int(v["frames_processed"]) + int(v["frames_dropped"]) == n_frames, 15.0)
        level, message, v = d
        received, processed, dropped = int(v["frames_received"]), int(v["frames_processed"]), int(v["frames_dropped"])
        assert received == n_frames and processed + dropped == n_frames, v
        assert dropped > n_frames // 2, f"a {delay_s} s model at 30 Hz must drop most frames; got {v}"
        # wait_for_fresh_frame (default on): frames superseded while the worker waited are among the drops
        # above (the exact count); the node measured the 30 Hz input period
        assert 0 <= int(v["fresh_frame_timeouts"]) <= int(v["fresh_frame_waits"]) <= processed, v
        assert 5.0 < float(v["input_period_ms"]) < 200.0, v
        assert client.count("depth/relative") == processed
        # latest-frame policy: the last output is at most ~2 model periods behind its input; a queue of
        # every frame would put it (n_frames * delay_s - 2 s) = 13 s behind
        msgs = client.received["depth/relative"]
        lag_s = [t - (m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec)
                 for m, t in zip(msgs, client.receive_times["depth/relative"], strict=True)]
        assert max(lag_s) < 3.0, lag_s  # bounded, far below the 13 s of a queue (loose: the CPU is shared)
        # input stopped -> STALE
        d = client.wait_diag(lambda lvl, msg, v: lvl == 3, 10.0)
        assert d[0] == 3 and "no input" in d[1]
        assert proc.poll() is None
    finally:
        client.close()
        assert stop_node(proc) == 0


def test_lifecycle_transitions_via_services(ros_env, rclpy_context, tmp_path, fake_checkpoint):
    proc = start_node(ros_env, tmp_path, {"backend": "python:fake_backends:gt", "checkpoint": str(fake_checkpoint),
                                          "lazy_outputs": False, "autostart": False,
                                          "diagnostics_period_s": 0.2})
    client = Client(rclpy_context, outputs=["depth/relative"])
    try:
        assert client.lifecycle_state(30.0) == "unconfigured"
        assert client.lifecycle("configure") and client.lifecycle_state() == "inactive"
        assert client.lifecycle("activate") and client.lifecycle_state() == "active"
        assert client.wait_for_subscribers(20.0)
        rgb = make_rgb(48, 64)
        assert _send_until(client, rgb, 10.0) is not None
        assert client.lifecycle("deactivate") and client.lifecycle_state() == "inactive"
        d = client.wait_diag(lambda lvl, msg, v: "inactive" in msg, 5.0)
        assert "inactive" in d[1]
        assert client.wait_for(lambda: client.pub_image.get_subscription_count() == 0, 10.0), \
            "inactive node must not subscribe to the camera"
        assert client.lifecycle("cleanup") and client.lifecycle_state() == "unconfigured"
        assert client.lifecycle("configure") and client.lifecycle("activate")
        assert client.wait_for_subscribers(20.0)
        assert _send_until(client, rgb, 20.0) is not None, "no output after cleanup/configure/activate"
    finally:
        client.close()
        assert stop_node(proc) == 0


def test_failing_backend_falls_back_to_the_next_one(ros_env, rclpy_context, tmp_path, fake_checkpoint):
    proc = start_node(ros_env, tmp_path, {"backend": "python:fake_backends:failing", "checkpoint": str(fake_checkpoint),
                                          "fallback_backends": ["python:fake_backends:gt_fallback"],
                                          "max_consecutive_failures": 2, "lazy_outputs": False,
                                          "diagnostics_period_s": 0.2})
    client = Client(rclpy_context, outputs=["depth/relative", "d3_perception_node/info"])
    try:
        assert client.wait_for_subscribers(30.0)
        rgb = make_rgb(48, 64)
        stamp, info = 30.0, None
        for _ in range(40):
            stamp += 1
            client.pub_image.publish(client.image_msg(rgb, "rgb8", stamp))
            info = client.wait_stamp("d3_perception_node/info", stamp, 0.5)
            if info is not None:
                break
        assert info is not None and info.backend == "fake_fallback"
        d = client.wait_diag(lambda lvl, msg, v: v.get("backend") == "fake_fallback", 5.0)
        assert d[2]["backend_switches"] == "1" and int(d[2]["bad_input.model_error"]) >= 2
        assert "switched to fake_fallback" in node_log(proc)
    finally:
        client.close()
        assert stop_node(proc) == 0


def test_normals_only_checkpoint_publishes_normals_and_no_depth(ros_env, rclpy_context, tmp_path, fake_checkpoint):
    proc = start_node(ros_env, tmp_path, {"backend": "python:fake_backends:normals_only", "checkpoint": str(fake_checkpoint),
                                          "metric.mode": "fixed", "lazy_outputs": False})
    client = Client(rclpy_context, outputs=["normals", "depth", "depth/relative", "points"])
    try:
        assert client.wait_for_subscribers(30.0)
        out = _send_until(client, make_rgb(48, 64), 7.0, topic="normals")
        assert out is not None, node_log(proc)
        normals = msg_to_numpy(out)
        assert np.allclose(normals[..., 2], -1.0)
        time.sleep(0.5)
        assert client.count("depth") == client.count("depth/relative") == client.count("points") == 0
        assert "model_error" not in node_log(proc)
    finally:
        client.close()
        assert stop_node(proc) == 0


def test_plugin_normals_are_renormalised_and_zero_vectors_become_nan(ros_env, rclpy_context, tmp_path, fake_checkpoint):
    # built-in backends promise unit normals (Backend.unit_normals); a plugin that does not is renormalised
    proc = start_node(ros_env, tmp_path, {"backend": "python:fake_backends:normals_not_unit", "checkpoint": str(fake_checkpoint),
                                          "metric.mode": "fixed", "lazy_outputs": False})
    client = Client(rclpy_context, outputs=["normals"])
    try:
        assert client.wait_for_subscribers(30.0)
        out = _send_until(client, make_rgb(48, 64), 8.0, topic="normals")
        assert out is not None, node_log(proc)
        normals = msg_to_numpy(out)
        assert np.isnan(normals[2, 3]).all()  # the zero vector has no direction
        rest = np.ones(normals.shape[:2], bool)
        rest[2, 3] = False
        assert np.allclose(normals[rest], [0.0, 0.0, -1.0], atol=1e-6)  # unit, optical frame (toward camera)
    finally:
        client.close()
        assert stop_node(proc) == 0


def test_sparse_depth_recovers_metric_scale_of_a_synthetic_scene(ros_env, rclpy_context, tmp_path, fake_checkpoint):
    from d3_perception.synthetic import SyntheticSequence, sparse_depth

    frame = SyntheticSequence(seed=3, size_hw=(120, 160), kind="room").frame(0)
    depth = frame.depth_m
    valid = np.isfinite(depth)
    d_min, d_max = float(depth[valid].min()), float(depth[valid].max())
    true_scale, true_shift = d_max - d_min, d_min
    rel = np.where(valid, (depth - d_min) / true_scale, 1.0)  # what the fake model will output
    rgb = make_rgb(120, 160, rel)
    rng = np.random.default_rng(0)
    sparse = sparse_depth(depth, rng, pattern="scan", rows=12, noise_std_m=0.01)
    outliers = rng.random(sparse.shape) < 0.05  # reflections: 5 % wildly wrong returns
    sparse[outliers & np.isfinite(sparse)] = 0.3
    proc = start_node(ros_env, tmp_path, {"backend": "python:fake_backends:gt", "checkpoint": str(fake_checkpoint),
                                          "metric.mode": "sparse_depth", "metric.smoothing": 0.5,
                                          "lazy_outputs": False, "qos_reliability": "reliable"})
    client = Client(rclpy_context, outputs=["depth", "d3_perception_node/info"], reliable_input=True)
    try:
        assert client.wait_for_subscribers(30.0) and client.wait_for_subscribers(10.0, client.pub_sparse)
        infos = []
        for i in range(4):
            stamp = 100.0 + i
            client.pub_sparse.publish(client.image_msg(sparse, "32FC1", stamp))
            time.sleep(0.1)
            client.pub_info.publish(client.camera_info(120, 160, stamp, k=frame.K.ravel()))
            client.pub_image.publish(client.image_msg(rgb, "rgb8", stamp))
            info = client.wait_stamp("d3_perception_node/info", stamp, 10.0)
            assert info is not None, node_log(proc)
            infos.append(info)
        last = infos[-1]
        assert last.metric_mode == "sparse_depth" and last.alignment_points > 100
        assert last.scale == pytest.approx(true_scale, rel=0.02)
        assert last.shift == pytest.approx(true_shift, abs=0.02 * d_max)
        assert 0 < last.alignment_residual_m < 0.05  # robust residual ~ the 1 cm sensor noise, not the outliers
        metric = msg_to_numpy(client.wait_stamp("depth", 103.0, 5.0))
        rel_err = np.abs(metric[valid] - depth[valid]) / depth[valid]
        assert np.nanmedian(rel_err) < 0.02
        # the default confidence gate keeps the right depth: the 5 % outlier returns are no evidence against it
        assert np.count_nonzero(np.isfinite(metric[valid])) >= 0.95 * np.count_nonzero(valid)
        # the reference stops: the last good fit is held
        client.pub_info.publish(client.camera_info(120, 160, 200.0, k=frame.K.ravel()))
        client.pub_image.publish(client.image_msg(rgb, "rgb8", 200.0))
        held = client.wait_stamp("d3_perception_node/info", 200.0, 10.0)
        assert held is not None and held.scale == pytest.approx(last.scale) and held.alignment_points == 0
    finally:
        client.close()
        assert stop_node(proc) == 0


def test_runtime_parameters_apply_without_restart(ros_env, rclpy_context, tmp_path, fake_checkpoint):
    proc = start_node(ros_env, tmp_path, {"backend": "python:fake_backends:gt", "checkpoint": str(fake_checkpoint),
                                          "metric.mode": "fixed", "metric.fixed_scale": 2.0,
                                          "cloud_max_range_m": 100.0})
    client = Client(rclpy_context, outputs=["points", "depth", "d3_perception_node/info"])
    try:
        assert client.wait_for_subscribers(30.0)
        rgb = make_rgb(48, 64)
        out = _send_until(client, rgb, 10.0, topic="points")
        assert out is not None and (out.height, out.width) == (48, 64)
        assert client.set_param("cloud_stride", 4) == (True, "")
        assert client.set_param("metric.fixed_scale", 5.0)[0]
        out = _send_until(client, rgb, 11.0, topic="points")
        assert out is not None and (out.height, out.width) == (12, 16)
        depth = msg_to_numpy(client.wait_stamp("depth", 11.0, 5.0))
        np.testing.assert_allclose(depth, 5.0 * rgb[..., 0] / 255.0, rtol=1e-5)
        assert client.set_param("metric.mode", "none")[0]
        info = _send_until(client, rgb, 12.0, topic="d3_perception_node/info")
        assert info is not None and info.metric_mode == "none" and np.isnan(info.scale)
        assert client.by_stamp("depth", 12.0) is None  # no metric depth without a metric mode
    finally:
        client.close()
        assert stop_node(proc) == 0


def test_real_tiny_checkpoint_on_torch_in_a_namespace(ros_env, rclpy_context, tmp_path):
    """The real model path: a tiny random checkpoint on the torch backend, default params file, remaps."""
    from d3_perception.model.checkpoint import build_random_checkpoint

    ckpt = build_random_checkpoint(tmp_path / "tiny")
    proc = start_node(ros_env, tmp_path, {"backend": "torch", "checkpoint": str(ckpt),
                                          "processing_resolution": 64, "metric.mode": "depth_range"},
                      namespace="front", image="/front/camera/image_raw")
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    client = Client(rclpy_context, namespace="front", outputs=["depth", "normals", "d3_perception_node/info"])
    client.pub_image = client.node.create_publisher(Image, "/front/camera/image_raw",
                                                    QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    try:
        assert client.wait_for_subscribers(60.0), node_log(proc)
        rgb = make_rgb(96, 128)
        out = _send_until(client, rgb, 5.0, topic="depth", tries=60)
        assert out is not None, node_log(proc)
        depth = msg_to_numpy(out)
        assert depth.shape == (96, 128) and np.nanmin(depth) >= 0.3 - 1e-4 and np.nanmax(depth) <= 10.0 + 1e-3
        normals = msg_to_numpy(client.wait_stamp("normals", 5.0, 10.0))
        norms = np.linalg.norm(normals, axis=-1)
        assert np.allclose(norms[np.isfinite(norms)], 1.0, atol=1e-4)
        info = client.by_stamp("d3_perception_node/info", 5.0)
        assert info.backend == "torch" and info.model_id.startswith("d3-tiny")
        assert (info.processing_width, info.processing_height) == (64, 64)
    finally:
        client.close()
        assert stop_node(proc) == 0


def test_sparse_reference_arriving_during_inference_still_matches_its_frame(ros_env, rclpy_context, tmp_path,
                                                                             fake_checkpoint):
    """A slow model: the sparse depth of the *next* frame arrives before the current frame is fitted. The
    node must pair each frame with the reference nearest its own stamp, not with the newest one."""
    h, w = 60, 80
    rel = np.tile(np.linspace(0.1, 0.9, w, dtype=np.float32), (h, 1))
    rgb = make_rgb(h, w, rel)
    true_scale, true_shift = 4.0, 0.5
    metric = rel * true_scale + true_shift
    proc = start_node(ros_env, tmp_path, {"backend": "python:fake_backends:gt", "checkpoint": str(fake_checkpoint),
                                          "metric.mode": "sparse_depth", "metric.smoothing": 0.0,
                                          "lazy_outputs": False, "qos_reliability": "reliable"},
                      extra_env={"D3_FAKE_DELAY_S": "0.6"})
    client = Client(rclpy_context, outputs=["d3_perception_node/info"], reliable_input=True)
    try:
        assert client.wait_for_subscribers(30.0) and client.wait_for_subscribers(10.0, client.pub_sparse)
        for stamp in (50.0, 51.0):  # 1 s apart: far outside the sync tolerance of each other
            client.pub_sparse.publish(client.image_msg(metric * (stamp - 49.0), "32FC1", stamp))
            time.sleep(0.05)
            client.pub_info.publish(client.camera_info(h, w, stamp))
            client.pub_image.publish(client.image_msg(rgb, "rgb8", stamp))
            time.sleep(0.15)  # the model (0.6 s) is still busy with frame 50 when the reference of 51 arrives
        first = client.wait_stamp("d3_perception_node/info", 50.0, 15.0)
        second = client.wait_stamp("d3_perception_node/info", 51.0, 15.0)
        assert first is not None and second is not None, node_log(proc)
        assert first.alignment_points > 100, "frame 50 was not fitted to its own sparse_depth"
        assert first.scale == pytest.approx(true_scale, rel=0.02)
        assert second.alignment_points > 100 and second.scale == pytest.approx(2 * true_scale, rel=0.02)
    finally:
        client.close()
        assert stop_node(proc) == 0
