"""The accelerate trainer: one base loop, one subclass per phase (VAE / teacher pretraining, stage 1, stage 2,
joint, task-only), atomic checkpoints with exact resume.

Run folder::

    <output_dir>/config.yaml  git_sha.txt  tensorboard/
    <output_dir>/<phase>/checkpoints/checkpoint-000200/   accelerate state + trainer_state.json (rotated, keep K)
    <output_dir>/<phase>/final/                           the phase's result (DONE marks completion)

Exactness: every random draw of step s (expert timesteps, noise, flips) comes from a generator seeded by
(seed, phase, step, micro-step, rank), and the data stream position is saved, so N straight steps equal
N/2 + resume + N/2 on CPU bit for bit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from d3_training.config import PhaseConfig, TrainConfig

logger = logging.getLogger(__name__)

CKPT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
STATE_NAME = "trainer_state.json"


class TrainingError(RuntimeError):
    """Training cannot continue (repeated NaN losses, missing resume path, ...); one-line message."""


@dataclass
class TrainState:
    step: int = 0
    data_position: int = 0
    consecutive_nan: int = 0
    elapsed_s: float = 0.0
    stopped_early: bool = False


def lr_lambda(cfg: PhaseConfig):
    """Warmup (linear, or DeepSpeed-style log) then linear / cosine decay to 0 at `steps`, or constant.
    Hand-written: the official code's log-warmup (DeepSpeed WarmupDecayLR) is not in diffusers/transformers."""

    def fn(step: int) -> float:
        if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
            if cfg.warmup_type == "log":
                return math.log(step + 1) / math.log(cfg.warmup_steps)
            return (step + 1) / cfg.warmup_steps
        if cfg.decay == "constant":
            return 1.0
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        frac = min(max(frac, 0.0), 1.0)
        return 1.0 - frac if cfg.decay == "linear" else 0.5 * (1 + math.cos(math.pi * frac))

    return fn


def make_optimizer(params: list[dict], cfg: PhaseConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainingError("`optimizer: adamw8bit` needs bitsandbytes (pip install bitsandbytes); "
                                "got it not installed") from None
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=1e-8)


def step_generator(seed: int, phase: str, step: int, micro: int, rank: int) -> torch.Generator:
    phase_id = sum(ord(c) * 31 ** i for i, c in enumerate(phase)) % 1_000_003
    return torch.Generator().manual_seed(((seed * 1_000_003 + phase_id) * 1_000_003 + step) * 1009 + micro * 97 + rank)


