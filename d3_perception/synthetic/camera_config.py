"""Parameters of the ``synthetic_camera`` node: one table (name, default, description, range/choices) and
the frozen config read from it. No rclpy here, so the table and its validation are unit-testable; the node
turns each entry into a ``declare_parameter`` with a ``ParameterDescriptor``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from d3_perception.synthetic.scene import SCENE_KINDS
from d3_perception.synthetic.sparse import SPARSE_PATTERNS

__all__ = ["CAMERA_PARAMETERS", "CameraParam", "SyntheticCameraConfig"]


@dataclass(frozen=True)
class CameraParam:
    name: str
    default: Any
    description: str
    read_only: bool = True  # structural parameters need a restart
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None


CAMERA_PARAMETERS: tuple[CameraParam, ...] = (
    CameraParam("scene", "room", "procedural world: room | outdoor | mixed | world (the wide world the demo model "
                "trains on: any camera pitch/roll, sensor effects) | shift (its held-out shift family)",
                choices=SCENE_KINDS),
    CameraParam("seed", 0, "scene seed (same seed = same world and trajectory)", min=0, max=2**31 - 1),
    CameraParam("width", 320, "image width in pixels", min=8, max=4096),
    CameraParam("height", 240, "image height in pixels", min=8, max=4096),
    CameraParam("hfov_deg", 70.0, "horizontal field of view in degrees (centred pinhole, no distortion)",
                min=10.0, max=150.0),
    CameraParam("rate_hz", 10.0, "publishing rate; the trajectory advances 1/rate_hz seconds per frame",
                min=0.1, max=120.0),
    CameraParam("frame_id", "camera_color_optical_frame", "header.frame_id of every message (optical frame)"),
    CameraParam("loop_frames", 0, "0 = render every frame live; N > 0 = pre-render N frames at start-up and "
                "publish them in a loop (for rates the renderer cannot keep up with)", min=0, max=100000),
    CameraParam("num_frames", 0, "stop after publishing this many frames and exit (0 = run until shut down)",
                min=0, max=2**31 - 1),
    CameraParam("qos", "sensor_data", "publisher QoS: sensor_data (best effort, depth 5) | reliable (depth 5)",
                choices=("sensor_data", "reliable")),
    CameraParam("image_format", "raw", "raw = `image` rgb8 | compressed = `image/compressed` JPEG | both",
                choices=("raw", "compressed", "both")),
    CameraParam("jpeg_quality", 90, "JPEG quality of image/compressed", read_only=False, min=1, max=100),
    CameraParam("publish_depth", True, "publish ground-truth `depth` (32FC1 m, NaN = nothing hit)", read_only=False),
    CameraParam("publish_normals", True, "publish ground-truth `normals` (32FC3, optical frame, NaN invalid)",
                read_only=False),
    CameraParam("publish_sparse_depth", True, "publish LiDAR-like `sparse_depth`", read_only=False),
    CameraParam("sparse_pattern", "scan", "scan (evenly spaced rows) | random (a fraction of pixels)",
                read_only=False, choices=SPARSE_PATTERNS),
    CameraParam("sparse_rows", 16, "scan rows of the scan pattern", read_only=False, min=1, max=4096),
    CameraParam("sparse_fraction", 0.03, "fraction of pixels of the random pattern", read_only=False,
                min=0.0, max=1.0),
    CameraParam("sparse_noise_std_m", 0.01, "Gaussian range noise, constant part (m)", read_only=False,
                min=0.0, max=10.0),
    CameraParam("sparse_noise_rel", 0.0, "Gaussian range noise, part proportional to range", read_only=False,
                min=0.0, max=1.0),
    CameraParam("sparse_dropout", 0.1, "fraction of returns dropped at random", read_only=False, min=0.0, max=1.0),
    CameraParam("sparse_max_range_m", 100.0, "no return beyond this range (m)", read_only=False,
                min=0.01, max=1e4),
    CameraParam("sparse_encoding", "32FC1", "32FC1 (m, NaN = no return) | 16UC1 (mm, 0 = no return)",
                read_only=False, choices=("32FC1", "16UC1")),
)
_SPECS = {p.name: p for p in CAMERA_PARAMETERS}


def _check(spec: CameraParam, value: Any) -> str | None:
    """None if ``value`` is valid for ``spec``, else the reason (an error message)."""
    d = spec.default
    if isinstance(d, bool):
        ok = isinstance(value, bool)
    elif isinstance(d, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(d, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, str)
    if not ok:
        return f"`{spec.name}` must be {type(d).__name__}; got {value!r}"
    if spec.choices is not None and value not in spec.choices:
        return f"`{spec.name}` must be one of {', '.join(spec.choices)}; got {value!r}"
    if spec.min is not None and value < spec.min or spec.max is not None and value > spec.max:
        return f"`{spec.name}` must be in [{spec.min}, {spec.max}]; got {value!r}"
    if spec.name == "frame_id" and not value.strip():
        return "`frame_id` must not be empty; got ''"
    return None


@dataclass(frozen=True)
class SyntheticCameraConfig:
    """Validated node settings (field = parameter name; see ``CAMERA_PARAMETERS`` for meaning and range)."""

    scene: str = "room"
    seed: int = 0
    width: int = 320
    height: int = 240
    hfov_deg: float = 70.0
    rate_hz: float = 10.0
    frame_id: str = "camera_color_optical_frame"
    loop_frames: int = 0
    num_frames: int = 0
    qos: str = "sensor_data"
    image_format: str = "raw"
    jpeg_quality: int = 90
    publish_depth: bool = True
    publish_normals: bool = True
    publish_sparse_depth: bool = True
    sparse_pattern: str = "scan"
    sparse_rows: int = 16
    sparse_fraction: float = 0.03
    sparse_noise_std_m: float = 0.01
    sparse_noise_rel: float = 0.0
    sparse_dropout: float = 0.1
    sparse_max_range_m: float = 100.0
    sparse_encoding: str = "32FC1"

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            reason = _check(_SPECS[name], value)
            if reason:
                raise ValueError(reason)
        if self.width * self.height > 4096 * 4096:
            raise ValueError(f"`width` * `height` must be <= {4096 * 4096}; got {self.width}x{self.height}")

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> SyntheticCameraConfig:
        """From parameter values (ints accepted for floats); unknown names are an error."""
        unknown = set(values) - set(_SPECS)
        if unknown:
            raise ValueError(f"unknown synthetic_camera parameters: {', '.join(sorted(unknown))}")
        fixed = {k: float(v) if isinstance(_SPECS[k].default, float) and isinstance(v, int)
                 and not isinstance(v, bool) else v for k, v in values.items()}
        return cls(**fixed)

    def with_values(self, values: dict[str, Any]) -> SyntheticCameraConfig:
        """A copy with ``values`` applied (validated); raises ``ValueError`` with the first bad value."""
        return SyntheticCameraConfig.from_values({**asdict(self), **values})

    @property
    def size_hw(self) -> tuple[int, int]:
        return self.height, self.width
