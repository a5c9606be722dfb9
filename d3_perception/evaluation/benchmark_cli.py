"""d3-eval: a checkpoint on the standard depth and normal benchmarks (Marigold / DSINE protocols)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml

from d3_perception.backends import BACKENDS, PRECISIONS
from d3_perception.cli_args import run_cli
from d3_perception.geometry.confidence import DEFAULT_MIN_CONFIDENCE

__all__ = ["PUBLISHED_PATH", "build_parser", "evaluate_dataset", "main", "render_markdown"]

logger = logging.getLogger(__name__)

PUBLISHED_PATH = Path(__file__).resolve().parents[2] / "config" / "eval" / "published.yaml"

EPILOG = """\
examples:
  # all five depth sets in the Marigold layout under /data/marigold_eval (folders or .tar files)
  d3-eval --checkpoint models/d3_tiny --data-root /data/marigold_eval --datasets depth

  # a quick look: first 20 samples of NYUv2 and KITTI at 768 px, ONNX Runtime
  d3-eval --checkpoint ckpt --data-root /data --datasets nyuv2,kitti --limit 20 --resolution 768 --backend onnxruntime

  # each set at the resolution of the published protocol (config/eval/<set>.yaml: processing_resolution)
  d3-eval --checkpoint ckpt --data-root /data --datasets all --resolution protocol

  # DSINE normal sets; split files from DSINE's repository
  d3-eval --checkpoint ckpt --data-root /data --datasets normals \\
      --split-file ibims_normals=/src/DSINE/data/datasets/ibims/split/test.txt

data layout (relative to --data-root; see config/eval/<name>.yaml and docs/evaluation.md):
  nyuv2/nyu_labeled_extracted.tar  kitti/kitti_eigen_split_test.tar  eth3d/eth3d.tar
  scannet/scannet_val_sampled_800_1.tar  diode/diode_val.tar  (each may also be an unpacked folder)
  data_split/...  Marigold's split files;  dsine_eval/<set>/...  DSINE's normal sets with split/test.txt
