"""ros2 launch d3_perception demo.launch.py [scene:=outdoor] [checkpoint:=DIR] [backend:=torch] [rviz:=true]

The d3-demo pipeline through launch: ``synthetic_camera`` (namespace /camera: image, camera_info, depth,
normals, sparse_depth with exact ground truth) -> ``d3_perception_node`` (namespace /d3; with namespace:=NS
the node runs in /NS and the camera in /NS/camera), optionally rviz2
with launch/d3_perception.rviz. Thin on purpose: arguments come from ``DEMO_LAUNCH_ARGUMENTS`` and are
mapped to commands, parameters and remaps by ``d3_perception.ros.demo.demo_specs`` (also used by d3-demo).
Examples:
  ros2 launch d3_perception demo.launch.py rviz:=true
  ros2 launch d3_perception demo.launch.py namespace:=demo      # /demo/depth, /demo/points, /demo/camera/image
  ros2 launch d3_perception demo.launch.py scene:=outdoor seed:=3 width:=640 height:=480 backend:=onnxruntime
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from d3_perception.ros.demo import DEMO_LAUNCH_ARGUMENTS, demo_specs
from d3_perception.ros.launch_config import package_share_dir, parse_bool
from launch import LaunchDescription


def _nodes(context, *args, **kwargs):
    value = {a.name: LaunchConfiguration(a.name).perform(context) for a in DEMO_LAUNCH_ARGUMENTS}
    camera, node = demo_specs(value["checkpoint"], value["backend"], value["scene"], value["seed"], value["width"],
                              value["height"], value["rate_hz"], value["metric_mode"], value["namespace"])
    actions = [
        Node(package=spec.package, executable=spec.executable, name=spec.name, namespace=spec.namespace,
             parameters=[p for p in (spec.params_file, spec.params) if p], remappings=spec.remaps,
             additional_env=spec.env, output="screen", emulate_tty=True)
        for spec in (camera, node)
    ]
    if parse_bool(value["rviz"], "rviz"):
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", namespace=node.namespace,
                            arguments=["-d", str(package_share_dir() / "launch" / "d3_perception.rviz"),
                                       "-f", camera.params["frame_id"]], output="log"))
    return actions


def generate_launch_description() -> LaunchDescription:
    declared = [
        DeclareLaunchArgument(a.name, default_value=a.default, description=a.description,
                              **({"choices": list(a.choices)} if a.choices else {}))
        for a in DEMO_LAUNCH_ARGUMENTS
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_nodes)])
