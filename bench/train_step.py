"""P6: one student pass per step (this package) vs the official three identical student passes, same config,
same batch, same random draws, measured in one run. Prints median step time (forward + backward) of each,
the speed-up ratio and both loss values (they must be identical), as JSON.

    .venv/bin/python bench/train_step.py                      # tiny model, 64x64, batch 4, joint (L_agg + tasks)
    .venv/bin/python bench/train_step.py --phase stage1 --resolution 64 --batch 8 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def build_phase(tmp: Path, phase: str, resolution: int, batch: int, one_pass: bool):
    from d3_training.phases import D3Phase
    from d3_training.testing import make_tiny_teacher, tiny_config
    from d3_training.trainer import make_accelerator

    teacher = tmp / "teacher"
    if not teacher.is_dir():
        make_tiny_teacher(teacher)
    cfg = tiny_config(tmp / f"run_{phase}_{one_pass}", teacher,
                      data={"resolution": [resolution, resolution]},
                      schedule={"name": "joint", phase: {"steps": 10, "batch_size": batch}})
    acc = make_accelerator(cfg, getattr(cfg.schedule, phase))
    acc.free_memory()
    trainer = D3Phase(cfg, getattr(cfg.schedule, phase), tmp, acc, phase_name=phase, teacher_dir=teacher,
                      vae_dir=teacher / "vae", one_pass=one_pass)
    trainer.build()
    return trainer


def time_step(trainer, batch, repeats: int) -> tuple[list[float], float]:
    times, loss_value = [], None
    for i in range(repeats + 1):
        trainer.module.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(1234)
        t0 = time.perf_counter()
        loss, _ = trainer.compute_loss(batch, gen)
        loss.backward()
        dt = time.perf_counter() - t0
        if i > 0:  # first call is warm-up
            times.append(dt)
        loss_value = float(loss.detach())
    return times, loss_value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=["joint", "stage1"], default="joint")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        one = build_phase(Path(tmp), args.phase, args.resolution, args.batch, True)
        three = build_phase(Path(tmp), args.phase, args.resolution, args.batch, False)
        three.module.load_state_dict(one.module.state_dict())
        batch = one.data().next_batch(args.batch)
        t1, t3 = [], []
        loss1 = loss3 = None
        for _ in range(2):  # interleave to share any machine load fairly between the two
            a, loss1 = time_step(one, batch, args.repeats)
            b, loss3 = time_step(three, batch, args.repeats)
            t1 += a
            t3 += b
    m1, m3 = statistics.median(t1), statistics.median(t3)
    out = {"bench": "train_step", "phase": args.phase, "model": "tiny (3.1 M UNet, 0.96 M VAE)",
           "resolution": args.resolution, "batch": args.batch, "tasks": 2, "expert_timesteps": 3,
           "machine": f"{platform.machine()} CPU, {args.threads} threads, no GPU", "torch": torch.__version__,
           "one_pass_s_median": round(m1, 4), "three_pass_official_s_median": round(m3, 4),
           "speedup_one_vs_three": round(m3 / m1, 2), "loss_one_pass": loss1, "loss_three_pass": loss3,
           "loss_identical": loss1 == loss3}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
