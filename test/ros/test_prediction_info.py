"""The custom message built from msg/ crosses a process boundary with every field intact."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.ros

FIELDS = dict(
    backend="onnxruntime",
    model_id="d3_demo_tiny@3f2a",
    processing_width=640,
    processing_height=384,
    inference_ms=12.5,
    total_ms=20.25,
    metric_mode="sparse_depth",
    scale=2.5,
    shift=-0.125,
    alignment_points=1234,
    alignment_residual_m=0.0625,
    frames_dropped=2**40 + 7,  # uint64: survives values above 32 bits
    mean_confidence=0.75,
    low_confidence_share=0.125,
    scale_change=0.0625,
    blended_share=0.5,
)

PUBLISHER = textwrap.dedent(
    """
    import sys, time, rclpy
    from d3_perception.msg import PredictionInfo
    fields = {fields!r}
    rclpy.init()
    node = rclpy.create_node("info_publisher")
    pub = node.create_publisher(PredictionInfo, "info", 10)
    msg = PredictionInfo(**fields)
    msg.header.frame_id = "camera_color_optical_frame"
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1700000000, 123456789
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pub.publish(msg)
        rclpy.spin_once(node, timeout_sec=0.05)
    """
)


def test_prediction_info_round_trip_between_processes(rclpy_context, ros_env):
    import rclpy
    from d3_perception.msg import PredictionInfo
    from rclpy.executors import SingleThreadedExecutor

    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER.format(fields=FIELDS)], env=ros_env)
    try:
        node = rclpy.create_node("info_listener", context=rclpy_context)
        received: list = []
        node.create_subscription(PredictionInfo, "info", received.append, 10)
        executor = SingleThreadedExecutor(context=rclpy_context)
        executor.add_node(node)
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline and proc.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        assert received, "no PredictionInfo arrived from the publisher process within 20 s"
        msg = received[0]
        assert msg.header.frame_id == "camera_color_optical_frame"
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1700000000, 123456789)
        for name, expected in FIELDS.items():
            value = getattr(msg, name)
            if isinstance(expected, float):
                assert math.isclose(value, expected, rel_tol=1e-6), (name, value, expected)
            else:
                assert value == expected, (name, value, expected)
        executor.shutdown()
        node.destroy_node()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
