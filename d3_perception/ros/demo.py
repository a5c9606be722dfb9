"""``d3-demo``: synthetic camera -> d3_perception_node -> montage, point cloud, metrics, latency report.

Starts two real ROS 2 processes (``synthetic_camera`` in namespace ``/camera``, ``d3_perception_node`` in
``/d3`` through :func:`d3_perception.ros.launch_config.node_command`), subscribes to their outputs here,
compares every prediction with the camera's exact ground truth and writes ``--output``. Needs nothing
sourced: discovery is limited to this machine, the domain is private, logs go under the output folder.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np

from d3_perception.backends import BACKENDS
from d3_perception.cli_args import OneLineErrorParser, image_size, positive_float, run_cli
from d3_perception.ros.launch_config import LaunchArgument
from d3_perception.synthetic.scene import SCENE_KINDS

__all__ = ["DEMO_LAUNCH_ARGUMENTS", "DemoArgument", "demo_specs", "main"]

EPILOG = """\
examples:
  d3-demo                                   # 30 s, room scene, bundled demo model (or a tiny random one)
  d3-demo --duration 10 --size 256x192 --rate-hz 5 --output /tmp/demo
  d3-demo --scene outdoor --seed 3 --metric-mode sparse_depth --checkpoint /models/d3_depth_normals
  d3-demo --domain-id 42                    # a fixed ROS_DOMAIN_ID (refused if other nodes use it)

writes (under --output, default outputs/demo):
  montage.png   RGB | predicted depth | GT depth | predicted normals | GT normals | AbsRel error
  cloud.ply     coloured point cloud with normals (metric depth if available, else GT-aligned)
  metrics.json  AbsRel, delta1 (scale+shift aligned), normal angle, latency p50/p95, frames processed/dropped
  report.md     the same as a readable report;  logs/  the two processes' output and ROS logs
