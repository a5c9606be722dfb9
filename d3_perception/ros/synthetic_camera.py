"""``synthetic_camera``: a ROS 2 camera driver for a procedural world with exact ground truth.

Publishes, all with the same header (stamp = node clock at publish time, ``frame_id`` parameter):

| topic | type | content |
|---|---|---|
| ``image`` | sensor_msgs/Image rgb8 | colour image (``image_format`` raw or both) |
| ``image/compressed`` | sensor_msgs/CompressedImage | JPEG (``image_format`` compressed or both) |
| ``camera_info`` | sensor_msgs/CameraInfo | pinhole K, plumb_bob with D = 0, P = [K|0] |
| ``depth`` | sensor_msgs/Image 32FC1 | ground-truth z-depth in metres, NaN where nothing is hit |
| ``normals`` | sensor_msgs/Image 32FC3 | ground-truth unit normals, optical frame, facing the camera |
| ``sparse_depth`` | sensor_msgs/Image 32FC1 m (NaN) or 16UC1 mm (0) | LiDAR-like noisy subset of depth |

Run: ``python -m d3_perception.ros.synthetic_camera --ros-args --params-file config/synthetic_camera.yaml``
(or the installed ``synthetic_camera`` executable). Parameters: ``config/synthetic_camera.yaml``.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

import cv2
import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from d3_perception.geometry.units import m_to_mm
from d3_perception.image_codec import encode_image
from d3_perception.ros.entry import ignore_further_signals
from d3_perception.synthetic.camera_config import CAMERA_PARAMETERS, SyntheticCameraConfig
from d3_perception.synthetic.render import Frame
from d3_perception.synthetic.sequence import SyntheticSequence
from d3_perception.synthetic.sparse import sparse_depth

__all__ = ["SyntheticCameraNode", "main", "publisher_qos"]


def _image(data: tuple[int, int, int, bytes], encoding: str, header: Header) -> Image:
    h, w, step, payload = data
    msg = Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=step)
    msg.data = payload
    return msg


def publisher_qos(name: str) -> QoSProfile:
    """The QoS of every topic the camera publishes, by its ``qos`` parameter: ``sensor_data`` (best effort,
    depth 5; the default) or ``reliable`` (depth 5). Subscribers that must receive from the camera (tests,
    tools) use this same profile: a RELIABLE subscription never matches the best-effort default."""
    if name == "sensor_data":
        return qos_profile_sensor_data
    if name == "reliable":
        return QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    raise ValueError(f"`qos` must be sensor_data or reliable; got {name!r}")


class _Encoded:
    """One rendered frame with its payloads encoded once (reused when frames loop)."""

    def __init__(self, frame: Frame, jpeg_quality: int) -> None:
        self.frame = frame
        self.rgb = encode_image(frame.rgb, "rgb8")
        self.depth = encode_image(frame.depth_m, "32FC1")
        self.normals = encode_image(frame.normals, "32FC3")
        self.jpeg_quality = jpeg_quality
        self._jpeg: bytes | None = None

    def jpeg(self, quality: int) -> bytes:
        if self._jpeg is None or quality != self.jpeg_quality:
            ok, buf = cv2.imencode(".jpg", self.frame.rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise RuntimeError("OpenCV failed to encode a JPEG")
            self._jpeg, self.jpeg_quality = buf.tobytes(), quality
        return self._jpeg


class SyntheticCameraNode(Node):
    """Renders :class:`SyntheticSequence` frames at ``rate_hz`` and publishes them with ground truth."""

    def __init__(self, **kwargs) -> None:
        super().__init__("synthetic_camera", **kwargs)
        self.cfg = self._declare_parameters()
        self.seq = SyntheticSequence(self.cfg.seed, self.cfg.size_hw, self.cfg.rate_hz, self.cfg.scene,
                                     hfov_deg=self.cfg.hfov_deg)
        self._rng = np.random.default_rng(self.cfg.seed + 1)
        self._index = 0
        self._published = 0
        self._slow_warned_at = 0.0
        self.done = False
        qos = publisher_qos(self.cfg.qos)
        fmt = self.cfg.image_format
        self.pub_image = self.create_publisher(Image, "image", qos) if fmt in ("raw", "both") else None
        self.pub_compressed = (self.create_publisher(CompressedImage, "image/compressed", qos)
                               if fmt in ("compressed", "both") else None)
        self.pub_info = self.create_publisher(CameraInfo, "camera_info", qos)
        self.pub_depth = self.create_publisher(Image, "depth", qos)
        self.pub_normals = self.create_publisher(Image, "normals", qos)
        self.pub_sparse = self.create_publisher(Image, "sparse_depth", qos)
        self._loop: list[_Encoded] = []
        if self.cfg.loop_frames > 0:
            self._prerender(self.cfg.loop_frames)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.timer = self.create_timer(1.0 / self.cfg.rate_hz, self._tick)
        self.get_logger().info(
            f"synthetic camera: scene={self.cfg.scene} seed={self.cfg.seed} {self.cfg.width}x{self.cfg.height} "
            f"@ {self.cfg.rate_hz:g} Hz, frame_id={self.cfg.frame_id}, qos={self.cfg.qos}, "
            f"image_format={fmt}, sparse_depth={self.cfg.sparse_pattern}/{self.cfg.sparse_encoding}, "
            f"{'looping ' + str(len(self._loop)) + ' pre-rendered frames' if self._loop else 'live rendering'}")

    # ------------------------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> SyntheticCameraConfig:
        values = {}
        for spec in CAMERA_PARAMETERS:
            desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
            if spec.choices:
                desc.additional_constraints = "one of: " + ", ".join(spec.choices)
            if spec.min is not None and isinstance(spec.default, float):
                desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max))]
            elif spec.min is not None and isinstance(spec.default, int) and not isinstance(spec.default, bool):
                desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=1)]
            values[spec.name] = self.declare_parameter(spec.name, spec.default, desc).value
        return SyntheticCameraConfig.from_values(values)

    def _on_set_parameters(self, params) -> SetParametersResult:
        try:
            self.cfg = self.cfg.with_values({p.name: p.value for p in params})
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------------ frames
    def _prerender(self, n: int) -> None:
        t0 = time.perf_counter()
        self._loop = [_Encoded(self.seq.frame(i), self.cfg.jpeg_quality) for i in range(n)]
        self.get_logger().info(f"pre-rendered {n} frames in {time.perf_counter() - t0:.1f} s")

    def _next(self) -> _Encoded:
        if self._loop:
            enc = self._loop[self._index % len(self._loop)]
        else:
            t0 = time.perf_counter()
            enc = _Encoded(self.seq.frame(self._index), self.cfg.jpeg_quality)
            render_s = time.perf_counter() - t0
            now = time.monotonic()
            if render_s > 1.0 / self.cfg.rate_hz and now - self._slow_warned_at > 10.0:
                self._slow_warned_at = now
                self.get_logger().warning(
                    f"rendering takes {render_s * 1e3:.0f} ms > the {1e3 / self.cfg.rate_hz:.0f} ms period; "
                    "the rate will drop (lower width/height or set loop_frames)")
        self._index += 1
        return enc

    def _camera_info(self, header: Header) -> CameraInfo:
        K = self.seq.K
        P = np.zeros((3, 4))
        P[:, :3] = K
        return CameraInfo(header=header, height=self.cfg.height, width=self.cfg.width, distortion_model="plumb_bob",
                          d=[0.0] * 5, k=K.ravel().tolist(), r=np.eye(3).ravel().tolist(), p=P.ravel().tolist())

    def _sparse(self, depth_m: np.ndarray, header: Header) -> Image:
        c = self.cfg
        sparse = sparse_depth(depth_m, self._rng, pattern=c.sparse_pattern, rows=c.sparse_rows,
                              fraction=c.sparse_fraction, noise_std_m=c.sparse_noise_std_m,
                              noise_rel=c.sparse_noise_rel, dropout=c.sparse_dropout,
                              max_range_m=c.sparse_max_range_m)
        if c.sparse_encoding == "16UC1":
            return _image(encode_image(m_to_mm(sparse), "16UC1"), "16UC1", header)
        return _image(encode_image(sparse, "32FC1"), "32FC1", header)

    def _tick(self) -> None:
        if self.done or not self.context.ok():  # shutting down (Ctrl-C / SIGTERM): publish nothing more
            return
        try:
            enc = self._next()
            header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.cfg.frame_id)
            c = self.cfg
            # camera_info and the reference/ground truth first, the image last: a latest-frame consumer that
            # pairs the newest image with the newest sparse_depth/camera_info then finds the matching ones
            self.pub_info.publish(self._camera_info(header))
            if c.publish_sparse_depth:
                self.pub_sparse.publish(self._sparse(enc.frame.depth_m, header))
            if c.publish_depth:
                self.pub_depth.publish(_image(enc.depth, "32FC1", header))
            if c.publish_normals:
                self.pub_normals.publish(_image(enc.normals, "32FC3", header))
            if self.pub_compressed is not None:
                msg = CompressedImage(header=header, format="rgb8; jpeg compressed bgr8")
                msg.data = enc.jpeg(c.jpeg_quality)
                self.pub_compressed.publish(msg)
            if self.pub_image is not None:
                self.pub_image.publish(_image(enc.rgb, "rgb8", header))
        except Exception as exc:  # noqa: BLE001 - a driver keeps running; the reason is logged
            if not self.context.ok():
                return
            self.get_logger().error(f"frame {self._index} failed: {type(exc).__name__}: {exc}",
                                    throttle_duration_sec=5.0)
            return
        self._published += 1
        if c.num_frames and self._published >= c.num_frames:
            self.get_logger().info(f"published {self._published} frames (num_frames); exiting")
            self.done = True


HELP_EPILOG = """examples:
  python -m d3_perception.ros.synthetic_camera --ros-args --params-file config/synthetic_camera.yaml
  python -m d3_perception.ros.synthetic_camera --ros-args -r __ns:=/camera -p width:=640 -p height:=480 \\
      -p scene:=outdoor -p rate_hz:=15.0