def git_sha(root: Path) -> str:
    """HEAD commit of the repository holding this package (read from .git, no subprocess), or 'unknown'.
    A linked worktree's ``.git`` is a file ``gitdir: PATH``: HEAD is read there, branch refs from its common dir."""
    git = root / ".git"
    try:
        common = git
        if git.is_file():  # `git worktree add`: .git points at .git/worktrees/NAME, refs live in the main .git
            git = (root / git.read_text().split("gitdir:", 1)[1].strip()).resolve()
            common_file = git / "commondir"
            common = (git / common_file.read_text().strip()).resolve() if common_file.is_file() else git
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref:"):
            ref = head.split(None, 1)[1]
            ref_file = common / ref
            if ref_file.is_file():
                return ref_file.read_text().strip()
            packed = common / "packed-refs"
            for line in packed.read_text().splitlines() if packed.is_file() else []:
                if line.endswith(" " + ref):
                    return line.split()[0]
            return "unknown"
        return head
    except OSError:
        return "unknown"


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints (renamed into place, with trainer_state.json), oldest first."""
    if not ckpt_dir.is_dir():
        return []
    out = [p for p in ckpt_dir.iterdir() if p.name.startswith(CKPT_PREFIX) and (p / STATE_NAME).is_file()]
    return sorted(out, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


class PhaseTrainer:
    """Shared loop. Subclasses set `self.module` (trainable nn.Module) and implement `compute_loss`."""

    name = "phase"

    def __init__(self, cfg: TrainConfig, phase_cfg: PhaseConfig, run_dir: Path, accelerator: Accelerator,
                 phase_name: str | None = None) -> None:
        self.cfg, self.pcfg, self.acc = cfg, phase_cfg, accelerator
        self.grad_accum = phase_cfg.grad_accum_for(accelerator.num_processes)
        accelerator.gradient_accumulation_steps = self.grad_accum
        self.name = phase_name or self.name
        self.dir = run_dir / self.name
        self.ckpt_dir = self.dir / "checkpoints"
        self.final_dir = self.dir / "final"
        self.state = TrainState()
        self.writer = None
        self.ema = None

    # ---------------------------------------------------------------- to implement
    def build(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_loss(self, batch: dict, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:  # pragma: no cover
        raise NotImplementedError

    def save_final(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def data(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def preview(self, batch: dict) -> dict[str, torch.Tensor]:
        return {}

    # ---------------------------------------------------------------- optimisation setup
    def param_groups(self) -> list[dict]:
        tau, rest = [], []
        for n, p in self.module.named_parameters():
            if p.requires_grad:
                (tau if n == "tau" else rest).append(p)
        groups = [{"params": rest}]
        if tau:  # τ: fp32, own learning rate, never weight-decayed (pulls it toward 0 otherwise)
            groups.append({"params": tau, "lr": self.pcfg.lr * self.pcfg.tau_lr_mult, "weight_decay": 0.0})
        return groups

    def setup(self) -> None:
        self.build()
        if self.pcfg.ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel([p for p in self.module.parameters() if p.requires_grad], decay=self.pcfg.ema_decay)
        self.optimizer = make_optimizer(self.param_groups(), self.pcfg)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.pcfg))
        self.module, self.optimizer, self.lr_scheduler = self.acc.prepare(self.module, self.optimizer, self.lr_scheduler)
        if self.ema is not None:
            self.acc.register_for_checkpointing(self.ema)
        self.stream = self.data()
        if self.acc.is_main_process and self.cfg.run.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.dir.parent / "tensorboard" / self.name))

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """accelerate state -> .tmp-checkpoint-N, then an atomic rename; keep the last K."""
        self.state.data_position = self.stream.state_dict()["position"]
        final = self.ckpt_dir / f"{CKPT_PREFIX}{self.state.step:06d}"
        tmp = self.ckpt_dir / f"{TMP_PREFIX}{self.state.step:06d}"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp), safe_serialization=True)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            (tmp / STATE_NAME).write_text(json.dumps(self.state.__dict__, indent=1))
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            for old in list_checkpoints(self.ckpt_dir)[: -self.cfg.run.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return final

    def try_resume(self) -> bool:
        """Load the newest complete checkpoint of this phase (half-written temp dirs are ignored and removed)."""
        if self.acc.is_main_process and self.ckpt_dir.is_dir():
            for tmp in self.ckpt_dir.glob(f"{TMP_PREFIX}*"):
                shutil.rmtree(tmp, ignore_errors=True)
        ckpts = list_checkpoints(self.ckpt_dir)
        if not ckpts:
            return False
        latest = ckpts[-1]
        self.acc.load_state(str(latest))
        self.state = TrainState(**json.loads((latest / STATE_NAME).read_text()))
        self.stream.load_state_dict({"position": self.state.data_position})
        logger.info("%s: resumed from %s (step %d)", self.name, latest, self.state.step)
        return True

    # ---------------------------------------------------------------- loop
    def run(self) -> None:
        self.setup()
        self.try_resume()
        p, acc = self.pcfg, self.acc
        if acc.is_main_process:
            logger.info("%s: %d steps, per-device batch %d x accum %d x %d processes = effective batch %d",
                        self.name, p.steps, p.batch_size, self.grad_accum, acc.num_processes,
                        p.batch_size * self.grad_accum * acc.num_processes)
        bar = tqdm(total=p.steps, initial=self.state.step, desc=self.name, disable=not acc.is_main_process,
                   dynamic_ncols=True)
        t0, start_elapsed = time.monotonic(), self.state.elapsed_s
        while self.state.step < p.steps:
            self.state.elapsed_s = self._elapsed(start_elapsed, t0)
            logs = self.train_step()
            self.state.step += 1
            self.state.elapsed_s = self._elapsed(start_elapsed, t0)
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            self.log(logs)
            over_time = p.max_minutes is not None and self.state.elapsed_s > 60 * p.max_minutes
            if over_time:
                self.state.stopped_early = True
            if self.state.step % self.cfg.run.checkpoint_every == 0 or self.state.step == p.steps or over_time:
                self.save_checkpoint()
            if over_time:
                logger.warning("%s: time budget of %.1f min reached at step %d of %d; ending the phase",
                               self.name, p.max_minutes, self.state.step, p.steps)
                break
        bar.close()
        if self.ema is not None:
            self.ema.copy_to([q for q in self.acc.unwrap_model(self.module).parameters() if q.requires_grad])
        acc.wait_for_everyone()
        if acc.is_main_process:
            self.save_final()
            (self.final_dir / "DONE").write_text(json.dumps(self.state.__dict__))
        acc.wait_for_everyone()
        if self.writer is not None:
            self.writer.close()

    def _elapsed(self, start_elapsed: float, t0: float) -> float:
        """Phase wall time; with a time budget every rank uses rank 0's clock, so all stop (and set LR) together."""
        elapsed = start_elapsed + time.monotonic() - t0
        if self.pcfg.max_minutes is None or self.acc.num_processes == 1:
            return elapsed
        from accelerate.utils import broadcast

        return float(broadcast(torch.tensor([elapsed], device=self.acc.device, dtype=torch.float64))[0])

    def train_step(self) -> dict[str, float]:
        acc, p = self.acc, self.pcfg
        self.module.train()
        total, logs_sum, finite = 0.0, {}, True
        fp16 = acc.mixed_precision == "fp16"
        for micro in range(self.grad_accum):
            gen = step_generator(self.cfg.run.seed, self.name, self.state.step, micro, acc.process_index)
            batch = self.stream.next_batch(p.batch_size, acc.num_processes, acc.process_index)
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            with acc.accumulate(self.module):
                with acc.autocast():
                    loss, logs = self.compute_loss(batch, gen)
                finite = finite and bool(torch.isfinite(loss.detach()))
                acc.backward(loss)
                if acc.sync_gradients:
                    gnorm = acc.clip_grad_norm_(self.module.parameters(), p.grad_clip)
                    # fp16: overflowing gradients are the GradScaler's job (it skips the step and lowers the scale)
                    grads_ok = fp16 or bool(torch.isfinite(torch.as_tensor(gnorm)).item())
                    ok = torch.tensor(float(finite and grads_ok), device=acc.device)
                    finite = bool(acc.reduce(ok, reduction="sum").item() == acc.num_processes)
                    if finite or fp16:
                        self.optimizer.step()
                        self.lr_scheduler.step()
                        if p.time_based_schedule:
                            self._apply_time_based_lr()
                        if self.ema is not None:
                            self.ema.step([q for q in acc.unwrap_model(self.module).parameters() if q.requires_grad])
                    self.optimizer.zero_grad(set_to_none=True)
            total += float(loss.detach()) / self.grad_accum
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / self.grad_accum
        self.check_nan(finite, total)
        self._last_batch = batch
        return {"loss": total, **logs_sum, "lr": self.optimizer.param_groups[0]["lr"]}

    def _apply_time_based_lr(self) -> None:
        """Progress = the larger of the step and the wall-clock fraction, so LR decay ends with the time budget."""
        p = self.pcfg
        frac = max((self.state.step + 1) / p.steps, self.state.elapsed_s / (60 * p.max_minutes))
        factor = lr_lambda(p)(min(p.steps, int(frac * p.steps)))
        for group, base in zip(self.optimizer.param_groups, self.lr_scheduler.scheduler.base_lrs, strict=True):
            group["lr"] = base * factor

    def check_nan(self, finite: bool, loss: float) -> None:
        if finite:
            self.state.consecutive_nan = 0
            return
        self.state.consecutive_nan += 1
        logger.warning("%s: non-finite loss/gradients at step %d (loss %s); step skipped (%d in a row)",
                       self.name, self.state.step, loss, self.state.consecutive_nan)
        if self.state.consecutive_nan >= self.cfg.run.max_consecutive_nan:
            raise TrainingError(f"{self.name}: loss must be finite; got NaN/Inf for {self.state.consecutive_nan} "
                                f"consecutive steps at step {self.state.step} (lower the lr or check the data)")

    def log(self, logs: dict[str, float]) -> None:
        if self.writer is None:
            return
        step = self.state.step
        if step % self.cfg.run.log_every == 0 or step == 1:
            for k, v in logs.items():
                self.writer.add_scalar(f"{self.name}/{k}", v, step)
        if step % self.cfg.run.image_every == 0:
            with torch.no_grad(), self.acc.autocast():
                for k, img in self.preview(self._last_batch).items():
                    self.writer.add_image(f"{self.name}/{k}", img.float().clamp(0, 1).cpu(), step)


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def make_accelerator(cfg: TrainConfig, phase_cfg: PhaseConfig) -> Accelerator:
    acc = Accelerator(mixed_precision=cfg.run.mixed_precision, step_scheduler_with_optimizer=False,
                      cpu=not torch.cuda.is_available())  # CPU-only ranks from torchrun -> gloo data parallel
    set_seed(cfg.run.seed, device_specific=True)
    return acc
