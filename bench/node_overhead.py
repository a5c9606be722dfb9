"""P4: per-frame cost of the node's work except the model, at 640x480 with depth + normals + cloud.

Stages of the node's worker thread, timed inside the node's own code (``CameraPipeline.process`` of
``d3_perception.ros.pipeline``, which ``D3PerceptionNode`` calls per frame; here in sparse_depth mode with
model normals, the model replaced by a stand-in that returns prepared outputs): decode (Image msg -> rgb),
model (the stand-in: the backend chain's call and output checks), side_jobs (hand the model normals ->
three optical-frame planes + the normals image to the helper threads of ``postprocess_threads``; with one
thread: compute them), metric_fit (robust sparse fit + apply into the depth message buffer, then the colour
map, while the helpers work), side_wait (for the normals the cloud needs), cloud (back-projection +
organized cloud written into the PointCloud2 buffer, rows shared with the helpers), packing (depth, relative, colored, normals, camera_info and PointCloud2 messages).
Wall time per stage and total, the CPU time per frame of all threads and of the worker thread (the cores
are shared), for the node's default thread count and, interleaved, ``--compare-threads``; the messages of
both must be byte-identical. Peer, measured in the same run:
the way common ROS Python code does it — per-pixel back-projection in Python loops over rows and a
PointCloud2 packed from a list of per-point tuples, as ``sensor_msgs_py.point_cloud2.create_cloud`` takes
them (written here: sensor_msgs_py is not on the package registries).

  .venv/bin/python bench/node_overhead.py                 # 30 frames, peer on 3 frames
  .venv/bin/python bench/node_overhead.py --frames 100 --json out.json
  .venv/bin/python bench/node_overhead.py --threads 1 --compare-threads 0   # one configuration only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

H, W = 480, 640
STAMP_S = 100  # of the image, its camera_info and its sparse reference


def _header():
    from std_msgs.msg import Header

    header = Header(frame_id="camera_optical_frame")
    header.stamp.sec = STAMP_S
    return header


def _inputs():
    from d3_perception.ros.conversions import numpy_to_msg

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    image_msg = numpy_to_msg(rgb, "rgb8", _header())
    yy = np.linspace(0.1, 0.9, H, dtype=np.float32)[:, None]
    relative = np.broadcast_to(yy, (H, W)).copy() + rng.normal(0, 0.01, (H, W)).astype(np.float32)
    normals = rng.normal(size=(3, H, W)).astype(np.float32)  # backend layout, opengl convention
    normals /= np.linalg.norm(normals, axis=0)  # unit vectors, as every backend returns them (postprocess)
    sparse = np.full((H, W), np.nan, np.float32)
    rows = np.linspace(0, H - 1, 18).round().astype(int)[1:-1]
    sparse[rows] = 4.0 * relative[rows] + 0.5
    K = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    return image_msg, relative, normals, sparse, K


STAGES = ("decode", "model", "side_jobs", "metric_fit", "side_wait", "confidence", "cloud", "packing")
WANT = {"depth": True, "relative": True, "camera_info": True, "colored": True, "normals": True,
        "normals_colored": False, "points": True, "info": False, "confidence": True}
NO_CONFIDENCE = "ours_without_confidence"  # the same pipeline without confidence, gating and stabiliser
# confidence, gating and stabiliser on, but nobody subscribed to depth/confidence (the node's lazy outputs then
# never make the frame-size map): what a node feeding a costmap from `points` pays
NO_TOPIC = "ours_confidence_not_subscribed"


class _FixedModel:
    """Stands in for the model: returns the prepared model outputs at once (only the node's own work is
    timed). A built-in backend's contract: unit normals (``unit_normals``), opengl convention."""

    unit_normals = True
    normals_convention = "opengl"

    def __init__(self, relative, normals_chw):
        from d3_perception.backends import BackendInfo

        self.info = BackendInfo(name="fixed", device="cpu", precision="fp32", model_id="fixed",
                                tasks=("depth", "normals"), processing_resolution=768)
        self._out = {"depth": relative[None], "normals": normals_chw[None]}

    def predict(self, images, tasks=None):
        return self._out

    def close(self):
        pass


