"""Synthetic renderer throughput: frames/s at 320x240 and 640x480 against the targets (50 ms / 200 ms).

Each resolution renders, per scene kind (room, outdoor, and the wide world's world and shift families), 4 seeds'
sequences (frames spread along the trajectory) after a warm-up; reported per kind: median and p95 wall ms per
frame, median CPU ms (process time: robust when other jobs share the cores), frames/s, and the ratio of the
targets to the CPU time. Peer, measured in the same run: the same renderer without screen-space culling (every
primitive intersected with every pixel, the plain vectorised ray caster of reference/tiny_pipeline_on_cpu.md §1).
Also: the training data rate of the wide world (d3_training SyntheticDataset, 64x64, a new scene per sample,
sensor effects included), the d3-synth-bag write rate, and the 1-minute load average before and after (the
machine may be shared).

  .venv/bin/python bench/synthetic.py                      # about a minute on 2 cores
  .venv/bin/python bench/synthetic.py --frames 20 --json synthetic_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

TARGETS_MS = {(240, 320): 50.0, (480, 640): 200.0}


@contextmanager
def _no_culling():
    import importlib

    render_mod = importlib.import_module("d3_perception.synthetic.render")  # the module, not the function
    original = render_mod._screen_rect
    render_mod._screen_rect = lambda center, radius, rot, eye, K, hw: ((0, hw[0], 0, hw[1]), -np.inf)
    try:
        yield
    finally:
        render_mod._screen_rect = original


KINDS = ("room", "outdoor", "world", "shift")


def _time_frames(hw, frames: int, peer_every: int, kind: str, seeds=(0, 1, 2, 3)) -> dict[str, np.ndarray]:
    """Wall and CPU ms per frame for ours and (interleaved, every ``peer_every``-th frame) the peer."""
    from d3_perception.synthetic import SyntheticSequence

    out: dict[str, list[float]] = {"wall": [], "cpu": [], "peer_wall": [], "peer_cpu": []}
    for seed in seeds:
        seq = SyntheticSequence(seed, hw, 10.0, kind)
        seq.frame(0)  # warm-up (allocations, caches)
        for i in range(frames):
            runs = [("", False)] + ([("peer_", True)] if i % peer_every == 0 else [])
            for prefix, peer in runs:
                w0, c0 = time.perf_counter(), time.process_time()
                if peer:
                    with _no_culling():
                        seq.frame(1 + i * 37)
                else:
                    seq.frame(1 + i * 37)
                out[prefix + "wall"].append((time.perf_counter() - w0) * 1e3)
                out[prefix + "cpu"].append((time.process_time() - c0) * 1e3)
    return {k: np.asarray(v) for k, v in out.items()}


def _training_sample_ms(samples: int) -> tuple[float, float]:
    """(wall, CPU) ms per 64x64 training sample of the wide world, each from its own scene (scene build included)."""
    from d3_training.data import SyntheticDataset

    data = SyntheticDataset((64, 64), samples * 4, seed=0, kind="world")
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(samples):
        data[i * 4]
    return (time.perf_counter() - w0) * 1e3 / samples, (time.process_time() - c0) * 1e3 / samples


def _bag_rate(frames: int) -> float:
    from d3_perception.synthetic.bag_cli import main

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        main([str(Path(tmp) / "bag"), "--frames", str(frames), "--size", "320x240", "--no-progress"])
        return frames / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5, help="frames per sequence (4 sequences per kind and resolution)")
    parser.add_argument("--peer-every", type=int, default=2, help="time the no-culling peer on every n-th frame")
    parser.add_argument("--training-samples", type=int, default=100, help="wide-world training samples to time")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)

    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU (numpy {np.__version__})",
               "load_avg_1min_before": os.getloadavg()[0], "resolutions": []}
    print(f"synthetic renderer ({results['machine']}; 1-min load average {results['load_avg_1min_before']:.2f})")
    print(f"{'size':>9} | {'kind':>7} | {'median ms':>9} | {'p95 ms':>7} | {'CPU ms':>7} | {'frames/s':>8} | "
          f"{'target ms':>9} | {'target/CPU ms':>14} | {'peer CPU ms':>12} | {'vs peer':>12}")
    for hw, target in TARGETS_MS.items():
        for kind in KINDS:
            t = _time_frames(hw, args.frames, args.peer_every, kind)
            med, p95 = float(np.median(t["wall"])), float(np.percentile(t["wall"], 95))
            cpu, peer_cpu = float(np.median(t["cpu"])), float(np.median(t["peer_cpu"]))
            row = {"size_wh": [hw[1], hw[0]], "kind": kind, "median_ms": med, "p95_ms": p95, "median_cpu_ms": cpu,
                   "fps": 1e3 / med, "target_ms": target, "target_ratio": target / med, "target_ratio_cpu": target / cpu,
                   "peer": "no screen-space culling", "peer_median_ms": float(np.median(t["peer_wall"])),
                   "peer_median_cpu_ms": peer_cpu, "speedup_vs_peer_cpu": peer_cpu / cpu, "frames": int(t["wall"].size)}
            results["resolutions"].append(row)
            print(f"{hw[1]:>4}x{hw[0]:<4} | {kind:>7} | {med:9.1f} | {p95:7.1f} | {cpu:7.1f} | {1e3 / med:8.1f} | "
                  f"{target:9.0f} | {target / cpu:13.2f}x | {peer_cpu:12.1f} | {peer_cpu / cpu:11.2f}x")
    wall, cpu = _training_sample_ms(args.training_samples)
    results["world_training_sample_64px"] = {"wall_ms": wall, "cpu_ms": cpu, "samples": args.training_samples}
    print(f"wide-world training sample 64x64 (new scene each, sensor effects): {wall:.1f} ms wall, {cpu:.1f} ms CPU")
    results["bag_frames_per_s_320x240"] = _bag_rate(20)
    print(f"d3-synth-bag 320x240 (render + 5 topics, MCAP): {results['bag_frames_per_s_320x240']:.1f} frames/s")
    results["load_avg_1min_after"] = os.getloadavg()[0]
    print(f"1-min load average after: {results['load_avg_1min_after']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
