"""What the launch tests (test/launch/, skipped here: launch_testing is not on PyPI) rely on, checked without
launch: each isolates its ROS environment before launching, and subscribes with the publisher's QoS.

The QoS check is run for real: the synthetic camera in a subprocess, the launch tests' waiter here.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH_DIR = REPO / "test" / "launch"
LAUNCH_TESTS = sorted(LAUNCH_DIR.glob("test_*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_there_are_launch_tests():
    assert {p.name for p in LAUNCH_TESTS} >= {"test_camera_launch.py", "test_demo_launch.py",
                                                "test_install_launch.py"}


@pytest.mark.parametrize("path", LAUNCH_TESTS, ids=lambda p: p.name)
def test_each_launch_test_isolates_at_import_before_anything_is_launched(path):
    tree = _tree(path)
    isolate_line = None
    for node in tree.body:  # module level: runs at import, before generate_test_description and rclpy.init
        call = node.value if isinstance(node, (ast.Assign, ast.Expr)) else None
        if isinstance(call, ast.Call) and ast.unparse(call.func) == "launch_helpers.isolate":
            isolate_line = node.lineno
    assert isolate_line is not None, f"{path.name} must call launch_helpers.isolate() at module level"
    later = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.lineno < isolate_line]
    assert not later, f"{path.name} defines {later} before isolating"
    source = path.read_text()
    assert "WaitForTopics" not in source, "launch_testing_ros.WaitForTopics subscribes RELIABLE only"
    assert "rclpy.init(" not in source.split("launch_helpers.isolate(")[0]


def test_demo_launch_test_subscribes_camera_topics_with_the_cameras_qos():
    """The camera publishes best-effort sensor-data QoS; the demo test must use that profile for its topics."""
    from rclpy.qos import ReliabilityPolicy, qos_profile_sensor_data

    sys.path.insert(0, str(LAUNCH_DIR))
    try:
        import launch_helpers
    finally:
        sys.path.remove(str(LAUNCH_DIR))
    from d3_perception.ros.synthetic_camera import publisher_qos

    assert launch_helpers.camera_qos() == publisher_qos("sensor_data") == qos_profile_sensor_data
    assert launch_helpers.camera_qos().reliability == ReliabilityPolicy.BEST_EFFORT
    source = (LAUNCH_DIR / "test_demo_launch.py").read_text()
    tree = _tree(LAUNCH_DIR / "test_demo_launch.py")
    camera_topics = next(ast.literal_eval(n.value) for n in tree.body
                         if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "CAMERA_TOPICS")
    assert camera_topics and all(t.startswith("/camera/") for t in camera_topics)
    assert "camera_qos) for t in CAMERA_TOPICS" in source


def _isolated_env_in_a_subprocess(hostile: dict[str, str]) -> dict[str, str]:
    probe = ("import json, os, sys; sys.path.insert(0, sys.argv[1]); import launch_helpers; "
             "launch_helpers.isolate(); print(json.dumps(dict(os.environ)))")
    env = {**os.environ, **hostile}
    proc = subprocess.run([sys.executable, "-c", probe, str(LAUNCH_DIR)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_isolation_overrides_whatever_ros_environment_the_caller_has(ros_env, tmp_path):
    """Domain 0 and subnet discovery from the caller are replaced; the domain is leased (not the one this
    test's fixture holds), the log dir is fresh and the Fast DDS SHM profile is set."""
    hostile = {"ROS_DOMAIN_ID": "0", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "ROS_LOG_DIR": str(tmp_path / "shared"),
               "FASTDDS_DEFAULT_PROFILES_FILE": "/nonexistent.xml"}
    env = _isolated_env_in_a_subprocess(hostile)
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert 1 <= int(env["ROS_DOMAIN_ID"]) <= 100 and env["ROS_DOMAIN_ID"] != ros_env["ROS_DOMAIN_ID"]
    assert env["ROS_LOG_DIR"] != hostile["ROS_LOG_DIR"] and Path(env["ROS_LOG_DIR"]).is_dir()
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(REPO / "config" / "fastdds_shm.xml")
    assert str(REPO) in env["PYTHONPATH"].split(os.pathsep)  # launched processes run this checkout


@pytest.mark.ros
def test_launch_test_waiter_receives_the_camera_where_a_reliable_subscription_does_not(ros_env, rclpy_context,
                                                                                    tmp_path):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    sys.path.insert(0, str(LAUNCH_DIR))
    try:
        import launch_helpers
    finally:
        sys.path.remove(str(LAUNCH_DIR))
    from conftest import default_sigint

    cmd = [sys.executable, "-m", "d3_perception.ros.synthetic_camera", "--ros-args", "-r", "__ns:=/camera",
           "--params-file", str(REPO / "config" / "synthetic_camera.yaml"), "-p", "width:=64", "-p", "height:=48"]
    with open(tmp_path / "camera.log", "w") as log:
        proc = subprocess.Popen(cmd, env=ros_env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=default_sigint)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    try:
        topics = [("/camera/image", Image), ("/camera/camera_info", CameraInfo), ("/camera/depth", Image)]
        waiter = launch_helpers.TopicWaiter([(t, m, launch_helpers.camera_qos()) for t, m in topics],
                                            context=rclpy_context)
        control = launch_helpers.TopicWaiter([("/camera/image", Image, reliable)], "reliable_control",
                                             context=rclpy_context)
        try:
            assert waiter.wait(60.0), f"no message on {waiter.missing()}: {(tmp_path / 'camera.log').read_text()}"
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                control.executor.spin_once(timeout_sec=0.1)
                waiter.executor.spin_once(timeout_sec=0.0)
            assert len(waiter.received["/camera/image"]) > 1
            assert control.received["/camera/image"] == []  # what the old RELIABLE launch test saw: nothing
        finally:
            waiter.shutdown()
            control.shutdown()
    finally:
        proc.send_signal(2)
        proc.wait(timeout=20)
