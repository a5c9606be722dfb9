"""Memory estimator: parameter counts match SD2.1 and the official adapters; the 24 GB config fits."""

from __future__ import annotations

import pytest
import torch

from d3_training.config import load_config
from d3_training.memory import estimate_for_config, estimate_memory, format_estimate


def test_sd21_counts_and_workstation_config_fits_24gb():
    ws = estimate_for_config(load_config("config/train/workstation_24gb.yaml"))
    assert ws.student_params == pytest.approx(865_910_725, abs=1)  # SD2.1 UNet + τ
    assert ws.adapter_params == pytest.approx(123_801_600 + 1_246_208, rel=0.002)  # reference §1.2
    assert ws.total_gib < 22.0
    full = estimate_for_config(load_config("config/train/official_depth.yaml"))
    assert full.total_gib > 24.0  # the plain official recipe does not fit one 24 GB GPU
    assert full.optimizer_gib == pytest.approx(4 * ws.optimizer_gib, rel=1e-6)  # 8-bit states
    assert ws.activations_ckpt_gib < 0.7 * ws.activations_no_ckpt_gib
    assert "total" in format_estimate(ws)


def test_activations_grow_with_resolution_and_batch():
    from d3_perception.model.config import ModelConfig

    mc = ModelConfig.preset("tiny")
    small = estimate_memory(mc.unet, mc.vae, (64, 64), batch_size=1)
    big = estimate_memory(mc.unet, mc.vae, (128, 128), batch_size=2)
    assert big.activations_gib == pytest.approx(8 * small.activations_gib, rel=0.1)


@pytest.mark.gpu
@pytest.mark.slow
def test_workstation_config_peak_memory_on_gpu(tmp_path):
    """Two optimizer steps of SD2.1-size joint training (random weights) stay under 24 GB and the estimate."""
    pytest.importorskip("bitsandbytes")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file

    from d3_perception.model.config import ModelConfig
    from d3_training.pipeline import run_pipeline

    mc = ModelConfig.preset("sd21")
    UNet2DConditionModel(**mc.unet).save_pretrained(str(tmp_path / "sd/unet"))
    AutoencoderKL(**mc.vae).save_pretrained(str(tmp_path / "sd/vae"))
    save_file({"context": torch.zeros(1, 77, 1024)}, str(tmp_path / "sd/context.safetensors"))
    cfg = load_config("config/train/workstation_24gb.yaml", [
        f"run.output_dir={tmp_path / 'run'}", f"model.teacher_path={tmp_path / 'sd'}",
        "data.labeled=[{kind: synthetic, num_samples: 8}]", "schedule.joint.steps=2",
        "schedule.joint.effective_batch=2", "run.tensorboard=false"])
    torch.cuda.reset_peak_memory_stats()
    run_pipeline(cfg, export=False)
    peak_gib = torch.cuda.max_memory_allocated() / 1024**3
    assert peak_gib < 24.0
    assert peak_gib < estimate_for_config(cfg).total_gib * 1.15
