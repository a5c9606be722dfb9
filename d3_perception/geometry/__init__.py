"""Camera geometry without ROS: units, intrinsics, back-projection, clouds, normals, metric alignment.

Conventions: depth ``[H,W]`` float32 metres with NaN = invalid (or relative in [0,1], 0 = near);
normals ``[H,W,3]`` float32; intrinsics ``K`` ``[3,3]`` float64; camera optical frame: x right, y down,
z forward (REP-103 ``*_optical_frame``).
"""

from __future__ import annotations

from d3_perception.geometry.alignment import (
    METRIC_MODES,
    AlignmentResult,
    MetricAligner,
    MetricConfig,
    fit_scale_shift,
    fit_scale_shift_robust,
)
from d3_perception.geometry.intrinsics import check_intrinsics, intrinsics_from_fov, scale_intrinsics
from d3_perception.geometry.normals import NORMAL_CONVENTIONS, normals_from_depth, to_optical_frame
from d3_perception.geometry.pointcloud import (
    CLOUD_DTYPE,
    backproject,
    cloud_from_depth,
    make_cloud,
    pack_rgb,
    unpack_rgb,
)
from d3_perception.geometry.units import m_to_mm, mm_to_m

__all__ = [
    "CLOUD_DTYPE",
    "METRIC_MODES",
    "NORMAL_CONVENTIONS",
    "AlignmentResult",
    "MetricAligner",
    "MetricConfig",
    "backproject",
    "check_intrinsics",
    "cloud_from_depth",
    "fit_scale_shift",
    "fit_scale_shift_robust",
    "intrinsics_from_fov",
    "m_to_mm",
    "make_cloud",
    "mm_to_m",
    "normals_from_depth",
    "pack_rgb",
    "scale_intrinsics",
    "to_optical_frame",
    "unpack_rgb",
]