def make_pipeline(threads: int, inputs, confidence: bool = True, confidence_topic: bool = True):
    """A :class:`CameraPipeline` as the node builds it (its defaults, sparse_depth mode, ``threads`` helper
    threads) with the camera_info and sparse reference of ``inputs`` received, and a backend chain around
    :class:`_FixedModel`, and the outputs wanted. ``confidence`` False: without the issue-16 work (confidence
    map, gating, stabiliser, the depth/confidence message), to time what it adds; ``confidence_topic`` False:
    with it, but depth/confidence not wanted."""
    from sensor_msgs.msg import CameraInfo

    from d3_perception.backends.chain import BackendChain
    from d3_perception.ros.conversions import numpy_to_msg
    from d3_perception.ros.params import config_from_values
    from d3_perception.ros.pipeline import CameraPipeline

    image_msg, relative, normals, sparse, K = inputs
    # one camera_info for the whole run: without a time limit on it (the node's default, 5 s, would drop K in a
    # long run, and every later frame would be timed without its cloud)
    cfg = config_from_values({"metric.mode": "sparse_depth", "postprocess_threads": threads,
                              "camera_info_timeout_s": 0.0})
    pipe = CameraPipeline(cfg, warn=lambda text: print(text, file=sys.stderr))
    header = _header()
    info = CameraInfo(header=header, height=H, width=W, k=[float(v) for v in K.ravel()])
    pipe.on_camera_info(info)
    pipe.on_sparse(numpy_to_msg(sparse, "32FC1", header))
    chain = BackendChain(_FixedModel(relative, normals), [], lambda name: None)
    if not confidence:
        pipe.quality = None
    return pipe, chain, {**WANT, "confidence": confidence and confidence_topic}


def ours(image_msg, pipe, chain, want, timings):
    """The node's own per-frame code: ``CameraPipeline.process`` (decode, the model call, then
    ``frame_outputs.compute_outputs`` and ``output_messages``), sparse_depth mode with model normals.
    Outputs are computed straight into the message buffers of the pipeline's pool, reused across frames,
    so packing a message copies nothing."""
    from d3_perception.ros.pipeline import Frame

    t = [time.perf_counter()]
    result = pipe.process(Frame(image_msg, False, time.monotonic()), want, chain,
                          mark=lambda: t.append(time.perf_counter()))
    if result is None:
        raise RuntimeError(f"the pipeline made no outputs: {pipe.stats.last_problem}")
    missing = [name for name, wanted in want.items() if wanted and name != "info" and name not in result.messages]
    if missing:  # a frame timed without some of its outputs would look faster than it is
        raise RuntimeError(f"the pipeline skipped {missing}: {pipe.stats.last_problem}")
    for name, a, b in zip(STAGES, t[:-1], t[1:], strict=True):
        timings.setdefault(name, []).append((b - a) * 1e3)
    return list(result.messages.values())


