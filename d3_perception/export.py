"""``d3-export``: checkpoint -> ONNX (parity-checked against torch) -> optional TensorRT engine / OpenVINO model.

Library functions: :func:`export_onnx` (re-exported from :mod:`d3_perception.backends.onnx_io`),
:func:`parity_report`, :func:`build_tensorrt_engine`; the CLI is :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from d3_perception.backends.onnx_io import DEFAULT_OPSET, EXPORTERS, export_onnx
from d3_perception.cli_args import run_cli
from d3_perception.openvino_export import DEFAULT_CALIBRATION_FRAMES

__all__ = ["build_tensorrt_engine", "export_onnx", "main", "parity_report"]

logger = logging.getLogger(__name__)

EPILOG = """examples:
  # ONNX with dynamic batch and H x W (any aspect ratio), parity report written beside it
  d3-export models/d3_tiny --output d3_tiny.onnx
  # fixed 576x768 input, depth only, opset 18
  d3-export models/d3_tiny --output depth_576x768.onnx --height 576 --width 768 --tasks depth
  # on a GPU machine (e.g. Jetson): also build a validated FP16 TensorRT engine into a cache directory
  d3-export models/d3_sd21 --output d3.onnx --tensorrt --precision fp16 --resolution 512 --engine-cache engines/
  # x86 CPU: NNCF INT8 model (128 synthetic calibration frames), refused if held-out quality drops > 2 %
  d3-export models/d3_demo_tiny --openvino --precision int8 --calibration-frames 128 --quality-tolerance 0.02