Stops cleanly (exit 0) on SIGINT or SIGTERM, however many arrive.
"""


def _help_text() -> str:
    lines = [__doc__.split("\n\n")[0].replace("``", ""), "", "parameters (-p NAME:=VALUE after --ros-args; defaults in brackets):"]
    for p in CAMERA_PARAMETERS:
        lines.append(f"  {p.name:<22} {p.description} [{p.default}]")
    return "\n".join(lines)


def _parse_cli(args: list[str]) -> None:
    """The non-ROS arguments: only ``--help``; anything else is a one-line error (exit 2)."""
    import argparse

    from rclpy.utilities import remove_ros_args

    from d3_perception.cli_args import OneLineErrorParser

    parser = OneLineErrorParser(prog="synthetic_camera", description=_help_text(), epilog=HELP_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(remove_ros_args(args)[1:])


class _StopSignals:
    """SIGINT/SIGTERM -> a stop flag, for the whole life of the process.

    rclpy's own handlers are not used: after shutdown they restore the inherited disposition, so a second
    SIGINT (launch sends one more when it has no terminal) killed the process mid-cleanup (exit -2). Setting
    our handler also undoes a SIGINT inherited as ignored (a job started in the background by a shell), so
    the camera still stops on SIGINT there.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)

    @property
    def stop(self) -> bool:
        return bool(self.received)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``synthetic_camera`` executable; ``argv`` without the program name."""
    args = sys.argv if argv is None else [sys.argv[0], *argv]
    _parse_cli(args)  # --help prints and exits 0 before any ROS work
    from rclpy.signals import SignalHandlerOptions

    signals = _StopSignals() if threading.current_thread() is threading.main_thread() else None
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO if signals else SignalHandlerOptions.ALL)
    node = None
    try:
        try:
            node = SyntheticCameraNode()
        except (ValueError, ParameterException) as exc:  # bad parameter value: one clear line, non-zero exit
            print(f"synthetic_camera: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and not node.done and not (signals and signals.stop):
            executor.spin_once(timeout_sec=0.1)
        if node is not None:
            node.done = True  # _tick publishes nothing more
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if signals is not None:
            ignore_further_signals()  # shutting down: more signals must not interrupt the cleanup or exit
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