def peer(image_msg, relative, normals_chw, sparse, K, timings):
    """Common ROS Python style: same decode/fit/normals, but Python loops for points and tuple packing."""
    from sensor_msgs.msg import PointCloud2, PointField

    from d3_perception.geometry.normals import to_optical_frame
    from d3_perception.image_codec import to_rgb8
    from d3_perception.ros import conversions as conv

    t0 = time.perf_counter()
    rgb = to_rgb8(conv.msg_to_numpy(image_msg), image_msg.encoding)
    valid = np.isfinite(sparse)
    scale, shift = np.polyfit(relative[valid], sparse[valid], 1)
    depth_m = (scale * relative + shift).astype(np.float32)
    normals = to_optical_frame(normals_chw, "opengl", K)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    points = []
    for v in range(H):  # per-pixel back-projection, loop over rows and pixels
        drow, crow, nrow = depth_m[v].tolist(), rgb[v].tolist(), normals[v].tolist()
        for u in range(W):
            z = drow[u]
            x, y = (u - cx) / fx * z, (v - cy) / fy * z
            r, g, b = crow[u]
            rgbf = struct.unpack("f", struct.pack("I", (r << 16) | (g << 8) | b))[0]
            if not 0.1 <= (x * x + y * y + z * z) ** 0.5 <= 20.0:
                x = y = z = float("nan")
            points.append((x, y, z, rgbf, *nrow[u]))
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
              for i, n in enumerate(("x", "y", "z", "rgb", "normal_x", "normal_y", "normal_z"))]
    # create_cloud: one struct.pack_into per point tuple
    fmt = struct.Struct("<7f")
    buff = bytearray(fmt.size * len(points))
    for i, p in enumerate(points):
        fmt.pack_into(buff, i * fmt.size, *p)
    msg = PointCloud2(height=H, width=W, fields=fields, is_bigendian=False, point_step=fmt.size,
                      row_step=fmt.size * W, is_dense=False)
    msg.data = bytes(buff)
    timings.setdefault("total", []).append((time.perf_counter() - t0) * 1e3)
    return msg


def _stats(values):
    a = np.asarray(values)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "n": int(a.size)}


def _run(image_msg, pipe, chain, want, timings: dict, cpu: dict) -> None:
    c0, t0 = time.process_time(), time.thread_time()
    ours(image_msg, pipe, chain, want, timings)
    cpu.setdefault("cpu_total", []).append((time.process_time() - c0) * 1e3)  # every thread of the process
    cpu.setdefault("cpu_worker_thread", []).append((time.thread_time() - t0) * 1e3)  # the node's worker alone


def _payloads(msgs) -> list[bytes]:
    return [bytes(m.data) if hasattr(m, "data") else repr(list(m.k)).encode() for m in msgs]


