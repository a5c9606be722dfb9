"""Reproduce the bundled demo checkpoint `models/d3_demo_tiny/` in one command (about 90 min on an idle 2-core CPU):

    python -m d3_training.demo                       # config/train/demo.yaml -> runs/demo -> models/d3_demo_tiny
    python -m d3_training.demo --resume              # continue a killed run
    python -m d3_training.demo run.output_dir=runs/demo2 --out /tmp/demo_model

Trains tiny VAE -> tiny teacher -> stage 1 -> stage 2 on the wide synthetic world (training recipe `world`),
exports the student, then measures AbsRel / δ1 / normal angle, beside the row-ramp baseline, on both held-out
families (in_distribution = `world` seed 9999, shift) and writes them to `<out>/quality.json`: the top-level
numbers are the in-distribution ones, `families` holds both, `previous_model` the same for the checkpoint that
was at `<out>` before (taken from its quality.json, or measured), and the old/new/ramp table is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m d3_training.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  nice -n 10 python -m d3_training.demo")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. schedule.stage2.max_minutes=50")
    p.add_argument("--config", default=str(REPO_ROOT / "config/train/demo.yaml"))
    p.add_argument("--out", default=str(REPO_ROOT / "models/d3_demo_tiny"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--eval-frames", type=int, default=200)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from d3_training.config import ConfigError, load_config
    from d3_training.evaluate import evaluate_families, quality_table
    from d3_training.pipeline import run_pipeline
    from d3_training.trainer import TrainingError

    try:
        cfg = load_config(args.config, args.overrides)
        if args.resume:
            cfg = load_config(None, [f"run.output_dir={cfg.run.output_dir}"])
        exported = run_pipeline(cfg, resume=args.resume)
    except (ConfigError, TrainingError, ValueError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(exported, tmp)
    hw = tuple(cfg.data.resolution)
    previous = _previous_families(out, args.eval_frames, hw)
    families = evaluate_families(tmp, args.eval_frames, hw)
    quality = {**families["in_distribution"], "families": families}
    if previous is not None:
        quality["previous_model"] = previous
    quality["checkpoint"] = str(out.relative_to(REPO_ROOT)) if out.is_relative_to(REPO_ROOT) else str(out)
    quality["phases"] = {name: json.loads((Path(cfg.run.output_dir) / name / "final" / "DONE").read_text())
                         for name, _ in cfg.schedule.phases()}
    (tmp / "quality.json").write_text(json.dumps(quality, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(json.dumps(quality, indent=1))
    print(quality_table({"previous model": previous, "new model": families} if previous else {"new model": families}))
    return 0


def _previous_families(out: Path, frames: int, hw: tuple[int, int]) -> dict | None:
    """Both families' results of the checkpoint about to be replaced at ``out``: recorded in its quality.json
    when measured on the very same frames (:func:`~d3_training.evaluate.same_frames`), else measured now; None
    without a checkpoint."""
    from d3_training.evaluate import (
        EVAL_FAMILIES,
        HELD_OUT_SEED,
        evaluate_families,
        frames_fingerprint,
        same_frames,
    )

    if not (out / "model.safetensors").is_file():
        return None
    recorded = out / "quality.json"
    if recorded.is_file():
        fams = json.loads(recorded.read_text()).get("families") or {}
        if set(fams) == set(EVAL_FAMILIES) and all(
                same_frames(fams[name].get("frames_fingerprint", []), frames_fingerprint(frames, hw, HELD_OUT_SEED, kind))
                for name, kind in EVAL_FAMILIES.items()):
            return fams
    return evaluate_families(out, frames, hw, progress=False)


if __name__ == "__main__":
    sys.exit(main())
