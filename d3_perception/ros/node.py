"""d3_perception_node: camera image -> depth, normals, point cloud, PredictionInfo, diagnostics (DESIGN §5).

A lifecycle node (``autostart`` configures and activates it): the model is loaded in ``on_configure``,
the worker thread runs in the active state. Subscription callbacks only check headers and store the
newest frame in a one-slot buffer (older unprocessed frames are dropped and counted); the worker decodes,
runs the model and publishes. With ``wait_for_fresh_frame`` the worker, when it frees up, does not start
on a frame that has already waited for most of a camera period: it waits for the next one (see
:mod:`d3_perception.ros.frame_slot`). Every bad input is counted per kind in /diagnostics and logged
(throttled); the node never dies on a message.

  python -m d3_perception.ros.node --ros-args --params-file config/d3_perception.yaml
  ros2 run d3_perception d3_perception_node --ros-args -p checkpoint:=/models/d3 -r image:=/cam/image_raw
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import json
import math
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rclpy
from d3_perception.msg import PredictionInfo
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from d3_perception.backends import AUTO_ORDER  # runtime fallback follows the factory's auto order
from d3_perception.geometry.alignment import AlignmentResult, MetricAligner
from d3_perception.geometry.intrinsics import scale_intrinsics
from d3_perception.geometry.pointcloud import RowWorkers
from d3_perception.geometry.units import mm_to_m
from d3_perception.image_codec import to_rgb8
from d3_perception.ros import conversions as conv
from d3_perception.ros.diagnostics import ERROR, OK, STALE, WARN, PipelineStats, WarnThrottle
from d3_perception.ros.frame_outputs import FrameOutputs, compute_outputs, needs_normals, output_messages
from d3_perception.ros.frame_slot import FrameSlot
from d3_perception.ros.launch_config import NODE_NAME, package_share_dir
from d3_perception.ros.params import PARAMETERS, SPECS, NodeConfig, config_from_values

__all__ = ["D3PerceptionNode", "main"]

SPARSE_BUFFER_LEN = 16  # sparse_depth messages kept for stamp matching (~0.5 s at 30 Hz)
MIN_SIDE_PX = 8  # the model's minimum input side (d3_perception.model.processing.MIN_SIDE_PX)
FRESH_WAIT_PERIODS = 1.5  # wait_for_fresh_frame: a stale frame is held at most this many periods old
_OUTPUTS = ("depth", "relative", "camera_info", "colored", "normals", "normals_colored", "points", "info")


@dataclass
class _Frame:
    msg: Image | CompressedImage
    compressed: bool
    received_s: float  # time.monotonic() at receipt
    reset_alignment: bool = False


@dataclass
class _Info:
    msg: CameraInfo
    K: np.ndarray  # [3,3] of msg's own size
    received_s: float


def _carry_reset(dropped: _Frame, newer: _Frame) -> None:
    newer.reset_alignment |= dropped.reset_alignment


def _stamp_s(stamp) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def _resolve_checkpoint(path: str, backend: str) -> str:
    """The checkpoint directory to load; raises ``ValueError`` with the reason."""
    if not path:
        if backend.startswith("python:"):
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


def create_backend(name: str, checkpoint: str, cfg: NodeConfig):
    """A backend by name; ``python:module:callable`` calls a plugin/test factory with the same arguments."""
    kwargs = dict(device=cfg.device or None, precision=cfg.precision,
                  processing_resolution=cfg.processing_resolution or None, cache_dir=cfg.engine_cache_dir or None)
    if name.startswith("python:"):
        _, module, attr = name.split(":")
        factory = getattr(importlib.import_module(module), attr)
        return factory(checkpoint=checkpoint, **kwargs)
    from d3_perception.backends import create_backend as _create

    return _create(name, checkpoint, **kwargs)


def _normals_convention(backend, checkpoint: str) -> str:
    for obj in (backend, getattr(backend, "config", None)):
        conv_name = getattr(obj, "normals_convention", None)
        if isinstance(conv_name, str):
            return conv_name
    try:
        return json.loads((Path(checkpoint) / "config.json").read_text()).get("normals_convention", "optical")
    except (OSError, ValueError, AttributeError):
        return "optical"


def _processing_hw(hw: tuple[int, int], resolution: int) -> tuple[int, int]:
    scale = resolution / max(hw)
    return tuple(-(-max(1, round(s * scale)) // 64) * 64 for s in hw)  # type: ignore[return-value]


def _rescale_sparse(sparse: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Move each valid reference pixel to its place in an ``hw`` image (no interpolation of sparse data)."""
    out = np.full(hw, np.nan, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        v, u = np.nonzero(np.isfinite(sparse) & (sparse > 0))
    if v.size:
        sy, sx = hw[0] / sparse.shape[0], hw[1] / sparse.shape[1]
        vv = np.minimum(((v + 0.5) * sy).astype(np.int64), hw[0] - 1)
        uu = np.minimum(((u + 0.5) * sx).astype(np.int64), hw[1] - 1)
        out[vv, uu] = sparse[v, u]
    return out


class D3PerceptionNode(LifecycleNode):
    """See the module docstring; topics and parameters in docs/node.md."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        self._cfg = self._read_config()
        self.stats = PipelineStats()
        self._throttle = WarnThrottle(self._cfg.warn_throttle_s)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self._aligner = MetricAligner(self._cfg.metric)
        self._aligner_lock = threading.Lock()
        self._slot = FrameSlot()  # latest-frame policy: holds the one pending _Frame
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._info: _Info | None = None
        self._info_size_reported = None
        # Recent sparse_depth messages: the worker pairs a frame with the one nearest its stamp, so a
        # reference that arrives while the model runs on an older frame still matches that frame.
        self._sparse_recent: collections.deque[Image] = collections.deque(maxlen=SPARSE_BUFFER_LEN)
        self._sparse_cache: tuple[Image, tuple[int, int], np.ndarray] | None = None
        self._last_stamp_s: float | None = None
        self._backend = None
        self._backend_lock = threading.Lock()
        self._checkpoint = ""
        self._normals_convention = "optical"
        self._renormalise = True  # model normals renormalised unless the backend promises unit_normals
        self._fallback_queue: list[str] = []
        self._failures = 0
        self._backend_switches = 0
        self._configure_error = ""
        self._active = False
        self._active_since = time.monotonic()
        self._pubs: dict[str, object] = {}
        self._buffers = conv.BufferPool()
        self._workers: RowWorkers | None = None  # the worker thread's helpers (postprocess_threads)
        self._subs: list = []
        self._input_group = MutuallyExclusiveCallbackGroup()  # cheap callbacks, serial: no races on stamps
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(self._cfg.diagnostics_period_s, self._publish_diagnostics,
                                             callback_group=self._diag_group)

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        """Declare every parameter of :data:`PARAMETERS` with description, range and read-only flag."""
        for spec in PARAMETERS:
            desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
            if spec.choices:
                desc.additional_constraints = "one of: " + ", ".join(spec.choices)
            if isinstance(spec.default, float) and spec.min is not None:
                desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min),
                                                                to_value=float(spec.max), step=0.0)]
            elif isinstance(spec.default, int) and not isinstance(spec.default, bool) and spec.min is not None:
                desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=1)]
            self.declare_parameter(spec.name, spec.default, desc)

    def _read_config(self) -> NodeConfig:
        values = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        try:
            return config_from_values(values)
        except ValueError as exc:
            # A bad params file must not kill the node: fall back to the defaults of the broken values.
            self.get_logger().error(f"invalid parameters, using defaults where needed: {exc}")
            good = {}
            for name, value in values.items():
                try:
                    config_from_values({**good, name: value})
                    good[name] = value
                except ValueError:
                    pass
            return config_from_values(good)

    def _on_set_parameters(self, params) -> SetParametersResult:
        values = {p.name: p.value for p in params if p.name in SPECS}
        for name in values:
            if SPECS[name].read_only:
                return SetParametersResult(successful=False, reason=f"`{name}` is read-only (set it at start-up)")
        try:
            self._cfg.with_values(values)
        except (ValueError, TypeError) as exc:
            self._bad("parameter", f"rejected: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _on_parameters_set(self, params) -> None:
        values = {p.name: p.value for p in params if p.name in SPECS}
        if not values:
            return
        self._cfg = self._cfg.with_values(values)
        self._throttle.period_s = self._cfg.warn_throttle_s
        with self._aligner_lock:
            self._aligner.set_config(self._cfg.metric)
        self.get_logger().info("parameters updated: " + ", ".join(f"{k}={v!r}" for k, v in values.items()))

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self._cfg
        try:
            self._checkpoint = _resolve_checkpoint(cfg.checkpoint, cfg.backend)
            backend = create_backend(cfg.backend, self._checkpoint, cfg)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported, the node stays alive
            self._configure_error = f"cannot load model: {type(exc).__name__}: {exc}"
            self.stats.bad("configure", self._configure_error)
            self.get_logger().error(self._configure_error)
            return TransitionCallbackReturn.FAILURE
        self._configure_error = ""
        self._set_backend(backend)
        current = backend.info.name
        self._fallback_queue = list(cfg.fallback_backends) or [b for b in AUTO_ORDER[
            (AUTO_ORDER.index(current) + 1 if current in AUTO_ORDER else 0):] if b != current]
        pub_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self._pubs = {
            "depth": self.create_publisher(Image, "depth", pub_qos),
            "relative": self.create_publisher(Image, "depth/relative", pub_qos),
            "camera_info": self.create_publisher(CameraInfo, "depth/camera_info", pub_qos),
            "colored": self.create_publisher(Image, "depth/colored", pub_qos),
            "normals": self.create_publisher(Image, "normals", pub_qos),
            "normals_colored": self.create_publisher(Image, "normals/colored", pub_qos),
            "points": self.create_publisher(PointCloud2, "points", pub_qos),
            "info": self.create_publisher(PredictionInfo, "~/info", pub_qos),
        }
        return TransitionCallbackReturn.SUCCESS

    def _set_backend(self, backend) -> None:
        with self._backend_lock:
            old, self._backend = self._backend, backend
            self._normals_convention = _normals_convention(backend, self._checkpoint)
            self._renormalise = not getattr(backend, "unit_normals", False)
            self._failures = 0
        if old is not None and old is not backend:
            old.close()
        i = backend.info
        self.get_logger().info(f"model {i.model_id!r} on {i.name} ({i.device}, {i.precision}), tasks "
                               f"{','.join(i.tasks)}, processing resolution {i.processing_resolution}, "
                               f"normals convention {self._normals_convention}")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self._cfg
        sensor_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=cfg.qos_depth,
            reliability=ReliabilityPolicy.BEST_EFFORT if cfg.qos_reliability == "best_effort"
            else ReliabilityPolicy.RELIABLE)
        g = self._input_group
        if cfg.input_transport == "compressed":
            self._subs.append(self.create_subscription(CompressedImage, "image/compressed",
                                                       self._on_compressed, sensor_qos, callback_group=g))
        else:
            self._subs.append(self.create_subscription(Image, "image", self._on_image, sensor_qos,
                                                       callback_group=g))
        self._subs.append(self.create_subscription(CameraInfo, "camera_info", self._on_camera_info,
                                                   sensor_qos, callback_group=g))
        self._subs.append(self.create_subscription(Image, "sparse_depth", self._on_sparse, sensor_qos,
                                                   callback_group=g))
        self._stop.clear()
        self._slot.clear()
        self._active_since = time.monotonic()
        self._worker = threading.Thread(target=self._run_worker, name="d3_worker", daemon=True)
        self._worker.start()
        self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_pipeline()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_pipeline()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_pipeline()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_pipeline(self) -> None:
        self._active = False
        self._stop.set()
        self._slot.wake()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None
        if self._workers is not None:
            self._workers.close()
            self._workers = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []

    def _release(self) -> None:
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs = {}
        with self._backend_lock:
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
        self._info = self._sparse_cache = None
        self._sparse_recent.clear()
        with self._aligner_lock:
            self._aligner.reset()

    # ------------------------------------------------------------------ callbacks (no inference here)
    def _bad(self, kind: str, reason: str) -> None:
        self.stats.bad(kind, reason)
        log, suppressed = self._throttle.should_log(kind)
        if log:
            more = f" ({suppressed} more since the last warning)" if suppressed else ""
            self.get_logger().warning(f"bad input [{kind}]: {reason}{more}")

    def _check_header(self, msg) -> tuple[bool, bool]:
        """Header checks shared by raw and compressed input: (accept, reset_alignment)."""
        stamp_s = _stamp_s(msg.header.stamp)
        reset = False
        if stamp_s == 0.0:
            self._bad("stamp_zero", "header stamp is 0; outputs carry stamp 0 too")
        elif self._last_stamp_s is not None and stamp_s < self._last_stamp_s:
            self._bad("stamp_backwards", f"stamp {stamp_s:.3f} s is older than the previous "
                      f"{self._last_stamp_s:.3f} s (bag loop or clock jump); metric smoothing restarted")
            reset = True
        if stamp_s != 0.0:
            self._last_stamp_s = stamp_s
        if not msg.header.frame_id:
            self._bad("frame_id_empty", "header frame_id is empty; outputs cannot be placed in TF")
        if self._cfg.max_stamp_age_s > 0 and stamp_s > 0:
            age = _stamp_s(self.get_clock().now().to_msg()) - stamp_s
            if age > self._cfg.max_stamp_age_s:
                self._bad("stamp_too_old", f"frame is {age:.3f} s old (max_stamp_age_s "
                          f"{self._cfg.max_stamp_age_s})")
                return False, reset
        return True, reset

    def _offer(self, frame: _Frame) -> None:
        now_s = _stamp_s(self.get_clock().now().to_msg())
        stamp_s = _stamp_s(frame.msg.header.stamp)
        self.stats.input((now_s - stamp_s) * 1e3 if stamp_s > 0 else float("nan"), now=frame.received_s)
        if self._slot.put(frame, frame.received_s, _carry_reset) is not None:
            self.stats.dropped()  # the pending frame (waiting, or held by a freshness wait), counted once

    def _on_image(self, msg: Image) -> None:
        try:
            pixels = int(msg.height) * int(msg.width)
            if pixels > self._cfg.max_input_pixels:
                self._bad("image_too_large", f"image {msg.width}x{msg.height} exceeds max_input_pixels "
                          f"{self._cfg.max_input_pixels}; refused before decoding")
                return
            ok, reset = self._check_header(msg)
            if ok:
                self._offer(_Frame(msg, False, time.monotonic(), reset))
        except Exception as exc:  # noqa: BLE001 - a callback must never take the node down
            self._bad("image_decode", f"{type(exc).__name__}: {exc}")

    def _on_compressed(self, msg: CompressedImage) -> None:
        try:
            ok, reset = self._check_header(msg)
            if ok:
                self._offer(_Frame(msg, True, time.monotonic(), reset))
        except Exception as exc:  # noqa: BLE001
            self._bad("compressed_decode", f"{type(exc).__name__}: {exc}")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            K = conv.camera_info_k(msg)
        except ValueError as exc:
            self._bad("camera_info_invalid", f"{exc}; no cloud or depth/camera_info until a valid one arrives")
            return
        self._info = _Info(msg, K, time.monotonic())

    def _on_sparse(self, msg: Image) -> None:
        if int(msg.height) * int(msg.width) > self._cfg.max_input_pixels:
            self._bad("sparse_depth_decode", f"sparse_depth {msg.width}x{msg.height} exceeds max_input_pixels")
            return
        self._sparse_recent.append(msg)

    # ------------------------------------------------------------------ worker
    def _run_worker(self) -> None:
        while not self._stop.is_set():
            cfg = self._cfg
            period_s = self.stats.input_period_s() if cfg.wait_for_fresh_frame else None
            max_age_s = cfg.fresh_frame_max_age_ratio * period_s if period_s else None
            # the next frame is due one period after the pending one; half a period of tolerance for jitter
            frame, outcome = self._slot.take(self._stop, max_age_s, FRESH_WAIT_PERIODS * (period_s or 0.0))
            if outcome != "ready":
                self.stats.fresh_wait(timed_out=outcome == "timeout")
            if frame is None:
                continue
            try:
                self._process(frame)
            except Exception as exc:  # noqa: BLE001 - the worker survives anything a frame can do
                self._bad("publish_error", f"{type(exc).__name__}: {exc}")

    def _wanted(self, cfg: NodeConfig, metric: bool) -> dict[str, bool]:
        enabled = {"depth": cfg.publish_depth and metric, "relative": cfg.publish_relative,
                   "camera_info": cfg.publish_camera_info, "colored": cfg.publish_colored,
                   "normals": cfg.publish_normals, "normals_colored": cfg.publish_normals,
                   "points": cfg.publish_points, "info": cfg.publish_info}
        pubs = self._pubs
        return {k: bool(on and k in pubs and (not cfg.lazy_outputs or pubs[k].get_subscription_count() > 0))
                for k, on in enabled.items()}

    def _decode(self, frame: _Frame, cfg: NodeConfig) -> np.ndarray | None:
        try:
            if frame.compressed:
                return conv.compressed_to_rgb(frame.msg, cfg.max_input_pixels)
            image = conv.msg_to_numpy(frame.msg, cfg.max_input_pixels)
        except conv.ImageDecodeError as exc:
            self._bad("compressed_decode" if frame.compressed else "image_decode", str(exc))
            return None
        enc = str(frame.msg.encoding)
        if enc not in conv.COLOR_ENCODINGS:
            self._bad("image_encoding", f"`image` must be a colour encoding ({', '.join(conv.COLOR_ENCODINGS)}); "
                      f"got {enc}")
            return None
        return to_rgb8(image, enc)

    def _intrinsics(self, in_hw, out_hw, cfg: NodeConfig) -> np.ndarray | None:
        info = self._info
        if info is None:
            return None
        if cfg.camera_info_timeout_s > 0 and time.monotonic() - info.received_s > cfg.camera_info_timeout_s:
            return None
        try:
            K, resized = conv.info_to_image_k(info.msg, in_hw)
        except ValueError as exc:
            self._bad("camera_info_size", str(exc))
            return None
        if resized and self._info_size_reported is not info.msg:
            self._info_size_reported = info.msg  # once per camera_info message, not per frame
            self._bad("camera_info_size", f"camera_info is {info.msg.width}x{info.msg.height}, image "
                      f"{in_hw[1]}x{in_hw[0]}; intrinsics scaled to the image")
        return scale_intrinsics(K, in_hw, out_hw) if out_hw != in_hw else K

    def _sparse_reference(self, stamp_s: float, out_hw, cfg: NodeConfig) -> np.ndarray | None:
        recent = list(self._sparse_recent)  # snapshot: the subscription thread appends concurrently
        if not recent:
            self._bad("sparse_depth_unsynced", "metric.mode is sparse_depth but no sparse_depth received yet")
            return None
        msg = min(recent, key=lambda m: abs(_stamp_s(m.header.stamp) - stamp_s))
        dt = abs(_stamp_s(msg.header.stamp) - stamp_s)
        if dt > cfg.metric_sync_tolerance_s:
            self._bad("sparse_depth_unsynced", f"nearest sparse_depth is {dt:.3f} s from the image "
                      f"(metric.sync_tolerance_s {cfg.metric_sync_tolerance_s})")
            return None
        cached = self._sparse_cache
        if cached is not None and cached[0] is msg and cached[1] == tuple(out_hw):  # same message object
            return cached[2]
        try:
            arr = conv.msg_to_numpy(msg, cfg.max_input_pixels)
        except conv.ImageDecodeError as exc:
            self._bad("sparse_depth_decode", str(exc))
            return None
        if msg.encoding in ("16UC1", "mono16"):
            depth = mm_to_m(arr)
        elif msg.encoding == "32FC1":
            depth = arr.astype(np.float32)
        else:
            self._bad("sparse_depth_decode", f"`sparse_depth` must be 16UC1 (mm) or 32FC1 (m); got {msg.encoding}")
            return None
        with np.errstate(invalid="ignore"):
            n_valid = int(np.count_nonzero(np.isfinite(depth) & (depth > 0)))
        if n_valid == 0:
            self._bad("sparse_depth_empty", "sparse_depth has no valid (finite, > 0) pixel; holding the last fit")
            return None
        if depth.shape != tuple(out_hw):
            h, w = depth.shape
            if abs((w / h) / (out_hw[1] / out_hw[0]) - 1.0) > 0.01:
                self._bad("sparse_depth_size", f"sparse_depth {w}x{h} must have the image's aspect ratio "
                          f"({out_hw[1]}x{out_hw[0]})")
                return None
            depth = _rescale_sparse(depth, tuple(out_hw))
        self._sparse_cache = (msg, tuple(out_hw), depth)
        return depth

    def _predict(self, rgb: np.ndarray, tasks: tuple[str, ...]) -> dict[str, np.ndarray] | None:
        with self._backend_lock:
            backend = self._backend
        if backend is None:
            return None
        try:
            out = backend.predict(rgb[None], tasks=tasks)
            h, w = rgb.shape[:2]
            for task, shape in (("depth", (1, h, w)), ("normals", (1, 3, h, w))):
                if task in tasks and np.shape(out.get(task)) != shape:
                    raise ValueError(f"`{task}` output must be {list(shape)}; got {np.shape(out.get(task))}")
        except Exception as exc:  # noqa: BLE001 - model errors are counted; repeated ones switch backend
            self._bad("model_error", f"{backend.info.name}: {type(exc).__name__}: {exc}")
            self._failures += 1
            if self._failures >= self._cfg.max_consecutive_failures:
                self._fall_back(f"{self._failures} consecutive failures, last: {exc}")
            return None
        self._failures = 0
        return out

    def _fall_back(self, reason: str) -> None:
        while self._fallback_queue:
            name = self._fallback_queue.pop(0)
            try:
                backend = create_backend(name, self._checkpoint, self._cfg)
            except Exception as exc:  # noqa: BLE001 - try the next one
                self.get_logger().error(f"fallback backend {name} could not start: {exc}")
                continue
            old = self._backend.info.name if self._backend is not None else "?"
            self.get_logger().error(f"backend {old} failed ({reason}); switched to {backend.info.name}")
            self._backend_switches += 1
            self._set_backend(backend)
            return
        self._failures = 0
        log, _ = self._throttle.should_log("no_fallback")
        if log:
            self.get_logger().error(f"backend keeps failing ({reason}) and no fallback backend is left")

    def _process(self, frame: _Frame) -> None:
        cfg = self._cfg
        t0 = time.perf_counter()
        rgb = self._decode(frame, cfg)
        if rgb is None:
            return
        in_hw = rgb.shape[:2]
        if min(in_hw) < MIN_SIDE_PX:
            self._bad("image_decode", f"image {in_hw[1]}x{in_hw[0]} is smaller than {MIN_SIDE_PX} px per side")
            return
        out_hw = in_hw
        if cfg.output_scale < 1.0:
            out_hw = (max(MIN_SIDE_PX, round(in_hw[0] * cfg.output_scale)),
                      max(MIN_SIDE_PX, round(in_hw[1] * cfg.output_scale)))
            rgb = cv2.resize(rgb, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_AREA)
        metric_on = cfg.metric.mode != "none"
        want = self._wanted(cfg, metric_on)
        if not any(want.values()):
            return
        backend = self._backend
        if backend is None:
            return
        need_normals = needs_normals(want, cfg)
        has_depth = "depth" in backend.info.tasks  # False for a normals-only checkpoint
        model_normals = need_normals and "normals" in backend.info.tasks and (
            cfg.normals_source == "model" or not has_depth)
        tasks = (("depth",) if has_depth else ()) + (("normals",) if model_normals else ())
        if not tasks:
            return
        t_model = time.perf_counter()
        out = self._predict(rgb, tasks)
        inference_ms = (time.perf_counter() - t_model) * 1e3
        if out is None:
            return
        header = frame.msg.header
        stamp_s = _stamp_s(header.stamp)
        relative = None
        if has_depth:
            relative = np.asarray(out["depth"][0], dtype=np.float32)  # [H,W]
            if not np.isfinite(relative).all():
                self._bad("model_output", "model returned non-finite depth; those pixels are NaN")
                relative = np.where(np.isfinite(relative), relative, np.float32(np.nan))
        else:  # normals-only checkpoint: no depth outputs, no cloud
            want = {**want, "relative": False, "colored": False, "points": False}
        K = self._intrinsics(in_hw, out_hw, cfg)
        if K is None and ((want["points"] and relative is not None) or want["camera_info"]):
            self._bad("camera_info_missing", "no valid, recent camera_info: points and depth/camera_info skipped")
        model_n = np.asarray(out["normals"][0]) if model_normals and "normals" in out else None
        convention, renormalise = self._normals_convention, self._renormalise  # of the backend that ran
        # worker thread only: outputs are computed straight into the message buffers of self._buffers
        outputs = compute_outputs(cfg, want, rgb, relative, model_n, K, out_hw, self._buffers,
                                  self._row_workers(cfg.postprocess_threads),
                                  functools.partial(self._align, frame, stamp_s, out_hw, cfg),
                                  convention=convention, renormalise=renormalise)
        self._publish(frame, cfg, want, outputs, relative, K, backend, out_hw, inference_ms, t0)

    def _align(self, frame: _Frame, stamp_s: float, out_hw, cfg: NodeConfig, relative: np.ndarray) -> AlignmentResult:
        """The metric alignment of ``relative`` (with the stamp-matched sparse reference in sparse_depth mode)."""
        sparse = self._sparse_reference(stamp_s, out_hw, cfg) if cfg.metric.mode == "sparse_depth" else None
        with self._aligner_lock:
            if frame.reset_alignment:
                self._aligner.reset()
            return self._aligner.update(relative, sparse)

    def _row_workers(self, threads: int) -> RowWorkers:
        """The worker thread's :class:`RowWorkers` for ``postprocess_threads`` (rebuilt when it changes)."""
        if self._workers is None or self._workers.threads != threads:
            if self._workers is not None:
                self._workers.close()
            self._workers = RowWorkers(threads)
        return self._workers

    def _publish(self, frame, cfg, want, outputs: FrameOutputs, relative, K, backend, out_hw, inference_ms,
                 t0) -> None:
        align = outputs.align
        header = frame.msg.header
        pubs = self._pubs
        # worker thread only; the messages wrap the pool's buffers, reusable once publish() has serialized them
        for name, msg in output_messages(want, outputs, relative, K, out_hw, header, self._buffers,
                                         self._info.msg if self._info else None).items():
            pubs[name].publish(msg)
        now_s = _stamp_s(self.get_clock().now().to_msg())
        stamp_s = _stamp_s(header.stamp)
        latency_ms = (now_s - stamp_s) * 1e3 if stamp_s > 0 else (time.perf_counter() - t0) * 1e3
        self.stats.output(latency_ms, inference_ms)
        if want["info"]:
            info = PredictionInfo()
            info.header = header
            bi = backend.info
            info.backend, info.model_id = bi.name, bi.model_id
            ph, pw = _processing_hw(out_hw, bi.processing_resolution)
            info.processing_width, info.processing_height = int(pw), int(ph)
            info.inference_ms, info.total_ms = float(inference_ms), float(latency_ms)
            info.metric_mode = cfg.metric.mode
            info.scale, info.shift = float(align.scale), float(align.shift)
            info.alignment_points = int(align.points_used)
            info.alignment_residual_m = float(align.residual_m)
            info.frames_dropped = int(self.stats.frames_dropped)
            pubs["info"].publish(info)

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        try:
            self._diag_pub.publish(self._diagnostics())
        except Exception as exc:  # noqa: BLE001 - diagnostics must never stop the node
            self.get_logger().error(f"diagnostics failed: {exc}")

    def _diagnostics(self) -> DiagnosticArray:
        cfg = self._cfg
        snap = self.stats.snapshot()
        backend = self._backend
        status = DiagnosticStatus()
        status.name = f"{self.get_fully_qualified_name().lstrip('/')}: pipeline"
        status.hardware_id = backend.info.device if backend is not None else ""
        if self._configure_error:
            status.level, status.message = ERROR, self._configure_error
        elif not self._active:
            status.level, status.message = WARN, "inactive (lifecycle)"
        elif time.monotonic() - max(self._active_since, 0) > cfg.stale_timeout_s and \
                snap.seconds_since_input > cfg.stale_timeout_s:
            age = snap.seconds_since_input
            status.level = STALE
            status.message = "no input yet" if math.isinf(age) else f"no input for {age:.1f} s"
        elif snap.bad_input_recent:
            status.level = WARN
            status.message = "bad input: " + ", ".join(f"{k} x{v}" for k, v in sorted(snap.bad_input_recent.items()))
        else:
            status.level, status.message = OK, "ok"
        info = backend.info if backend is not None else None
        values = {
            "state": "active" if self._active else ("unconfigured" if backend is None else "inactive"),
            "backend": info.name if info else "",
            "device": info.device if info else "",
            "precision": info.precision if info else "",
            "model_id": info.model_id if info else "",
            "backend_switches": self._backend_switches,
            "metric_mode": cfg.metric.mode,
            "input_rate_hz": f"{snap.input_rate_hz:.2f}",
            "output_rate_hz": f"{snap.output_rate_hz:.2f}",
            "latency_p50_ms": f"{snap.latency_p50_ms:.1f}",
            "latency_p95_ms": f"{snap.latency_p95_ms:.1f}",
            "inference_p50_ms": f"{snap.inference_p50_ms:.1f}",
            "inference_p95_ms": f"{snap.inference_p95_ms:.1f}",
            "stamp_age_ms": f"{snap.stamp_age_ms:.1f}",
            "seconds_since_input": f"{snap.seconds_since_input:.2f}",
            "input_period_ms": f"{snap.input_period_ms:.1f}",
            "frames_received": snap.frames_received,
            "frames_processed": snap.frames_processed,
            "frames_dropped": snap.frames_dropped,
            "fresh_frame_waits": snap.fresh_frame_waits,
            "fresh_frame_timeouts": snap.fresh_frame_timeouts,
            "bad_input_total": sum(snap.bad_input.values()),
            "last_problem": snap.last_problem,
        }
        values.update({f"bad_input.{k}": v for k, v in sorted(snap.bad_input.items())})
        status.level = bytes([int(status.level)])  # `byte` field: an int would serialize as garbage
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        return array


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="d3_perception_node",
        description="D3-Predictor ROS 2 node: image -> depth, normals, point cloud (lifecycle, autostart).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m d3_perception.ros.node --ros-args --params-file config/d3_perception.yaml\n"
               "  ros2 run d3_perception d3_perception_node --ros-args -p checkpoint:=/models/d3 \\\n"
               "      -p metric.mode:=fixed -p metric.fixed_scale:=4.0 -r image:=/camera/color/image_raw\n"
               "parameters and topics: docs/node.md",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    _parse_args(rclpy.utilities.remove_ros_args(["d3_perception_node", *args])[1:])
    rclpy.init(args=["d3_perception_node", *args])
    node = None
    executor = MultiThreadedExecutor(num_threads=4)
    try:
        node = D3PerceptionNode()
        executor.add_node(node)
        if node._cfg.autostart and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node._stop_pipeline()
            node._release()
            node.destroy_node()
        executor.shutdown()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