def main(argv: list[str] | None = None) -> int:
    from d3_perception.ros.params import SPECS

    default_threads = SPECS["postprocess_threads"].default
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n  .venv/bin/python bench/node_overhead.py\n"
                                            "  .venv/bin/python bench/node_overhead.py --frames 100 --json p4.json")
    parser.add_argument("--frames", type=int, default=30, help="timed frames of our path (default 30)")
    parser.add_argument("--peer-frames", type=int, default=3, help="timed frames of the peer (default 3)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=default_threads,
                        help=f"the node's postprocess_threads (default {default_threads}, the node's default)")
    parser.add_argument("--compare-threads", type=int, default=1,
                        help="also time this postprocess_threads, frames interleaved with --threads (default 1; "
                             "0 = off)")
    parser.add_argument("--no-compare-confidence", action="store_true",
                        help=f"do not time {NO_CONFIDENCE} (the pipeline without confidence, gating and stabiliser, "
                             "frames interleaved) next to ours")
    parser.add_argument("--compare-not-subscribed", action="store_true",
                        help=f"also time {NO_TOPIC} (confidence and gating on, depth/confidence not subscribed: "
                             "no frame-size map), frames interleaved; a third pipeline adds cache pressure to all")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.peer_frames < 1:
        parser.error("--frames and --peer-frames must be >= 1")
    if args.threads < 1 or args.compare_threads < 0:
        parser.error("--threads must be >= 1 and --compare-threads >= 0")

    inputs = _inputs()
    image_msg = inputs[0]
    configs = {"ours": args.threads}
    if args.compare_threads and args.compare_threads != args.threads:
        configs[f"ours_{args.compare_threads}_thread{'s' if args.compare_threads > 1 else ''}"] = args.compare_threads
    pipes = {name: make_pipeline(n, inputs) for name, n in configs.items()}
    first = {name: _payloads(ours(image_msg, *pipes[name], {})) for name in configs}
    if not args.no_compare_confidence:
        configs[NO_CONFIDENCE] = args.threads
        pipes[NO_CONFIDENCE] = make_pipeline(args.threads, inputs, confidence=False)
        if args.compare_not_subscribed:
            configs[NO_TOPIC] = args.threads
            pipes[NO_TOPIC] = make_pipeline(args.threads, inputs, confidence_topic=False)
    for name, payloads in first.items():  # (not NO_CONFIDENCE: its depth and cloud are not gated)
        if payloads != first["ours"]:
            print(f"node_overhead: the messages of {name} differ from those with {args.threads} threads", file=sys.stderr)
            return 1
    for _ in range(args.warmup):
        for name in configs:
            ours(image_msg, *pipes[name], {})
    timings: dict = {name: {} for name in configs}
    cpu: dict = {name: {} for name in configs}  # CPU time per frame: what it costs, whatever else runs on the cores
    for _ in range(args.frames):
        for name in configs:  # interleaved: the configurations see the same machine load
            _run(image_msg, *pipes[name], timings[name], cpu[name])
    for pipe, *_ in pipes.values():
        pipe.close()
    peer_t: dict = {}
    peer(*inputs, {})  # warm-up
    for _ in range(args.peer_frames):
        peer(*inputs, peer_t)

    result = {
        "benchmark": "node_overhead (P4)", "resolution": f"{W}x{H}", "machine": f"{platform.processor() or platform.machine()}",
        "outputs": "depth, relative, colored, normals, camera_info, points (x,y,z,rgb,normal_xyz), depth/confidence",
        "postprocess_threads": configs,
        "peer_python_loops": {"total": _stats(peer_t["total"])},
        "load_average_1min": os.getloadavg()[0],  # the 2 cores are shared: absolute times scale with this
    }
    for name in configs:
        totals = [sum(v[i] for v in timings[name].values()) for i in range(args.frames)]
        result[name] = {"total": _stats(totals), **{k: _stats(v) for k, v in timings[name].items()},
                        **{k: _stats(v) for k, v in cpu[name].items()}}
    speedup = result["peer_python_loops"]["total"]["p50_ms"] / result["ours"]["total"]["p50_ms"]
    result["speedup_p50"] = speedup
    if NO_CONFIDENCE in result:
        result["confidence_added_p50_ms"] = result["ours"]["total"]["p50_ms"] - result[NO_CONFIDENCE]["total"]["p50_ms"]
    if NO_TOPIC in result:
        result["confidence_added_p50_ms_not_subscribed"] = (result[NO_TOPIC]["total"]["p50_ms"]
                                                            - result[NO_CONFIDENCE]["total"]["p50_ms"])
    print(f"node overhead at {W}x{H} (everything but the model), {args.frames} frames after {args.warmup} warm-up; "
          f"load average {result['load_average_1min']:.1f} on {os.cpu_count()} cores")
    for name, n in configs.items():
        print(f"  {name} (postprocess_threads {n}), wall p50 / p95 ms per stage of the worker thread:")
        print("    " + ", ".join(f"{k} {result[name][k]['p50_ms']:.2f}/{result[name][k]['p95_ms']:.2f}"
                                 for k in (*STAGES, "total")))
        print(f"    CPU p50: all threads {result[name]['cpu_total']['p50_ms']:.2f} ms, worker thread "
              f"{result[name]['cpu_worker_thread']['p50_ms']:.2f} ms (the rest ran on helper threads)")
    if NO_CONFIDENCE in result:
        print(f"  confidence + gating + stabiliser added (p50 of ours - {NO_CONFIDENCE}): "
              f"{result['confidence_added_p50_ms']:.2f} ms   target <= 1 ms")
    if NO_TOPIC in result:
        print(f"  the same without a depth/confidence subscriber ({NO_TOPIC} - {NO_CONFIDENCE}): "
              f"{result['confidence_added_p50_ms_not_subscribed']:.2f} ms")
    s = result["peer_python_loops"]["total"]
    print(f"  peer (Python loops + per-point tuples) total p50 {s['p50_ms']:8.1f} ms   p95 {s['p95_ms']:8.1f} ms")
    print(f"  ratio peer/ours (p50): {speedup:.1f}x   target >= 3x: {'met' if speedup >= 3 else 'NOT met'}; "
          f"ours p50 <= 5 ms: {'met' if result['ours']['total']['p50_ms'] <= 5 else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
