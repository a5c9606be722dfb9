"""launch_testing: demo.launch.py starts the synthetic camera and the node; ground truth and predictions flow.

Needs a full ROS 2 install (launch, launch_ros, launch_testing, launch_testing_ros are not on the package
registries); skipped elsewhere with that reason. Run with ``launch_test test/launch/test_demo_launch.py``.
"""

from __future__ import annotations

import sys
import tempfile
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
_CKPT_DIR = tempfile.mkdtemp(prefix="d3_demo_launch_test_")
# The camera publishes best-effort sensor-data QoS: subscribe with it (RELIABLE would never receive).
CAMERA_TOPICS = ["/camera/image", "/camera/camera_info", "/camera/depth", "/camera/normals", "/camera/sparse_depth"]
NODE_TOPICS = ["/d3/depth/relative", "/d3/normals"]


@pytest.mark.launch_test
def generate_test_description():
    from d3_perception.model.checkpoint import build_random_checkpoint

    ckpt = build_random_checkpoint(Path(_CKPT_DIR) / "tiny")
    include = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(REPO / "launch" / "demo.launch.py")),
        launch_arguments={"checkpoint": str(ckpt), "backend": "torch", "width": "96", "height": "72",
                          "rate_hz": "4.0", "scene": "room"}.items(),
    )
    return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()]), {}


class TestDemoLaunch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import rclpy

        rclpy.init()

    @classmethod
    def tearDownClass(cls):
        import rclpy

        rclpy.shutdown()

    def test_ground_truth_and_predictions_arrive_with_equal_frames(self):
        from sensor_msgs.msg import CameraInfo, Image

        camera_qos, node_qos = launch_helpers.camera_qos(), launch_helpers.node_output_qos()
        topics = [(t, CameraInfo if t.endswith("camera_info") else Image, camera_qos) for t in CAMERA_TOPICS]
        topics += [(t, Image, node_qos) for t in NODE_TOPICS]
        waiter = launch_helpers.TopicWaiter(topics)
        try:
            self.assertTrue(waiter.wait(180.0), f"no message on {waiter.missing()} (domain "
                                                f"{ROS_ENV['ROS_DOMAIN_ID']})")
            pred = waiter.received["/d3/depth/relative"][0]
            gt = waiter.received["/camera/depth"][0]
            self.assertEqual((pred.height, pred.width), (72, 96))
            self.assertEqual((gt.encoding, gt.height, gt.width), ("32FC1", 72, 96))
            self.assertEqual(pred.header.frame_id, "camera_color_optical_frame")
        finally:
            waiter.shutdown()


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_codes(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
