"""Quality of every backend x precision on the trained bundled model, over the held-out frames of its own (wide) synthetic world.

AbsRel, δ1 and mean normal angle (d3_perception.evaluation.heldout: the frames of models/*/quality.json) per
backend, with the relative change against torch fp32 (positive = worse), and the max abs output error vs
torch fp32 on the same frames (information only). INT8 is quantised here by the same code as
``d3-export --openvino --precision int8`` (NNCF, ``--calibration-frames`` synthetic world frames, no gate).

  .venv/bin/python bench/backend_quality.py --frames 200 --json bench/backend_quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from d3_perception.openvino_export import DEFAULT_CALIBRATION_FRAMES  # noqa: E402 - after the path insert

ROWS = (("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"),
        ("openvino", "bf16"), ("openvino", "int8"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=REPO / "models" / "d3_demo_tiny")
    p.add_argument("--frames", type=int, default=200, help="held-out frames (default 200, as quality.json)")
    p.add_argument("--calibration-frames", type=int, default=DEFAULT_CALIBRATION_FRAMES,
                   help=f"INT8 calibration frames (default {DEFAULT_CALIBRATION_FRAMES}, as d3-export)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime / OpenVINO / torch threads (default 2)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    import torch

    from d3_perception.backends import create_backend
    from d3_perception.backends.openvino_backend import int8_model_path
    from d3_perception.evaluation.heldout import heldout_quality, quality_change, synthetic_frames
    from d3_perception.model.config import checkpoint_hash

    torch.set_num_threads(a.threads)
    recorded = json.loads((a.checkpoint / "quality.json").read_text())
    hw = tuple(recorded["resolution"])
    rows: dict[str, dict] = {}
    probe = np.stack([f.rgb for f in synthetic_frames(16, hw)])  # first held-out frames, for max abs error
    reference_out = None
    with tempfile.TemporaryDirectory(prefix="d3_quality_") as work:
        ckpt = Path(work) / a.checkpoint.name
        shutil.copytree(a.checkpoint, ckpt, ignore=shutil.ignore_patterns(".cache"))  # caches stay out of it
        for name, precision in ROWS:
            kwargs = {"device": "cpu", "precision": precision}
            if name in ("onnxruntime", "openvino"):
                kwargs.update(num_threads=a.threads, exporter="legacy")
            t = time.perf_counter()
            if (name, precision) == ("openvino", "int8"):
                from d3_perception.openvino_export import quantize_int8

                onnx_path = rows["openvino fp32"]["_model"]
                cfg_tasks = rows["openvino fp32"]["_tasks"]
                quantize_int8(onnx_path, int8_model_path(ckpt / ".cache", checkpoint_hash(ckpt), cfg_tasks),
                              calibration_frames=a.calibration_frames)
            backend = create_backend(name, ckpt, **kwargs)
            prep_s = time.perf_counter() - t
            t = time.perf_counter()
            quality = heldout_quality(backend, a.frames, hw)
            out = backend.predict(probe)
            if reference_out is None:
                reference_out = out
            row = {**quality, "prepare_s": prep_s, "evaluate_s": time.perf_counter() - t,
                   "max_abs_error_vs_torch_fp32": {k: float(np.abs(out[k] - reference_out[k]).max()) for k in out}}
            if name == "openvino":
                row["_model"], row["_tasks"] = backend.model_path, backend.config.tasks
            rows[f"{name} {precision}"] = row
            print(f"[quality] {name} {precision}: {quality}", file=sys.stderr)
    ref = rows["torch fp32"]
    for row in rows.values():
        row["relative_degradation_vs_torch_fp32"] = quality_change(row, ref)
        row.pop("_model", None)
        row.pop("_tasks", None)
    result = {"checkpoint": str(a.checkpoint), "frames": a.frames, "frame_hw": list(hw),
              "calibration_frames": a.calibration_frames, "recorded_quality_json": {
                  k: recorded[k] for k in ("abs_rel", "delta1", "normals_mean_deg")},
              "rows": rows, "load_average_1min": os.getloadavg()[0]}
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
