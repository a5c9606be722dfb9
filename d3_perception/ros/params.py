"""The node's parameters: one table (name, default, description, range/choices, read-only) and the frozen
config read from them. No rclpy import here, so the table and the validation are unit-testable; the node
turns each entry into a ``declare_parameter`` with a ``ParameterDescriptor``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from d3_perception.backends import BACKENDS, PLUGIN_PREFIX, PRECISIONS
from d3_perception.geometry.alignment import METRIC_MODES, MetricConfig
from d3_perception.geometry.confidence import (
    COMBINE_RULES,
    CONFIDENCE_SOURCES,
    DEFAULT_MIN_CONFIDENCE,
    ConfidenceConfig,
)
from d3_perception.geometry.temporal import StabilizerConfig

__all__ = ["COLORMAPS", "PARAMETERS", "PER_CAMERA", "SPECS", "CameraOverrides", "NodeConfig", "ParamSpec",
           "check_value", "config_from_values", "config_keeping_good_values", "torch_default_threads",
           "resolve_checkpoint"]

COLORMAPS = ("turbo", "inferno", "viridis", "jet", "magma", "plasma", "gray")


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
_NAME_TOKEN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
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
    ParamSpec("num_threads", 0, "CPU inference threads (torch, onnxruntime, openvino); 0 = measured default: "
              "torch all cores but one (at least 1; the spare core keeps DDS and the callbacks from stalling its "
              "per-op dispatch), onnxruntime and openvino all cores", read_only=True, min=0, max=1024),
    ParamSpec("fallback_backends", [""], "backends tried in order when the running one keeps failing; "
              "[''] = the auto order after the running backend", read_only=True),
    ParamSpec("max_consecutive_failures", 3, "model errors in a row before switching to the next fallback backend",
              min=1, max=1000),
    ParamSpec("autostart", True, "configure and activate on start-up", read_only=True),
    # input
    ParamSpec("cameras", [""], "camera names: each name N subscribes N/image (or N/image/compressed), N/camera_info "
              "and N/sparse_depth and publishes N/depth, N/depth/relative, N/depth/camera_info, N/depth/colored, "
              "N/normals, N/normals/colored, N/points and N/info, all relative to the node's namespace, through "
              "one model with batched calls; [''] = one camera with the plain topic names", read_only=True),
    ParamSpec("camera_sync_wait_s", 0.02, "several cameras: after the first frame the worker waits at most this "
              "long for the other cameras whose next frame is due, so that they share one batched model call",
              min=0.0, max=1.0),
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
    ParamSpec("fresh_frame_max_age_ratio", 0.25, "wait_for_fresh_frame: a pending frame older than this fraction "
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
    # confidence and gating (docs/confidence.md: the defaults are the measured ones)
    ParamSpec("publish_confidence", True, "publish depth/confidence (32FC1 in [0,1], 1 = trust; same size, stamp "
              "and frame as depth)"),
    ParamSpec("min_confidence", DEFAULT_MIN_CONFIDENCE,
              "pixels with a lower confidence are NaN in depth and left out of points; "
              "0 = no gating (0.037: the largest threshold keeping >= 85 % of the points on the tuning scenes)",
              min=0.0, max=1.0),
    ParamSpec("cloud_confidence", False, "add a float32 `confidence` field to points"),
    ParamSpec("confidence.sources", list(CONFIDENCE_SOURCES), "cues combined into the confidence: edges (depth "
              "discontinuities), normals (model normals vs normals of the depth; only when the normals are "
              "computed anyway), sparse (residual to the sparse_depth reference)"),
    ParamSpec("confidence.edge_scale", 0.1, "relative depth step over 2 px at which the edge cue is 0.5",
              min=1e-6, max=100.0),
    ParamSpec("confidence.normal_scale", 0.005, "1 - cos(angle) at which the normal cue is 0.5", min=1e-6, max=2.0),
    ParamSpec("confidence.residual_scale", 0.005, "local relative residual to the sparse reference at which the "
              "sparse cue is 0.5", min=1e-6, max=100.0),
    ParamSpec("confidence.sparse_weight", 8.0, "weight of the sparse cue in the geometric mean (others 1)",
              min=1e-3, max=1000.0),
    ParamSpec("confidence.combine", "geomean", "geomean (weighted geometric mean) | min of the cues",
              choices=COMBINE_RULES),
    ParamSpec("confidence.grid_long_side", 160, "the cues are computed on a grid of at most this long side and "
              "resized to the frame", min=16, max=8192),
    # temporal stabiliser (metric depth)
    ParamSpec("temporal.blend", 0.0, "weight of the previous depth where image and depth are still "
              "(exponential average; 0 = off; 0.7 halves the flicker of a still camera, docs/confidence.md)",
              min=0.0, max=0.99),
    ParamSpec("temporal.image_threshold", 6.0, "grey-level change above which a pixel counts as moving",
              min=1e-3, max=255.0),
    ParamSpec("temporal.max_depth_change", 0.1, "relative depth change above which a pixel is not blended",
              min=1e-6, max=100.0),
    ParamSpec("temporal.max_moving_share", 0.05, "share of moving pixels above which the whole frame passes "
              "through (camera motion)", min=0.0, max=1.0),
    # self-check alarms (/diagnostics WARN; 0 = off)
    ParamSpec("alarm.max_residual_rel", 0.05, "WARN when the sparse fit's residual / median metric depth exceeds "
              "this", min=0.0, max=100.0),
    ParamSpec("alarm.max_scale_change", 0.1, "WARN when the applied metric scale changes by more than this "
              "fraction between frames", min=0.0, max=100.0),
    ParamSpec("alarm.max_low_confidence_share", 0.3, "WARN when more than this share of the valid pixels is "
              "below min_confidence", min=0.0, max=1.0),
    ParamSpec("alarm.max_flicker", 0.02, "WARN when the still-pixel flicker (mean |d_t - d_t-1| / d_t, 10 frames) "
              "exceeds this; > 0 runs the stabiliser's estimate (metric modes only)", min=0.0, max=100.0),
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
    if spec.name == "backend" and value not in BACKENDS and not (
            isinstance(value, str) and value.startswith(PLUGIN_PREFIX) and value.count(":") == 2):
        return f"`backend` must be one of {', '.join(BACKENDS)} or python:module:callable; got {value!r}"
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
    num_threads: int
    fallback_backends: tuple[str, ...]
    cameras: tuple[str, ...]  # () = one camera with the plain topic names
    camera_sync_wait_s: float
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
    publish_confidence: bool
    min_confidence: float
    cloud_confidence: bool
    confidence: ConfidenceConfig
    temporal: StabilizerConfig
    alarm_max_residual_rel: float
    alarm_max_scale_change: float
    alarm_max_low_confidence_share: float
    alarm_max_flicker: float
    diagnostics_period_s: float
    stale_timeout_s: float
    warn_throttle_s: float

    def __post_init__(self) -> None:
        if not self.cloud_min_range_m < self.cloud_max_range_m:
            raise ValueError(f"`cloud_min_range_m` must be < `cloud_max_range_m`; got "
                             f"{self.cloud_min_range_m} >= {self.cloud_max_range_m}")
        if len(set(self.cameras)) != len(self.cameras) or not all(_NAME_TOKEN.match(c) for c in self.cameras):
            raise ValueError(f"`cameras` must be distinct ROS name tokens (letters, digits, _; no leading digit); "
                             f"got {list(self.cameras)}")
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

    def update_refusal(self, values: dict[str, Any]) -> str:
        """Why a runtime update of parameter ``values`` is refused ('' = it is accepted): a read-only
        parameter, or a value that breaks the config."""
        for name in values:
            if SPECS[name].read_only:
                return f"`{name}` is read-only (set it at start-up)"
        try:
            self.with_values(values)
        except (ValueError, TypeError) as exc:
            return str(exc)
        return ""

    def backend_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`d3_perception.backends.create_backend` ('' / 0 = its default)."""
        return dict(device=self.device or None, precision=self.precision,
                    processing_resolution=self.processing_resolution or None, cache_dir=self.engine_cache_dir or None,
                    num_threads=self.num_threads or (torch_default_threads() if self.backend == "torch" else None))

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
            elif f.name == "confidence":
                c = self.confidence
                out.update({"confidence.sources": list(c.sources), "confidence.edge_scale": c.edge_scale,
                            "confidence.normal_scale": c.normal_scale,
                            "confidence.residual_scale": c.residual_scale,
                            "confidence.sparse_weight": c.sparse_weight, "confidence.combine": c.combine,
                            "confidence.grid_long_side": c.grid_long_side})
            elif f.name == "temporal":
                t = self.temporal
                out.update({"temporal.blend": t.blend, "temporal.image_threshold": t.image_threshold,
                            "temporal.max_depth_change": t.max_depth_change,
                            "temporal.max_moving_share": t.max_moving_share})
            elif f.name.startswith("alarm_"):
                out["alarm." + f.name.removeprefix("alarm_")] = getattr(self, f.name)
            elif f.name == "metric_sync_tolerance_s":
                out["metric.sync_tolerance_s"] = self.metric_sync_tolerance_s
            elif f.name in ("fallback_backends", "cameras"):
                out[f.name] = list(getattr(self, f.name)) or [""]
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
    try:
        confidence = ConfidenceConfig(
            sources=tuple(str(s) for s in v["confidence.sources"]), edge_scale=float(v["confidence.edge_scale"]),
            normal_scale=float(v["confidence.normal_scale"]), residual_scale=float(v["confidence.residual_scale"]),
            sparse_weight=float(v["confidence.sparse_weight"]), combine=v["confidence.combine"],
            grid_long_side=int(v["confidence.grid_long_side"]))
    except ValueError as exc:
        raise ValueError(f"`confidence.*`: {exc}") from None
    temporal = StabilizerConfig(
        blend=float(v["temporal.blend"]), image_threshold=float(v["temporal.image_threshold"]),
        max_depth_change=float(v["temporal.max_depth_change"]), max_moving_share=float(v["temporal.max_moving_share"]))
    alarms = {f"alarm_{n}": float(v[f"alarm.{n}"])
              for n in ("max_residual_rel", "max_scale_change", "max_low_confidence_share", "max_flicker")}
    kwargs = {f.name: v[f.name] for f in fields(NodeConfig)
              if f.name not in ("metric", "metric_sync_tolerance_s", "fallback_backends", "cameras", "confidence",
                                "temporal") and not f.name.startswith("alarm_")}
    kwargs["min_confidence"] = float(kwargs["min_confidence"])
    for name in ("output_scale", "cloud_min_range_m", "cloud_max_range_m", "max_stamp_age_s",
                 "camera_info_timeout_s", "fresh_frame_max_age_ratio", "diagnostics_period_s", "stale_timeout_s",
                 "warn_throttle_s", "camera_sync_wait_s"):
        kwargs[name] = float(kwargs[name])
    fallback = tuple(str(b) for b in v["fallback_backends"] if str(b))
    cameras = tuple(str(c) for c in v["cameras"] if str(c))
    return NodeConfig(metric=metric, metric_sync_tolerance_s=float(v["metric.sync_tolerance_s"]),
                      fallback_backends=fallback, cameras=cameras, confidence=confidence, temporal=temporal,
                      **alarms, **kwargs)





