"""Procedural synthetic worlds with exact depth and normals (numpy/OpenCV only, no ROS).

>>> from d3_perception.synthetic import make_scene, render, SyntheticSequence, look_at
>>> seq = SyntheticSequence(seed=0, size_hw=(240, 320), fps=10, kind="room")
>>> f = seq.frame(0)   # Frame(rgb [H,W,3] uint8, depth_m [H,W] f32 z-depth m, normals [H,W,3] optical, valid, K)
"""

from __future__ import annotations

from d3_perception.synthetic.primitives import (
    Box,
    Cone,
    Cylinder,
    Ellipsoid,
    Plane,
    Rectangle,
    Sphere,
    Texture,
)
from d3_perception.synthetic.render import Frame, Scene, check_pose, look_at, render
from d3_perception.synthetic.scene import SCENE_KINDS, OrbitTrajectory, make_scene
from d3_perception.synthetic.sensor import SensorModel, apply_sensor
from d3_perception.synthetic.sequence import SyntheticSequence
from d3_perception.synthetic.sparse import SPARSE_PATTERNS, sparse_depth
from d3_perception.synthetic.world import FAMILIES, SHIFT, WORLD, pose_angles, pose_from_angles

__all__ = [
    "FAMILIES",
    "SCENE_KINDS",
    "SHIFT",
    "WORLD",
    "SPARSE_PATTERNS",
    "Box",
    "Cone",
    "Cylinder",
    "Ellipsoid",
    "Frame",
    "OrbitTrajectory",
    "Plane",
    "Rectangle",
    "Scene",
    "SensorModel",
    "Sphere",
    "SyntheticSequence",
    "Texture",
    "apply_sensor",
    "check_pose",
    "look_at",
    "make_scene",
    "pose_angles",
    "pose_from_angles",
    "render",
    "sparse_depth",
]
