"""Several cameras: one node with ``cameras`` (one model, batched calls) vs one single-camera node per camera.

Three synthetic cameras (a rendered room view each, ``d3_perception.synthetic``) publish at 10 Hz through real
DDS; both setups get the same input, the same checkpoint and backend, one after the other. Measured after a
warm-up: processed frames per second (all cameras, from each camera's PredictionInfo), latency stamp ->
received info (p50/p95), and the total RSS of the node processes. Targets (issue #17): the one-node setup
>= 1.5x the frames/s and <= 0.5x the RSS of the three nodes.

  .venv/bin/python bench/multi_camera.py                       # 45 s per setup, tiny random model on torch
  .venv/bin/python bench/multi_camera.py --seconds 120 --checkpoint models/d3_tiny --json mc.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "test"))  # conftest: DomainLease and the ROS test environment

CAMERAS = ("cam0", "cam1", "cam2")


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _frames(hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """One rendered view per camera (rendered once: the bench measures the node, not the renderer)."""
    from d3_perception.synthetic import SyntheticSequence

    return {cam: SyntheticSequence(seed=i, size_hw=hw, fps=10.0, num_frames=1).frame(0).rgb
            for i, cam in enumerate(CAMERAS)}


def _run_setup(name: str, specs, image_topics: dict[str, str], info_topics: dict[str, str], frames, args,
               env, tmp: Path) -> dict:
    import rclpy
    from d3_perception.msg import PredictionInfo
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from d3_perception.ros.conversions import numpy_to_msg

    procs = []
    for i, spec in enumerate(specs):
        log = open(tmp / f"{name}_{i}.log", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(spec.cmd, env={**env, **spec.env}, stdout=log, stderr=subprocess.STDOUT), log))
    context = Context()
    rclpy.init(context=context, domain_id=int(env["ROS_DOMAIN_ID"]))
    node = rclpy.create_node(f"d3_mc_client_{name}", context=context)
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    pubs = {cam: node.create_publisher(Image, topic, qos) for cam, topic in image_topics.items()}
    lock = threading.Lock()
    rows: list[tuple[float, float, float]] = []  # (receive time, latency ms, inference ms)

    def on_info(msg):
        now = time.time()
        with lock:
            rows.append((now, (now - (msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec)) * 1e3,
                         msg.inference_ms))

    for topic in info_topics.values():
        node.create_subscription(PredictionInfo, topic, on_info, QoSProfile(depth=50))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    rss: list[tuple[float, float]] = []
    try:
        deadline = time.time() + 180
        while not all(p.get_subscription_count() > 0 for p in pubs.values()):
            if time.time() > deadline or any(p.poll() is not None for p, _ in procs):
                raise RuntimeError(f"{name}: the node(s) did not start; logs in {tmp}")
            time.sleep(0.1)
        period, t0, sent, next_rss = 1.0 / args.rate_hz, time.time(), 0, time.time()
        while (now := time.time()) - t0 < args.seconds:
            for cam, pub in pubs.items():
                msg = numpy_to_msg(frames[cam], "rgb8")
                msg.header.stamp.sec, msg.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
                msg.header.frame_id = f"{cam}_optical_frame"
                pub.publish(msg)
            sent += 1
            if now >= next_rss:
                rss.append((now - t0, sum(_rss_mb(p.pid) for p, _ in procs)))
                next_rss += 2.0
            time.sleep(max(0.0, t0 + sent * period - time.time()))
        time.sleep(2.0)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        for p, _ in procs:
            if p.poll() is None:
                p.send_signal(2)
        for p, log in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
            log.close()
    with lock:
        data = [r for r in rows if r[0] - t0 >= args.warmup_s]
    rss_after = [m for t, m in rss if t >= args.warmup_s] or [m for _, m in rss]
    if not data:
        raise RuntimeError(f"{name}: no outputs after the warm-up; logs in {tmp}")
    span = args.seconds - args.warmup_s
    lat = np.array([r[1] for r in data])
    return {"nodes": len(specs), "frames_per_s": len(data) / span, "frames_sent_per_s": len(CAMERAS) * args.rate_hz,
            "latency_p50_ms": float(np.percentile(lat, 50)), "latency_p95_ms": float(np.percentile(lat, 95)),
            "inference_p50_ms": float(np.median([r[2] for r in data])), "rss_mb_total": float(np.mean(rss_after))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n  .venv/bin/python bench/multi_camera.py\n"
                                            "  .venv/bin/python bench/multi_camera.py --seconds 120 --json mc.json")
    parser.add_argument("--seconds", type=float, default=45.0, help="input duration per setup (default 45)")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="excluded from the statistics (default 10)")
    parser.add_argument("--rate-hz", type=float, default=10.0, help="per camera (default 10)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--checkpoint", type=Path, help="checkpoint dir; default: a tiny random one")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--processing-resolution", type=int, default=128)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.seconds <= args.warmup_s or args.rate_hz <= 0:
        parser.error("--seconds must exceed --warmup-s and --rate-hz must be > 0")

    from node_process import node_process_setup

    from d3_perception.ros.launch_config import node_command

    tmp, ckpt, lease, env = node_process_setup("d3_multi_camera_", args.checkpoint)
    common = {"processing_resolution": args.processing_resolution, "lazy_outputs": True, "metric.mode": "none"}
    frames = _frames((args.height, args.width))
    results = {}
    try:
        one = node_command(namespace="mc", checkpoint=str(ckpt), backend=args.backend, base_env=env,
                           cameras=list(CAMERAS), extra_params=common)
        results["one_node"] = _run_setup(
            "one_node", [one], {c: f"/mc/{c}/image" for c in CAMERAS}, {c: f"/mc/{c}/info" for c in CAMERAS},
            frames, args, env, tmp)
        three = [node_command(namespace=f"mc3/{c}", checkpoint=str(ckpt), backend=args.backend, base_env=env,
                              extra_params=common) for c in CAMERAS]
        results["three_nodes"] = _run_setup(
            "three_nodes", three, {c: f"/mc3/{c}/image" for c in CAMERAS},
            {c: f"/mc3/{c}/d3_perception_node/info" for c in CAMERAS}, frames, args, env, tmp)
    finally:
        lease.release()
    one_r, three_r = results["one_node"], results["three_nodes"]
    results.update(
        benchmark="multi_camera", cameras=len(CAMERAS), size=f"{args.width}x{args.height}", rate_hz=args.rate_hz,
        backend=args.backend, processing_resolution=args.processing_resolution, seconds=args.seconds,
        load_average_1min=os.getloadavg()[0], cores=os.cpu_count(),
        frames_per_s_ratio=one_r["frames_per_s"] / three_r["frames_per_s"],
        rss_ratio=one_r["rss_mb_total"] / three_r["rss_mb_total"])
    print(f"three cameras {args.width}x{args.height} at {args.rate_hz:g} Hz, {args.backend} at "
          f"{args.processing_resolution}, {args.seconds:g} s per setup ({args.warmup_s:g} s warm-up); load average "
          f"{results['load_average_1min']:.1f} on {os.cpu_count()} cores")
    for name in ("one_node", "three_nodes"):
        r = results[name]
        print(f"  {name:11s}: {r['frames_per_s']:5.2f} frames/s of {r['frames_sent_per_s']:g}, latency p50 "
              f"{r['latency_p50_ms']:.0f} / p95 {r['latency_p95_ms']:.0f} ms, model {r['inference_p50_ms']:.0f} ms, "
              f"RSS {r['rss_mb_total']:.0f} MB")
    fr, rr = results["frames_per_s_ratio"], results["rss_ratio"]
    print(f"  one node / three nodes: frames/s {fr:.2f}x (target >= 1.5x: {'met' if fr >= 1.5 else 'NOT met'}), "
          f"RSS {rr:.2f}x (target <= 0.5x: {'met' if rr <= 0.5 else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
