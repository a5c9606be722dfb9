"""d3_perception: dense depth, normals and point clouds with D³-Predictor.

The runtime library (model, backends, geometry, synthetic world, evaluation) imports neither ROS nor
``d3_training``; ROS lives in :mod:`d3_perception.ros` only.
"""

import os

# torch's OpenMP threads spin at every barrier by default; when another process holds a core (a camera
# driver, the DDS stack, a second node) each op then waits for a preempted thread: the tiny model ran 17x
# slower with 2 threads (5.6 s vs 0.32 s per frame) on a 2-core machine with one busy core. A machine whose
# cores are reserved for inference may prefer ACTIVE: set before torch is imported, the user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# One import name, two folders: the ROS build installs the generated ``d3_perception.msg`` into
# site-packages while a development checkout holds the Python sources; extend_path joins them.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
