"""Shared helpers of the node tests: start d3_perception_node as a subprocess, and a test client node.

The node runs in its own process (started through ``launch_config.node_command``, the same mapping as
camera.launch.py) with the test's ROS environment; the client lives in the test process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from d3_perception.ros.launch_config import node_command

HERE = Path(__file__).resolve().parent


def start_node(ros_env: dict, tmp_path: Path, params: dict, namespace: str = "d3test",
               extra_env: dict | None = None, **kwargs) -> subprocess.Popen:
    spec = node_command(namespace=namespace, extra_params=params, base_env=ros_env, **kwargs)
    env = dict(ros_env)
    env.update(spec.env)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env.update(extra_env or {})
    log = open(tmp_path / f"node_{namespace}.log", "w")  # noqa: SIM115 - closed by stop_node
    proc = subprocess.Popen(spec.cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=default_signal_dispositions)
    proc._d3_log = log  # type: ignore[attr-defined]
    proc._d3_log_path = tmp_path / f"node_{namespace}.log"  # type: ignore[attr-defined]
    return proc


def default_signal_dispositions() -> None:
    """In a child before exec: SIGINT/SIGTERM back to their defaults. A suite run as a background job has
    SIGINT ignored, and an ignored disposition is inherited: the node would then never see a Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def node_log(proc) -> str:
    return Path(proc._d3_log_path).read_text()


