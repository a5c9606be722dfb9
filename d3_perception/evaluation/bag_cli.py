"""d3-eval-bag: evaluate depth (and normals) predictions on a ROS 2 bag against recorded ground truth."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from d3_perception.backends import BACKENDS, PRECISIONS
from d3_perception.cli_args import run_cli

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)

EPILOG = """\
examples:
  # run the model on every camera frame with ground truth; topics auto-detected; per-frame alignment
  d3-eval-bag recording/ --checkpoint models/d3_tiny --out eval_out

  # a single MCAP file, explicit topics, one global scale+shift for the whole sequence, batches of 4
  d3-eval-bag run.mcap --checkpoint ckpt --image-topic /cam/color/image_raw \\
      --depth-topic /cam/aligned_depth_to_color/image_raw --metric-mode global --batch-size 4

  # what the live node publishes with a fixed scale/shift or with a sparse metric reference
  d3-eval-bag run/ --checkpoint ckpt --metric-mode fixed --scale 4.2 --shift 0.35
  d3-eval-bag run/ --checkpoint ckpt --metric-mode sparse_depth --sparse-topic /lidar/projected_depth

  # also write a bag with the node's output topics (depth, depth/relative, normals, points)
  d3-eval-bag run/ --checkpoint ckpt --write-bag run_pred/

  # evaluate predictions recorded from the live node (no model is run)
  d3-eval-bag run_pred/ --pred-topic /d3/depth/relative --depth-topic /cam/depth

  # only list the topics of a bag
  d3-eval-bag run/ --list-topics