def config_keeping_good_values(values: dict[str, Any]) -> tuple[NodeConfig, str]:
    """(config, "") for valid ``values``; otherwise (the config with the default of every value that breaks it,
    the error): a bad params file must not kill the node."""
    try:
        return config_from_values(values), ""
    except ValueError as exc:
        good: dict[str, Any] = {}
        for name, value in values.items():
            try:
                config_from_values({**good, name: value})
                good[name] = value
            except ValueError:
                pass
        return config_from_values(good), str(exc)


def torch_default_threads() -> int:
    """The node's torch threads when ``num_threads`` is 0: the cores this process may use, but one."""
    # Measured (README, P5, 2 cores, 30 Hz): torch dispatches op by op in Python and each parallel op waits for
    # a thread the executor preempted; one spare core: tiny model p50 64 -> 47 ms, p95 84 -> 60 ms. ONNX Runtime
    # and OpenVINO (one call per frame) were faster with every core, so they keep their default.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, cores - 1)


def resolve_checkpoint(path: str, backend: str) -> str:
    """The checkpoint directory of the ``checkpoint`` parameter ('' = the first bundled model under the package's
    models/; stays '' for a plugin backend); raises ``ValueError`` with the reason."""
    from d3_perception.ros.launch_config import package_share_dir

    if not path:
        if backend.startswith(PLUGIN_PREFIX):
            return ""
        models = package_share_dir() / "models"
        found = sorted(p.parent for p in models.glob("*/config.json")) if models.is_dir() else []
        if not found:
            raise ValueError(f"`checkpoint` must be set (no bundled model under {models})")
        return str(found[0])
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValueError(f"`checkpoint` must be an existing checkpoint directory; got {path!r} (not found)")
    if not (p / "config.json").is_file():
        raise ValueError(f"`checkpoint` must contain config.json; got {path!r}")
    return str(p)


