"""Reproduce the bundled demo checkpoint `models/d3_demo_tiny/` in one command (≤ 60 min on a 2-core CPU):

    python -m d3_training.demo                       # config/train/demo.yaml -> runs/demo -> models/d3_demo_tiny
    python -m d3_training.demo --resume              # continue a killed run
    python -m d3_training.demo run.output_dir=runs/demo2 --out /tmp/demo_model

Trains tiny VAE -> tiny teacher -> stage 1 -> stage 2 on synthetic scenes, exports the student, then measures
AbsRel / δ1 / normal angle on held-out synthetic scenes and writes them to `<out>/quality.json`.
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
    from d3_training.evaluate import evaluate_checkpoint
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
    quality = evaluate_checkpoint(tmp, args.eval_frames, tuple(cfg.data.resolution))
    quality["checkpoint"] = str(out.relative_to(REPO_ROOT)) if out.is_relative_to(REPO_ROOT) else str(out)
    quality["phases"] = {name: json.loads((Path(cfg.run.output_dir) / name / "final" / "DONE").read_text())
                         for name, _ in cfg.schedule.phases()}
    (tmp / "quality.json").write_text(json.dumps(quality, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(json.dumps(quality, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
