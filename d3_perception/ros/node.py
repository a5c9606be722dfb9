"""d3_perception_node: camera image -> depth, normals, point cloud, PredictionInfo, diagnostics (DESIGN §5).

A lifecycle node (``autostart`` configures and activates it): the model is loaded in ``on_configure``,
the worker thread runs in the active state. This class is the ROS shell only: it declares the parameters
(:mod:`.node_params`), creates the subscriptions and publishers, runs the lifecycle and hands messages to and
from the ROS-free :class:`~d3_perception.ros.camera_set.CameraSet` (one
:class:`~d3_perception.ros.pipeline.CameraPipeline` per camera: frame slot, decode, intrinsics, metric
alignment, post-processing, statistics; several cameras share batched model calls), whose subscription-side
methods only check headers and keep the newest frame. Backends come from :func:`d3_perception.backends.create_backend` and switch at runtime through a
:class:`~d3_perception.backends.chain.BackendChain`. Every bad input is counted per kind in /diagnostics
and logged (throttled); the node never dies on a message, and exits 0 on SIGINT/SIGTERM however many arrive.

  python -m d3_perception.ros.node --ros-args --params-file config/d3_perception.yaml
  ros2 run d3_perception d3_perception_node --ros-args -p checkpoint:=/models/d3 -r image:=/cam/image_raw
"""

from __future__ import annotations

import functools
import gc
import sys
import threading
import time

import rclpy
from d3_perception.msg import PredictionInfo
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from d3_perception.backends import create_backend, fallback_names
from d3_perception.backends.chain import BackendChain
from d3_perception.ros.camera_set import CameraSet, camera_topic
from d3_perception.ros.diagnostics import NodeState, diagnostic_array, prediction_info
from d3_perception.ros.entry import executable_parser, ignore_further_signals, split_ros_args
from d3_perception.ros.launch_config import NODE_NAME
from d3_perception.ros.node_params import NodeParameters
from d3_perception.ros.params import resolve_checkpoint
from d3_perception.ros.pipeline import Frame, wanted_outputs, warm_up_kernels
from d3_perception.ros.sparse_reference import stamp_s

__all__ = ["D3PerceptionNode", "main"]

_OUTPUT_TOPICS = {"depth": (Image, "depth"), "relative": (Image, "depth/relative"),
                  "camera_info": (CameraInfo, "depth/camera_info"), "colored": (Image, "depth/colored"),
                  "normals": (Image, "normals"), "normals_colored": (Image, "normals/colored"),
                  "points": (PointCloud2, "points"), "info": (PredictionInfo, "~/info"),
                  "confidence": (Image, "depth/confidence")}