"""

STARTUP_TIMEOUT_S = 300.0
_LOCK_DIR = Path(tempfile.gettempdir()) / "d3_perception_ros_domains"  # shared with the test harness


class DemoError(RuntimeError):
    """A reason to stop the demo, printed as one line."""


# ------------------------------------------------------------------------------------------ arguments
def _domain(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 101]; got {text!r}") from None
    if not 0 <= value <= 101:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 101]; got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="d3-demo", description="Run the synthetic camera and the real d3_perception_node, compare the "
        "predictions with exact ground truth, and write a montage, a point cloud, metrics and a report.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=positive_float, default=30.0,
                   help="seconds of measurement after the first prediction arrives (default 30)")
    p.add_argument("--output", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    p.add_argument("--domain-id", type=_domain, default=None, help="ROS_DOMAIN_ID (default: a free one)")
    p.add_argument("--checkpoint", default="", help="checkpoint directory (default: models/d3_demo_tiny if "
                   "bundled, else a tiny random-weight model)")
    p.add_argument("--backend", default="auto", help="inference backend: auto | onnxruntime | torch (default auto)")
    p.add_argument("--size", type=image_size(16, 2048), default=(240, 320), metavar="WxH", help="camera resolution (default 320x240)")
    p.add_argument("--rate-hz", type=positive_float, default=5.0, help="camera rate (default 5)")
    p.add_argument("--scene", choices=SCENE_KINDS, default="room",
                   help="synthetic scene kind (default room; world = the wide training world, shift = its held-out family)")
    p.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    p.add_argument("--metric-mode", choices=("sparse_depth", "depth_range", "none"), default="sparse_depth",
                   help="node metric depth mode (default sparse_depth: fit to the camera's LiDAR-like depth)")
    p.add_argument("--startup-timeout", type=positive_float, default=STARTUP_TIMEOUT_S,
                   help=f"seconds to wait for the first prediction (default {STARTUP_TIMEOUT_S:g})")
    return p


# ------------------------------------------------------------------------------------------ processes
class _Children:
    """Processes started by the demo, each in its own process group; stopped INT -> TERM -> KILL."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        with open(self.log_dir / f"{name}.log", "w") as log:
            self.procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)

    def last_line(self, name: str) -> str:
        try:
            lines = [ln for ln in (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines() if ln]
        except OSError:
            return "(no output)"
        return lines[-1][:300] if lines else "(no output yet)"

    def check(self) -> None:
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                last = self.last_line(name)
                raise DemoError(f"{name} exited with code {code}: {last} (full log: {self.log_dir / (name + '.log')})")

    def stop_all(self) -> None:
        for sig, wait_s in ((signal.SIGINT, 8.0), (signal.SIGTERM, 4.0), (signal.SIGKILL, 4.0)):
            alive = [p for p in self.procs.values() if p.poll() is None]
            if not alive:
                return
            for proc in alive:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            for proc in alive:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass


class _DomainLease:
    """A ROS_DOMAIN_ID held with an flock (the same lock files as the test harness) until released."""

    def __init__(self, domain: int) -> None:
        _LOCK_DIR.mkdir(exist_ok=True)
        self.domain = domain
        self._fd = os.open(_LOCK_DIR / f"{domain}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise

    def release(self) -> None:
        os.close(self._fd)


def _ros_env(domain: int, ros_log_dir: Path) -> dict[str, str]:
    from d3_perception.ros.launch_config import package_share_dir

    profile = package_share_dir() / "config" / "fastdds_shm.xml"
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": str(domain), "ROS_LOG_DIR": str(ros_log_dir),
           "RCUTILS_LOGGING_BUFFERED_STREAM": "0", "PYTHONUNBUFFERED": "1"}
    if profile.is_file():
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    return env


DemoArgument = LaunchArgument  # one type for the arguments of both launch files


DEMO_LAUNCH_ARGUMENTS: tuple[DemoArgument, ...] = (
    DemoArgument("namespace", "", "empty: camera in /camera, node in /d3; NS: node in /NS, camera in /NS/camera"),
    DemoArgument("checkpoint", "", "checkpoint directory; empty = bundled models/d3_demo_tiny (else the "
                 "node's default)"),
    DemoArgument("backend", "auto", "inference backend", BACKENDS),
    DemoArgument("scene", "room", "synthetic scene kind (world: the wide world; shift: its held-out family)", SCENE_KINDS),
    DemoArgument("seed", "0", "scene seed"),
    DemoArgument("width", "320", "camera width in pixels"),
    DemoArgument("height", "240", "camera height in pixels"),
    DemoArgument("rate_hz", "5.0", "camera rate"),
    DemoArgument("metric_mode", "sparse_depth", "node metric depth mode", ("sparse_depth", "depth_range", "none")),
    DemoArgument("rviz", "false", "also start rviz2 with launch/d3_perception.rviz", ("true", "false")),
)


def demo_specs(checkpoint: str = "", backend: str = "auto", scene: str = "room", seed: int | str = 0,
               width: int | str = 320, height: int | str = 240, rate_hz: float | str = 5.0,
               metric_mode: str = "sparse_depth", namespace: str = "", *, python: str | None = None,
               base_env: dict | None = None):
    """(camera, node) :class:`~d3_perception.ros.launch_config.NodeLaunchSpec` of the demo pipeline.

    With an empty ``namespace`` the camera runs as ``/camera/synthetic_camera`` (topics ``/camera/image``,
    ``camera_info``, ``depth``, ``normals``, ``sparse_depth``) and the node as ``/d3/d3_perception_node``
    reading them; with ``namespace`` NS the node runs in ``/NS`` and the camera in ``/NS/camera``. Used by
    ``d3-demo`` and ``launch/demo.launch.py``. Raises ``ValueError`` naming a bad argument.
    """
    from d3_perception.ros.launch_config import NodeLaunchSpec, node_command, package_share_dir
    from d3_perception.synthetic.camera_config import SyntheticCameraConfig

    try:
        cam_cfg = SyntheticCameraConfig(scene=scene, seed=int(seed), width=int(width), height=int(height),
                                        rate_hz=float(rate_hz))
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    if metric_mode not in ("sparse_depth", "depth_range", "none"):
        raise ValueError(f"`metric_mode` must be sparse_depth, depth_range or none; got {metric_mode!r}")
    ns = namespace.strip().strip("/")
    if ns and not all(t and (t[0].isalpha() or t[0] == "_") and t.replace("_", "a").isalnum() for t in ns.split("/")):
        raise ValueError(f"`namespace` must be a ROS namespace such as `demo`; got {namespace!r}")
    cam_ns, node_ns = (f"/{ns}/camera", ns) if ns else ("/camera", "d3")
    cam_yaml = package_share_dir() / "config" / "synthetic_camera.yaml"
    cam_params = {"width": cam_cfg.width, "height": cam_cfg.height, "rate_hz": cam_cfg.rate_hz,
                  "scene": cam_cfg.scene, "seed": cam_cfg.seed, "frame_id": cam_cfg.frame_id}
    ros_args = ["--ros-args", "-r", f"__ns:={cam_ns}"]
    if cam_yaml.is_file():
        ros_args += ["--params-file", str(cam_yaml)]
    for key, value in cam_params.items():
        ros_args += ["-p", f"{key}:={value}"]
    camera = NodeLaunchSpec(cmd=[python or sys.executable, "-m", "d3_perception.ros.synthetic_camera", *ros_args],
                            params=cam_params, remaps=[], env={}, name="synthetic_camera", namespace=cam_ns,
                            params_file=str(cam_yaml) if cam_yaml.is_file() else None,
                            executable="synthetic_camera", arguments=ros_args)
    node = node_command(namespace=node_ns, checkpoint=checkpoint or None, backend=backend, image=f"{cam_ns}/image",
                        camera_info=f"{cam_ns}/camera_info", python=python, base_env=base_env,
                        extra_params={"metric.mode": metric_mode})
    # node_command has no sparse_depth argument: the reference input is remapped here
    extra = ["-r", f"sparse_depth:={cam_ns}/sparse_depth"]
    node = replace(node, cmd=[*node.cmd, *extra], arguments=[*node.arguments, *extra],
                   remaps=[*node.remaps, ("sparse_depth", f"{cam_ns}/sparse_depth")])
    return camera, node


# ------------------------------------------------------------------------------------------ collector
class _Collector:
    """In-process subscriber: ground truth and predictions keyed by header stamp, evaluated on arrival."""

    def __init__(self, context, accumulator, metric: bool) -> None:
        import rclpy
        from d3_perception.msg import PredictionInfo
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        self.node = rclpy.create_node("d3_demo_probe", context=context)
        self.acc = accumulator
        self.metric = metric
        self.measuring = False
        self.gt: OrderedDict[int, dict] = OrderedDict()  # stamp -> {"image", "depth", "normals"} messages
        self.pred: OrderedDict[int, dict] = OrderedDict()  # stamp -> {"relative", "normals", "depth", "t_ns"}
        self.camera_stamps: set[int] = set()
        self.pred_stamps: set[int] = set()
        self.first_prediction_ns: int | None = None
        self.info = None
        self.clouds = 0
        self.K = None
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
        sub = self.node.create_subscription
        sub(Image, "/camera/image", lambda m: self._gt(m, "image"), qos)
        sub(Image, "/camera/depth", lambda m: self._gt(m, "depth"), qos)
        sub(Image, "/camera/normals", lambda m: self._gt(m, "normals"), qos)
        sub(CameraInfo, "/camera/camera_info", self._info_cb, qos)
        sub(Image, "/d3/depth/relative", lambda m: self._pred(m, "relative"), qos)
        sub(Image, "/d3/normals", lambda m: self._pred(m, "normals"), qos)
        if metric:
            sub(Image, "/d3/depth", lambda m: self._pred(m, "depth"), qos)
        sub(PointCloud2, "/d3/points", self._cloud_cb, qos)
        sub(PredictionInfo, "/d3/d3_perception_node/info", self._pred_info_cb, qos)

    @staticmethod
    def _stamp(msg) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def _info_cb(self, msg) -> None:
        self.K = np.asarray(msg.k, np.float64).reshape(3, 3)

    def _cloud_cb(self, msg) -> None:
        if self.measuring:
            self.clouds += 1

    def _pred_info_cb(self, msg) -> None:
        self.info = msg

    def _gt(self, msg, key: str) -> None:
        stamp = self._stamp(msg)
        if key == "image" and self.measuring:
            self.camera_stamps.add(stamp)
        self.gt.setdefault(stamp, {})[key] = msg
        while len(self.gt) > 60:  # bounded: the node is at most a few frames behind
            self.gt.popitem(last=False)
        self._try(stamp)

    def _pred(self, msg, key: str) -> None:
        now_ns = time.time_ns()
        stamp = self._stamp(msg)
        entry = self.pred.setdefault(stamp, {"t_ns": now_ns})
        entry[key] = msg
        if self.first_prediction_ns is None:
            self.first_prediction_ns = now_ns
        while len(self.pred) > 60:
            self.pred.popitem(last=False)
        self._try(stamp)
        for older in [s for s in self.pred if s < stamp]:  # metric depth may never come for older frames
            self._try(older, final=True)

    def _try(self, stamp: int, final: bool = False) -> None:
        """Evaluate a stamp once ground truth and the predictions are in (metric depth: if it comes)."""
        from d3_perception.ros.conversions import msg_to_numpy

        gt, pred = self.gt.get(stamp), self.pred.get(stamp)
        want = {"relative", "normals"} | ({"depth"} if self.metric and not final else set())
        if not gt or not pred or len(gt) < 3 or not want <= set(pred) or self.K is None:
            return
        del self.gt[stamp], self.pred[stamp]
        if not self.measuring:
            return
        self.pred_stamps.add(stamp)
        # Its image may have arrived just before measuring started; a processed frame was published all the same.
        self.camera_stamps.add(stamp)
        try:
            self.acc.add(
                stamp, msg_to_numpy(gt["image"]), msg_to_numpy(gt["depth"]), msg_to_numpy(gt["normals"]), self.K,
                msg_to_numpy(pred["relative"]), msg_to_numpy(pred["normals"]),
                msg_to_numpy(pred["depth"]) if "depth" in pred else None,
                latency_ms=(pred["t_ns"] - stamp) / 1e6)
        except ValueError as exc:  # a malformed output is reported, never fatal
            self.node.get_logger().warning(f"frame {stamp} not evaluated: {exc}", throttle_duration_sec=5.0)


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    previous_int = None
    if _main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # Started as a background job (`d3-demo ... &` in a script): the shell made SIGINT ignored, which
        # every child would inherit too; the demo is stopped with SIGINT like any ROS program, so undo that.
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_cli("d3-demo", lambda: _run(args), (DemoError,),
                       interrupted="interrupted; stopped everything it started", error_code=1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _resolve_checkpoint(args, out: Path) -> tuple[str, str, bool]:
    """(checkpoint dir, description, is_random)."""
    from d3_perception.cli_args import bundled_demo_checkpoint

    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        if not (ckpt / "config.json").is_file():
            raise DemoError(f"`--checkpoint` must be a checkpoint directory with config.json; got {args.checkpoint!r}")
        return str(ckpt), f"checkpoint {ckpt}", False
    bundled = bundled_demo_checkpoint()
    if bundled is not None:
        return str(bundled), f"bundled demo model {bundled}", False
    ckpt = out / "random_tiny_checkpoint"  # built by _build_random_checkpoint once the domain is leased
    return str(ckpt), "a tiny RANDOM-weight model (no trained demo model is bundled): the numbers are meaningless", True


def _build_random_checkpoint(ckpt: str) -> None:
    from d3_perception.model.checkpoint import build_random_checkpoint

    if not (Path(ckpt) / "config.json").is_file():
        build_random_checkpoint(ckpt, preset="tiny", tasks=("depth", "normals"), seed=0)


def _lease_domain(requested: int | None, exclude: set[int]) -> _DomainLease:
    if requested is not None:
        try:
            return _DomainLease(requested)
        except OSError:
            raise DemoError(f"ROS_DOMAIN_ID {requested} is busy (held by another d3-demo or test run); "
                            "pick another with --domain-id or leave it out to use a free one") from None
    start = 1 + os.getpid() % 100
    for k in range(101):
        domain = 1 + (start + k) % 101
        if domain in exclude:
            continue
        try:
            return _DomainLease(domain)
        except OSError:
            continue
    raise DemoError("no free ROS_DOMAIN_ID in 1..101 (all held by other d3-demo or test runs)")


def _other_nodes(node, wait_s: float = 1.5) -> list[str]:
    """Names of nodes already on this domain (discovery takes a moment)."""
    deadline = time.monotonic() + wait_s
    names: set[str] = set()
    while time.monotonic() < deadline:
        time.sleep(0.1)  # discovery runs in the middleware's threads; nothing to spin
        for name, ns in node.get_node_names_and_namespaces():
            if name != node.get_name():
                names.add(ns.rstrip("/") + "/" + name)
    return sorted(names)


def _run(args) -> int:
    if args.seed < 0:
        raise DemoError(f"`--seed` must be >= 0; got {args.seed}")
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    log_dir = out / "logs"
    log_dir.mkdir(exist_ok=True)
    ckpt, model_desc, random_model = _resolve_checkpoint(args, out)

    busy: set[int] = set()
    for attempt in range(20):
        lease = _lease_domain(args.domain_id, busy)
        env_ros = _ros_env(lease.domain, log_dir / "ros")
        os.environ.update(env_ros)  # rclpy in this process reads them at init
        import rclpy
        from rclpy.context import Context

        context = Context()
        rclpy.init(context=context, domain_id=lease.domain)
        probe = rclpy.create_node("d3_demo_domain_check", context=context)
        others = _other_nodes(probe)
        probe.destroy_node()
        if not others:
            break
        rclpy.shutdown(context=context)
        lease.release()
        busy.add(lease.domain)
        if args.domain_id is not None:
            raise DemoError(f"ROS_DOMAIN_ID {args.domain_id} is busy: {', '.join(others[:5])} already run there; "
                            "pick another with --domain-id or leave it out to use a free one")
        if attempt == 19:
            raise DemoError("could not find a ROS_DOMAIN_ID without other nodes on it")

    children = _Children(log_dir)
    collector = None
    try:
        if random_model:
            _build_random_checkpoint(ckpt)
        collector, executor, acc = _start(args, ckpt, context, children, env_ros)
        summary = _measure(args, collector, executor, children)
    finally:
        children.stop_all()
        if collector is not None:
            collector.node.destroy_node()
        if context.ok():
            rclpy.shutdown(context=context)
        lease.release()
    return _write_outputs(args, out, acc, collector, summary, model_desc, random_model, lease.domain)


def _start(args, ckpt: str, context, children: _Children, env_ros: dict[str, str]):
    from rclpy.executors import SingleThreadedExecutor

    import d3_perception
    from d3_perception.evaluation.demo_outputs import DemoAccumulator

    env = dict(os.environ)
    env.update(env_ros)
    src_root = str(Path(d3_perception.__file__).resolve().parents[1])  # children import this same code
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH", "")) if p)
    h, w = args.size
    try:
        camera, node = demo_specs(ckpt, args.backend, args.scene, args.seed, w, h, args.rate_hz, args.metric_mode,
                                  base_env=env)
    except ValueError as exc:
        raise DemoError(str(exc)) from None
    children.start("synthetic_camera", camera.cmd, env)
    children.start("d3_perception_node", node.cmd, {**env, **node.env})
    (children.log_dir / "commands.txt").write_text("".join(
        f"{name} pid {proc.pid}: {' '.join(proc.args)}\n" for name, proc in children.procs.items()))

    acc = DemoAccumulator()
    collector = _Collector(context, acc, metric=args.metric_mode != "none")
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(collector.node)
    return collector, executor, acc


def _measure(args, collector: _Collector, executor, children: _Children) -> dict:
    from tqdm import tqdm

    print(f"d3-demo: starting synthetic_camera and d3_perception_node (ROS_DOMAIN_ID "
          f"{os.environ['ROS_DOMAIN_ID']}); waiting for the first prediction ...", flush=True)
    start = time.monotonic()
    next_note = start + 15.0
    while collector.first_prediction_ns is None:
        executor.spin_once(timeout_sec=0.1)
        children.check()
        now = time.monotonic()
        if now - start > args.startup_timeout:
            raise DemoError(f"no prediction within {args.startup_timeout:g} s; see {children.log_dir}")
        if now > next_note:  # model loading (or a first ONNX export) can take minutes on a small CPU
            next_note = now + 15.0
            print(f"d3-demo: still waiting for the first prediction ({now - start:.0f} s); node: "
                  f"{children.last_line('d3_perception_node')}", flush=True)
    collector.measuring = True
    t0 = time.monotonic()
    shown = 0
    with tqdm(total=int(round(args.duration)), desc="d3-demo", unit="s", mininterval=1.0) as bar:
        while (elapsed := time.monotonic() - t0) < args.duration:
            executor.spin_once(timeout_sec=0.05)
            children.check()
            whole = min(int(elapsed), bar.total)
            if whole > shown:
                bar.set_postfix_str(f"{len(collector.acc.frames)} frames evaluated", refresh=False)
                bar.update(whole - shown)
                shown = whole
    collector.measuring = False
    elapsed = time.monotonic() - t0
    return {"duration_s": elapsed}


def _write_outputs(args, out: Path, acc, collector: _Collector, run: dict, model_desc: str, random_model: bool,
                   domain: int) -> int:
    import cv2

    from d3_perception.evaluation.demo_outputs import montage, write_json, write_ply
    from d3_perception.geometry.pointcloud import backproject

    if acc.last is None:
        raise DemoError(f"no prediction could be matched with ground truth in {run['duration_s']:.0f} s; "
                        f"see {out / 'logs'}")
    s = acc.summary()
    published = len(collector.camera_stamps)
    processed = len(collector.pred_stamps)
    info = collector.info
    last = acc.last
    depth_for_cloud = last.pred_metric_m if last.pred_metric_m is not None else last.pred_aligned_m
    cloud_kind = "node metric depth (sparse_depth fit)" if last.pred_metric_m is not None else "GT-aligned depth"
    paths = {"montage": out / "montage.png", "cloud": out / "cloud.ply", "metrics": out / "metrics.json",
             "report": out / "report.md"}
    cv2.imwrite(str(paths["montage"]), montage(last)[:, :, ::-1])
    n_points = write_ply(paths["cloud"], backproject(depth_for_cloud, last.K), last.rgb, last.pred_normals)
    metrics = {
        "model": {"description": model_desc, "random_weights": random_model,
                  "model_id": getattr(info, "model_id", None), "backend": getattr(info, "backend", None)},
        "setup": {"scene": args.scene, "seed": args.seed, "size_wh": [args.size[1], args.size[0]],
                  "rate_hz": args.rate_hz, "metric_mode": args.metric_mode, "ros_domain_id": domain,
                  "duration_s": round(run["duration_s"], 3), "machine": "see report.md"},
        "frames": {"published_by_camera": published, "processed_by_node": processed,
                   "dropped": max(0, published - processed), "evaluated": s["frames_evaluated"],
                   "node_reported_dropped": int(info.frames_dropped) if info is not None else None,
                   "point_clouds_received": collector.clouds},
        "depth": {"abs_rel": s.get("abs_rel"), "delta1": s.get("delta1"), "rmse_m": s.get("rmse_m"),
                  "alignment": "least-squares scale+shift per frame to ground truth"},
        "metric_depth": {"abs_rel": s.get("metric_abs_rel"), "delta1": s.get("metric_delta1"),
                         "source": f"node metric.mode={args.metric_mode}"} if args.metric_mode != "none" else None,
        "normals": {"mean_angle_deg": s.get("normal_mean_deg"), "median_angle_deg": s.get("normal_median_deg")},
        "latency_ms": {"p50": s["latency_p50_ms"], "p95": s["latency_p95_ms"],
                       "definition": "image header stamp -> depth/relative received by the demo"},
        "inference_ms_last": float(info.inference_ms) if info is not None else None,
        "files": {k: str(v) for k, v in paths.items()},
        "point_cloud": {"points": n_points, "depth": cloud_kind},
    }
    write_json(paths["metrics"], metrics)
    paths["report"].write_text(_report_md(metrics, random_model))
    fmt = _fmt
    warn = " [RANDOM untrained model: numbers are meaningless]" if random_model else ""
    print(f"d3-demo: {processed} frames processed, {max(0, published - processed)} dropped in "
          f"{run['duration_s']:.0f} s; model: {model_desc}")
    print(f"  depth AbsRel {fmt(s.get('abs_rel'))}, delta1 {fmt(s.get('delta1'))} (scale+shift aligned); "
          f"normals mean angle {fmt(s.get('normal_mean_deg'), 1)} deg{warn}")
    print(f"  latency image stamp -> output: p50 {fmt(s['latency_p50_ms'], 0)} ms, p95 {fmt(s['latency_p95_ms'], 0)} ms")
    print(f"  montage: {paths['montage']}   cloud: {paths['cloud']} ({n_points} points)")
    print(f"  report: {paths['report']}   metrics: {paths['metrics']}")
    return 0


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _report_md(m: dict, random_model: bool) -> str:
    import platform

    f = _fmt
    d, n, lat, fr, st = m["depth"], m["normals"], m["latency_ms"], m["frames"], m["setup"]
    lines = ["# d3-demo report", ""]
    if random_model:
        lines += ["> **The model has random weights** (no trained demo model is bundled under `models/`). "
                  "The pipeline ran end to end, but the accuracy numbers below are meaningless.", ""]
    lines += [
        f"- model: {m['model']['description']} (backend `{m['model']['backend']}`, id `{m['model']['model_id']}`)",
        f"- scene: `{st['scene']}` seed {st['seed']}, {st['size_wh'][0]}x{st['size_wh'][1]} @ {st['rate_hz']:g} Hz, "
        f"{st['duration_s']:.1f} s, metric mode `{st['metric_mode']}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_implementation()} "
        f"{platform.python_version()}; ROS_DOMAIN_ID {st['ros_domain_id']}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| depth AbsRel (scale+shift aligned to GT) | {f(d['abs_rel'])} |",
        f"| depth δ1 (scale+shift aligned to GT) | {f(d['delta1'])} |",
        f"| depth RMSE (m, aligned) | {f(d['rmse_m'])} |",
    ]
    if m["metric_depth"] is not None:
        lines += [f"| metric depth AbsRel (node's own {m['metric_depth']['source']}) | {f(m['metric_depth']['abs_rel'])} |",
                  f"| metric depth δ1 | {f(m['metric_depth']['delta1'])} |"]
    lines += [
        f"| normals mean angle (deg) | {f(n['mean_angle_deg'], 1)} |",
        f"| normals median angle (deg) | {f(n['median_angle_deg'], 1)} |",
        f"| latency p50 / p95 (ms, image stamp → output) | {f(lat['p50'], 0)} / {f(lat['p95'], 0)} |",
        f"| frames published / processed / dropped | {fr['published_by_camera']} / {fr['processed_by_node']} / "
        f"{fr['dropped']} |",
        f"| frames evaluated | {fr['evaluated']} |",
        f"| point clouds received on `/d3/points` | {fr['point_clouds_received']} |",
        "",
        "Dropped frames are expected when the camera is faster than the model: the node keeps only the newest "
        "frame (DESIGN §5.4).",
        "",
        "Files: `montage.png` (RGB | predicted depth | GT depth | predicted normals | GT normals | AbsRel error "
        "0-50 %), `cloud.ply` "
        f"({m['point_cloud']['points']} points, {m['point_cloud']['depth']}), `metrics.json`, `logs/`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
