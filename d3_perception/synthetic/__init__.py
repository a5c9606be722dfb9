"""Procedural synthetic worlds with exact depth and normals (numpy/OpenCV only, no ROS).

>>> from d3_perception.synthetic import make_scene, render, SyntheticSequence, look_at
>>> seq = SyntheticSequence(seed=0, size_hw=(240, 320), fps=10, kind="room")
>>> f = seq.frame(0)   # Frame(rgb [H,W,3] uint8, depth_m [H,W] f32 z-depth m, normals [H,W,3] optical, valid, K)
"""

from __future__ import annotations

from d3_perception.synthetic.primitives import Box, Cylinder, Plane, Rectangle, Sphere, Texture
from d3_perception.synthetic.render import Frame, Scene, check_pose, look_at, render
from d3_perception.synthetic.scene import SCENE_KINDS, OrbitTrajectory, make_scene
from d3_perception.synthetic.sequence import SyntheticSequence
from d3_perception.synthetic.sparse import SPARSE_PATTERNS, sparse_depth

__all__ = [
    "SCENE_KINDS",
    "SPARSE_PATTERNS",
    "Box",
    "Cylinder",
    "Frame",
    "OrbitTrajectory",
    "Plane",
    "Rectangle",
    "Scene",
    "Sphere",
    "SyntheticSequence",
    "Texture",
    "check_pose",
    "look_at",
    "make_scene",
    "render",
    "sparse_depth",
]
