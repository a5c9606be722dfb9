"""Launch test of the *installed* package: demo.launch.py from the ament index brings up the synthetic camera
and the node, and the node's outputs appear. Runs on a full ROS 2 install (launch_testing); skips elsewhere."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "launch_testing",
    reason="ROS 2 launch / launch_ros / launch_testing are not on the package registries; "
    "this test runs on a full ROS 2 install",
)
pytest.importorskip("launch_ros", reason="launch_ros is not installed")

import os  # noqa: E402
import sys  # noqa: E402
import unittest  # noqa: E402
from pathlib import Path  # noqa: E402

import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from ament_index_python.packages import get_package_share_directory  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2  # noqa: E402

import launch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import launch_helpers  # noqa: E402

ROS_ENV = launch_helpers.isolate(checkout_on_path=False)  # private domain, localhost, own log dir; installed code

pytestmark = pytest.mark.launch


@pytest.mark.launch_test
def generate_test_description():
    share = get_package_share_directory("d3_perception")
    demo = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, "launch", "demo.launch.py")),
        launch_arguments={"namespace": "launch_test", "rviz": "false"}.items(),
    )
    return launch.LaunchDescription([demo, launch_testing.actions.ReadyToTest()])


class TestOutputsAppear(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import rclpy

        rclpy.init()

    @classmethod
    def tearDownClass(cls):
        import rclpy

        rclpy.shutdown()

    def test_depth_and_cloud_published(self):
        qos = launch_helpers.node_output_qos()
        waiter = launch_helpers.TopicWaiter([("/launch_test/depth/relative", Image, qos),
                                             ("/launch_test/points", PointCloud2, qos)])
        try:
            self.assertTrue(waiter.wait(120.0), f"no message on {waiter.missing()}")
        finally:
            waiter.shutdown()


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_codes(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, -15])
