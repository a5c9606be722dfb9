"""Synthetic renderer throughput: frames/s at 320x240 and 640x480 against the targets (50 ms / 200 ms).

Each resolution renders room and outdoor sequences (4 seeds each, frames spread along the trajectory) after a
warm-up; reported: median and p95 wall ms per frame, median CPU ms (process time: robust when other jobs
share the cores), frames/s, and the ratio of the targets to the CPU time. Peer, measured in the
same run: the same renderer without screen-space culling (every primitive intersected with every pixel,
the plain vectorised ray caster of reference/tiny_pipeline_on_cpu.md §1). Also: d3-synth-bag write rate.

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


def _time_frames(hw, frames: int, peer_every: int, seeds=(0, 1, 2, 3)) -> dict[str, np.ndarray]:
    """Wall and CPU ms per frame for ours and (interleaved, every ``peer_every``-th frame) the peer."""
    from d3_perception.synthetic import SyntheticSequence

    out: dict[str, list[float]] = {"wall": [], "cpu": [], "peer_wall": [], "peer_cpu": []}
    for kind in ("room", "outdoor"):
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


def _bag_rate(frames: int) -> float:
    from d3_perception.synthetic.bag_cli import main

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        main([str(Path(tmp) / "bag"), "--frames", str(frames), "--size", "320x240", "--no-progress"])
        return frames / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5, help="frames per sequence (8 sequences per resolution)")
    parser.add_argument("--peer-every", type=int, default=2, help="time the no-culling peer on every n-th frame")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)

    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU (numpy {np.__version__})",
               "resolutions": []}
    print(f"synthetic renderer ({results['machine']})")
    print(f"{'size':>9} | {'median ms':>9} | {'p95 ms':>7} | {'CPU ms':>7} | {'frames/s':>8} | {'target ms':>9} | "
          f"{'target/CPU ms':>14} | {'peer CPU ms':>12} | {'vs peer':>12}")
    for hw, target in TARGETS_MS.items():
        t = _time_frames(hw, args.frames, args.peer_every)
        med, p95 = float(np.median(t["wall"])), float(np.percentile(t["wall"], 95))
        cpu, peer_cpu = float(np.median(t["cpu"])), float(np.median(t["peer_cpu"]))
        row = {"size_wh": [hw[1], hw[0]], "median_ms": med, "p95_ms": p95, "median_cpu_ms": cpu, "fps": 1e3 / med,
               "target_ms": target, "target_ratio": target / med, "target_ratio_cpu": target / cpu,
               "peer": "no screen-space culling", "peer_median_ms": float(np.median(t["peer_wall"])),
               "peer_median_cpu_ms": peer_cpu, "speedup_vs_peer_cpu": peer_cpu / cpu, "frames": int(t["wall"].size)}
        results["resolutions"].append(row)
        print(f"{hw[1]:>4}x{hw[0]:<4} | {med:9.1f} | {p95:7.1f} | {cpu:7.1f} | {1e3 / med:8.1f} | {target:9.0f} | "
              f"{target / cpu:13.2f}x | {peer_cpu:12.1f} | {peer_cpu / cpu:11.2f}x")
    results["bag_frames_per_s_320x240"] = _bag_rate(20)
    print(f"d3-synth-bag 320x240 (render + 5 topics, MCAP): {results['bag_frames_per_s_320x240']:.1f} frames/s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
