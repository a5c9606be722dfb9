"""Run a whole training config: (VAE) -> (teacher) -> stage1 -> stage2 | joint | task_only -> export.

The run folder keeps the resolved config and the git SHA; `resume=True` reads them back, skips finished phases
(their `final/DONE`) and continues the unfinished one from its newest complete checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from d3_training.config import ConfigError, TrainConfig, config_from_dict, save_config
from d3_training.trainer import TrainingError, git_sha, make_accelerator

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def prepare_run_dir(cfg: TrainConfig, resume: bool) -> tuple[TrainConfig, Path]:
    """Create (or, on resume, validate) the run folder; returns the config to use. Every rank checks first,
    then rank 0 writes, so a refusal never leaves other ranks waiting at a barrier."""
    import torch
    from accelerate import PartialState

    # cpu=True on machines without CUDA: torchrun-launched ranks then form a gloo group (MULTI_CPU)
    state = PartialState(cpu=not torch.cuda.is_available())
    run_dir = Path(cfg.run.output_dir)
    stored = run_dir / "config.yaml"
    if resume:
        if not stored.is_file():
            raise TrainingError(f"resume path must be a run folder with config.yaml; got {str(run_dir)!r}")
        return config_from_dict(yaml.safe_load(stored.read_text())), run_dir
    if stored.is_file():
        raise ConfigError(f"`run.output_dir` must be a new folder (or use --resume); got existing run {str(run_dir)!r}")
    state.wait_for_everyone()
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, stored)
        (run_dir / "git_sha.txt").write_text(git_sha(REPO_ROOT) + "\n")
    state.wait_for_everyone()
    return cfg, run_dir


def check_data(cfg: TrainConfig) -> None:
    """Open every configured dataset once (lists files, checks paths) before any run folder is written."""
    from d3_training.data import build_dataset

    for spec in cfg.data.labeled + cfg.data.unlabeled:
        build_dataset(spec, tuple(cfg.data.resolution))


def run_pipeline(cfg: TrainConfig, resume: bool = False, export: bool = True, one_pass: bool = True,
                 stop_after: str | None = None) -> Path | None:
    """Train every phase of `cfg` (up to `stop_after`); return the exported checkpoint (None if not exported)."""
    import torch

    from d3_training import phases as ph

    check_data(cfg)
    cfg, run_dir = prepare_run_dir(cfg, resume)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    vae_dir = Path(cfg.model.teacher_path) / "vae" if cfg.model.teacher_path else None
    teacher_dir = Path(cfg.model.teacher_path) if cfg.model.teacher_path else None
    prev_final: Path | None = None
    acc = None
    for name, pcfg in cfg.schedule.phases():
        final = run_dir / name / "final"
        if (final / "DONE").is_file():
            logger.info("%s: already finished (%s)", name, final)
        else:
            if acc is None:
                acc = make_accelerator(cfg, pcfg)
            acc.free_memory()
            acc._custom_objects = []  # EMA objects of the previous phase must not enter this phase's checkpoint
            trainer = _make_phase(ph, name, cfg, pcfg, run_dir, acc, vae_dir, teacher_dir, prev_final, one_pass)
            trainer.run()
        if name == "vae":
            vae_dir = final
        elif name == "teacher":
            teacher_dir = final
        else:
            prev_final = final
        if name == stop_after:
            return None
    if not export or prev_final is None:
        return None
    if acc is not None and not acc.is_main_process:
        return None
    from d3_training.export import export_student

    out = Path(cfg.run.export_dir) if cfg.run.export_dir else run_dir / "export"
    return export_student(prev_final, vae_dir, out, preset=cfg.model.preset,
                          model_id=f"d3-{cfg.model.preset}-{cfg.schedule.name}",
                          processing_resolution=max(64, (max(cfg.data.resolution) // 64) * 64),
                          provenance={"run_dir": str(run_dir), "git_sha": (run_dir / "git_sha.txt").read_text().strip(),
                                      "schedule": cfg.schedule.name})


def _make_phase(ph, name, cfg, pcfg, run_dir, acc, vae_dir, teacher_dir, prev_final, one_pass):
    if name == "vae":
        return ph.VAEPhase(cfg, pcfg, run_dir, acc, phase_name="vae")
    if name == "teacher":
        if vae_dir is None:
            raise ConfigError("`schedule.teacher` needs a VAE: set `schedule.vae` or `model.teacher_path`; got neither")
        return ph.TeacherPhase(cfg, pcfg, run_dir, acc, phase_name="teacher", vae_dir=vae_dir)
    if teacher_dir is None:
        raise ConfigError("`model.teacher_path` must be set (or `schedule.teacher` pretrains one); got null")
    init = prev_final if name == "stage2" else None
    return ph.D3Phase(cfg, pcfg, run_dir, acc, phase_name=name, teacher_dir=teacher_dir,
                      vae_dir=vae_dir,
                      init_dir=init, one_pass=one_pass)
