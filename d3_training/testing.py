"""Helpers for smoke tests and examples: a random tiny teacher directory and a tiny D³ config."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

from d3_training.config import TrainConfig, config_from_dict


def make_tiny_teacher(out_dir: str | Path, seed: int = 0) -> Path:
    """Write `out_dir/{unet,vae}/` (diffusers, random tiny preset weights) + `context.safetensors` [1,77,32]."""
    from d3_perception.model.config import ModelConfig

    out = Path(out_dir)
    mc = ModelConfig.preset("tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        UNet2DConditionModel(**mc.unet).save_pretrained(str(out / "unet"))
        AutoencoderKL(**mc.vae).save_pretrained(str(out / "vae"))
        s, d = mc.prompt_embedding_shape
        save_file({"context": torch.randn(1, s, d)}, str(out / "context.safetensors"))
    return out


def tiny_config(output_dir: str | Path, teacher_dir: str | Path | None, **sections) -> TrainConfig:
    """A D³ config at 32×32, batch 2, few steps, for tests. `sections` are merged into the dict."""
    data = {
        "run": {"output_dir": str(output_dir), "seed": 0, "checkpoint_every": 3, "keep_last": 2, "log_every": 1,
                "image_every": 1000, "tensorboard": False, "threads": 1},
        "model": {"preset": "tiny", "tasks": ["depth", "normals"], "teacher_path": str(teacher_dir) if teacher_dir else None,
                  "adapter_depth": 1, "adapter_cond_dim": 32},
        "data": {"resolution": [32, 32], "labeled": [{"kind": "synthetic", "num_samples": 16}]},
        "schedule": {"name": "two_stage", "stage1": {"steps": 3, "batch_size": 2},
                     "stage2": {"steps": 6, "batch_size": 2, "decay": "linear"}},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_dict(data)
