"""Shared by the launch tests (and checked by test/unit/test_launch_tests_static.py without launch_testing).

- :func:`isolate` makes the launch test's process a private ROS world (conftest's domain lease, localhost
  discovery, own log dir, the Fast DDS SHM profile) before anything is launched.
- :class:`TopicWaiter` waits for messages subscribing with each *publisher's* QoS: the synthetic camera
  publishes best-effort sensor-data QoS, which a RELIABLE subscription (launch_testing_ros.WaitForTopics'
  default) never receives.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _conftest():
    """test/conftest.py as a module: under ``launch_test FILE`` pytest has not imported it."""
    module = sys.modules.get("conftest")
    if module is not None and Path(getattr(module, "__file__", "")).resolve() == REPO / "test" / "conftest.py":
        return module
    spec = importlib.util.spec_from_file_location("d3_test_conftest", REPO / "test" / "conftest.py")
    module = sys.modules.get("d3_test_conftest") or importlib.util.module_from_spec(spec)
    if "d3_test_conftest" not in sys.modules:
        spec.loader.exec_module(module)
        sys.modules["d3_test_conftest"] = module
    return module


def isolate(checkout_on_path: bool = True) -> dict[str, str]:
    """Private domain, localhost discovery, own ROS_LOG_DIR, SHM profile for this process and its children.

    checkout_on_path: launched processes import this checkout whatever the caller's PYTHONPATH (False for
    the test of the installed package).
    """
    import os

    env = _conftest().isolate_this_process("d3_launch_test_")
    if checkout_on_path:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return env


def camera_qos():
    """The QoS the synthetic camera publishes with under config/synthetic_camera.yaml (its ``qos`` default)."""
    import yaml

    from d3_perception.ros.synthetic_camera import publisher_qos

    params = yaml.safe_load((REPO / "config" / "synthetic_camera.yaml").read_text())
    (node_params,) = params.values()  # one key, `/**/synthetic_camera`
    return publisher_qos(node_params["ros__parameters"].get("qos", "sensor_data"))


def node_output_qos():
    """A subscription QoS that matches d3_perception_node's outputs (RELIABLE, keep last)."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE)


class TopicWaiter:
    """Subscribes ``[(topic, msg_type, qos), ...]`` on its own node and waits until each has a message."""

    def __init__(self, topics, node_name: str = "d3_launch_test_waiter", context=None) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.node = rclpy.create_node(node_name, context=context)
        self.received: dict[str, list] = {topic: [] for topic, _, _ in topics}
        for topic, msg_type, qos in topics:
            self.node.create_subscription(msg_type, topic, self.received[topic].append, qos)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)

    def wait(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(self.received.values()):
            self.executor.spin_once(timeout_sec=0.1)
        return all(self.received.values())

    def missing(self) -> list[str]:
        return sorted(topic for topic, msgs in self.received.items() if not msgs)

    def shutdown(self) -> None:
        self.executor.remove_node(self.node)
        self.node.destroy_node()
