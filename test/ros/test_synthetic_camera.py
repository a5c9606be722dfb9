"""synthetic_camera in its own process -> subscriber here: one header per frame, consistent ground truth."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from d3_perception.geometry.intrinsics import intrinsics_from_fov

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[2]

def _start_camera(ros_env, tmp_path, *params: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "d3_perception.ros.synthetic_camera", "--ros-args", "--params-file",
           str(REPO / "config" / "synthetic_camera.yaml"), "-p", "width:=64", "-p", "height:=48", "-p", "rate_hz:=15.0"]
    for p in params:
        cmd += ["-p", p]
    with open(tmp_path / "camera.log", "w") as log:
        return subprocess.Popen(cmd, env=ros_env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                start_new_session=True)


def _collect(context, topics, want_frames: int, timeout_s: float = 40.0):
    """{stamp_ns: {topic: msg}} with at least ``want_frames`` stamps on which every topic arrived."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    types = {"camera_info": CameraInfo, "image/compressed": CompressedImage}
    node = __import__("rclpy").create_node("synthetic_camera_probe", context=context)
    frames: dict[int, dict] = defaultdict(dict)

    def cb(topic):
        def store(msg):
            frames[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec][topic] = msg
        return store

    for topic in topics:
        node.create_subscription(types.get(topic, Image), topic, cb(topic), qos_profile_sensor_data)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    deadline = time.monotonic() + timeout_s
    complete = {}
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
        complete = {s: m for s, m in frames.items() if len(m) == len(topics)}
        if len(complete) >= want_frames:
            break
    node.destroy_node()
    return complete, frames


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_camera_publishes_consistent_frames(rclpy_context, ros_env, tmp_path):
    from d3_perception.ros.conversions import msg_to_numpy

    topics = ("image", "camera_info", "depth", "normals", "sparse_depth")
    proc = _start_camera(ros_env, tmp_path, "image_format:=raw", "sparse_dropout:=0.0", "sparse_noise_std_m:=0.0")
    try:
        complete, seen = _collect(rclpy_context, topics, want_frames=3)
        assert proc.poll() is None, (tmp_path / "camera.log").read_text()
    finally:
        _stop(proc)
    assert len(complete) >= 3, f"only {len(complete)} complete frames; per stamp: {[sorted(m) for m in seen.values()]}"
    stamps = sorted(complete)
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))
    for stamp in stamps:
        msgs = complete[stamp]
        assert {m.header.frame_id for m in msgs.values()} == {"camera_color_optical_frame"}
        rgb = msg_to_numpy(msgs["image"])
        depth = msg_to_numpy(msgs["depth"])
        normals = msg_to_numpy(msgs["normals"])
        sparse = msg_to_numpy(msgs["sparse_depth"])
        assert msgs["image"].encoding == "rgb8" and rgb.shape == (48, 64, 3)
        assert msgs["depth"].encoding == "32FC1" and depth.shape == (48, 64)
        assert msgs["normals"].encoding == "32FC3" and normals.shape == (48, 64, 3)
        assert np.isfinite(depth).all() and depth.min() > 0.2  # closed room: every pixel has depth
        np.testing.assert_allclose(np.linalg.norm(normals, axis=2), 1.0, atol=1e-4)
        info = msgs["camera_info"]
        assert (info.height, info.width) == (48, 64)
        np.testing.assert_allclose(np.reshape(info.k, (3, 3)), intrinsics_from_fov((48, 64), 70.0))
        hit = np.isfinite(sparse)  # noise-free, no dropout: sparse returns equal the depth
        assert 0 < hit.sum() < depth.size / 2
        np.testing.assert_allclose(sparse[hit], depth[hit], rtol=1e-6)


def test_camera_compressed_16uc1_sparse_and_prerendered_loop(rclpy_context, ros_env, tmp_path):
    from d3_perception.ros.conversions import compressed_to_rgb, msg_to_numpy

    topics = ("image/compressed", "depth", "sparse_depth")
    proc = _start_camera(ros_env, tmp_path, "image_format:=compressed", "sparse_encoding:=16UC1",
                         "sparse_pattern:=random", "sparse_fraction:=0.05", "scene:=world", "loop_frames:=3")
    try:
        complete, _ = _collect(rclpy_context, topics, want_frames=5)
    finally:
        _stop(proc)
    assert len(complete) >= 5
    # 3 pre-rendered frames loop: the ground truth repeats with period 3 while stamps keep increasing
    depths = [msg_to_numpy(complete[s]["depth"]) for s in sorted(complete)]
    distinct = {d.tobytes() for d in depths}
    assert len(distinct) <= 3 < len(depths)
    for msgs in complete.values():
        rgb = compressed_to_rgb(msgs["image/compressed"])
        assert rgb.shape == (48, 64, 3) and "jpeg" in msgs["image/compressed"].format
        assert msgs["sparse_depth"].encoding == "16UC1"
        mm = msg_to_numpy(msgs["sparse_depth"])
        depth = msg_to_numpy(msgs["depth"])
        hit = mm > 0
        assert hit.any() and np.isfinite(depth[hit]).all()
        assert np.abs(mm[hit] / 1000.0 - depth[hit]).max() < 0.1  # 1 cm noise, mm rounding


def test_camera_refuses_bad_parameters_with_one_line(ros_env, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "d3_perception.ros.synthetic_camera", "--ros-args", "-p", "scene:=cave"],
        env=ros_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "`scene` must be one of room, outdoor, mixed, world, shift; got 'cave'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_prints_parameters_and_exits_0_without_starting_a_camera(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "d3_perception.ros.synthetic_camera", "--help"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: synthetic_camera") and "rate_hz" in proc.stdout and "--ros-args" in proc.stdout
    assert "synthetic camera: scene=" not in proc.stdout + proc.stderr  # no node was started
    bad = subprocess.run([sys.executable, "-m", "d3_perception.ros.synthetic_camera", "--rate", "5"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unrecognized arguments: --rate" in bad.stderr


@pytest.mark.parametrize(("signals", "inherited_sigint"), [
    (("SIGINT", "SIGINT"), "default"),  # launch sends one more SIGINT when it has no terminal
    (("SIGINT", "SIGINT", "SIGTERM", "SIGINT"), "default"),
    (("SIGTERM",), "default"),
    (("SIGINT",), "ignored"),  # started as a shell's background job
])
def test_camera_shuts_down_cleanly_however_many_signals_arrive(ros_env, tmp_path, signals, inherited_sigint):
    import signal

    from conftest import default_sigint, ignored_sigint

    cmd = [sys.executable, "-m", "d3_perception.ros.synthetic_camera", "--ros-args", "-p", "width:=64",
           "-p", "height:=48"]
    log_path = tmp_path / "camera.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=ros_env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                preexec_fn=default_sigint if inherited_sigint == "default" else ignored_sigint)
    try:
        deadline = time.monotonic() + 60
        while "synthetic camera: scene=" not in log_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.1)
        time.sleep(0.5)  # publishing
        for name in signals:
            proc.send_signal(getattr(signal, name))
            time.sleep(0.02)  # "twice fast": the later signals land during the cleanup
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert rc == 0, f"exit {rc}: {text[-2000:]}"
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-2000:]
