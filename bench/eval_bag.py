"""Benchmark ``d3-eval-bag``: frames/s with the tiny model on a 640x480 bag and the share of time outside the model.

Writes a synthetic bag (rgb8 + 32FC1 ground truth + camera_info; default 300 frames, about 650 MB raw) to a
temporary folder, runs the evaluator twice in the same process and prints JSON:

- ``tiny_model``: the real tiny checkpoint on the torch backend (the named peer: the model itself); reports
  frames/s, the per-stage seconds (model, bag read + decode, metrics, bag write) and ``outside_model_share``
  (target <= 0.10);
- ``null_model``: an instant backend, i.e. the evaluator's own cost per frame (bag reading, decoding, matching,
  metrics), which bounds the overhead for any faster model; ``--with-write-bag`` adds the same with ``--write-bag``.

Usage: ``.venv/bin/python bench/eval_bag.py [--frames 300] [--size 480x640] [--storage mcap] [--tmp /tmp]``.
The bag is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from d3_perception.backends.base import Backend, BackendInfo  # noqa: E402


class NullBackend(Backend):
    """Returns a fixed gradient instantly: measures everything except the model."""

    info = BackendInfo("null", "cpu", "fp32", "null", ("depth",), 0)

    def predict(self, images, tasks=None):
        n, h, w = np.asarray(images).shape[:3]
        ramp = np.linspace(0.0, 1.0, h * w, dtype=np.float32).reshape(h, w)
        return {"depth": np.broadcast_to(ramp, (n, h, w)).copy()}


def write_bag(path: Path, frames: int, size_hw: tuple[int, int], storage: str) -> float:
    from d3_perception.rosbag_io import BagWriter
    from d3_perception.synthetic import SyntheticSequence

    seq = SyntheticSequence(seed=0, size_hw=size_hw, fps=30, kind="room")
    distinct = [seq.frame(i) for i in range(min(frames, 8))]  # rendering 300 frames would dominate the setup
    t = time.perf_counter()
    with BagWriter(path, storage=storage) as bag:
        for i in range(frames):
            f = distinct[i % len(distinct)]
            stamp = 1_700_000_000_000_000_000 + i * 33_333_333
            bag.write_image("/cam/image", f.rgb, "rgb8", stamp, "cam_optical")
            bag.write_image("/cam/depth", np.where(f.valid, f.depth_m, np.nan).astype(np.float32), "32FC1", stamp,
                            "cam_optical")
            bag.write_camera_info("/cam/camera_info", f.K, size_hw, stamp, "cam_optical")
    return time.perf_counter() - t


def run(bag: Path, backend, out_dir: Path, write_bag: Path | None = None) -> dict:
    from d3_perception.evaluation.bag_eval import BagEvalConfig, evaluate_bag
    from d3_perception.evaluation.bag_source import BagSource
    from d3_perception.evaluation.plots import write_bag_plots
    from d3_perception.evaluation.report import write_bag_report

    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with BagSource(bag) as source:
        topics = source.select()
        result = evaluate_bag(source, topics, BagEvalConfig(), backend, scratch_dir=out_dir, write_bag=write_bag)
    t_eval = time.perf_counter() - t0
    t1 = time.perf_counter()
    write_bag_report(result, out_dir, str(bag), write_bag_plots(result, out_dir))
    t_report = time.perf_counter() - t1
    n = result.counts["evaluated"]
    ts = result.timing_s
    total = t_eval + t_report
    return {
        "frames": n,
        "frames_per_s": n / total,
        "seconds": {"total": total, "evaluate": t_eval, "model": ts["model"], "read_decode": ts["read_decode"],
                    "metrics": ts["metrics"], "write_bag": ts["write_bag"], "report_and_plots": t_report},
        "per_frame_ms": {"total": 1e3 * total / n, "outside_model": 1e3 * (total - ts["model"]) / n,
                         "model": 1e3 * ts["model"] / n},
        "outside_model_share": (total - ts["model"]) / total,
        "model_latency_ms": result.latency_ms["model"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--size", default="480x640", help="HxW (default 480x640)")
    p.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    p.add_argument("--tmp", default=tempfile.gettempdir(), help="where the bag is written (default /tmp)")
    p.add_argument("--skip-model", action="store_true", help="only the null-model run(s)")
    p.add_argument("--with-write-bag", action="store_true",
                   help="also time the null model with --write-bag (depth, relative, points, copies of the inputs)")
    p.add_argument("--keep", action="store_true", help="keep the bag and reports")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="d3_bench_eval_bag_", dir=args.tmp))
    try:
        bag = work / "bag"
        write_s = write_bag(bag, args.frames, (h, w), args.storage)
        size_mb = sum(f.stat().st_size for f in bag.iterdir()) / 1e6
        out = {
            "bench": "eval_bag", "frames": args.frames, "size_hw": [h, w], "storage": args.storage,
            "bag_mb": round(size_mb, 1), "bag_write_s": write_s,
            "machine": f"{os.cpu_count()}-core CPU ({platform.machine()}), no GPU",
        }
        out["null_model"] = run(bag, NullBackend(), work / "null")
        if args.with_write_bag:
            out["null_model_write_bag"] = run(bag, NullBackend(), work / "null_wb", write_bag=work / "written")
            shutil.rmtree(work / "written", ignore_errors=True)
        if not args.skip_model:
            from d3_perception.backends import create_backend
            from d3_perception.model import build_random_checkpoint

            ckpt = build_random_checkpoint(work / "tiny", preset="tiny", tasks=("depth",))
            backend = create_backend("torch", ckpt, device="cpu")
            backend.predict(np.zeros((1, h, w, 3), np.uint8))  # warm-up, not timed
            out["tiny_model"] = run(bag, backend, work / "tiny_out")
            out["tiny_model"]["backend"] = {"name": backend.info.name, "processing_resolution":
                                            backend.info.processing_resolution, "model_id": backend.info.model_id}
            out["target_outside_model_share_max"] = 0.10
            out["meets_target"] = out["tiny_model"]["outside_model_share"] <= 0.10
        print(json.dumps(out, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
