"""`d3-train`: train D³ (two_stage / joint / task_only) from a layered YAML config plus key=value overrides."""

from __future__ import annotations

import argparse
import logging
import sys

EPILOG = """examples:
  d3-train --config config/train/debug.yaml                      # whole tiny pipeline in about a minute
  d3-train --config config/train/demo.yaml                       # the bundled demo model (<= 60 min, 2 cores)
  d3-train --config config/train/demo.yaml run.output_dir=runs/x schedule.stage2.steps=500
  d3-train --resume runs/demo                                    # continue a killed run exactly
  d3-train --config config/train/official_depth.yaml model.teacher_path=/data/sd21 data.labeled[0].path=...
  d3-train --config config/train/workstation_24gb.yaml --estimate-memory
  accelerate launch --num_processes 2 -m d3_training.cli --config config/train/debug.yaml   # multi-GPU / gloo
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d3-train", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="training YAML (may name `base_config` files, relative to itself)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. schedule.stage2.steps=500 run.seed=1")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (reads its config.yaml back)")
    p.add_argument("--estimate-memory", action="store_true", help="print the per-GPU memory estimate and exit")
    p.add_argument("--no-export", action="store_true", help="skip exporting the d3_perception checkpoint")
    p.add_argument("--three-pass", action="store_true",
                   help="official formulation: one student pass per expert timestep (slower, same loss)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from d3_perception.cli_args import run_cli
    from d3_training.config import ConfigError
    from d3_training.data import DataError
    from d3_training.trainer import TrainingError

    return run_cli("d3-train", lambda: _run(args), (ConfigError, DataError, TrainingError, FileNotFoundError),
                   interrupted="interrupted (resume with --resume RUN_DIR)")


def _run(args: argparse.Namespace) -> int:
    from d3_training.config import ConfigError, load_config

    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("`--resume` reads the run's stored config; got --config/overrides as well")
        cfg = load_config(None, [f"run.output_dir={args.resume}"])
    elif args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        raise ConfigError("`--config` or `--resume` must be given; got neither (see --help)")
    if args.estimate_memory:
        from d3_training.memory import estimate_for_config, format_estimate

        print(format_estimate(estimate_for_config(cfg)))
        return 0
    from d3_training.pipeline import run_pipeline

    out = run_pipeline(cfg, resume=bool(args.resume), export=not args.no_export, one_pass=not args.three_pass)
    if out is not None:
        print(f"exported checkpoint: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