outputs (in --out): benchmark.json, benchmark.md (published competitor numbers beside ours; for depth
sets also the confidence calibration: AUSE of AbsRel vs random, flying points before/after --min-confidence).
"""


def build_parser() -> argparse.ArgumentParser:
    from d3_perception.evaluation.datasets import DEPTH_DATASETS, NORMAL_DATASETS

    p = argparse.ArgumentParser(prog="d3-eval", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint directory (default: the bundled demo model models/d3_demo_tiny)")
    p.add_argument("--data-root", required=True, help="folder holding the benchmark sets and split files")
    p.add_argument("--datasets", default="depth",
                   help=f"comma list of {', '.join(DEPTH_DATASETS + NORMAL_DATASETS)}, or depth / normals / all "
                        "(default depth); a path to a YAML config also works")
    p.add_argument("--split-file", action="append", default=[], metavar="NAME=PATH",
                   help="split file of one dataset, overriding its config (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples of each set (partial)")
    p.add_argument("--resolution", default=None,
                   help="processing resolution, long side px (multiple of 64), or `protocol` for each set's value in "
                        "config/eval (Marigold/DSINE); default: the checkpoint's")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--alignment", default=None, choices=("depth", "disparity"),
                   help="override the alignment space of the depth protocol (default: depth, as Marigold)")
    p.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE,
                   help=f"confidence gate of the flying-point calibration of the depth sets (default "
                        f"{DEFAULT_MIN_CONFIDENCE}, the node's min_confidence)")
    p.add_argument("--out", default="eval_benchmark", help="output folder (default ./eval_benchmark)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _dataset_names(spec: str) -> list[str]:
    from d3_perception.evaluation.datasets import DEPTH_DATASETS, NORMAL_DATASETS

    groups = {"depth": list(DEPTH_DATASETS), "normals": list(NORMAL_DATASETS),
              "all": list(DEPTH_DATASETS + NORMAL_DATASETS)}
    names: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        for name in groups.get(item, [item]):
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError(f"`--datasets` must name at least one dataset; got {spec!r}")
    return names


def _split_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"`--split-file` must be NAME=PATH; got {item!r}")
        out[name] = path
    return out


def evaluate_dataset(dataset, backend, *, limit: int | None = None, normals_convention: str = "optical",
                     alignment: str | None = None, progress: bool = True,
                     min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> dict:
    """Run ``backend`` on one opened benchmark set; returns the JSON-ready result of that set.

    Depth sets also get ``calibration``: the node's confidence (:class:`ConfidenceEstimator`) of each aligned
    prediction, ranked against its AbsRel (AUSE vs random) and the flying points before and after the
    ``min_confidence`` gate. Only the ``edges`` cue acts here: the sets ship no camera matrix (the normals cue
    needs one, and the model's normals would cost a second pass) and no sparse reference."""
    from tqdm import tqdm

    from d3_perception.evaluation.calibration import ConfidenceCalibration
    from d3_perception.evaluation.metrics import (
        DEPTH_METRICS,
        NormalErrorAccumulator,
        evaluate_depth,
        mean_metrics,
        normal_angles_deg,
    )
    from d3_perception.geometry.confidence import ConfidenceEstimator
    from d3_perception.geometry.normals import to_optical_frame

    cfg = dataset.config
    protocol = cfg.depth
    if alignment is not None and protocol is not None:
        from dataclasses import replace

        protocol = replace(protocol, alignment=alignment)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    per_sample: list[dict] = []
    skipped: list[str] = []
    pooled = NormalErrorAccumulator()
    estimator, calibration = ConfidenceEstimator(), ConfidenceCalibration(min_confidence)
    model_s = 0.0
    it = iter(dataset)
    for _ in tqdm(range(total), desc=cfg.name, unit="img", disable=not progress):
        sample = next(it)
        task = "depth" if cfg.task == "depth" else "normals"
        t = time.perf_counter()
        out = backend.predict(sample.rgb[None], tasks=(task,))
        model_s += time.perf_counter() - t
        if cfg.task == "depth":
            pred = np.asarray(out["depth"][0], np.float32)  # [H,W] relative, 0 = near
            mask = protocol.valid_mask(sample.depth_m, sample.mask)
            if np.count_nonzero(mask) < 2:
                skipped.append(sample.name)
                continue
            try:
                metrics, aligned = evaluate_depth(pred, sample.depth_m, mask, protocol)
            except ValueError as exc:
                logger.warning("%s: %s skipped: %s", cfg.name, sample.name, exc)
                skipped.append(sample.name)
                continue
            per_sample.append({"name": sample.name, **metrics})
            aligned = np.where(np.isfinite(aligned), aligned, np.float32(np.nan)).astype(np.float32, copy=False)
            calibration.add(aligned, sample.depth_m, mask, estimator.compute(aligned))
        else:
            pred_n = to_optical_frame(out["normals"][0], normals_convention)  # [H,W,3]
            valid = np.any(sample.normals != 0, axis=-1) & np.all(np.isfinite(pred_n), axis=-1)
            angles = normal_angles_deg(np.nan_to_num(pred_n), sample.normals, valid)
            if angles.size == 0:
                skipped.append(sample.name)
                continue
            pooled.update(angles)
            per_sample.append({"name": sample.name, "mean": float(angles.mean()), "pixels": int(angles.size)})
    keys = DEPTH_METRICS if cfg.task == "depth" else ("mean",)
    if cfg.task == "depth":
        metrics = mean_metrics(per_sample, keys) if per_sample else dict.fromkeys(keys, math.nan)
    else:
        metrics = pooled.result() if pooled.count else {}
    evaluated = len(per_sample)
    return {
        "name": cfg.name, "title": cfg.title, "task": cfg.task, "root": str(dataset.root_path),
        "expected_samples": cfg.expected_samples, "split_samples": len(dataset), "evaluated": evaluated,
        "skipped": skipped, "complete": evaluated == cfg.expected_samples and limit is None,
        "protocol": asdict(protocol) if protocol is not None else {"pooling": "all valid pixels (DSINE)"},
        "metrics": metrics, "model_s": model_s, "samples": per_sample,
        **({"calibration": calibration.summary()} if cfg.task == "depth" else {}),
    }


def _cell(value, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def render_markdown(results: list[dict], model: dict, published: dict) -> str:
    """Tables laid out like the published ones (AbsRel / δ1 in %, normals mean° / % under 11.25°)."""
    lines = ["# d3-eval benchmark report", "",
             f"Model `{model.get('model_id')}`, backend `{model.get('name')}` ({model.get('device')}, "
             f"{model.get('precision')}), processing resolution {model.get('processing_resolution')} px (long side).", ""]
    partial = [r for r in results if not r["complete"]]
    if partial:
        lines += ["**Partial evaluation** — these rows do not cover the official splits: "
                  + "; ".join(f"{r['title']} {r['evaluated']} of {r['expected_samples']}" for r in partial)
                  + ". Do not compare them with the published numbers as equals.", ""]
    ours_name = f"**{model.get('model_id')} (this run)**" + (" *" if partial else "")
    depth = [r for r in results if r["task"] == "depth"]
    if depth:
        order = ["nyuv2", "kitti", "eth3d", "scannet", "diode"]
        titles = {"nyuv2": "NYUv2", "kitti": "KITTI", "eth3d": "ETH3D", "scannet": "ScanNet", "diode": "DIODE"}
        lines += ["## Depth (Marigold protocol: least-squares scale + shift in depth space; AbsRel ↓ and δ1 ↑ in %)", "",
                  "| Method | Train samples | " + " | ".join(f"{titles[d]} AbsRel | {titles[d]} δ1" for d in order) + " |",
                  "|---|---|" + "---|---|" * len(order)]
        for row in published.get("depth", []):
            cells = []
            for d in order:
                v = row.get(d) or {}
                cells += [_cell(v.get("abs_rel")), _cell(v.get("delta1"))]
            lines.append(f"| {row['method']} [{row['source']}] | {row['train_samples']} | " + " | ".join(cells) + " |")
        mine = {r["name"]: r for r in depth}
        cells = []
        for d in order:
            m = mine.get(d, {}).get("metrics", {})
            star = "" if mine.get(d, {}).get("complete", True) else "*"
            cells += [_cell(m.get("abs_rel", math.nan) * 100) + star if m else "–",
                      _cell(m.get("delta1", math.nan) * 100) + star if m else "–"]
        lines.append(f"| {ours_name} | – | " + " | ".join(cells) + " |")
        lines += ["", "Our other depth metrics (mean over images):", "",
                  "| set | samples | AbsRel | SqRel | RMSE (m) | RMSE-log | log10 | δ1 | δ2 | δ3 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in depth:
            m = r["metrics"]
            lines.append(f"| {r['title']} | {r['evaluated']}/{r['expected_samples']} | "
                         + " | ".join(_cell(m.get(k), 4) for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10",
                                                                   "delta1", "delta2", "delta3")) + " |")
        lines.append("")
        cal = [r for r in depth if r.get("calibration")]
        if cal:
            lines += ["## Confidence calibration (docs/confidence.md; `edges` cue: no camera matrix in these sets)", "",
                      "| set | frames | AUSE of AbsRel ↓ | random's | ratio ↓ (target ≤ 0.5) | flying points before → "
                      "after gate | points kept | reduction (target ≥ 5×) |", "|---|---|---|---|---|---|---|---|"]
            for r in cal:
                c, fly = r["calibration"], r["calibration"]["flying_points"] or {}
                lines.append(f"| {r['title']} | {c['frames']} | {_cell(c['ause']['combined'], 4)} | "
                             f"{_cell(c['ause']['random'], 4)} | {_cell(c['ause_over_random'], 2)} | "
                             f"{_cell(fly.get('share_before'), 3)} → {_cell(fly.get('share_after'), 3)} | "
                             f"{_cell(fly.get('kept_share'), 3)} | {_cell(fly.get('reduction'), 2)}× |")
            lines += ["", f"Gate: `min_confidence` {cal[0]['calibration']['min_confidence']}.", ""]
    normals = [r for r in results if r["task"] == "normals"]
    if normals:
        order = ["nyuv2_normals", "scannet_normals", "ibims_normals", "sintel_normals"]
        titles = {"nyuv2_normals": "NYUv2", "scannet_normals": "ScanNet", "ibims_normals": "iBims-1",
                  "sintel_normals": "Sintel"}
        lines += ["## Surface normals (DSINE protocol: all valid pixels pooled; mean angular error ° ↓ / % under 11.25° ↑)",
                  "", "| Method | Train samples | " + " | ".join(titles[d] for d in order) + " |",
                  "|---|---|" + "---|" * len(order)]
        for row in published.get("normals", []):
            cells = [f"{_cell((row.get(d) or {}).get('mean'))} / {_cell((row.get(d) or {}).get('a11.25'))}" for d in order]
            lines.append(f"| {row['method']} [{row['source']}] | {row['train_samples']} | " + " | ".join(cells) + " |")
        mine = {r["name"]: r for r in normals}
        cells = []
        for d in order:
            m = mine.get(d, {}).get("metrics") or {}
            star = "" if mine.get(d, {}).get("complete", True) else "*"
            cells.append(f"{_cell(m.get('mean'))} / {_cell(m.get('a11.25', math.nan) * 100)}{star}" if m else "–")
        lines.append(f"| {ours_name} | – | " + " | ".join(cells) + " |")
        lines += ["", "| set | samples | mean° | median° | RMSE° | <5° | <7.5° | <11.25° | <22.5° | <30° |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in normals:
            m = r["metrics"]
            lines.append(f"| {r['title']} | {r['evaluated']}/{r['expected_samples']} | "
                         + " | ".join(_cell(m.get(k), 2) for k in ("mean", "median", "rmse"))
                         + " | " + " | ".join(_cell(m.get(k, math.nan) * 100) for k in ("a5", "a7.5", "a11.25", "a22.5", "a30"))
                         + " |")
        lines.append("")
    if partial:
        lines += ["\\* partial: fewer samples than the official split (see above).", ""]
    lines += ["Sources of the published rows: " + "; ".join(f"[{k}] {v}" for k, v in published.get("sources", {}).items()),
              "", published.get("note", ""), ""]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from d3_perception.cli_args import checkpoint_or_demo
    from d3_perception.evaluation.datasets import load_dataset_config, open_dataset
    from d3_perception.evaluation.report import write_json

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"`--limit` must be >= 1; got {args.limit}")
    if not 0.0 <= args.min_confidence <= 1.0:
        raise ValueError(f"`--min-confidence` must be in [0, 1]; got {args.min_confidence}")
    names = _dataset_names(args.datasets)
    splits = _split_overrides(args.split_file)
    unknown = set(splits) - set(names)
    if unknown:
        raise ValueError(f"`--split-file` names datasets not being evaluated: {sorted(unknown)}")
    resolution = _parse_resolution(args.resolution)
    args.checkpoint = str(checkpoint_or_demo(args.checkpoint, "d3-eval"))
    # Validate every requested set before loading the model: a missing one fails fast with what was expected.
    datasets = [open_dataset(load_dataset_config(n), args.data_root, splits.get(n)) for n in names]
    backends: dict[int | None, object] = {}

    def backend_for(ds):
        res = ds.config.processing_resolution if resolution == "protocol" else resolution
        if res not in backends:
            backends[res] = _create_backend(args, res)
            tasks = set(backends[res].info.tasks)
            missing = [d.config.name for d in datasets if d.config.task not in tasks]
            if missing:
                raise ValueError(f"checkpoint {args.checkpoint} has tasks {sorted(tasks)}; {', '.join(missing)} "
                                 f"need(s) the other task")
        return backends[res]

    convention = _checkpoint_convention(args.checkpoint)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for ds in datasets:
            backend = backend_for(ds)
            r = evaluate_dataset(ds, backend, limit=args.limit, normals_convention=convention,
                                 alignment=args.alignment, progress=not args.no_progress,
                                 min_confidence=args.min_confidence)
            r["model"] = asdict(backend.info)
            results.append(r)
            ds.close()
    finally:
        for b in backends.values():
            b.close()
    published = yaml.safe_load(PUBLISHED_PATH.read_text()) if PUBLISHED_PATH.is_file() else {}
    model = dict(results[0]["model"]) if results else {}
    resolutions = sorted({r["model"]["processing_resolution"] for r in results})
    model["processing_resolution"] = ", ".join(str(x) for x in resolutions)
    write_json(out_dir / "benchmark.json", {"tool": "d3-eval", "checkpoint": str(args.checkpoint), "model": model,
                                            "limit": args.limit, "datasets": results})
    (out_dir / "benchmark.md").write_text(render_markdown(results, model, published))
    for r in results:
        m = r["metrics"]
        head = (f"AbsRel {_cell(m.get('abs_rel', math.nan) * 100, 2)} %  δ1 {_cell(m.get('delta1', math.nan) * 100, 2)} %"
                if r["task"] == "depth" else
                f"mean {_cell(m.get('mean'), 2)}°  <11.25° {_cell(m.get('a11.25', math.nan) * 100, 1)} %")
        part = "" if r["complete"] else f"  (partial: {r['evaluated']}/{r['expected_samples']})"
        c = r.get("calibration")
        if c:
            fly = c["flying_points"] or {}
            part += (f"  confidence: AUSE {_cell(c['ause_over_random'], 2)} x random, flying points "
                     f"{_cell(fly.get('share_before'), 3)} -> {_cell(fly.get('share_after'), 3)}")
        print(f"{r['title']:<10} {head}{part}")
    print(f"report: {out_dir / 'benchmark.md'}")
    return 0


def _checkpoint_convention(checkpoint: str) -> str:
    from d3_perception.evaluation.bag_cli import _checkpoint_convention as conv

    return conv(checkpoint)


def _parse_resolution(value: str | None) -> int | str | None:
    if value is None or value == "protocol":
        return value
    try:
        res = int(value)
    except ValueError:
        raise ValueError(f"`--resolution` must be a positive multiple of 64 or `protocol`; got {value!r}") from None
    if res <= 0 or res % 64:
        raise ValueError(f"`--resolution` must be a positive multiple of 64 or `protocol`; got {value!r}")
    return res


def _create_backend(args: argparse.Namespace, resolution: int | None = None):
    from d3_perception.backends import create_backend

    if not Path(args.checkpoint).is_dir():
        raise ValueError(f"`--checkpoint` must be a checkpoint directory; got {args.checkpoint}")
    try:
        return create_backend(args.backend, args.checkpoint, device=args.device, precision=args.precision,
                              processing_resolution=resolution)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        raise ValueError(f"cannot load checkpoint {args.checkpoint} with backend {args.backend}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # DatasetError is a ValueError
    return run_cli("d3-eval", lambda: _run(args), (ValueError, OSError), interrupted="interrupted; no report written")


if __name__ == "__main__":
    sys.exit(main())
