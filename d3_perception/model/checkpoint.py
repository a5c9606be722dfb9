"""Checkpoint directories (DESIGN §3): ``config.json`` + ``model.safetensors``; strict, never unpickles.

Tensor names in ``model.safetensors``: ``unet.*`` and ``vae.*`` (diffusers module keys), ``timestep``
(0-dim fp32 τ) and ``prompt_embeds.<task>`` (``[S,D]`` fp32, one per task).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from d3_perception.io_utils import FILE_MODE
from d3_perception.model.config import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ModelConfig,
    checkpoint_hash,
    resolve_checkpoint_dir,
)
from d3_perception.model.predictor import D3Predictor

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "build_random_checkpoint",
    "checkpoint_hash",
    "load_pretrained",
    "predictor_state_dict",
    "save_pretrained",
]

logger = logging.getLogger(__name__)

class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or does not match its config."""


def predictor_state_dict(predictor: D3Predictor) -> dict[str, torch.Tensor]:
    """The tensors written to ``model.safetensors`` (contiguous fp32 CPU copies)."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in (("unet", predictor.unet), ("vae", predictor.vae)):
        for key, value in module.state_dict().items():
            out[f"{prefix}.{key}"] = value.detach().to("cpu", torch.float32).contiguous()
    out["timestep"] = predictor.timestep.detach().to("cpu", torch.float32).reshape(()).contiguous()
    for i, task in enumerate(predictor.config.tasks):
        out[f"prompt_embeds.{task}"] = predictor.prompt_embeds[i].detach().to("cpu", torch.float32).contiguous()
    return out


def save_pretrained(predictor: D3Predictor, out_dir: str | os.PathLike, *, provenance: dict | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` to ``out_dir`` (created). Returns the directory.

    The config records the current τ; ``provenance`` entries are merged into ``config.provenance``.
    Each file is written to a temp name and moved into place, so readers never see half a checkpoint file.
    """
    if not isinstance(predictor, D3Predictor):
        raise ValueError(f"`predictor` must be a D3Predictor; got {type(predictor).__name__}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = predictor_state_dict(predictor)
    tau = float(state["timestep"])
    config = predictor.config.replace(
        timestep=tau, provenance={**predictor.config.provenance, **(provenance or {})})
    fd, tmp = tempfile.mkstemp(prefix=f".{WEIGHTS_NAME}.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        # one metadata entry only: safetensors writes a multi-entry map in random order (non-reproducible bytes)
        save_file(state, tmp, metadata={"format": "pt"})
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, out_dir / WEIGHTS_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    config.to_json(out_dir / CONFIG_NAME)
    logger.info("saved %s (%s, tasks %s, tau %.3f) to %s", config.model_id, _count(state), config.tasks, tau, out_dir)
    return out_dir


def _count(state: dict[str, torch.Tensor]) -> str:
    n = sum(v.numel() for v in state.values())
    return f"{n / 1e6:.2f} M parameters"


def _resolve_dir(checkpoint: str | os.PathLike) -> Path:
    try:
        return resolve_checkpoint_dir(checkpoint)
    except FileNotFoundError as err:
        raise CheckpointError(str(err)) from None


def _check_keys(expected: dict[str, torch.Size], got: dict[str, torch.Tensor], where: Path) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        raise CheckpointError(f"`{where}` must match its config.json exactly; got " + "; ".join(parts))
    wrong = [(k, list(got[k].shape), list(shape)) for k, shape in expected.items() if tuple(got[k].shape) != tuple(shape)]
    if wrong:
        k, g, e = wrong[0]
        raise CheckpointError(f"`{where}` tensor {k!r} must have shape {e}; got {g} "
                              f"({len(wrong)} tensors with a wrong shape)")


def load_pretrained(checkpoint: str | os.PathLike, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, tasks: Sequence[str] | None = None) -> D3Predictor:
    """Load a checkpoint directory strictly: every tensor the config implies, nothing else, right shapes.

    ``tasks`` keeps only a subset of the checkpoint's tasks (in the given order). Returns the predictor in
    ``eval()`` mode on ``device``/``dtype`` (τ and prompt embeddings follow ``dtype`` only at call time).
    """
    path = _resolve_dir(checkpoint)
    config = ModelConfig.from_json(path / CONFIG_NAME)
    try:
        state = load_file(str(path / WEIGHTS_NAME), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"`{path / WEIGHTS_NAME}` must be a readable safetensors file; got {err}") from None
    # Build on the meta device (no random init: a full SD2.1 build costs ~12 s otherwise), then assign.
    with torch.device("meta"):
        model = D3Predictor(config)
    expected = {f"unet.{k}": v.shape for k, v in model.unet.state_dict().items()}
    expected.update({f"vae.{k}": v.shape for k, v in model.vae.state_dict().items()})
    expected["timestep"] = torch.Size([])
    s, d = config.prompt_embedding_shape
    expected.update({f"prompt_embeds.{t}": torch.Size([s, d]) for t in config.tasks})
    _check_keys(expected, state, path / WEIGHTS_NAME)
    for key, value in state.items():
        if not torch.isfinite(value).all():
            raise CheckpointError(f"`{path / WEIGHTS_NAME}` tensor {key!r} must be finite; got NaN or Inf")
    unet_sd = {k[5:]: v for k, v in state.items() if k.startswith("unet.")}
    vae_sd = {k[4:]: v for k, v in state.items() if k.startswith("vae.")}
    model.unet.load_state_dict(unet_sd, strict=True, assign=True)
    model.vae.load_state_dict(vae_sd, strict=True, assign=True)
    model.timestep = torch.nn.Parameter(state["timestep"].float().reshape(()))
    model.prompt_embeds = torch.stack([state[f"prompt_embeds.{t}"].float() for t in config.tasks])
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"`{path}` left tensors uninitialised: {leftover[:8]} (diffusers version mismatch?)")
    tau = float(state["timestep"])
    if abs(tau - config.timestep) > 1e-3:
        logger.warning("checkpoint %s: tau in model.safetensors (%.4f) differs from config.json (%.4f); "
                       "using the tensor", path, tau, config.timestep)
        model.config = config.replace(timestep=tau)
    if tasks is not None:
        model = _select_tasks(model, tasks)
    model.requires_grad_(False)
    model.eval()
    model.to(device=device, dtype=dtype)
    model.timestep = torch.nn.Parameter(torch.tensor(tau, dtype=torch.float32, device=device), requires_grad=False)
    logger.info("loaded %s from %s: tasks %s, tau %.3f, %s", config.model_id, path, model.config.tasks, tau,
                _count(state))
    return model


def _select_tasks(model: D3Predictor, tasks: Sequence[str]) -> D3Predictor:
    idx = model.task_indices(tasks)
    names = tuple(model.config.tasks[i] for i in idx)
    prompts = {t: p for t, p in model.config.prompts.items() if t in names}
    model.config = model.config.replace(tasks=names, prompts=prompts)
    model.prompt_embeds = model.prompt_embeds[idx].clone()
    return model


def build_random_checkpoint(out_dir: str | os.PathLike, preset: str = "tiny",
                            tasks: Sequence[str] = ("depth", "normals"), seed: int = 0) -> Path:
    """Write a reproducible random-weight checkpoint (for tests, the demo without a trained model, benchmarks).

    The outputs are structured noise, not depth: use it to exercise plumbing, never to judge quality.
    """
    config = ModelConfig.preset(preset, tasks=tuple(tasks), model_id=f"d3-{preset}-random-seed{seed}",
                                provenance={"source": "random", "preset": preset, "seed": seed})
    model = D3Predictor.from_config(config, seed=seed)
    return save_pretrained(model, out_dir)
