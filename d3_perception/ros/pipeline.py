"""One camera's way from an input message to the output messages, without rclpy (DESIGN §5).

:class:`CameraPipeline` holds everything per camera: the latest-frame slot (:mod:`.frame_slot`), header checks,
the camera_info intrinsics, the sparse metric reference (:mod:`.sparse_reference`), the metric aligner, the
message buffers and helper threads of the post-processing (:mod:`.frame_outputs`), and the statistics and
bad-input counts of /diagnostics. It creates no ROS entities: ``D3PerceptionNode`` hands it the messages its
subscriptions receive and publishes what :meth:`CameraPipeline.process` returns; the tests and
``bench/node_overhead.py`` drive the same code without a node. Message classes are only data here (decoded
and packed by :mod:`.conversions`).

Threads: ``offer``/``on_camera_info``/``on_sparse`` run on subscription callbacks; ``next_frame``,
``process`` and ``finish`` on the one worker thread (which owns the buffers and helper threads).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from d3_perception.backends.chain import ActiveBackend, BackendChain
from d3_perception.geometry import kernels
from d3_perception.geometry.alignment import AlignmentResult, MetricAligner
from d3_perception.geometry.intrinsics import scale_intrinsics
from d3_perception.image_codec import COLOR_ENCODINGS, to_rgb8
from d3_perception.model.processing import MIN_SIDE_PX, plan_geometry
from d3_perception.parallel import RowWorkers
from d3_perception.ros import conversions as conv
from d3_perception.ros.frame_outputs import FrameOutputs, compute_outputs, needs_normals, output_messages
from d3_perception.ros.frame_quality import FrameQuality
from d3_perception.ros.frame_slot import FrameSlot
from d3_perception.ros.params import NodeConfig
from d3_perception.ros.pipeline_stats import PipelineStats, WarnThrottle
from d3_perception.ros.sparse_reference import SparseReference, stamp_s

__all__ = ["OUTPUTS", "CameraPipeline", "Frame", "FrameResult", "Prepared", "wanted_outputs", "warm_up_kernels"]

FRESH_WAIT_PERIODS = 1.5  # wait_for_fresh_frame: a stale frame is held at most this many periods old
OUTPUTS = ("depth", "relative", "camera_info", "colored", "normals", "normals_colored", "points", "info",
           "confidence")


@dataclass
class Frame:
    """One input image waiting for the worker."""

    msg: object  # sensor_msgs Image or CompressedImage
    compressed: bool
    received_s: float  # time.monotonic() at receipt
    reset_alignment: bool = False  # the stamp went backwards: restart the metric smoothing


@dataclass
class _CameraInfo:
    msg: object  # sensor_msgs CameraInfo
    K: np.ndarray  # [3,3] of msg's own size
    received_s: float


@dataclass
class FrameResult:
    """What :meth:`CameraPipeline.process` made of one frame: messages to publish, in order, and what
    /info and the statistics need once they are out."""

    header: object
    messages: dict[str, object]
    outputs: FrameOutputs
    backend_info: object  # BackendInfo of the backend that ran
    processing_hw: tuple[int, int]  # network input (H, W); (0, 0) when the backend's resolution is not plannable
    inference_ms: float
    started: float  # time.perf_counter() when the worker took the frame
    want: dict[str, bool] = field(default_factory=dict)


@dataclass
class Prepared:
    """A decoded frame waiting for the model (:meth:`CameraPipeline.prepare`)."""

    frame: Frame
    rgb: np.ndarray  # [H,W,3] uint8 at the output size
    in_hw: tuple[int, int]  # the image's size
    out_hw: tuple[int, int]  # the outputs' size (output_scale)
    want: dict[str, bool]
    tasks: tuple[str, ...]  # model tasks this frame needs
    active: ActiveBackend  # the backend the tasks were chosen for
    started: float  # time.perf_counter() when the worker took the frame


def _carry_reset(dropped: Frame, newer: Frame) -> None:
    newer.reset_alignment |= dropped.reset_alignment


def warm_up_kernels() -> None:
    """Compile the per-pixel kernels of the pipelines' work (confidence, stabiliser, cloud; numba) now, or load
    them from numba's cache, so that a node's first frame does not wait for it (a no-op without numba)."""
    kernels.warm_up()


def wanted_outputs(cfg: NodeConfig, subscribers: dict[str, int]) -> dict[str, bool]:
    """Output name -> compute it this frame. ``subscribers``: output name -> subscription count of its publisher
    (a name without a publisher is never wanted); with ``lazy_outputs`` an output nobody listens to is skipped."""
    metric = cfg.metric.mode != "none"
    enabled = {"depth": cfg.publish_depth and metric, "relative": cfg.publish_relative,
               "camera_info": cfg.publish_camera_info, "colored": cfg.publish_colored,
               "normals": cfg.publish_normals, "normals_colored": cfg.publish_normals,
               "points": cfg.publish_points, "info": cfg.publish_info, "confidence": cfg.publish_confidence}
    return {k: bool(on and k in subscribers and (not cfg.lazy_outputs or subscribers[k] > 0))
            for k, on in enabled.items()}


def processing_hw(out_hw: tuple[int, int], resolution: int, resize_policy: str = "keep_aspect") -> tuple[int, int]:
    """The network input size (H, W) for an ``out_hw`` frame (:func:`~d3_perception.model.processing.plan_geometry`);
    (0, 0) for a plugin backend whose resolution is no valid processing resolution."""
    try:
        return plan_geometry(out_hw, resolution, resize_policy).padded_hw
    except (ValueError, TypeError):
        return (0, 0)


class CameraPipeline:
    """Per-camera state and work; ``warn(text)`` logs a (throttled) bad-input warning."""

    def __init__(self, cfg: NodeConfig, warn: Callable[[str], None] = lambda text: None,
                 on_frame: Callable[[], None] = lambda: None) -> None:
        self.cfg = cfg
        self._on_frame = on_frame  # a frame entered the slot (wakes a worker that batches several cameras)
        self.stats = PipelineStats()
        self.throttle = WarnThrottle(cfg.warn_throttle_s)
        self._warn = warn
        self.slot = FrameSlot()  # latest-frame policy: holds the one pending Frame
        self._aligner = MetricAligner(cfg.metric)
        self._aligner_lock = threading.Lock()
        self._info: _CameraInfo | None = None
        self._info_size_reported = None
        self.sparse = SparseReference()
        self._last_stamp_s: float | None = None
        self._reset_quality = False
        self._buffers = conv.BufferPool()
        self.workers: RowWorkers | None = None  # the worker thread's helpers (postprocess_threads)
        self.quality: FrameQuality | None = FrameQuality(cfg)  # confidence, gating, stabiliser (worker thread)

    # ------------------------------------------------------------------ configuration, reporting
    def set_config(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.throttle.period_s = cfg.warn_throttle_s
        with self._aligner_lock:
            self._aligner.set_config(cfg.metric)

    def bad(self, kind: str, reason: str) -> None:
        """Count a bad input of ``kind`` (:data:`~.pipeline_stats.BAD_INPUT_KINDS`) and warn, throttled per kind."""
        self.stats.bad(kind, reason)
        log, suppressed = self.throttle.should_log(kind)
        if log:
            more = f" ({suppressed} more since the last warning)" if suppressed else ""
            self._warn(f"bad input [{kind}]: {reason}{more}")

    def close(self) -> None:
        """Stop the helper threads (the worker has stopped)."""
        if self.workers is not None:
            self.workers.close()
            self.workers = None

    def reset(self) -> None:
        """Forget camera_info, the sparse references and the metric fit (lifecycle cleanup)."""
        self._info = None
        self.sparse.clear()
        with self._aligner_lock:
            self._aligner.reset()
        self._reset_quality = True  # the worker resets the stabiliser at its next frame (it owns that state)

    # ------------------------------------------------------------------ input (subscription threads)
    def _check_header(self, msg, now_s: float) -> tuple[bool, bool]:
        """Header checks shared by raw and compressed input: (accept, reset_alignment)."""
        stamp = stamp_s(msg.header.stamp)
        reset = False
        if stamp == 0.0:
            self.bad("stamp_zero", "header stamp is 0; outputs carry stamp 0 too")
        elif self._last_stamp_s is not None and stamp < self._last_stamp_s:
            self.bad("stamp_backwards", f"stamp {stamp:.3f} s is older than the previous "
                     f"{self._last_stamp_s:.3f} s (bag loop or clock jump); metric smoothing restarted")
            reset = True
        if stamp != 0.0:
            self._last_stamp_s = stamp
        if not msg.header.frame_id:
            self.bad("frame_id_empty", "header frame_id is empty; outputs cannot be placed in TF")
        if self.cfg.max_stamp_age_s > 0 and stamp > 0 and now_s - stamp > self.cfg.max_stamp_age_s:
            self.bad("stamp_too_old", f"frame is {now_s - stamp:.3f} s old (max_stamp_age_s "
                     f"{self.cfg.max_stamp_age_s})")
            return False, reset
        return True, reset

    def offer(self, msg, compressed: bool, now_s: float) -> None:
        """A camera image arrived (``now_s``: the node clock, for stamp ages); never raises."""
        kind = "compressed_decode" if compressed else "image_decode"
        try:
            if not compressed and int(msg.height) * int(msg.width) > self.cfg.max_input_pixels:
                self.bad("image_too_large", f"image {msg.width}x{msg.height} exceeds max_input_pixels "
                         f"{self.cfg.max_input_pixels}; refused before decoding")
                return
            ok, reset = self._check_header(msg, now_s)
            if not ok:
                return
            frame = Frame(msg, compressed, time.monotonic(), reset)
            stamp = stamp_s(msg.header.stamp)
            self.stats.input((now_s - stamp) * 1e3 if stamp > 0 else float("nan"), now=frame.received_s)
            if self.slot.put(frame, frame.received_s, _carry_reset) is not None:
                self.stats.dropped()  # the pending frame (waiting, or held by a freshness wait), counted once
            self._on_frame()
        except Exception as exc:  # noqa: BLE001 - a callback must never take the node down
            self.bad(kind, f"{type(exc).__name__}: {exc}")

    def on_camera_info(self, msg) -> None:
        try:
            K = conv.camera_info_k(msg)
        except ValueError as exc:
            self.bad("camera_info_invalid", f"{exc}; no cloud or depth/camera_info until a valid one arrives")
            return
        self._info = _CameraInfo(msg, K, time.monotonic())

    def on_sparse(self, msg) -> None:
        problem = self.sparse.add(msg, self.cfg.max_input_pixels)
        if problem is not None:
            self.bad(problem.kind, problem.reason)

    # ------------------------------------------------------------------ worker thread
    def next_frame(self, stop: threading.Event) -> Frame | None:
        """The frame to process next (waiting for a fresher one with ``wait_for_fresh_frame``); None when
        ``stop`` is set or the wait was woken without a frame."""
        cfg = self.cfg
        period_s = self.stats.input_period_s() if cfg.wait_for_fresh_frame else None
        max_age_s = cfg.fresh_frame_max_age_ratio * period_s if period_s else None
        # the next frame is due one period after the pending one; half a period of tolerance for jitter
        frame, outcome = self.slot.take(stop, max_age_s, FRESH_WAIT_PERIODS * (period_s or 0.0))
        if outcome != "ready":
            self.stats.fresh_wait(timed_out=outcome == "timeout")
        return frame

    def frame_due(self, now: float | None = None) -> bool:
        """This camera's next frame is expected soon: frames come at a known period and the last one is less
        than :data:`FRESH_WAIT_PERIODS` periods old (a stalled camera is not waited for)."""
        period_s, last = self.stats.input_period_s(), self.stats.last_input_s()
        if period_s is None or last is None:
            return False
        return (time.monotonic() if now is None else now) - last <= FRESH_WAIT_PERIODS * period_s

    def _decode(self, frame: Frame) -> np.ndarray | None:
        cfg = self.cfg
        try:
            if frame.compressed:
                return conv.compressed_to_rgb(frame.msg, cfg.max_input_pixels)
            image = conv.msg_to_numpy(frame.msg, cfg.max_input_pixels)
        except conv.ImageDecodeError as exc:
            self.bad("compressed_decode" if frame.compressed else "image_decode", str(exc))
            return None
        enc = str(frame.msg.encoding)
        if enc not in COLOR_ENCODINGS:
            self.bad("image_encoding", f"`image` must be a colour encoding ({', '.join(COLOR_ENCODINGS)}); got {enc}")
            return None
        return to_rgb8(image, enc)

    def _intrinsics(self, in_hw, out_hw) -> np.ndarray | None:
        info, cfg = self._info, self.cfg
        if info is None:
            return None
        if cfg.camera_info_timeout_s > 0 and time.monotonic() - info.received_s > cfg.camera_info_timeout_s:
            return None
        try:
            K, resized = conv.info_to_image_k(info.msg, in_hw)
        except ValueError as exc:
            self.bad("camera_info_size", str(exc))
            return None
        if resized and self._info_size_reported is not info.msg:
            self._info_size_reported = info.msg  # once per camera_info message, not per frame
            self.bad("camera_info_size", f"camera_info is {info.msg.width}x{info.msg.height}, image "
                     f"{in_hw[1]}x{in_hw[0]}; intrinsics scaled to the image")
        return scale_intrinsics(K, in_hw, out_hw) if out_hw != in_hw else K

    def _align(self, frame: Frame, out_hw, relative: np.ndarray) -> AlignmentResult:
        """The metric alignment of ``relative`` (with the stamp-matched sparse reference in sparse_depth mode)."""
        cfg, sparse = self.cfg, None
        if cfg.metric.mode == "sparse_depth":
            sparse, problem = self.sparse.lookup(stamp_s(frame.msg.header.stamp), out_hw,
                                                 cfg.metric_sync_tolerance_s, cfg.max_input_pixels)
            if problem is not None:
                self.bad(problem.kind, problem.reason)
        if self.quality is not None:
            self.quality.reference = sparse  # the confidence's sparse cue compares with the same reference
        with self._aligner_lock:
            if frame.reset_alignment:
                self._aligner.reset()
            return self._aligner.update(relative, sparse)

    def _row_workers(self, threads: int) -> RowWorkers:
        """The worker thread's :class:`RowWorkers` for ``postprocess_threads`` (rebuilt when it changes)."""
        if self.workers is None or self.workers.threads != threads:
            if self.workers is not None:
                self.workers.close()
            self.workers = RowWorkers(threads)
        return self.workers

    def prepare(self, frame: Frame, want: dict[str, bool], active: ActiveBackend | None,
                mark: Callable[[], None] | None = None) -> Prepared | None:
        """Decode and check one frame and decide the model tasks it needs; None: bad input or nothing to do."""
        cfg = self.cfg
        t0 = time.perf_counter()
        rgb = self._decode(frame)
        if rgb is None:
            return None
        in_hw = rgb.shape[:2]
        if min(in_hw) < MIN_SIDE_PX:
            self.bad("image_decode", f"image {in_hw[1]}x{in_hw[0]} is smaller than {MIN_SIDE_PX} px per side")
            return None
        out_hw = in_hw
        if cfg.output_scale < 1.0:
            out_hw = (max(MIN_SIDE_PX, round(in_hw[0] * cfg.output_scale)),
                      max(MIN_SIDE_PX, round(in_hw[1] * cfg.output_scale)))
            rgb = cv2.resize(rgb, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_AREA)
        if mark:
            mark()  # decode
        if not any(want.values()) or active is None:
            return None
        available = active.backend.info.tasks
        has_depth = "depth" in available  # False for a normals-only checkpoint
        model_normals = needs_normals(want, cfg) and "normals" in available and (
            cfg.normals_source == "model" or not has_depth)
        tasks = (("depth",) if has_depth else ()) + (("normals",) if model_normals else ())
        if not tasks:
            return None
        if not has_depth:  # normals-only checkpoint: no depth outputs, no cloud
            want = {**want, "relative": False, "colored": False, "points": False}
        return Prepared(frame, rgb, in_hw, out_hw, want, tasks, active, t0)

    def model_failed(self, prep: Prepared, exc: Exception) -> None:
        """The backend raised on this frame (counted as model_error)."""
        self.bad("model_error", f"{prep.active.backend.info.name}: {type(exc).__name__}: {exc}")

    def process(self, frame: Frame, want: dict[str, bool], backends: BackendChain,
                mark: Callable[[], None] | None = None) -> FrameResult | None:
        """Decode, run the model, post-process: the messages to publish, or None (bad input, nothing wanted).

        mark: called at the end of the stages decode, model, side_jobs, metric_fit, side_wait, cloud and packing
        (``bench/node_overhead.py``'s stage timer)."""
        prep = self.prepare(frame, want, backends.current(), mark)
        if prep is None:
            return None
        t_model = time.perf_counter()
        try:  # model errors are counted; repeated ones switch backend (BackendChain)
            out = backends.predict(prep.rgb[None], prep.tasks, self.cfg.max_consecutive_failures)
        except Exception as exc:  # noqa: BLE001
            self.model_failed(prep, exc)
            return None
        inference_ms = (time.perf_counter() - t_model) * 1e3
        if mark:
            mark()  # model
        return self.complete(prep, out, inference_ms, mark)

    def complete(self, prep: Prepared, out: dict[str, np.ndarray], inference_ms: float,
                 mark: Callable[[], None] | None = None) -> FrameResult | None:
        """The model output ``out`` (``{task: [1,...]}``) of a prepared frame -> its messages."""
        cfg, want, out_hw, frame = self.cfg, prep.want, prep.out_hw, prep.frame
        h, w = out_hw
        for task, shape in (("depth", (1, h, w)), ("normals", (1, 3, h, w))):
            if task in prep.tasks and np.shape(out.get(task)) != shape:
                self.model_failed(prep, ValueError(f"`{task}` output must be {list(shape)}; got "
                                                   f"{np.shape(out.get(task))}"))
                return None
        relative = None
        if "depth" in prep.tasks:
            relative = np.asarray(out["depth"][0], dtype=np.float32)  # [H,W]
            if not np.isfinite(relative).all():
                self.bad("model_output", "model returned non-finite depth; those pixels are NaN")
                relative = np.where(np.isfinite(relative), relative, np.float32(np.nan))
        K = self._intrinsics(prep.in_hw, out_hw)
        if K is None and ((want["points"] and relative is not None) or want["camera_info"]):
            self.bad("camera_info_missing", "no valid, recent camera_info: points and depth/camera_info skipped")
        model_n = np.asarray(out["normals"][0]) if "normals" in prep.tasks else None
        active = prep.active
        if self.quality is not None:  # None: the outputs without confidence, gating, stabiliser (benchmark)
            if self._reset_quality or frame.reset_alignment:  # lifecycle cleanup, or the stream jumped back
                self._reset_quality = False
                self.quality.reset()
            self.quality.begin(cfg, out_hw)
        # worker thread only: outputs are computed straight into the message buffers of self._buffers
        outputs = compute_outputs(cfg, want, prep.rgb, relative, model_n, K, out_hw, self._buffers,
                                  self._row_workers(cfg.postprocess_threads),
                                  functools.partial(self._align, frame, out_hw),
                                  convention=active.normals_convention, renormalise=active.renormalise,
                                  mark=mark, quality=self.quality)
        header = frame.msg.header
        info = self._info
        # the messages wrap the pool's buffers, reusable once publish() has serialized them
        messages = output_messages(want, outputs, relative, K, out_hw, header, self._buffers,
                                   info.msg if info else None)
        if mark:
            mark()  # packing
        bi = active.backend.info
        policy = getattr(getattr(active.backend, "config", None), "resize_policy", "keep_aspect")
        return FrameResult(header, messages, outputs, bi, processing_hw(out_hw, bi.processing_resolution, policy),
                           inference_ms, prep.started, want)

    def finish(self, result: FrameResult, now_s: float) -> float:
        """The frame's messages are published (``now_s``: node clock): count it; returns its latency in ms
        (stamp -> now, or processing time for stamp 0)."""
        stamp = stamp_s(result.header.stamp)
        latency_ms = (now_s - stamp) * 1e3 if stamp > 0 else (time.perf_counter() - result.started) * 1e3
        self.stats.output(latency_ms, result.inference_ms)
        self.stats.quality(result.outputs.quality)
        return latency_ms
