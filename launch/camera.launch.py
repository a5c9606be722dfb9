"""ros2 launch d3_perception camera.launch.py [namespace:=cam] [checkpoint:=DIR] [backend:=auto] ...

Thin on purpose: the arguments are declared from ``LAUNCH_ARGUMENTS`` and mapped to the node's
parameters, remaps and environment by ``d3_perception.ros.launch_config.node_command`` (unit-tested,
and also used by ``d3-demo``). Examples:
  ros2 launch d3_perception camera.launch.py image:=/camera/color/image_raw \
      camera_info:=/camera/color/camera_info checkpoint:=/models/d3_depth_normals rviz:=true
  ros2 launch d3_perception camera.launch.py namespace:=front params_file:=front.yaml use_sim_time:=true
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from d3_perception.ros.launch_config import LAUNCH_ARGUMENTS, node_command, package_share_dir, parse_bool
from launch import LaunchDescription


def _nodes(context, *args, **kwargs):
    value = {a.name: LaunchConfiguration(a.name).perform(context) for a in LAUNCH_ARGUMENTS}
    spec = node_command(
        namespace=value["namespace"],
        params_file=value["params_file"],
        checkpoint=value["checkpoint"],
        backend=value["backend"],
        image=value["image"],
        camera_info=value["camera_info"],
        use_sim_time=value["use_sim_time"],
        sparse_depth=value["sparse_depth"],
    )
    nodes = [
        Node(
            package=spec.package,
            executable=spec.executable,
            name=spec.name,
            namespace=spec.namespace,
            parameters=[spec.params_file, spec.params],
            remappings=spec.remaps,
            additional_env=spec.env,
            output="screen",
            emulate_tty=True,
        )
    ]
    if parse_bool(value["rviz"], "rviz"):
        rviz_config = str(package_share_dir() / "launch" / "d3_perception.rviz")
        # rviz2 runs in the node's namespace: the config's relative topic names resolve to the outputs.
        frame = ["-f", value["rviz_frame"]] if value["rviz_frame"] else []
        nodes.append(Node(package="rviz2", executable="rviz2", name="rviz2", namespace=spec.namespace,
                          arguments=["-d", rviz_config, *frame],
                          parameters=[{"use_sim_time": spec.params["use_sim_time"]}], output="log"))
    return nodes


def generate_launch_description() -> LaunchDescription:
    declared = [
        DeclareLaunchArgument(a.name, default_value=a.default, description=a.description,
                              **({"choices": list(a.choices)} if a.choices else {}))
        for a in LAUNCH_ARGUMENTS
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_nodes)])
