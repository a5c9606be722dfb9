"""Final student -> a d3_perception checkpoint directory (adapters and experts dropped), through the model
engineer's API (`D3Predictor`, `save_pretrained`), so `d3-predict` and the node load it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from d3_perception.model.checkpoint import save_pretrained
from d3_perception.model.config import OFFICIAL_PROMPTS, ModelConfig
from d3_perception.model.predictor import D3Predictor

logger = logging.getLogger(__name__)


def export_student(student_dir: str | Path, vae_dir: str | Path, out_dir: str | Path, *, preset: str = "tiny",
                   model_id: str = "d3-trained", processing_resolution: int | None = None,
                   provenance: dict | None = None, fp16: bool = False) -> Path:
    """`student_dir` = a phase's final/ (student.safetensors + student.json); `vae_dir` = diffusers VAE dir.

    The UNet architecture is the preset's; τ, the latent scale and the task prompt embeddings come from training.
    `fp16=True` stores the UNet/VAE tensors in half precision (the loader upcasts), halving the file size.
    """
    student_dir, out_dir = Path(student_dir), Path(out_dir)
    meta = json.loads((student_dir / "student.json").read_text())
    state = load_file(str(student_dir / "student.safetensors"))
    vae = AutoencoderKL.from_pretrained(str(vae_dir))
    tasks = tuple(meta["tasks"])
    prompts = state["task_prompts"]  # [T,S,D]
    base = ModelConfig.preset(preset)
    unet_cfg = dict(base.unet)
    vae_cfg = {k: v for k, v in vae.config.items() if k in base.vae or k == "scaling_factor"}
    cfg = base.replace(
        unet=unet_cfg, vae={**base.vae, **vae_cfg}, latent_scale=float(meta["latent_scale"]), timestep=float(meta["tau"]),
        tasks=tasks, prompt_embedding_shape=tuple(prompts.shape[-2:]),
        prompts={t: OFFICIAL_PROMPTS[t] + (" (learned embedding)" if preset == "tiny" else "") for t in tasks},
        processing_resolution=processing_resolution or base.processing_resolution, normals_convention="optical",
        model_id=model_id, provenance={**(provenance or {}), "trained_by": "d3_training", "tau": float(meta["tau"])})
    with torch.device("meta"):
        predictor = D3Predictor(cfg)
    unet_sd = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    predictor.unet.load_state_dict(unet_sd, strict=True, assign=True)
    predictor.vae.load_state_dict(vae.state_dict(), strict=True, assign=True)
    predictor.timestep = torch.nn.Parameter(state["tau"].float().reshape(()))
    predictor.prompt_embeds = prompts.float().clone()
    out = save_pretrained(predictor, out_dir)
    if fp16:
        _halve(out)
    logger.info("exported %s (tau %.3f, tasks %s) to %s", model_id, float(meta["tau"]), tasks, out)
    return out


def _halve(out: Path) -> None:
    """Rewrite model.safetensors with fp16 UNet/VAE weights (τ and prompts stay fp32)."""
    from safetensors.torch import save_file

    path = out / "model.safetensors"
    state = load_file(str(path))
    state = {k: (v.half() if k.startswith(("unet.", "vae.")) and v.is_floating_point() else v).contiguous()
             for k, v in state.items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "d3_format_version": "1"})
    tmp.replace(path)