outputs (in --out): metrics.json, report.md, per_frame.csv, metrics_over_time.png, error_histogram.png,
absrel_by_depth.png, scale_over_time.png, montage.png.
exit status: 0 complete; 1 the bag broke mid-way (partial report, marked INCOMPLETE); 2 bad input.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="d3-eval-bag", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("bag", help="ROS 2 bag: a bag folder (metadata.yaml) or a single .mcap / .db3 file")
    p.add_argument("--out", default=None, help="output folder (default: ./<bag name>_eval)")
    p.add_argument("--list-topics", action="store_true", help="print the bag's topics and exit")
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", default=None, help="checkpoint directory (default, unless --pred-topic: the bundled demo "
                   "model models/d3_demo_tiny)")
    g.add_argument("--backend", default="auto", choices=BACKENDS)
    g.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: the backend's choice)")
    g.add_argument("--precision", default="fp32", choices=PRECISIONS)
    g.add_argument("--resolution", type=int, default=None, help="processing resolution (long side, px); default: checkpoint")
    g.add_argument("--batch-size", type=int, default=1, help="frames per model call (default 1)")
    t = p.add_argument_group("topics (auto-detected when omitted; ambiguous choices are listed)")
    t.add_argument("--image-topic", default=None, help="sensor_msgs/Image (colour) or CompressedImage")
    t.add_argument("--depth-topic", default=None, help="ground-truth depth: Image 16UC1 (mm) or 32FC1 (m)")
    t.add_argument("--camera-info-topic", default=None, help="sensor_msgs/CameraInfo (needed for `points`)")
    t.add_argument("--sparse-topic", default=None, help="sparse metric depth 16UC1/32FC1 for --metric-mode sparse_depth")
    t.add_argument("--normals-topic", default=None, help="ground-truth normals Image 32FC3 in the optical frame")
    t.add_argument("--pred-topic", default=None,
                   help="evaluate this recorded 32FC1 prediction topic instead of running a model")
    t.add_argument("--pred-normals-topic", default=None, help="recorded 32FC3 normals (optical frame) with --pred-topic")
    t.add_argument("--max-dt-ms", type=float, default=10.0, help="stamp tolerance for matching (default 10 ms)")
    m = p.add_argument_group("metric depth")
    m.add_argument("--metric-mode", default="per_frame", choices=("per_frame", "global", "fixed", "sparse_depth", "none"),
                   help="per_frame: LS fit per frame; global: one LS fit over the bag; fixed: --scale/--shift; "
                        "sparse_depth: the node's robust sparse fit; none: the recorded prediction is metric")
    m.add_argument("--alignment-space", default="depth", choices=("depth", "disparity"))
    m.add_argument("--scale", type=float, default=1.0, help="fixed mode: metric = scale * relative + shift")
    m.add_argument("--shift", type=float, default=0.0)
    m.add_argument("--min-depth-m", type=float, default=1e-3, help="GT below this is invalid (default 0.001)")
    m.add_argument("--max-depth-m", type=float, default=math.inf, help="GT above this is invalid (default: no cap)")
    m.add_argument("--sparse-min-points", type=int, default=50)
    m.add_argument("--sparse-smoothing", type=float, default=0.8)
    o = p.add_argument_group("outputs")
    o.add_argument("--write-bag", default=None, metavar="OUT", help="write a bag with the predicted topics here")
    o.add_argument("--write-storage", default=None, choices=("mcap", "sqlite3"), help="default: the input's format")
    o.add_argument("--write-prefix", default="/d3", help="namespace of the written topics (default /d3)")
    o.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    o.add_argument("--montage-frames", type=int, default=4, help="frames shown in montage.png (default 4)")
    o.add_argument("--min-confidence", type=float, default=0.037,
                   help="confidence gate of the flying-point calibration (default 0.037, the node's min_confidence)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("-v", "--verbose", action="store_true")
    return p


class _UsageError(ValueError):
    pass


def _checkpoint_convention(checkpoint: str) -> str:
    """The checkpoint's normals convention (config.json), ``optical`` when unspecified."""
    try:
        return str(json.loads((Path(checkpoint) / "config.json").read_text()).get("normals_convention", "optical"))
    except (OSError, ValueError):
        return "optical"


def _run(args: argparse.Namespace) -> int:
    from d3_perception.evaluation.bag_eval import BagEvalConfig, evaluate_bag
    from d3_perception.evaluation.bag_source import BagSource

    if not Path(args.bag).exists():
        raise _UsageError(f"bag `{args.bag}` does not exist")
    if args.pred_topic is None and args.checkpoint is None and not args.list_topics:
        from d3_perception.cli_args import checkpoint_or_demo

        args.checkpoint = str(checkpoint_or_demo(None, "d3-eval-bag"))
    if args.pred_topic is not None and args.write_bag is not None:
        raise _UsageError("`--write-bag` needs a model run; with --pred-topic the predictions are already in the bag")
    if args.metric_mode == "none" and args.pred_topic is None:
        raise _UsageError("`--metric-mode none` needs --pred-topic with a metric (metres) prediction topic")
    if args.write_bag is not None and Path(args.write_bag).exists():
        raise _UsageError(f"`--write-bag` target {args.write_bag} already exists; choose a new path")
    cfg = BagEvalConfig(
        metric_mode=args.metric_mode, alignment_space=args.alignment_space, fixed_scale=args.scale,
        fixed_shift=args.shift, min_depth_m=args.min_depth_m, max_depth_m=args.max_depth_m, max_dt_ms=args.max_dt_ms,
        batch_size=args.batch_size, sparse_min_points=args.sparse_min_points, sparse_smoothing=args.sparse_smoothing,
        montage_frames=args.montage_frames, min_confidence=args.min_confidence,
        normals_convention=_checkpoint_convention(args.checkpoint) if args.checkpoint else "optical",
    )
    with BagSource(args.bag) as source:
        if args.list_topics:
            source._peek_all()
            for item in source.listing().split("; "):
                print(item)
            return 0
        topics = source.select(
            image=args.image_topic, depth=args.depth_topic, camera_info=args.camera_info_topic,
            sparse=args.sparse_topic, normals=args.normals_topic, pred=args.pred_topic,
            pred_normals=args.pred_normals_topic, need_image=args.pred_topic is None,
            need_sparse=args.metric_mode == "sparse_depth",
        )
        backend = None
        if args.pred_topic is None:
            backend = _create_backend(args)
        out_dir = Path(args.out) if args.out else Path.cwd() / f"{Path(args.bag).name.split('.')[0]}_eval"
        out_dir.mkdir(parents=True, exist_ok=True)
        bar = None

        def progress(total: int):
            nonlocal bar
            from tqdm import tqdm

            bar = tqdm(total=total, unit="frame", desc="d3-eval-bag", disable=args.no_progress)
            return bar.update

        try:
            result = evaluate_bag(source, topics, cfg, backend, write_bag=args.write_bag,
                                  write_storage=args.write_storage, write_prefix=args.write_prefix,
                                  progress=progress, scratch_dir=out_dir)
        finally:
            if bar is not None:
                bar.close()
            if backend is not None:
                backend.close()
    from d3_perception.evaluation.plots import write_bag_plots
    from d3_perception.evaluation.report import fmt, write_bag_report

    plots = [] if args.no_plots else write_bag_plots(result, out_dir)
    paths = write_bag_report(result, out_dir, args.bag, plots)
    a = result.aggregate
    print(f"{result.counts['evaluated']} frames ({result.counts['unmatched_frames']} without ground truth): "
          f"AbsRel {fmt(a['abs_rel'], 4)}  δ1 {fmt(a['delta1'], 4)}  RMSE {fmt(a['rmse'], 3)} m  "
          f"[{cfg.metric_mode}] -> {paths['markdown']}")
    cal = result.calibration
    if cal is not None:
        fly = cal["flying_points"]
        print(f"confidence: AUSE {fmt(cal['ause']['combined'], 4)} = {fmt(cal['ause_over_random'], 2)} x random"
              + ("" if fly is None else f"; flying points {fmt(fly['share_before'], 3)} -> {fmt(fly['share_after'], 3)}"
                 f" keeping {fmt(fly['kept_share'], 3)} at min_confidence {cal['min_confidence']}"))
    if not result.complete:
        print(f"d3-eval-bag: error: incomplete, {result.error} (partial report in {out_dir})", file=sys.stderr)
        return 1
    return 0


def _create_backend(args: argparse.Namespace):
    from d3_perception.backends import create_backend

    if not Path(args.checkpoint).is_dir():
        raise _UsageError(f"`--checkpoint` must be a checkpoint directory; got {args.checkpoint}")
    try:
        return create_backend(args.backend, args.checkpoint, device=args.device, precision=args.precision,
                              processing_resolution=args.resolution)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        raise _UsageError(f"cannot load checkpoint {args.checkpoint} with backend {args.backend}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from d3_perception.evaluation.bag_source import BagError

    return run_cli("d3-eval-bag", lambda: _run(args),
                   (BagError, _UsageError, ValueError, FileExistsError, FileNotFoundError),
                   interrupted="interrupted; no report written")


if __name__ == "__main__":
    sys.exit(main())
