"""The node's parameters: one table (name, default, description, range/choices, read-only) and the frozen
config read from them. No rclpy import here, so the table and the validation are unit-testable; the node
turns each entry into a ``declare_parameter`` with a ``ParameterDescriptor``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from d3_perception.backends import BACKENDS, PRECISIONS
from d3_perception.geometry.alignment import METRIC_MODES, MetricConfig

__all__ = ["COLORMAPS", "PARAMETERS", "SPECS", "NodeConfig", "ParamSpec", "check_value", "config_from_values"]

COLORMAPS = ("turbo", "inferno", "viridis", "jet", "magma", "plasma", "gray")
BACKEND_NAMES = BACKENDS


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    read_only: bool = False
    min: float | None = None  # inclusive
    max: float | None = None  # inclusive
    choices: tuple[str, ...] | None = None


_F = float("inf")
PARAMETERS: tuple[ParamSpec, ...] = (
    # model (read-only)
    ParamSpec("checkpoint", "", "checkpoint directory (config.json + model.safetensors); '' = bundled demo model",
              read_only=True),
    ParamSpec("backend", "auto", " | ".join(BACKENDS) + " | python:module:callable (plugin/test "
              "factory called with checkpoint, device, precision, processing_resolution, cache_dir)",
              read_only=True),
    ParamSpec("device", "", "'' = backend default; e.g. cpu, cuda:0 (openvino: cpu, gpu)", read_only=True),
    ParamSpec("precision", "fp32", " | ".join(PRECISIONS), read_only=True, choices=PRECISIONS),
    ParamSpec("processing_resolution", 0, "long side of the network input in pixels; 0 = checkpoint value",
              read_only=True, min=0, max=4096),
    ParamSpec("engine_cache_dir", "", "TensorRT/ONNX cache directory; '' = backend default", read_only=True),
    ParamSpec("fallback_backends", [""], "backends tried in order when the running one keeps failing; "
              "[''] = the auto order after the running backend", read_only=True),
    ParamSpec("max_consecutive_failures", 3, "model errors in a row before switching to the next fallback backend",
              min=1, max=1000),
    ParamSpec("autostart", True, "configure and activate on start-up", read_only=True),
    # input
    ParamSpec("input_transport", "raw", "raw (subscribe image) | compressed (subscribe image/compressed)",
              read_only=True, choices=("raw", "compressed")),
    ParamSpec("qos_reliability", "best_effort", "camera input QoS reliability", read_only=True,
              choices=("best_effort", "reliable")),
    ParamSpec("qos_depth", 1, "camera input QoS queue depth", read_only=True, min=1, max=100),
    ParamSpec("max_input_pixels", 8294400, "images with more pixels are refused by header, before decoding",
              min=1, max=2**31 - 1),
    ParamSpec("max_stamp_age_s", 0.0, "frames older than this (node clock - stamp) are dropped; 0 = off",
              min=0.0, max=3600.0),
    ParamSpec("camera_info_timeout_s", 5.0, "camera_info received longer ago than this is not used; 0 = no limit",
              min=0.0, max=1e6),
    ParamSpec("wait_for_fresh_frame", True, "when the worker frees up and the pending frame has waited longer "
              "than fresh_frame_max_age_ratio x the input period, wait for the next frame (until 1.5 periods "
              "after the pending one arrived) and process that one instead (the stale one counts as dropped): "
              "caps the frame age added to latency at that fraction of a period while frames come on time, at "
              "some throughput cost when the camera is faster than the model"),
    ParamSpec("fresh_frame_max_age_ratio", 0.5, "wait_for_fresh_frame: a pending frame older than this fraction "
              "of the input period (smoothed arrival interval) is stale; 0 = always wait for the next frame",
              min=0.0, max=1.0),
    # outputs
    ParamSpec("publish_depth", True, "publish depth (32FC1 m; only when metric.mode != none)"),
    ParamSpec("publish_relative", True, "publish depth/relative (32FC1 in [0,1], 0 = near)"),
    ParamSpec("publish_camera_info", True, "publish depth/camera_info"),
    ParamSpec("publish_colored", True, "publish depth/colored (bgr8)"),
    ParamSpec("publish_normals", True, "publish normals (32FC3, optical frame) and normals/colored (rgb8)"),
    ParamSpec("publish_points", True, "publish points (PointCloud2; needs camera_info)"),
    ParamSpec("publish_info", True, "publish ~/info (d3_perception/msg/PredictionInfo)"),
    ParamSpec("lazy_outputs", True, "skip outputs that have no subscriber"),
    ParamSpec("output_scale", 1.0, "output resolution = input resolution * output_scale", min=0.05, max=1.0),
    ParamSpec("colormap", "turbo", "colour map of depth/colored", choices=COLORMAPS),
    ParamSpec("normals_source", "model", "model (normals task) | depth (computed from depth)",
              choices=("model", "depth")),
    ParamSpec("postprocess_threads", 2, "threads for the per-frame work after the model (normals, colour maps, "
              "cloud): the worker plus helpers that take independent images and row blocks; 1 = the worker "
              "alone", min=1, max=16),
    # cloud
    ParamSpec("cloud_stride", 1, "keep every n-th row and column of the organized cloud", min=1, max=64),
    ParamSpec("cloud_min_range_m", 0.1, "points closer than this are NaN", min=0.0, max=1e4),
    ParamSpec("cloud_max_range_m", 20.0, "points farther than this are NaN", min=0.0, max=1e6),
    ParamSpec("cloud_rgb", True, "add the packed rgb field to points"),
    ParamSpec("cloud_normals", True, "add normal_x/y/z to points"),
    # metric depth
    ParamSpec("metric.mode", "none", "none | fixed | sparse_depth | depth_range", choices=METRIC_MODES),
    ParamSpec("metric.fixed_scale", 1.0, "fixed: metres = fixed_scale * relative + fixed_shift", min=1e-9, max=1e6),
    ParamSpec("metric.fixed_shift", 0.0, "fixed: shift in metres", min=-1e6, max=1e6),
    ParamSpec("metric.near_m", 0.3, "depth_range (and the cloud when mode is none): relative 0 -> near_m",
              min=0.0, max=1e6),
    ParamSpec("metric.far_m", 10.0, "depth_range: relative 1 -> far_m", min=0.0, max=1e6),
    ParamSpec("metric.min_points", 50, "sparse_depth: fewer valid reference pixels -> hold the last fit",
              min=2, max=10**8),
    ParamSpec("metric.smoothing", 0.8, "sparse_depth: weight of the previous fit in the running average",
              min=0.0, max=0.999),
    ParamSpec("metric.max_residual_m", 1.0, "sparse_depth: fits with a larger robust residual are rejected",
              min=1e-6, max=1e6),
    ParamSpec("metric.hold_frames", 0, "sparse_depth: frames a fit is held without a new one; 0 = forever",
              min=0, max=10**8),
    ParamSpec("metric.sync_tolerance_s", 0.1, "sparse_depth: max |stamp difference| image vs reference",
              min=0.0, max=10.0),
    # diagnostics
    ParamSpec("diagnostics_period_s", 1.0, "/diagnostics publishing period", read_only=True, min=0.05, max=60.0),
    ParamSpec("stale_timeout_s", 2.0, "no input for this long -> STALE", min=0.05, max=3600.0),
    ParamSpec("warn_throttle_s", 5.0, "per-kind bad-input warnings are logged at most this often",
              min=0.0, max=3600.0),
)
SPECS = {p.name: p for p in PARAMETERS}


def check_value(spec: ParamSpec, value: Any) -> str | None:
    """Reason why ``value`` is invalid for ``spec`` (None if valid). Types are checked by rclpy."""
    if spec.choices is not None and value not in spec.choices:
        return f"`{spec.name}` must be one of {', '.join(spec.choices)}; got {value!r}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return f"`{spec.name}` must be finite; got {value}"
        if spec.min is not None and value < spec.min:
            return f"`{spec.name}` must be >= {spec.min}; got {value}"
        if spec.max is not None and value > spec.max:
            return f"`{spec.name}` must be <= {spec.max}; got {value}"
    if spec.name == "backend" and value not in BACKEND_NAMES and not (
            isinstance(value, str) and value.startswith("python:") and value.count(":") == 2):
        return f"`backend` must be one of {', '.join(BACKEND_NAMES)} or python:module:callable; got {value!r}"
    return None


@dataclass(frozen=True)
class NodeConfig:
    """All node settings, validated as a whole (per-value rules in :data:`PARAMETERS`, cross rules here)."""

    checkpoint: str
    backend: str
    device: str
    precision: str
    processing_resolution: int
    engine_cache_dir: str
    fallback_backends: tuple[str, ...]
    max_consecutive_failures: int
    autostart: bool
    input_transport: str
    qos_reliability: str
    qos_depth: int
    max_input_pixels: int
    max_stamp_age_s: float
    camera_info_timeout_s: float
    wait_for_fresh_frame: bool
    fresh_frame_max_age_ratio: float
    publish_depth: bool
    publish_relative: bool
    publish_camera_info: bool
    publish_colored: bool
    publish_normals: bool
    publish_points: bool
    publish_info: bool
    lazy_outputs: bool
    output_scale: float
    colormap: str
    normals_source: str
    postprocess_threads: int
    cloud_stride: int
    cloud_min_range_m: float
    cloud_max_range_m: float
    cloud_rgb: bool
    cloud_normals: bool
    metric: MetricConfig
    metric_sync_tolerance_s: float
    diagnostics_period_s: float
    stale_timeout_s: float
    warn_throttle_s: float

    def __post_init__(self) -> None:
        if not self.cloud_min_range_m < self.cloud_max_range_m:
            raise ValueError(f"`cloud_min_range_m` must be < `cloud_max_range_m`; got "
                             f"{self.cloud_min_range_m} >= {self.cloud_max_range_m}")
        for name in self.fallback_backends:
            reason = check_value(SPECS["backend"], name) if name else None
            if reason or name == "auto":
                raise ValueError(f"`fallback_backends` entries must be backend names (not auto) or "
                                 f"python:module:callable; got {name!r}")

    def with_values(self, values: dict[str, Any]) -> NodeConfig:
        """A new config with parameter ``values`` (by parameter name) applied; raises ``ValueError``."""
        current = self.as_values()
        current.update(values)
        return config_from_values(current)

    def as_values(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "metric":
                m = self.metric
                out.update({"metric.mode": m.mode, "metric.fixed_scale": m.fixed_scale,
                            "metric.fixed_shift": m.fixed_shift, "metric.near_m": m.near_m,
                            "metric.far_m": m.far_m, "metric.min_points": m.min_points,
                            "metric.smoothing": m.smoothing, "metric.max_residual_m": m.max_residual_m,
                            "metric.hold_frames": m.hold_frames})
            elif f.name == "metric_sync_tolerance_s":
                out["metric.sync_tolerance_s"] = self.metric_sync_tolerance_s
            elif f.name == "fallback_backends":
                out[f.name] = list(self.fallback_backends)
            else:
                out[f.name] = getattr(self, f.name)
        return out


def config_from_values(values: dict[str, Any]) -> NodeConfig:
    """Build a :class:`NodeConfig` from parameter values (missing ones take their defaults)."""
    v = {p.name: p.default for p in PARAMETERS}
    v.update(values)
    for spec in PARAMETERS:
        reason = check_value(spec, v[spec.name])
        if reason:
            raise ValueError(reason)
    metric = MetricConfig(
        mode=v["metric.mode"], fixed_scale=float(v["metric.fixed_scale"]), fixed_shift=float(v["metric.fixed_shift"]),
        near_m=float(v["metric.near_m"]), far_m=float(v["metric.far_m"]), min_points=int(v["metric.min_points"]),
        smoothing=float(v["metric.smoothing"]), max_residual_m=float(v["metric.max_residual_m"]),
        hold_frames=int(v["metric.hold_frames"]))
    kwargs = {f.name: v[f.name] for f in fields(NodeConfig)
              if f.name not in ("metric", "metric_sync_tolerance_s", "fallback_backends")}
    for name in ("output_scale", "cloud_min_range_m", "cloud_max_range_m", "max_stamp_age_s",
                 "camera_info_timeout_s", "fresh_frame_max_age_ratio", "diagnostics_period_s", "stale_timeout_s",
                 "warn_throttle_s"):
        kwargs[name] = float(kwargs[name])
    fallback = tuple(str(b) for b in v["fallback_backends"] if str(b))
    return NodeConfig(metric=metric, metric_sync_tolerance_s=float(v["metric.sync_tolerance_s"]),
                      fallback_backends=fallback, **kwargs)



