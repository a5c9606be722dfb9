"""Cost of per-pixel confidence + gating (+ the PredictionInfo summary) at 640x480, next to the node's per-frame
work after the model (``bench/node_overhead.py``'s ``ours``, called as it is), frames interleaved so both see the
same machine load. Also times the temporal stabiliser (not part of the 1 ms budget: it is optional).

  .venv/bin/python bench/confidence.py                  # 50 frames
  .venv/bin/python bench/confidence.py --frames 200 --json out.json
  .venv/bin/python bench/confidence.py --no-node        # without ROS messages: absolute times only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

H, W = 480, 640


def _node_overhead():
    """bench/node_overhead.py as a module (not a package: loaded by path)."""
    spec = importlib.util.spec_from_file_location("node_overhead", ROOT / "bench" / "node_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stats(values) -> dict:
    a = np.asarray(values)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "n": int(a.size)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--min-confidence", type=float, default=0.037, help="gate (default 0.037: docs/confidence.md)")
    parser.add_argument("--no-node", action="store_true", help="skip the node_overhead comparison (needs ROS msgs)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be >= 1")

    from d3_perception.geometry.alignment import MetricAligner, MetricConfig
    from d3_perception.geometry.confidence import ConfidenceEstimator, SparsePoints, gate_depth
    from d3_perception.geometry.normals import to_optical_frame_planes
    from d3_perception.geometry.temporal import TemporalStabilizer

    node = None if args.no_node else _node_overhead()
    if node is not None:
        from d3_perception.ros.params import SPECS

        inputs = node._inputs()
        image_msg, relative, normals_chw, sparse, K = inputs
        pipe, chain, want = node.make_pipeline(SPECS["postprocess_threads"].default, inputs)
    else:
        rng = np.random.default_rng(0)
        relative = np.broadcast_to(np.linspace(0.1, 0.9, H, dtype=np.float32)[:, None], (H, W)).copy()
        relative += rng.normal(0, 0.01, (H, W)).astype(np.float32)
        normals_chw = rng.normal(size=(3, H, W)).astype(np.float32)
        normals_chw /= np.linalg.norm(normals_chw, axis=0)
        sparse = np.full((H, W), np.nan, np.float32)
        rows = np.linspace(0, H - 1, 18).round().astype(int)[1:-1]
        sparse[rows] = 4.0 * relative[rows] + 0.5
        K = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    # what the node has after its metric fit and normals: metric depth and optical-frame normal planes
    fit = MetricAligner(MetricConfig(mode="sparse_depth")).update(relative, sparse)
    depth0 = MetricAligner.apply(relative, fit)
    planes = np.stack(to_optical_frame_planes(normals_chw, "opengl", K, normalise=False))
    rgb = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    est, stab = ConfidenceEstimator(), TemporalStabilizer()
    points = SparsePoints(sparse)  # the node finds a reference's returns once per reference message
    conf_out, depth = np.empty((H, W), np.float32), np.empty((H, W), np.float32)
    timings: dict[str, list[float]] = {}

    def frame(record: bool) -> None:
        np.copyto(depth, depth0)  # the node's depth buffer of this frame
        t = [time.perf_counter()]
        # what the node does when depth/confidence is published: rate on the grid, the frame-size map, gate
        est.rate(depth, K, planes, points)
        est.full_map(conf_out)
        t.append(time.perf_counter())
        gate_depth(depth, conf_out, args.min_confidence, out=depth)
        t.append(time.perf_counter())
        est.summary(args.min_confidence)
        t.append(time.perf_counter())
        stab.update(depth, rgb)
        t.append(time.perf_counter())
        if node is not None:
            node.ours(image_msg, pipe, chain, want, {})
        t.append(time.perf_counter())
        if record:
            for name, a, b in zip(("confidence", "gate", "summary", "stabiliser", "node_overhead"), t[:-1], t[1:],
                                  strict=True):
                timings.setdefault(name, []).append((b - a) * 1e3)
            timings.setdefault("confidence+gate+summary", []).append((t[3] - t[0]) * 1e3)

    for _ in range(args.warmup):
        frame(False)
    for _ in range(args.frames):
        frame(True)
    if node is None:
        timings.pop("node_overhead")
    result = {"benchmark": "confidence", "resolution": f"{W}x{H}", "grid_step": est.config.step((H, W)),
              "load_average_1min": os.getloadavg()[0], "cpu_count": os.cpu_count(),
              **{k: _stats(v) for k, v in timings.items()}}
    budget = result["confidence+gate+summary"]["p50_ms"]
    print(f"confidence at {W}x{H} (grid step {result['grid_step']}), {args.frames} frames after {args.warmup} warm-up; "
          f"load average {result['load_average_1min']:.1f} on {os.cpu_count()} cores")
    for k in ("confidence", "gate", "summary", "confidence+gate+summary", "stabiliser", "node_overhead"):
        if k in result:
            print(f"  {k:26s} p50 {result[k]['p50_ms']:6.3f} ms   p95 {result[k]['p95_ms']:6.3f} ms")
    if "node_overhead" in result:
        ratio = budget / result["node_overhead"]["p50_ms"]
        result["ratio_to_node_overhead_p50"] = ratio
        print(f"  confidence+gate+summary / node per-frame work (p50): {ratio:.2f}")
    print(f"  budget <= 1 ms p50: {'met' if budget <= 1.0 else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
