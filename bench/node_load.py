"""P5: sustained load through real DDS: 30 Hz camera -> d3_perception_node (subprocess) -> this client.

Measures latency from the image stamp to the received output (p50/p95), the model time the node reports
(PredictionInfo.inference_ms), frames dropped by the latest-frame policy, and the node's RSS over time.
Targets: latency p95 <= 1.5x model time; RSS growth < 5 % from the first sample after warm-up to the end.

  .venv/bin/python bench/node_load.py --minutes 1
  .venv/bin/python bench/node_load.py --minutes 1 --outputs all     # + camera_info; cloud, normals, images out
  .venv/bin/python bench/node_load.py --minutes 1 --wait-for-fresh-frame false   # take stale frames at once
  .venv/bin/python bench/node_load.py --minutes 10 --size 640x480 --checkpoint models/d3_tiny --json p5.json
  .venv/bin/python bench/node_load.py --minutes 0.5 --size 320x240 --checkpoint models/d3_demo_tiny \
      --backend openvino --precision bf16        # model time per frame; compare with onnxruntime fp32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "test"))  # conftest: DomainLease and the ROS test environment


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"`--size` must be WIDTHxHEIGHT, e.g. 640x480; got {text!r}") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"`--size` must be at least 8x8; got {text!r}")
    return h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  .venv/bin/python bench/node_load.py --minutes 1\n"
               "  .venv/bin/python bench/node_load.py --minutes 1 --outputs all\n"
               "  .venv/bin/python bench/node_load.py --minutes 10 --json p5.json")
    parser.add_argument("--minutes", type=float, default=2.0, help="duration of the 30 Hz input (default 2)")
    parser.add_argument("--rate-hz", type=float, default=30.0)
    parser.add_argument("--size", type=_size, default=(480, 640), help="WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint dir; default: a tiny random one (torch)")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--precision", default="fp32",
                        help="the node's precision parameter (default fp32), e.g. --backend openvino --precision bf16")
    parser.add_argument("--processing-resolution", type=int, default=64)
    parser.add_argument("--num-threads", type=int, default=0,
                        help="the node's num_threads parameter (default 0, the node's default: all cores but one)")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="excluded from statistics (default 10)")
    parser.add_argument("--outputs", choices=("info", "all"), default="info",
                        help="info: subscribe to ~/info only (lazy outputs: the node computes nothing else); "
                             "all: also camera_info in, and subscribe to every image output and the cloud "
                             "(the node does the full per-frame work of bench/node_overhead.py)")
    parser.add_argument("--wait-for-fresh-frame", choices=("true", "false"), default="true",
                        help="the node's wait_for_fresh_frame parameter (default true, the node's default): "
                             "false takes the pending frame at once, however long it has waited")
    parser.add_argument("--fresh-frame-max-age-ratio", type=float, default=0.25,
                        help="the node's fresh_frame_max_age_ratio parameter (default 0.25, the node's default)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate_hz <= 0:
        parser.error("--minutes and --rate-hz must be > 0")
    if not 0.0 <= args.fresh_frame_max_age_ratio <= 1.0:
        parser.error(f"--fresh-frame-max-age-ratio must be in [0, 1]; got {args.fresh_frame_max_age_ratio}")
    if args.checkpoint is not None and not (args.checkpoint / "config.json").is_file():
        print(f"node_load: `--checkpoint` must be a checkpoint directory; got {args.checkpoint}", file=sys.stderr)
        return 2

    import rclpy
    from d3_perception.msg import PredictionInfo
    from node_process import node_process_setup
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from tqdm import tqdm

    from d3_perception.ros.conversions import numpy_to_msg
    from d3_perception.ros.launch_config import node_command

    tmp, ckpt, lease, env = node_process_setup("d3_node_load_", args.checkpoint)
    os.environ.update(env)  # this process's own rclpy client joins the same isolated graph
    spec = node_command(namespace="load", checkpoint=str(ckpt), backend=args.backend, base_env=env,
                        extra_params={"processing_resolution": args.processing_resolution, "precision": args.precision,
                                      "lazy_outputs": True, "metric.mode": "none", "num_threads": args.num_threads,
                                      "wait_for_fresh_frame": args.wait_for_fresh_frame == "true",
                                      "fresh_frame_max_age_ratio": args.fresh_frame_max_age_ratio})
    import subprocess

    node_log = open(tmp / "node.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(spec.cmd, env={**env, **spec.env}, stdout=node_log, stderr=subprocess.STDOUT)
    context = Context()
    rclpy.init(context=context, domain_id=lease.domain_id)
    node = rclpy.create_node("d3_load_client", context=context)
    pub = node.create_publisher(Image, "/load/image", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    lock = threading.Lock()
    rows: list[tuple[float, float, float, int, float]] = []  # (t_s, latency_ms, inference_ms, dropped, total_ms)

    def on_info(msg):
        now = time.time()
        lat = (now - (msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec)) * 1e3
        with lock:
            rows.append((now, lat, msg.inference_ms, msg.frames_dropped, msg.total_ms))

    node.create_subscription(PredictionInfo, "/load/d3_perception_node/info", on_info, QoSProfile(depth=50))
    from diagnostic_msgs.msg import DiagnosticArray

    diag: dict[str, str] = {}  # the node's newest /diagnostics values

    def on_diag(msg):
        for st in msg.status:
            if st.name.endswith("d3_perception_node: pipeline"):
                diag.update({kv.key: kv.value for kv in st.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    received = {"n": 0}
    pub_info = None
    if args.outputs == "all":
        from sensor_msgs.msg import CameraInfo, PointCloud2

        pub_info = node.create_publisher(CameraInfo, "/load/camera_info",
                                         QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))

        def on_output(msg):
            received["n"] += 1

        for topic, mtype in (("depth/relative", Image), ("depth/colored", Image), ("depth/camera_info", CameraInfo),
                             ("normals", Image), ("normals/colored", Image), ("points", PointCloud2)):
            node.create_subscription(mtype, f"/load/{topic}", on_output, QoSProfile(depth=2))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spin = threading.Thread(target=lambda: executor.spin(), daemon=True)
    spin.start()
    rss: list[tuple[float, float]] = []
    sent = 0
    try:
        deadline = time.time() + 120
        while pub.get_subscription_count() == 0:
            if time.time() > deadline or proc.poll() is not None:
                print("node_load: the node did not start; see " + str(tmp / "node.log"), file=sys.stderr)
                return 1
            time.sleep(0.1)
        h, w = args.size
        rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        duration_s = args.minutes * 60.0
        period = 1.0 / args.rate_hz
        t0 = time.time()
        next_rss = t0
        with tqdm(total=int(duration_s), unit="s", desc="30 Hz input") as bar:
            while (now := time.time()) - t0 < duration_s:
                msg = numpy_to_msg(rgb, "rgb8")
                msg.header.stamp.sec, msg.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
                msg.header.frame_id = "camera_optical_frame"
                if pub_info is not None:
                    info = CameraInfo(header=msg.header, height=h, width=w, distortion_model="plumb_bob")
                    info.k = [0.8 * w, 0.0, (w - 1) / 2, 0.0, 0.8 * w, (h - 1) / 2, 0.0, 0.0, 1.0]
                    pub_info.publish(info)
                pub.publish(msg)
                sent += 1
                if now >= next_rss:
                    rss.append((now - t0, _rss_mb(proc.pid)))
                    next_rss += 5.0
                    bar.n = int(now - t0)
                    bar.refresh()
                time.sleep(max(0.0, t0 + sent * period - time.time()))
        time.sleep(3.0)
        rss.append((time.time() - t0, _rss_mb(proc.pid)))
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        if proc.poll() is None:
            proc.send_signal(2)
            proc.wait(30)
        node_log.close()
        lease.release()
    with lock:
        data = [r for r in rows if r[0] - t0 >= args.warmup_s]
    if not data:
        print("node_load: no outputs received after warm-up", file=sys.stderr)
        return 1
    lat = np.array([r[1] for r in data])
    inf = np.array([r[2] for r in data])
    node_total = np.array([r[4] for r in data])  # stamp -> last publish, measured in the node
    # where the latency goes: model; in the node but not the model (DDS in, waiting in the latest-frame
    # slot while the previous frame is processed, decode, post-processing, publish); DDS back to us
    parts = {"model": inf, "node_not_model": node_total - inf, "return_transport": lat - node_total}
    rss_after = [m for t, m in rss if t >= args.warmup_s] or [m for _, m in rss]
    result = {
        "benchmark": "node_load (P5)", "machine": "2-core CPU shared with other jobs, no GPU",
        "minutes": args.minutes, "rate_hz": args.rate_hz, "size": f"{args.size[1]}x{args.size[0]}",
        "outputs_subscribed": args.outputs, "other_outputs_received": received["n"],
        "backend": args.backend, "precision": args.precision, "processing_resolution": args.processing_resolution,
        "num_threads": args.num_threads,
        "wait_for_fresh_frame": args.wait_for_fresh_frame == "true",
        "fresh_frame_max_age_ratio": args.fresh_frame_max_age_ratio,
        "frames_sent": sent, "outputs": len(rows), "frames_dropped_by_node": int(rows[-1][3]) if rows else 0,
        "latency_p50_ms": float(np.percentile(lat, 50)), "latency_p95_ms": float(np.percentile(lat, 95)),
        "model_p50_ms": float(np.percentile(inf, 50)), "model_p95_ms": float(np.percentile(inf, 95)),
        "breakdown_ms": {k: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}
                         for k, v in parts.items()},
        "node_diagnostics": {k: diag.get(k) for k in ("frames_received", "frames_processed", "frames_dropped",
                                                      "fresh_frame_waits", "fresh_frame_timeouts",
                                                      "input_period_ms")},
        "rss_mb_first": rss_after[0], "rss_mb_last": rss_after[-1],
        "rss_growth_pct": 100.0 * (rss_after[-1] - rss_after[0]) / rss_after[0],
        "rss_series": rss,
        "load_average_1min": os.getloadavg()[0],  # the 2 cores are shared: absolute times scale with this
    }
    result["latency_p95_over_model_p50"] = result["latency_p95_ms"] / result["model_p50_ms"]
    print(f"{args.minutes} min at {args.rate_hz} Hz, {result['size']}, {args.backend} {args.precision} "
          f"(processing {args.processing_resolution}px, num_threads {args.num_threads}), "
          f"wait_for_fresh_frame {args.wait_for_fresh_frame} "
          f"(max age ratio {args.fresh_frame_max_age_ratio}), "
          f"outputs subscribed: {args.outputs} "
          f"({received['n']} non-info messages received): sent {sent}, outputs {len(rows)}, "
          f"dropped by the node {result['frames_dropped_by_node']}; load average {result['load_average_1min']:.1f}")
    print(f"  latency stamp->output p50 {result['latency_p50_ms']:.1f} ms, p95 {result['latency_p95_ms']:.1f} ms; "
          f"model p50 {result['model_p50_ms']:.1f} ms; p95/model = {result['latency_p95_over_model_p50']:.2f} "
          f"(target <= 1.5: {'met' if result['latency_p95_over_model_p50'] <= 1.5 else 'NOT met'})")
    print("  breakdown p50/p95 ms: " + ", ".join(f"{k} {v['p50']:.1f}/{v['p95']:.1f}"
                                                for k, v in result["breakdown_ms"].items()))
    print("  node /diagnostics at the end: " + ", ".join(f"{k} {v}" for k, v in result["node_diagnostics"].items()))
    print(f"  node RSS {result['rss_mb_first']:.0f} -> {result['rss_mb_last']:.0f} MB "
          f"({result['rss_growth_pct']:+.1f} %; target < 5 %: {'met' if result['rss_growth_pct'] < 5 else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
