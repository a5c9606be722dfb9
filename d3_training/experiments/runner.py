"""The D³ effect in miniature: does prior aggregation help, at equal steps and equal labelled data?

Experiments (every variant trains the same total number of D³ steps on the same labelled synthetic data; the
VAE is pretrained once and shared; each teacher budget is pretrained once and shared by all seeds):
  (a) two_stage vs task_only (teacher init, no L_agg) vs joint (L_agg + tasks from step 0);
  (b) two_stage with half of the labelled scenes vs task_only with all of them;
  (c) two_stage with teachers pretrained for each budget in `teacher_budgets` (≥ 3 levels).
Data: the wide synthetic world's training recipe (scene kind `world`). Each finished run is evaluated on both
held-out families (in_distribution = `world` seed 9999, and `shift`); its metrics go to `results.jsonl` (the
runner resumes: finished runs are skipped); `results.md` holds the mean ± std table over seeds (AbsRel, δ1,
normal angle, for each family) with the trivial row ramp (far at the top, same alignment) as the last row.

    python -m d3_training.experiments --out runs/experiments            # full study (hours of CPU)
    python -m d3_training.experiments --out runs/exp_quick --quick      # ~80-90 min on a 2-core CPU
    python -m d3_training.experiments --out /tmp/exp --smoke            # minutes: plumbing check only
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from d3_training.config import config_from_dict

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    resolution: int = 64
    batch: int = 16
    num_scenes: int = 6000
    vae_steps: int = 600
    teacher_budgets: tuple[int, ...] = (250, 1000, 4000)
    default_teacher: int = 1000
    d3_steps: int = 2000  # total D³ steps of every variant
    stage1_steps: int = 300  # two_stage: stage 1 part of d3_steps
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_frames: int = 200
    threads: int | None = 2
    extra: dict = field(default_factory=dict)


# The same study at a smaller budget (18 D³ runs of 160 steps at batch 8 plus three teachers): about 80 minutes on
# one 2-core CPU (measured with --threads 1 on a partly busy machine, on the room generator with one evaluation
# family; the second held-out family adds 18 x 100 frames, a few minutes); enough to see large effects, too short
# to resolve small ones — the table says which.
QUICK = Budget(batch=8, num_scenes=2000, vae_steps=300, teacher_budgets=(60, 250, 1000), default_teacher=250,
               d3_steps=160, stage1_steps=40, eval_frames=100)
SMOKE = Budget(resolution=32, batch=2, num_scenes=16, vae_steps=3, teacher_budgets=(1, 2, 3), default_teacher=2,
               d3_steps=4, stage1_steps=2, seeds=(0, 1, 2), eval_frames=2, threads=1)


def variants(b: Budget) -> list[tuple[str, str, int, int]]:
    """(name, schedule, teacher budget, labelled scenes)."""
    out = [("two_stage", "two_stage", b.default_teacher, b.num_scenes),
           ("task_only", "task_only", b.default_teacher, b.num_scenes),
           ("joint", "joint", b.default_teacher, b.num_scenes),
           ("two_stage_half_data", "two_stage", b.default_teacher, max(1, b.num_scenes // 2))]
    out += [(f"two_stage_teacher{t}", "two_stage", t, b.num_scenes) for t in b.teacher_budgets if t != b.default_teacher]
    return out


def _base(b: Budget, out_dir: Path, seed: int, scenes: int) -> dict:
    return {
        "run": {"output_dir": str(out_dir), "seed": seed, "tensorboard": False, "checkpoint_every": 500,
                "threads": b.threads},
        "model": {"preset": "tiny", "tasks": ["depth", "normals"], "adapter_depth": 2, "adapter_cond_dim": 64},
        "data": {"resolution": [b.resolution, b.resolution],
                 "labeled": [{"kind": "synthetic", "num_samples": scenes, "seed": 0, "scene_kind": "world"}]},
    }


def pretrain(b: Budget, root: Path) -> dict[int, Path]:
    """VAE once, then one teacher per budget; returns {budget: teacher dir with unet/, vae/, context}."""
    from d3_training.pipeline import run_pipeline

    base = root / "pretrain"
    vae_run = base / "vae_run"
    shared = base / "shared"
    if not (shared / "vae").is_dir():
        shutil.rmtree(vae_run, ignore_errors=True)
        cfg = _base(b, vae_run, 0, b.num_scenes)
        cfg["schedule"] = {"vae": {"steps": b.vae_steps, "batch_size": b.batch, "lr": 1e-3, "weight_decay": 0.0}}
        run_pipeline(config_from_dict(cfg), export=False, stop_after="vae")
        shutil.copytree(vae_run / "vae" / "final", shared / "vae")
    teachers = {}
    for t in sorted(set(b.teacher_budgets) | {b.default_teacher}):
        out = base / f"teacher_{t}"
        if not (out / "unet").is_dir():
            run_dir = base / f"teacher_run_{t}"
            shutil.rmtree(run_dir, ignore_errors=True)
            cfg = _base(b, run_dir, 0, b.num_scenes)
            cfg["model"]["teacher_path"] = str(shared)
            cfg["schedule"] = {"teacher": {"steps": t, "batch_size": b.batch, "lr": 5e-4}}
            run_pipeline(config_from_dict(cfg), export=False, stop_after="teacher")
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(run_dir / "teacher" / "final", tmp)
            shutil.copytree(shared / "vae", tmp / "vae")
            tmp.rename(out)
        teachers[t] = out
    return teachers


def run_variant(b: Budget, root: Path, name: str, schedule: str, teacher: Path, scenes: int, seed: int) -> dict:
    from d3_training.evaluate import evaluate_families
    from d3_training.pipeline import run_pipeline

    run_dir = root / "runs" / f"{name}_seed{seed}"
    cfg = _base(b, run_dir, seed, scenes)
    cfg["model"]["teacher_path"] = str(teacher)
    phase = {"batch_size": b.batch, "lr": 3e-4, "warmup_steps": min(50, b.d3_steps // 10), **b.extra}
    if schedule == "two_stage":
        cfg["schedule"] = {"name": "two_stage", "stage1": {**phase, "steps": b.stage1_steps, "decay": "constant"},
                           "stage2": {**phase, "steps": b.d3_steps - b.stage1_steps, "decay": "linear"}}
    elif schedule == "joint":
        cfg["schedule"] = {"name": "joint", "joint": {**phase, "steps": b.d3_steps, "decay": "linear"}}
    else:
        cfg["schedule"] = {"name": "task_only", "stage2": {**phase, "steps": b.d3_steps, "decay": "linear"}}
    resume = (run_dir / "config.yaml").is_file()
    exported = run_pipeline(config_from_dict(cfg), resume=resume)
    families = evaluate_families(exported, b.eval_frames, (b.resolution, b.resolution), progress=False)
    metrics = families["in_distribution"]  # flat: the in-distribution numbers; `shift` nested
    metrics["eval_seed"] = metrics.pop("seed")
    return {**metrics, "shift": families["shift"], "variant": name, "seed": seed, "schedule": schedule,
            "teacher": teacher.name, "scenes": scenes}


_COLUMNS = (("abs_rel", "{:.3f} ± {:.3f}"), ("delta1", "{:.3f} ± {:.3f}"), ("normals_mean_deg", "{:.1f} ± {:.1f}"))


def _cells(results: list[dict]) -> list[str]:
    """Mean ± std (ddof 1) over ``results`` of each metric; n/a where none has it."""
    cells = []
    for key, fmt in _COLUMNS:
        vals = np.array([r[key] for r in results if key in r])
        cells.append(fmt.format(vals.mean(), vals.std(ddof=1) if len(vals) > 1 else 0.0) if len(vals) else "n/a")
    return cells


def table(rows: list[dict]) -> str:
    """Markdown table, one row per variant: in-distribution metrics (flat keys of each row), then the shift
    family's (``row["shift"]``); a last ``row ramp`` row when the rows carry the baseline (``row_ramp``)."""
    lines = ["| variant | seeds | AbsRel ↓ | δ1 ↑ | normals mean ° ↓ | shift AbsRel ↓ | shift δ1 ↑ | shift normals ° ↓ |",
             "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == name]
        cells = _cells(sel) + _cells([r["shift"] for r in sel if "shift" in r])
        lines.append(f"| {name} | {len(sel)} | " + " | ".join(cells) + " |")
    ramp = [r["row_ramp"] for r in rows if "row_ramp" in r]
    if ramp:  # same frames for every run, so one value (std 0) unless runs used different eval frames
        shift_ramp = [r["shift"]["row_ramp"] for r in rows if "row_ramp" in r.get("shift", {})]
        lines.append("| row ramp (baseline) | – | " + " | ".join(_cells(ramp[:1]) + _cells(shift_ramp[:1])) + " |")
    return "\n".join(lines) + "\n"


def run_all(b: Budget, root: Path) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    teachers = pretrain(b, root)
    results_file = root / "results.jsonl"
    done = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.is_file() else []
    finished = {(r["variant"], r["seed"]) for r in done}
    for seed in b.seeds:
        for name, schedule, t, scenes in variants(b):
            if (name, seed) in finished:
                continue
            row = run_variant(b, root, name, schedule, teachers[t], scenes, seed)
            with open(results_file, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            done.append(row)
    (root / "results.md").write_text(
        f"D³ in miniature: {b.d3_steps} D³ steps per variant, {b.resolution}² px, batch {b.batch}, "
        f"teacher budgets {list(b.teacher_budgets)} (default {b.default_teacher}), seeds {list(b.seeds)}\n\n" + table(done))
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m d3_training.experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  python -m d3_training.experiments --out runs/experiments\n"
                                       "  python -m d3_training.experiments --out /tmp/exp --smoke --seeds 0 1 2")
    p.add_argument("--out", required=True, help="experiment folder (re-running resumes it)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the study at a ~80-minute budget (2-core CPU)")
    size.add_argument("--smoke", action="store_true", help="tiny budgets: checks the plumbing in minutes")
    p.add_argument("--seeds", type=int, nargs="+", help="override the seeds (>= 3 for the study)")
    p.add_argument("--d3-steps", type=int, help="override the D³ steps per variant")
    p.add_argument("--threads", type=int, help="torch threads per run (default 2; 1 is steadier on a busy machine)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    b = SMOKE if args.smoke else QUICK if args.quick else Budget()
    if args.seeds:
        b = replace(b, seeds=tuple(args.seeds))
    if args.d3_steps:
        b = replace(b, d3_steps=args.d3_steps)
    if args.threads:
        b = replace(b, threads=args.threads)
    from d3_training.config import ConfigError
    from d3_training.trainer import TrainingError

    try:
        run_all(b, Path(args.out))
    except (ConfigError, TrainingError, ValueError) as exc:
        print(f"experiments: error: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