# Parameters a camera of `cameras` may set for itself as `<camera>.<name>` (e.g. front.metric.mode); the others
# are the node's (one model, one worker) and shared by every camera.
PER_CAMERA = ("metric.mode", "metric.fixed_scale", "metric.fixed_shift", "metric.near_m", "metric.far_m",
              "publish_depth", "publish_relative", "publish_camera_info", "publish_colored", "publish_normals",
              "publish_points", "publish_info", "publish_confidence", "min_confidence", "temporal.blend")


class CameraOverrides:
    """Per-camera values of :data:`PER_CAMERA` parameters: a camera's config is the node's config with its own
    values applied, so a change of the node's parameter reaches every camera that has not set its own."""

    def __init__(self, cameras: tuple[str, ...]) -> None:
        self.values: dict[str, dict[str, Any]] = {c: {} for c in cameras}

    def split(self, full_name: str) -> tuple[str, str] | None:
        """``"front.metric.mode"`` -> ``("front", "metric.mode")`` for a camera's parameter, else None."""
        camera, _, name = full_name.partition(".")
        return (camera, name) if camera in self.values and name in PER_CAMERA else None

    def config(self, cfg: NodeConfig, camera: str) -> NodeConfig:
        own = self.values.get(camera)
        return cfg.with_values(own) if own else cfg

    def refusal(self, cfg: NodeConfig, camera: str, values: dict[str, Any]) -> str:
        """Why ``values`` for ``camera`` are refused ('' = accepted)."""
        try:
            cfg.with_values({**self.values[camera], **values})
        except (ValueError, TypeError) as exc:
            return f"{camera}: {exc}"
        return ""
