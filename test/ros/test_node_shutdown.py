"""Shutdown of a real node process (issue #19): exit code 0 and no traceback however many SIGINT/SIGTERM
arrive (launch sends a second SIGINT when it has no terminal), no ``publish_error`` bad input from a worker
that outlives the context, and ``--help`` answered without starting ROS."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from node_harness import Client, default_signal_dispositions, make_rgb, node_log, start_node

pytestmark = pytest.mark.ros


def _busy_node(ros_env, rclpy_context, tmp_path, fake_checkpoint, delay_s: float):
    """A node whose (fake) model takes ``delay_s`` per frame, with frames arriving: (proc, client, send)."""
    proc = start_node(ros_env, tmp_path, {"backend": "python:fake_backends:gt", "checkpoint": str(fake_checkpoint),
                                          "lazy_outputs": False, "wait_for_fresh_frame": False},
                      extra_env={"D3_FAKE_DELAY_S": str(delay_s)})
    client = Client(rclpy_context, outputs=["depth/relative"])
    rgb = make_rgb(48, 64)

    def send(n: int = 1, period_s: float = 0.05) -> None:
        for _ in range(n):
            client.pub_image.publish(client.image_msg(rgb, "rgb8", time.time()))
            time.sleep(period_s)

    assert client.wait_for_subscribers(30.0), node_log(proc)
    deadline = time.monotonic() + 30.0
    while client.count("depth/relative") == 0 and time.monotonic() < deadline:
        send(4)
    assert client.count("depth/relative") > 0, node_log(proc)
    return proc, client, send


def _wait(proc, timeout_s: float = 60.0) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc._d3_log.close()


@pytest.mark.parametrize("signals", [
    (signal.SIGINT, signal.SIGINT),  # Ctrl-C, then launch's second SIGINT during the cleanup
    (signal.SIGTERM,),
    (signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGINT),
], ids=["sigint_twice", "sigterm", "four_mixed"])
def test_signals_during_shutdown_exit_0_without_traceback(ros_env, rclpy_context, tmp_path, fake_checkpoint, signals):
    # a 1 s model: the worker is inside predict when the first signal arrives, so the cleanup waits for it and
    # the later signals land in the cleanup
    proc, client, send = _busy_node(ros_env, rclpy_context, tmp_path, fake_checkpoint, delay_s=1.0)
    try:
        send(3)
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.1)
        code = _wait(proc)
    finally:
        client.close()
    log = node_log(proc)
    assert code == 0, f"exit code {code}:\n{log[-3000:]}"
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]


def test_no_publish_error_after_shutdown_began(ros_env, rclpy_context, tmp_path, fake_checkpoint):
    # the first signal arrives while the model runs: when predict returns, the context is gone; publishing
    # then fails, which is shutdown, not bad input
    proc, client, send = _busy_node(ros_env, rclpy_context, tmp_path, fake_checkpoint, delay_s=1.5)
    try:
        send(3)
        time.sleep(0.3)  # the worker has taken a frame and sits in the 1.5 s model call
        proc.send_signal(signal.SIGINT)
        code = _wait(proc)
    finally:
        client.close()
    log = node_log(proc)
    assert code == 0, log[-3000:]
    assert "publish_error" not in log and "context is invalid" not in log, log[-3000:]


def test_help_is_answered_without_starting_ros(ros_env):
    result = subprocess.run([sys.executable, "-m", "d3_perception.ros.node", "--help"], env=ros_env,
                            capture_output=True, text=True, timeout=120, preexec_fn=default_signal_dispositions)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: d3_perception_node" in result.stdout and "docs/node.md" in result.stdout
    assert "Traceback" not in result.stderr


def test_unknown_argument_is_refused_in_one_line(ros_env):
    result = subprocess.run([sys.executable, "-m", "d3_perception.ros.node", "--checkpoint", "x"], env=ros_env,
                            capture_output=True, text=True, timeout=120, preexec_fn=default_signal_dispositions)
    assert result.returncode == 2 and "unrecognized arguments: --checkpoint x" in result.stderr
    assert "Traceback" not in result.stderr