"""


def parity_report(checkpoint, onnx_path, *, sizes: Sequence[tuple[int, int]] | None = None, batch: int = 2,
                  tolerance: float = 1e-3, seed: int = 0, predictor=None) -> dict[str, Any]:
    """Max abs error of ONNX Runtime (CPU, fp32) vs torch (fp32) per task on random inputs.

    sizes: network input (H, W) list, multiples of 64; None = the file's fixed size, or for dynamic files
    the processing resolution square and a 3:4 landscape. Returns a JSON-ready dict with ``passed``.
    """
    import torch

    from d3_perception.backends.onnx_io import read_onnx_metadata
    from d3_perception.backends.onnxruntime_backend import make_session
    from d3_perception.model import load_pretrained

    meta = read_onnx_metadata(onnx_path)
    tasks = tuple(meta.get("d3_tasks", "").split(",")) if meta.get("d3_tasks") else None
    if predictor is None:
        predictor = load_pretrained(checkpoint, tasks=tasks)
    if sizes is None:
        if meta.get("d3_hw", "dynHW") != "dynHW":
            sizes = [tuple(int(v) for v in meta["d3_hw"].split("x"))]
        else:
            r = predictor.config.processing_resolution
            sizes = [(r, r), (-(-(r * 3 // 4) // 64) * 64, r)]
    session = make_session(onnx_path)
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    lo, hi = predictor.config.input_range
    results = []
    worst: dict[str, float] = {}
    for h, w in sizes:
        x = (rng.random((batch, 3, h, w), dtype=np.float32) * (hi - lo) + lo).astype(np.float32)
        with torch.inference_mode():
            ref = {k: v.float().numpy() for k, v in predictor(torch.from_numpy(x), tasks).items()}
        got = dict(zip(names, session.run(names, {"image": x}), strict=True))
        errs = {t: float(np.max(np.abs(got[t] - ref[t]))) for t in ref}
        for t, e in errs.items():
            worst[t] = max(worst.get(t, 0.0), e)
        results.append({"input_shape": [batch, 3, h, w], "max_abs_error": errs})
    return {"onnx": str(onnx_path), "checkpoint": str(checkpoint), "reference": "torch fp32 cpu",
            "candidate": "onnxruntime fp32 CPUExecutionProvider", "max_abs_error": worst,
            "tolerance": tolerance, "passed": all(e <= tolerance for e in worst.values()), "cases": results}


def build_tensorrt_engine(checkpoint, onnx_path, *, precision: str = "fp16", resolution: int | None = None,
                          max_batch: int = 1, cache_dir=None, fp16_tolerance: float = 0.05, **inject) -> dict[str, Any]:
    """Build (or find in the cache) a validated TensorRT engine; returns what happened as a dict."""
    from d3_perception.backends import create_backend

    backend = create_backend("tensorrt", checkpoint, onnx_path=onnx_path, precision=precision,
                             processing_resolution=resolution, max_batch=max_batch, cache_dir=cache_dir,
                             fp16_tolerance=fp16_tolerance, **inject)
    engine_path, key_path = backend.cache.paths(backend.key)
    meta = json.loads(key_path.read_text())
    return {"engine": str(engine_path), "key_file": str(key_path), "status": backend.cache_status,
            "key": backend.key.to_dict(), "validation": meta.get("validation")}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d3-export", description=__doc__.splitlines()[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, nargs="?", default=None,
                   help="checkpoint directory (config.json + model.safetensors); default: the bundled demo model "
                        "models/d3_demo_tiny (trained on synthetic scenes only)")
    p.add_argument("--output", "-o", type=Path, default=None,
                   help="ONNX file to write (default: <checkpoint>/<model_id>.onnx; with the bundled demo model "
                        "./<model_id>.onnx)")
    p.add_argument("--tasks", nargs="+", default=None, help="subset of the checkpoint's tasks (default: all)")
    p.add_argument("--height", type=int, default=None, help="fixed network input height (multiple of 64)")
    p.add_argument("--width", type=int, default=None, help="fixed network input width (multiple of 64)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, >= 17 (default {DEFAULT_OPSET})")
    p.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                   help="torch.onnx exporter: dynamo (default; one .data file for >2 GB models) or legacy "
                        "(TorchScript tracing: much faster on small models, deprecated by PyTorch)")
    p.add_argument("--no-parity", action="store_true", help="skip the torch vs ONNX Runtime parity check")
    p.add_argument("--parity-tolerance", type=float, default=1e-3, help="max abs error allowed (default 1e-3)")
    p.add_argument("--parity-json", type=Path, default=None,
                   help="where to save the parity report (default: <output>.parity.json)")
    p.add_argument("--tensorrt", action="store_true", help="also build a TensorRT engine (needs an NVIDIA GPU)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8"), default=None,
                   help="TensorRT: fp16 (default) or fp32; OpenVINO: fp32 (default), bf16 or int8")
    p.add_argument("--resolution", type=int, default=None,
                   help="TensorRT profile: long side in px (default: the checkpoint's processing_resolution)")
    p.add_argument("--max-batch", type=int, default=1, help="TensorRT profile: largest batch (default 1)")
    p.add_argument("--engine-cache", type=Path, default=None,
                   help="TensorRT engine / OpenVINO model cache directory (default: <checkpoint>/.cache/{tensorrt,openvino})")
    p.add_argument("--fp16-tolerance", type=float, default=0.05,
                   help="FP16 engine vs FP32 ONNX Runtime: max abs error accepted on the probe (default 0.05)")
    # --- OpenVINO (issue #18) ---
    ov = p.add_argument_group("OpenVINO (x86 CPU; int8 needs nncf)")
    ov.add_argument("--openvino", action="store_true",
                    help="compile and cache an OpenVINO model (fp32/bf16) or quantise one with NNCF (int8); bf16 "
                         "and int8 must pass the held-out quality check against fp32")
    ov.add_argument("--calibration-frames", type=int, default=DEFAULT_CALIBRATION_FRAMES,
                    help=f"int8: calibration frames for NNCF (default {DEFAULT_CALIBRATION_FRAMES}; with "
                         "--calibration-images at most this many, spread over them)")
    ov.add_argument("--calibration-images", nargs="+", metavar="PATH", default=None,
                    help="int8: calibrate on these images (files, folders searched recursively, globs), e.g. "
                         "frames of the deployment camera, instead of synthetic frames; the quality check still "
                         "uses the held-out synthetic frames")
    ov.add_argument("--calibration-bag", metavar="BAG", default=None,
                    help="int8: calibrate on the camera frames of this ROS 2 bag (folder, .mcap or .db3), spread "
                         "over the recording")
    ov.add_argument("--calibration-topic", metavar="TOPIC", default=None,
                    help="int8: the bag's camera topic (Image or CompressedImage; default: its one camera topic)")
    ov.add_argument("--calibration-resolution", type=int, default=None,
                    help="int8: long side of the calibration frames, a multiple of 64 (default: the processing "
                         "resolution; lower it for SD2.1-size models: NNCF's statistics need > 20 GiB at 768)")
    ov.add_argument("--quality-frames", type=int, default=100,
                    help="bf16/int8: held-out synthetic frames of the quality check (default 100)")
    ov.add_argument("--quality-tolerance", type=float, default=0.02,
                    help="bf16/int8: largest relative degradation of AbsRel, delta1 or normals angle vs fp32 "
                         "(default 0.02 = 2 %%); worse models are refused and not written")
    ov.add_argument("--threads", type=int, default=None, help="OpenVINO inference threads (default: all cores)")
    # --- end OpenVINO ---
    p.add_argument("--verbose", "-v", action="store_true", help="log progress at INFO level")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return run_cli("d3-export", lambda: _run(args), (ValueError, FileNotFoundError, RuntimeError))


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from d3_perception.cli_args import checkpoint_or_demo
    from d3_perception.model import load_pretrained

    given = args.checkpoint is not None
    args.checkpoint = checkpoint_or_demo(args.checkpoint, "d3-export")
    if (args.height is None) != (args.width is None):
        raise ValueError(f"`--height` and `--width` must be given together; got {args.height}, {args.width}")
    hw = (args.height, args.width) if args.height is not None else None
    _check_precision(args)
    steps = ["load", "export", *([] if args.no_parity else ["parity"]), *(["tensorrt"] if args.tensorrt else []),
             *(["openvino"] if args.openvino else [])]
    summary: dict[str, Any] = {}
    with tqdm(total=len(steps), desc="d3-export", unit="step", file=sys.stderr) as bar:
        bar.set_postfix_str("loading checkpoint")
        predictor = load_pretrained(args.checkpoint, tasks=args.tasks)
        # the bundled model may sit in a read-only install or a source checkout: write next to the user instead
        out = args.output or ((args.checkpoint if given else Path.cwd()) / f"{predictor.config.model_id}.onnx")
        bar.update()
        bar.set_postfix_str(f"exporting ({args.exporter})")
        export_onnx(args.checkpoint, out, tasks=args.tasks, hw=hw, opset=args.opset, exporter=args.exporter,
                    predictor=predictor)
        summary["onnx"] = str(out)
        bar.update()
        if not args.no_parity:
            bar.set_postfix_str("parity vs torch")
            report = parity_report(args.checkpoint, out, tolerance=args.parity_tolerance, predictor=predictor)
            parity_path = args.parity_json or out.with_name(out.name + ".parity.json")
            parity_path.write_text(json.dumps(report, indent=2) + "\n")
            summary["parity"] = {"max_abs_error": report["max_abs_error"], "passed": report["passed"],
                                 "report": str(parity_path)}
            bar.update()
            if not report["passed"]:
                print(json.dumps(summary, indent=2))
                raise RuntimeError(f"parity failed: max abs error {report['max_abs_error']} above "
                                   f"{args.parity_tolerance} (report: {parity_path})")
        if args.tensorrt:
            bar.set_postfix_str("TensorRT engine")
            from d3_perception.backends import BackendUnavailable

            try:
                summary["tensorrt"] = build_tensorrt_engine(
                    args.checkpoint, out, precision=args.precision, resolution=args.resolution,
                    max_batch=args.max_batch, cache_dir=args.engine_cache, fp16_tolerance=args.fp16_tolerance)
            except BackendUnavailable as err:
                raise RuntimeError(f"TensorRT engine not built: {err}") from None
            bar.update()
        if args.openvino:
            bar.set_postfix_str(f"OpenVINO {args.openvino_precision}")
            summary["openvino"] = _openvino_step(args, out)
            bar.update()
    print(json.dumps(summary, indent=2))
    return 0


def _check_precision(args: argparse.Namespace) -> None:
    """Per-target precision defaults and limits, checked before the (slow) export starts."""
    from d3_perception.openvino_export import CalibrationFrames

    args.calibration = CalibrationFrames(args.calibration_images or (), args.calibration_bag, args.calibration_topic)
    given = "--calibration-images" if args.calibration_images else "--calibration-bag"
    if args.calibration.from_camera and not args.openvino:
        raise ValueError(f"`{given}` must come with --openvino --precision int8 (only INT8 is calibrated)")
    if args.openvino:
        args.openvino_precision = args.precision or "fp32"
        if args.openvino_precision not in ("fp32", "bf16", "int8"):
            raise ValueError(f"`--precision` must be fp32, bf16 or int8 with --openvino; got {args.precision}")
        if args.openvino_precision == "int8":
            from d3_perception.openvino_export import _require_nncf

            _require_nncf()
        if args.calibration_resolution is not None:
            from d3_perception.model.config import check_processing_resolution

            check_processing_resolution(args.calibration_resolution, "--calibration-resolution")
        if args.calibration.from_camera:
            if args.openvino_precision != "int8":
                raise ValueError(f"`{given}` must come with --precision int8 (only INT8 is calibrated)")
            args.calibration.check()  # nothing found, or no single camera topic: stop now
        if args.tensorrt and args.precision is not None:
            raise ValueError("`--precision` must apply to one target: give --tensorrt and --openvino separately")
    if args.tensorrt:
        args.precision = args.precision or "fp16"
        if args.precision not in ("fp16", "fp32"):
            raise ValueError(f"`--precision` must be fp16 or fp32 with --tensorrt; got {args.precision}")


def _openvino_step(args: argparse.Namespace, onnx_path: Path) -> dict[str, Any]:
    from d3_perception.backends import BackendUnavailable
    from d3_perception.openvino_export import QualityRejected, export_openvino

    try:
        return export_openvino(args.checkpoint, onnx_path, precision=args.openvino_precision,
                               cache_dir=args.engine_cache, calibration_frames=args.calibration_frames,
                               calibration_resolution=args.calibration_resolution,
                               calibration=args.calibration, quality_frames=args.quality_frames,
                               tolerance=args.quality_tolerance, num_threads=args.threads)
    except BackendUnavailable as err:
        raise RuntimeError(f"OpenVINO model not built: {err}") from None
    except QualityRejected as err:
        raise RuntimeError(f"{err}; nothing written (raise --quality-tolerance or add --calibration-frames)"
                           ) from None


if __name__ == "__main__":
    raise SystemExit(main())
