"""ros2 launch d3_perception demo.launch.py [scene:=outdoor] [checkpoint:=DIR] [backend:=torch] [rviz:=true]

The d3-demo pipeline through launch: ``synthetic_camera`` (namespace /camera: image, camera_info, depth,
normals, sparse_depth with exact ground truth) -> ``d3_perception_node`` (namespace /d3; with namespace:=NS
the node runs in /NS and the camera in /NS/camera), optionally rviz2 with launch/d3_perception.rviz (when
installed; else the two nodes alone, with a message). Thin on purpose: arguments come from
``DEMO_LAUNCH_ARGUMENTS`` and are mapped to commands, parameters and remaps by
``d3_perception.ros.demo.demo_specs`` (also used by d3-demo); ``d3_perception.ros.launch_actions`` (shared with
camera.launch.py) declares them and starts the nodes. Examples:
  ros2 launch d3_perception demo.launch.py rviz:=true
  ros2 launch d3_perception demo.launch.py namespace:=demo      # /demo/depth, /demo/points, /demo/camera/image
  ros2 launch d3_perception demo.launch.py scene:=outdoor seed:=3 width:=640 height:=480 backend:=onnxruntime
"""

from d3_perception.ros.demo import DEMO_LAUNCH_ARGUMENTS, demo_specs
from d3_perception.ros.launch_actions import launch_description


def _specs(value: dict[str, str]):
    camera, node = demo_specs(value["checkpoint"], value["backend"], value["scene"], value["seed"], value["width"],
                              value["height"], value["rate_hz"], value["metric_mode"], value["namespace"])
    return [camera, node], node, camera.params["frame_id"]


def generate_launch_description():
    return launch_description(DEMO_LAUNCH_ARGUMENTS, _specs)
