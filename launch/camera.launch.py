"""ros2 launch d3_perception camera.launch.py [namespace:=cam] [checkpoint:=DIR] [backend:=auto] [precision:=bf16] ...

Thin on purpose: the arguments come from ``LAUNCH_ARGUMENTS`` and are mapped to the node's parameters,
remaps and environment by ``d3_perception.ros.launch_config.node_command`` (unit-tested, and also used by
``d3-demo``); ``d3_perception.ros.launch_actions`` (shared with demo.launch.py) declares them and starts the
node, plus rviz2 with ``rviz:=true`` when it is installed (else the node alone, with a message). Examples:
  ros2 launch d3_perception camera.launch.py image:=/camera/color/image_raw \\
      camera_info:=/camera/color/camera_info checkpoint:=/models/d3_depth_normals rviz:=true
  ros2 launch d3_perception camera.launch.py namespace:=front params_file:=front.yaml use_sim_time:=true
  ros2 launch d3_perception camera.launch.py namespace:=cams cameras:=front,left,right   # /cams/front/image, ...
"""

from d3_perception.ros.launch_actions import launch_description
from d3_perception.ros.launch_config import LAUNCH_ARGUMENTS, node_command


def _specs(value: dict[str, str]):
    node = node_command(
        namespace=value["namespace"],
        params_file=value["params_file"],
        checkpoint=value["checkpoint"],
        backend=value["backend"],
        image=value["image"],
        camera_info=value["camera_info"],
        use_sim_time=value["use_sim_time"],
        sparse_depth=value["sparse_depth"],
        cameras=value["cameras"],
        precision=value["precision"],
    )
    return [node], node, value["rviz_frame"]


def generate_launch_description():
    return launch_description(LAUNCH_ARGUMENTS, _specs)