class D3PerceptionNode(NodeParameters, LifecycleNode):
    """See the module docstring; topics and parameters in docs/node.md."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        self._cfg = self._read_config()
        self._overrides = self._declare_camera_parameters()
        self._cameras = CameraSet(self._cfg.cameras or ("",), self._cfg, self._warn, self._camera_configs())
        self._pipeline = next(iter(self._cameras.pipelines.values()))  # the first camera (the only one by default)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._backends: BackendChain | None = None
        self._configure_error = ""
        self._active = False
        self._active_since = time.monotonic()
        self._pubs: dict[str, dict[str, object]] = {}  # camera -> output name -> publisher
        self._subs: list = []
        self._input_group = MutuallyExclusiveCallbackGroup()  # cheap callbacks, serial: no races on stamps
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(self._cfg.diagnostics_period_s, self._publish_diagnostics,
                                             callback_group=MutuallyExclusiveCallbackGroup())
        # Once the context shuts down (Ctrl-C, SIGTERM) publishing is impossible: the worker stops at once
        # instead of reporting its failed publish as bad input.
        self.context.on_shutdown(self._stop.set)

    def _warn(self, camera: str, text: str) -> None:
        self.get_logger().warning(f"[{camera}] {text}" if camera else text)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self._cfg
        try:
            checkpoint = resolve_checkpoint(cfg.checkpoint, cfg.backend)
            create = functools.partial(create_backend, checkpoint=checkpoint, **cfg.backend_options())
            first = create(cfg.backend)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported, the node stays alive
            self._configure_error = f"cannot load model: {type(exc).__name__}: {exc}"
            self._pipeline.stats.bad("configure", self._configure_error)
            self.get_logger().error(self._configure_error)
            return TransitionCallbackReturn.FAILURE
        self._configure_error = ""
        warm_up_kernels()  # compiled now (or loaded from numba's cache), not on the first frame
        self._backends = BackendChain(first, fallback_names(first.info.name, cfg.fallback_backends),
                                      create, checkpoint, log=self._log_backend_error,
                                      on_switch=lambda active: self.get_logger().info(active.describe()))
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self._pubs = {cam: {name: self.create_publisher(cls, camera_topic(cam, topic), qos)
                            for name, (cls, topic) in _OUTPUT_TOPICS.items()} for cam in self._cameras.pipelines}
        # The loaded model is hundreds of thousands of long-lived objects; a full collection walking them held
        # the GIL for 90-180 ms (P5, 3 min: 7 such pauses). Frozen, they are left out of every collection.
        gc.collect()
        gc.freeze()
        return TransitionCallbackReturn.SUCCESS

    def _log_backend_error(self, text: str) -> None:
        if "no fallback backend is left" not in text or self._pipeline.throttle.should_log("no_fallback")[0]:
            self.get_logger().error(text)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg, g, topic = self._cfg, self._input_group, camera_topic
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=cfg.qos_depth,
                         reliability=ReliabilityPolicy.BEST_EFFORT if cfg.qos_reliability == "best_effort"
                         else ReliabilityPolicy.RELIABLE)
        compressed = cfg.input_transport == "compressed"
        self._subs = []
        for cam, pipe in self._cameras.pipelines.items():
            self._subs += [
                self.create_subscription(CompressedImage if compressed else Image,
                                         topic(cam, "image/compressed" if compressed else "image"),
                                         lambda msg, p=pipe: p.offer(msg, compressed, self._now_s()), qos,
                                         callback_group=g),
                self.create_subscription(CameraInfo, topic(cam, "camera_info"), pipe.on_camera_info, qos,
                                         callback_group=g),
                self.create_subscription(Image, topic(cam, "sparse_depth"), pipe.on_sparse, qos, callback_group=g),
            ]
        self._stop.clear()
        self._cameras.clear()
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

    on_shutdown = on_cleanup

    def _stop_pipeline(self) -> None:
        self._active = False
        self._stop.set()
        self._cameras.wake()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None
        self._cameras.close()
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []

    def _release(self) -> None:
        for pubs in self._pubs.values():
            for pub in pubs.values():
                self.destroy_publisher(pub)
        self._pubs = {}
        backends, self._backends = self._backends, None
        if backends is not None:
            backends.close()
        self._cameras.reset()
        gc.unfreeze()  # what the model left behind is collectable again

    # ------------------------------------------------------------------ worker
    def _now_s(self) -> float:
        return stamp_s(self.get_clock().now().to_msg())

    def _run_worker(self) -> None:
        while not self._stop.is_set():
            frames = self._cameras.gather(self._stop)
            if not frames or self._stop.is_set():
                continue
            try:
                self._process_frames(frames)
            except Exception as exc:  # noqa: BLE001 - the worker survives anything a frame can do
                if self._stop.is_set() or not self.context.ok():
                    return  # shutting down: the failed publish is no bad input
                for cam in frames:
                    self._cameras.pipelines[cam].bad("publish_error", f"{type(exc).__name__}: {exc}")

    def _process(self, frame: Frame) -> None:
        """One frame of the single camera (tests call this directly)."""
        self._process_frames({next(iter(self._cameras.pipelines)): frame})

    def _process_frames(self, frames: dict) -> None:
        """One worker step: every camera's frame through the model (one batch), then publishing."""
        backends = self._backends
        if backends is None:
            return
        wants = {cam: wanted_outputs(self._cameras.pipelines[cam].cfg,
                                     {k: p.get_subscription_count() for k, p in self._pubs[cam].items()})
                 for cam in frames}
        for cam, result in self._cameras.process(frames, wants, backends):
            pubs, pipe = self._pubs[cam], self._cameras.pipelines[cam]
            for name, msg in result.messages.items():
                if not self.context.ok():
                    return  # shutting down: nothing can be published any more
                pubs[name].publish(msg)
            latency_ms = pipe.finish(result, self._now_s())
            if result.want["info"]:
                pubs["info"].publish(prediction_info(result, latency_ms, pipe.cfg.metric.mode,
                                                     pipe.stats.frames_dropped))

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        try:
            self._diag_pub.publish(self._diagnostics())
        except Exception as exc:  # noqa: BLE001 - diagnostics must never stop the node
            if self.context.ok():
                self.get_logger().error(f"diagnostics failed: {exc}")

    def _diagnostics(self) -> DiagnosticArray:
        backends = self._backends
        backend = backends.backend if backends is not None else None
        state = NodeState(self.get_fully_qualified_name(), backend.info if backend is not None else None,
                          backends.switches if backends is not None else 0, self._configure_error,
                          self._active, self._active_since)
        snaps = {cam or "pipeline": (p.stats.snapshot(), p.cfg) for cam, p in self._cameras.pipelines.items()}
        return diagnostic_array(state, snaps, self._cfg, self.get_clock().now().to_msg())


def build_parser():
    return executable_parser(
        "d3_perception_node", "D3-Predictor ROS 2 node: image -> depth, normals, point cloud (lifecycle, autostart).",
        ["python -m d3_perception.ros.node --ros-args --params-file config/d3_perception.yaml",
         "ros2 run d3_perception d3_perception_node --ros-args -p checkpoint:=/models/d3 \\",
         "    -p metric.mode:=fixed -p metric.fixed_scale:=4.0 -r image:=/camera/color/image_raw",
         "parameters and topics: docs/node.md"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    ours, ros_args = split_ros_args(args)
    build_parser().parse_args(ours)  # --help prints and exits 0 here, before rclpy starts
    node = executor = None
    try:
        rclpy.init(args=["d3_perception_node", *ros_args])
        executor = MultiThreadedExecutor(num_threads=4)
        node = D3PerceptionNode()
        executor.add_node(node)
        if node._cfg.autostart and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        try:
            executor.spin()
        except Exception:  # noqa: BLE001 - re-raised below unless it is the requested shutdown
            # SIGTERM's handler shuts the context down from another thread; an executor building its wait set
            # at that moment fails with RCLError ("context is not valid"): that is the shutdown, not a failure
            if rclpy.ok():
                raise
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        ignore_further_signals()
        try:
            if node is not None:
                node._stop_pipeline()
                node._release()
                node.destroy_node()
            if executor is not None:
                executor.shutdown()
            rclpy.try_shutdown()
        except KeyboardInterrupt:  # a signal that arrived before the handlers above were replaced
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