def stop_node(proc: subprocess.Popen, timeout_s: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(2)  # SIGINT, like Ctrl-C
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc._d3_log.close()  # type: ignore[attr-defined]
    return proc.returncode


def make_rgb(h: int, w: int, rel: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """``[H,W,3]`` uint8 test image whose red channel is the fake model's relative depth * 255."""
    rng = np.random.default_rng(seed)
    img = rng.integers(20, 235, size=(h, w, 3), dtype=np.uint8)
    if rel is None:
        yy = np.linspace(0.2, 0.8, h, dtype=np.float32)[:, None]
        rel = np.broadcast_to(yy, (h, w))
    img[..., 0] = np.round(np.clip(rel, 0, 1) * 255).astype(np.uint8)
    img[0, 0, 1] = 0  # not the "fail" marker of fake_backends
    return img


class Client:
    """Publisher of camera input and collector of every node output, keyed by stamp."""

    OUTPUTS = {
        "depth": "sensor_msgs/Image", "depth/relative": "sensor_msgs/Image",
        "depth/camera_info": "sensor_msgs/CameraInfo", "depth/colored": "sensor_msgs/Image",
        "normals": "sensor_msgs/Image", "normals/colored": "sensor_msgs/Image",
        "points": "sensor_msgs/PointCloud2", "d3_perception_node/info": "d3_perception/PredictionInfo",
        "depth/confidence": "sensor_msgs/Image",
    }
    CAMERA_OUTPUTS = {"info": "d3_perception/PredictionInfo"}  # a camera's info with the `cameras` parameter

    def __init__(self, context, namespace: str = "d3test", outputs=None, reliable_input: bool = False,
                 diag_label: str = "pipeline"):
        import rclpy
        from d3_perception.msg import PredictionInfo
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

        self.ns = "/" + namespace.strip("/")
        self.diag_label = diag_label  # the node's status "<node>: <label>" (a camera name with `cameras`)
        self.node = rclpy.create_node("d3_test_client", context=context)
        in_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE if reliable_input
                            else ReliabilityPolicy.BEST_EFFORT)
        self.pub_image = self.node.create_publisher(Image, f"{self.ns}/image", in_qos)
        self.pub_compressed = self.node.create_publisher(CompressedImage, f"{self.ns}/image/compressed", in_qos)
        self.pub_info = self.node.create_publisher(CameraInfo, f"{self.ns}/camera_info", in_qos)
        self.pub_sparse = self.node.create_publisher(Image, f"{self.ns}/sparse_depth", in_qos)
        types = {"sensor_msgs/Image": Image, "sensor_msgs/CameraInfo": CameraInfo,
                 "sensor_msgs/PointCloud2": PointCloud2, "d3_perception/PredictionInfo": PredictionInfo}
        self.lock = threading.Lock()
        self.received: dict[str, list] = {}
        self.receive_times: dict[str, list] = {}
        for topic in (outputs or self.OUTPUTS):
            self.received[topic] = []
            self.receive_times[topic] = []
            self.node.create_subscription(types[{**self.OUTPUTS, **self.CAMERA_OUTPUTS}[topic]], f"{self.ns}/{topic}",
                                          self._collector(topic), QoSProfile(depth=50))
        self.diagnostics: list = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._spin = True
        self._thread = threading.Thread(target=self._spin_loop, daemon=True)
        self._thread.start()

    def _spin_loop(self):
        while self._spin:
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - context shut down at teardown
                return

    def _collector(self, topic):
        def cb(msg):
            with self.lock:
                self.received[topic].append(msg)
                self.receive_times[topic].append(time.monotonic())
        return cb

    def _on_diag(self, msg):
        with self.lock:
            self.diagnostics.append(msg)

    def close(self):
        self._spin = False
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()

    # --- helpers
    def header(self, stamp_s: float, frame_id: str = "cam_optical_frame"):
        from std_msgs.msg import Header

        h = Header()
        h.stamp.sec = int(stamp_s)
        h.stamp.nanosec = int(round((stamp_s - int(stamp_s)) * 1e9))
        h.frame_id = frame_id
        return h

    def camera_info(self, h: int, w: int, stamp_s: float, f: float | None = None, k=None, frame_id="cam_optical_frame"):
        from sensor_msgs.msg import CameraInfo

        info = CameraInfo()
        info.header = self.header(stamp_s, frame_id)
        info.height, info.width = h, w
        f = f if f is not None else 0.8 * w
        info.k = list(k) if k is not None else [f, 0.0, (w - 1) / 2, 0.0, f, (h - 1) / 2, 0.0, 0.0, 1.0]
        info.p = [info.k[0], 0.0, info.k[2], 0.0, 0.0, info.k[4], info.k[5], 0.0, 0.0, 0.0, 1.0, 0.0]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.distortion_model = "plumb_bob"
        info.d = [0.0] * 5
        return info

    def image_msg(self, array, encoding, stamp_s, frame_id="cam_optical_frame"):
        from d3_perception.ros.conversions import numpy_to_msg

        return numpy_to_msg(array, encoding, self.header(stamp_s, frame_id))

    def wait_for_subscribers(self, timeout_s: float = 20.0, topic_pub=None) -> bool:
        pub = topic_pub or self.pub_image
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if pub.get_subscription_count() > 0:
                return True
            time.sleep(0.05)
        return False

    def count(self, topic: str) -> int:
        with self.lock:
            return len(self.received[topic])

    def wait_for(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def by_stamp(self, topic: str, stamp_s: float):
        with self.lock:
            for m in self.received[topic]:
                if abs(m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec - stamp_s) < 1e-6:
                    return m
        return None

    def wait_stamp(self, topic: str, stamp_s: float, timeout_s: float):
        ok = self.wait_for(lambda: self.by_stamp(topic, stamp_s) is not None, timeout_s)
        return self.by_stamp(topic, stamp_s) if ok else None

    def latest_diag(self, after_s: float | None = None):
        """Key/values and level of the node's newest diagnostics status (received after ``after_s``)."""
        with self.lock:
            arrays = list(self.diagnostics)
        for arr in reversed(arrays):
            t = arr.header.stamp.sec + 1e-9 * arr.header.stamp.nanosec
            if after_s is not None and t < after_s:
                continue
            for st in arr.status:
                if st.name.endswith(f"d3_perception_node: {self.diag_label}"):
                    level = st.level[0] if isinstance(st.level, bytes) else int(st.level)
                    return level, st.message, {kv.key: kv.value for kv in st.values}
        return None

    def wait_diag(self, predicate, timeout_s: float):
        """Wait until the newest diagnostics satisfy ``predicate(level, message, values)``."""
        result = [None]

        def check():
            d = self.latest_diag()
            if d is not None and predicate(*d):
                result[0] = d
                return True
            return False

        self.wait_for(check, timeout_s)
        return result[0] if result[0] is not None else self.latest_diag()

    # lifecycle and parameters
    def lifecycle(self, transition: str, timeout_s: float = 30.0) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        ids = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP}
        client = self.node.create_client(ChangeState, f"{self.ns}/d3_perception_node/change_state")
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise TimeoutError("change_state service not available")
            req = ChangeState.Request()
            req.transition.id = ids[transition]
            fut = client.call_async(req)
            if not self.wait_for(fut.done, timeout_s):
                raise TimeoutError(f"{transition} did not answer within {timeout_s} s")
            return bool(fut.result().success)
        finally:
            self.node.destroy_client(client)

    def lifecycle_state(self, timeout_s: float = 10.0) -> str:
        from lifecycle_msgs.srv import GetState

        client = self.node.create_client(GetState, f"{self.ns}/d3_perception_node/get_state")
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise TimeoutError("get_state service not available")
            fut = client.call_async(GetState.Request())
            self.wait_for(fut.done, timeout_s)
            return fut.result().current_state.label
        finally:
            self.node.destroy_client(client)

    def set_param(self, name: str, value, timeout_s: float = 10.0):
        """(successful, reason) of setting one parameter on the node."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        client = self.node.create_client(SetParameters, f"{self.ns}/d3_perception_node/set_parameters")
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise TimeoutError("set_parameters service not available")
            req = SetParameters.Request()
            req.parameters = [Parameter(name, value=value).to_parameter_msg()]
            fut = client.call_async(req)
            self.wait_for(fut.done, timeout_s)
            r = fut.result().results[0]
            return r.successful, r.reason
        finally:
            self.node.destroy_client(client)
