"""d3_perception: dense depth, normals and point clouds with D³-Predictor.

The runtime library (model, backends, geometry, synthetic world, evaluation) imports neither ROS nor
``d3_training``; ROS lives in :mod:`d3_perception.ros` only.
"""

# One import name, two folders: the ROS build installs the generated ``d3_perception.msg`` into
# site-packages while a development checkout holds the Python sources; extend_path joins them.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
