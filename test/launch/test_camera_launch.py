"""launch_testing: camera.launch.py starts the node, outputs appear, lifecycle works, the exit code is clean.

Needs a full ROS 2 install (launch, launch_ros, launch_testing, launch_testing_ros are not on the package
registries); skipped elsewhere with that reason. Run with
``launch_test test/launch/test_camera_launch.py`` or ``pytest -m launch test/launch``.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

import pytest

pytestmark = pytest.mark.launch
for _module in ("launch", "launch_ros", "launch_testing", "launch_testing_ros"):
    pytest.importorskip(_module, reason=f"{_module} is not on the package registries; needs a full ROS 2 install")

import launch_testing  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

import launch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import launch_helpers  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ROS_ENV = launch_helpers.isolate()  # private domain, localhost, own log dir: before anything is launched
NS = "/launchtest"
_CKPT_DIR = tempfile.mkdtemp(prefix="d3_launch_test_")


@pytest.mark.launch_test
def generate_test_description():
    from d3_perception.model.checkpoint import build_random_checkpoint

    ckpt = build_random_checkpoint(Path(_CKPT_DIR) / "tiny")
    include = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(REPO / "launch" / "camera.launch.py")),
        launch_arguments={"namespace": NS.strip("/"), "checkpoint": str(ckpt), "backend": "torch",
                          "image": f"{NS}/camera/image_raw", "camera_info": f"{NS}/camera/camera_info"}.items(),
    )
    return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()]), {}


class _Camera:
    """Publishes a 10 Hz 128x96 rgb8 camera with camera_info until stopped."""

    def __init__(self):
        import numpy as np
        import rclpy
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image

        self.node = rclpy.create_node("launch_test_camera")
        self.pub = self.node.create_publisher(Image, f"{NS}/camera/image_raw", qos_profile_sensor_data)
        self.info_pub = self.node.create_publisher(CameraInfo, f"{NS}/camera/camera_info", qos_profile_sensor_data)
        self.rgb = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        from sensor_msgs.msg import CameraInfo

        from d3_perception.ros.conversions import numpy_to_msg

        while not self._stop.is_set():
            stamp = self.node.get_clock().now().to_msg()
            msg = numpy_to_msg(self.rgb, "rgb8")
            msg.header.stamp, msg.header.frame_id = stamp, "camera_optical_frame"
            info = CameraInfo(height=96, width=128, k=[100.0, 0, 63.5, 0, 100.0, 47.5, 0, 0, 1])
            info.header = msg.header
            self.info_pub.publish(info)
            self.pub.publish(msg)
            time.sleep(0.1)

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self.node.destroy_node()


class TestCameraLaunch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import rclpy

        rclpy.init()
        cls.camera = _Camera()

    @classmethod
    def tearDownClass(cls):
        import rclpy

        cls.camera.stop()
        rclpy.shutdown()

    def test_outputs_arrive(self):
        from d3_perception.msg import PredictionInfo
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        qos = launch_helpers.node_output_qos()
        topics = [(f"{NS}/depth/relative", Image, qos), (f"{NS}/depth/camera_info", CameraInfo, qos),
                  (f"{NS}/normals", Image, qos), (f"{NS}/points", PointCloud2, qos),
                  (f"{NS}/d3_perception_node/info", PredictionInfo, qos)]
        waiter = launch_helpers.TopicWaiter(topics)
        try:
            self.assertTrue(waiter.wait(120.0), f"no message on {waiter.missing()}")
            cloud = waiter.received[f"{NS}/points"][0]
            self.assertEqual((cloud.height, cloud.width), (96, 128))
            self.assertEqual(cloud.header.frame_id, "camera_optical_frame")
        finally:
            waiter.shutdown()

    def test_lifecycle_deactivate_and_activate(self):
        import rclpy
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState, GetState

        node = rclpy.create_node("launch_test_lifecycle")
        try:
            change = node.create_client(ChangeState, f"{NS}/d3_perception_node/change_state")
            get = node.create_client(GetState, f"{NS}/d3_perception_node/get_state")
            self.assertTrue(change.wait_for_service(timeout_sec=60.0))
            for transition, label in ((Transition.TRANSITION_DEACTIVATE, "inactive"),
                                      (Transition.TRANSITION_ACTIVATE, "active")):
                req = ChangeState.Request()
                req.transition.id = transition
                fut = change.call_async(req)
                rclpy.spin_until_future_complete(node, fut, timeout_sec=30.0)
                self.assertTrue(fut.result().success)
                fut = get.call_async(GetState.Request())
                rclpy.spin_until_future_complete(node, fut, timeout_sec=10.0)
                self.assertEqual(fut.result().current_state.label, label)
        finally:
            node.destroy_node()


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_codes(self, proc_info):
        # SIGINT from launch at shutdown: the node catches it and exits 0
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
