"""P6: one student pass per step (this package) vs the official three identical student passes, same config,
same batch, same random draws, measured in one run. Prints median step time (forward + backward) of each,
the speed-up ratio and both loss values (they must be identical), as JSON.

``--breakdown``: instead, where one step of the bundled demo model's stage 2 goes (tiny preset, wide-world
data, depth + normals): data, forward (and inside it the student UNet, VAE encoder and VAE decoder), backward
and the optimizer step, medians over ``--repeats`` steps.

    .venv/bin/python bench/train_step.py                      # tiny model, 64x64, batch 4, joint (L_agg + tasks)
    .venv/bin/python bench/train_step.py --phase stage1 --resolution 64 --batch 8 --repeats 7
    .venv/bin/python bench/train_step.py --breakdown --batch 16 --repeats 6   # the demo recipe's stage-2 step
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


def build_phase(tmp: Path, phase: str, resolution: int, batch: int, one_pass: bool, schedule: str = "joint",
                labeled: list | None = None):
    """A built D3Phase of the tiny preset on a random tiny teacher; ``labeled``: the data sources (default the
    test config's rooms)."""
    from d3_training.phases import D3Phase
    from d3_training.testing import make_tiny_teacher, tiny_config
    from d3_training.trainer import make_accelerator

    teacher = tmp / "teacher"
    if not teacher.is_dir():
        make_tiny_teacher(teacher)
    data = {"resolution": [resolution, resolution], **({"labeled": labeled} if labeled else {})}
    cfg = tiny_config(tmp / f"run_{phase}_{one_pass}", teacher, data=data,
                      schedule={"name": schedule, phase: {"steps": 10, "batch_size": batch}})
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


def breakdown(tmp: Path, resolution: int, batch: int, repeats: int) -> dict:
    """Median ms of each part of a stage-2 step (data, forward, backward, optimizer; module forwards inside)."""
    trainer = build_phase(tmp, "stage2", resolution, batch, True, schedule="two_stage",
                          labeled=[{"kind": "synthetic", "num_samples": 400, "scene_kind": "world"}])
    data = trainer.data()
    modules = {"student_unet": trainer.acc.unwrap_model(trainer.module).unet, "vae_encoder": trainer.vae.vae.encoder,
               "vae_decoder": trainer.vae.vae.decoder}
    started: dict[str, float] = {}
    forwards: dict[str, list[float]] = {name: [] for name in modules}
    for name, module in modules.items():  # forward-time hooks: wall time of each module's forward call
        module.register_forward_pre_hook(lambda m, a, name=name: started.__setitem__(name, time.perf_counter()))
        module.register_forward_hook(
            lambda m, a, o, name=name: forwards[name].append(time.perf_counter() - started[name]))
    params = [p for p in trainer.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    parts: dict[str, list[float]] = {"data": [], "forward": [], "backward": [], "optimizer": []}
    for i in range(repeats + 2):  # the first two are warm-up
        if i == 2:  # warm-up done: keep only the timed steps' module forwards
            for values in forwards.values():
                values.clear()
        t0 = time.perf_counter()
        b = data.next_batch(batch)
        t1 = time.perf_counter()
        loss, _ = trainer.compute_loss(b, torch.Generator().manual_seed(i))
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if i >= 2:
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                parts[key].append(dt)
    ms = {key: round(1e3 * statistics.median(v), 1) for key, v in parts.items()}
    ms.update({f"{name}_forward": round(1e3 * statistics.median(v), 1) for name, v in forwards.items()})
    return {"bench": "train_step --breakdown", "phase": "stage2", "resolution": resolution, "batch": batch,
            "tasks": 2, "median_ms": ms, "step_ms": round(sum(ms[k] for k in parts), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=["joint", "stage1"], default="joint")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--breakdown", action="store_true", help="where one stage-2 step of the demo recipe goes")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.breakdown:
        with tempfile.TemporaryDirectory() as tmp:
            out = breakdown(Path(tmp), args.resolution, args.batch, args.repeats)
        out["machine"] = f"{platform.machine()} CPU, {args.threads} threads, no GPU"
        print(json.dumps(out, indent=1))
        return 0
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
