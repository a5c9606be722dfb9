"""``d3-convert-official``: an official D³-Predictor ``.pth`` + a diffusers SD2.1 directory -> our checkpoint.

The official file is the state dict of the training wrapper (``StableFeatureAligner``): the student UNet
under ``d3_predictor.*`` (diffusers ``UNet2DConditionModel`` key names), the learned timestep ``timestep``,
and training-only parts (``adapters.*``, ``time_emb.*``, ``time_in_proj.*``, ``mapping.*``,
``visual_experts.*``, the VAE wrapper ``ae.*``) which are dropped and counted. Accepted forms: that flat
dict; the same with a DeepSpeed ``module.`` key prefix; or a dict whose ``module`` (DeepSpeed
``mp_rank_00_model_states.pt``, beside its optimizer/scheduler/config entries), ``state_dict`` or ``model``
entry is that dict of tensors. Loading is ``torch.load(weights_only=True)`` and strict: unknown, missing or
mis-shaped keys are an error naming them.

The VAE comes from ``<base>/vae``; the checkpoint's own VAE (``ae.ae.*``, which the official code encodes
with) is compared with it and a difference is warned about with its size. The task prompt is embedded once
by ``<base>/text_encoder`` and ``<base>/tokenizer`` (transformers, imported only here), or taken from
``--prompt-embedding``. The output is marked ``resize_policy: squash``: official D³ training and inference
resize every frame to a square (768 x 768), see ``model.processing``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

__all__ = ["DROPPED_PREFIXES", "ConversionError", "compare_vae", "convert", "file_sha256", "main",
           "split_official_state_dict", "unwrap_state_dict"]

logger = logging.getLogger(__name__)

STUDENT_PREFIX = "d3_predictor."
TIMESTEP_KEY = "timestep"
DROPPED_PREFIXES = ("adapters.", "time_emb.", "time_in_proj.", "mapping.", "visual_experts.", "ae.")
# The official wrapper's VAE: StableFeatureAligner.ae (their AutoencoderKL wrapper) .ae (diffusers AutoencoderKL)
VAE_PREFIX = "ae.ae."
WRAPPER_KEYS = ("module", "state_dict", "model")
_PRIVATE_CONFIG_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")

EPILOG = """examples:
  d3-convert-official d3_depth.pth --task depth --base ~/models/stable-diffusion-2-1 ckpt/d3_depth
  d3-convert-official d3_normal.pth --task normals --normals-convention opengl \\
      --base ~/models/stable-diffusion-2-1 ckpt/d3_normals
  # no text encoder at hand: a precomputed [77,1024] embedding (safetensors, key "prompt_embeds")
  d3-convert-official d3_depth.pth --task depth --base sd21/ --prompt-embedding depth_prompt.safetensors out/
"""


class ConversionError(ValueError):
    """The official checkpoint or the base directory does not have the expected layout."""


def _load_official(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if not path.is_file():
        raise ConversionError(f"`checkpoint` must be an existing .pth/.pt/.safetensors file; got {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), "safetensors"
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        raise ConversionError(f"`checkpoint` must be a tensor-only state dict loadable with weights_only=True; "
                              f"got {path.name}: {str(err).splitlines()[0]}") from None
    return unwrap_state_dict(obj)


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], str]:
    """-> (flat dict of tensors, which form was read). A DeepSpeed ``mp_rank_00_model_states.pt`` holds the
    weights under ``module`` beside ~23 other entries (optimizer, scheduler, config, counters); Lightning
    and others use ``state_dict`` or ``model``. The other entries are ignored."""
    if _is_tensor_dict(obj):
        return obj, "flat state dict"
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if _is_tensor_dict(obj.get(key)):
                others = len(obj) - 1
                return obj[key], f"`{key}` entry of a wrapper dict ({others} other entries ignored)"
        raise ConversionError(f"`checkpoint` must be a dict of tensors, or hold one under {list(WRAPPER_KEYS)}; got "
                              f"a dict with keys {sorted(map(str, obj))[:8]}")
    raise ConversionError(f"`checkpoint` must hold a dict of tensors; got {type(obj).__name__}")


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file read in blocks: official checkpoints are several GB, never read them twice."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def compare_vae(official: dict[str, torch.Tensor], vae_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Compare the checkpoint's own VAE (``ae.ae.<diffusers key>``) with the ``--base`` VAE state dict.

    Each checkpoint tensor is compared with the base tensor rounded to the checkpoint's dtype (training
    may store the frozen VAE in bf16). Returns ``{"compared", "missing", "unexpected", "max_abs_diff",
    "worst_key", "equal"}``; ``compared == 0`` when the checkpoint holds no VAE.
    """
    own = {k[len(VAE_PREFIX):]: v for k, v in official.items() if k.startswith(VAE_PREFIX)}
    report: dict[str, Any] = {"compared": 0, "missing": 0, "unexpected": 0, "max_abs_diff": 0.0,
                              "worst_key": None, "equal": True}
    if not own:
        return report
    report["missing"] = len(set(vae_state) - set(own))
    report["unexpected"] = len(set(own) - set(vae_state))
    for key, mine in own.items():
        ref = vae_state.get(key)
        if ref is None:
            continue
        report["compared"] += 1
        if tuple(ref.shape) != tuple(mine.shape):
            diff = float("inf")
        else:
            diff = float((mine.float() - ref.to(mine.dtype).float()).abs().max()) if mine.numel() else 0.0
        if diff > report["max_abs_diff"] or report["worst_key"] is None:
            report["max_abs_diff"], report["worst_key"] = max(diff, report["max_abs_diff"]), key
    report["equal"] = report["max_abs_diff"] == 0.0 and not report["missing"] and not report["unexpected"]
    return report


def split_official_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float, Counter]:
    """-> (student UNet state dict with diffusers keys, τ, dropped-key counts per prefix). Strict."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    unet: dict[str, torch.Tensor] = {}
    dropped: Counter = Counter()
    unknown: list[str] = []
    for key, value in state.items():
        if key.startswith(STUDENT_PREFIX):
            unet[key[len(STUDENT_PREFIX):]] = value
        elif key == TIMESTEP_KEY:
            continue
        else:
            prefix = next((p for p in DROPPED_PREFIXES if key.startswith(p)), None)
            if prefix is None:
                unknown.append(key)
            else:
                dropped[prefix.rstrip(".")] += 1
    if unknown:
        raise ConversionError(f"`checkpoint` has {len(unknown)} unknown keys (not {STUDENT_PREFIX}*, "
                              f"{TIMESTEP_KEY} or a training-only prefix): {sorted(unknown)[:8]}")
    if TIMESTEP_KEY not in state:
        raise ConversionError(f"`checkpoint` must contain the learned `{TIMESTEP_KEY}`; got none (without it the "
                              "model would silently run at the untrained τ)")
    if not unet:
        raise ConversionError(f"`checkpoint` must contain the student UNet under `{STUDENT_PREFIX}*`; got none "
                              f"(first keys: {sorted(state)[:5]})")
    tau_t = state[TIMESTEP_KEY]
    if tau_t.numel() != 1:
        raise ConversionError(f"`{TIMESTEP_KEY}` must be a scalar; got shape {list(tau_t.shape)}")
    return unet, float(tau_t.float().reshape(())), dropped


def _clean_config(config: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items()
            if k not in _PRIVATE_CONFIG_KEYS}


def _prompt_embedding(base: Path, prompt: str, embedding_file: Path | None) -> torch.Tensor:
    """``[S,D]`` fp32 embedding of ``prompt`` (CLIP last hidden state, as the SD pipelines condition)."""
    if embedding_file is not None:
        from safetensors.torch import load_file

        tensors = load_file(str(embedding_file))
        if "prompt_embeds" in tensors:
            emb = tensors["prompt_embeds"]
        elif len(tensors) == 1:
            emb = next(iter(tensors.values()))
        else:
            raise ConversionError(f"`--prompt-embedding` must hold one tensor or `prompt_embeds`; got {sorted(tensors)}")
        return emb.float().reshape(emb.shape[-2], emb.shape[-1])
    for sub in ("tokenizer", "text_encoder"):
        if not (base / sub).is_dir():
            raise ConversionError(f"`base` must contain {sub}/ to embed the prompt (or pass --prompt-embedding); "
                                  f"got {base}")
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as err:
        raise ConversionError(f"embedding the prompt needs transformers (pip install transformers): {err}") from None
    tokenizer = CLIPTokenizer.from_pretrained(str(base / "tokenizer"))
    encoder = CLIPTextModel.from_pretrained(str(base / "text_encoder")).eval()
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids  # [1,S]
    with torch.inference_mode():
        emb = encoder(ids)[0]  # [1,S,D]
    return emb[0].float().clone()


def convert(checkpoint: Path, base: Path, out_dir: Path, *, task: str, prompt: str | None = None,
            prompt_embedding: Path | None = None, processing_resolution: int = 768,
            normals_convention: str | None = None, model_id: str | None = None) -> dict[str, Any]:
    """Convert and save; returns a summary (τ, dropped counts, parameter count)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from d3_perception.model.checkpoint import save_pretrained
    from d3_perception.model.config import KNOWN_TASKS, OFFICIAL_PROMPTS, ModelConfig
    from d3_perception.model.predictor import D3Predictor

    if task not in KNOWN_TASKS:
        raise ConversionError(f"`task` must be one of {KNOWN_TASKS}; got {task!r}")
    if task == "normals" and normals_convention is None:
        raise ConversionError("`--normals-convention` must be given for normals (the official code does not "
                              "document its axes; check against its training data): optical or opengl")
    for sub in ("unet", "vae"):
        if not (base / sub / "config.json").is_file():
            raise ConversionError(f"`base` must be a diffusers SD2.1 directory with {sub}/config.json; got {base}")
    official, form = _load_official(checkpoint)
    if official and all(k.startswith("module.") for k in official):
        form += " with DeepSpeed `module.` key prefix"
    unet_sd, tau, dropped = split_official_state_dict(official)
    unet_cfg = UNet2DConditionModel.load_config(str(base / "unet"))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg)
    try:
        result = unet.load_state_dict(unet_sd, strict=False, assign=True)
    except RuntimeError as err:  # shape mismatches
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err)[:300])
        raise ConversionError(f"`checkpoint` student UNet must match {base / 'unet'}; got {first}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ConversionError(
            f"`checkpoint` student UNet must match {base / 'unet'}: missing {len(result.missing_keys)} keys "
            f"{result.missing_keys[:6]}, unexpected {len(result.unexpected_keys)} keys {result.unexpected_keys[:6]}")
    vae = AutoencoderKL.from_pretrained(str(base / "vae"))
    stripped = {k[len("module."):] if k.startswith("module.") else k: v for k, v in official.items()}
    vae_check = compare_vae(stripped, vae.state_dict())
    del official, stripped
    if vae_check["compared"] and not vae_check["equal"]:
        logger.warning("the checkpoint's own VAE (ae.ae.*, which the official code encodes with) differs from "
                       "%s: largest difference %.3g at %s (%d missing, %d unexpected keys); the converted model "
                       "uses the --base VAE", base / "vae", vae_check["max_abs_diff"], vae_check["worst_key"],
                       vae_check["missing"], vae_check["unexpected"])
    text = prompt if prompt is not None else OFFICIAL_PROMPTS[task]
    emb = _prompt_embedding(base, text, prompt_embedding)
    digest = file_sha256(checkpoint)[:16]
    config = ModelConfig(
        unet=_clean_config(unet.config), vae=_clean_config(vae.config),
        latent_scale=float(vae.config.scaling_factor), timestep=tau, tasks=(task,),
        prompt_embedding_shape=tuple(emb.shape), prompts={task: text},
        processing_resolution=processing_resolution, normals_convention=normals_convention or "optical",
        resize_policy="squash",  # official training and inference squash every frame to a square
        model_id=model_id or f"d3-official-{task}",
        provenance={"source": "official D3-Predictor checkpoint", "checkpoint": checkpoint.name,
                    "checkpoint_sha256_16": digest, "base": str(base),
                    "prompt_source": "file" if prompt_embedding else "text_encoder",
                    "dropped_keys": dict(dropped), "checkpoint_form": form, "vae_check": vae_check})
    predictor = D3Predictor(config, unet=unet, vae=vae, timestep=tau, prompt_embeds=emb[None])
    save_pretrained(predictor, out_dir)
    return {"output": str(out_dir), "task": task, "timestep": tau, "dropped_keys": dict(dropped),
            "dropped_total": sum(dropped.values()), "student_tensors": len(unet_sd),
            "parameters": predictor.num_parameters(), "prompt_embedding_shape": list(emb.shape),
            "checkpoint_form": form, "vae_check": vae_check, "resize_policy": config.resize_policy}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d3-convert-official", description=__doc__.splitlines()[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="official D³ .pth (training-wrapper state dict)")
    p.add_argument("out_dir", type=Path, help="output checkpoint directory")
    p.add_argument("--task", required=True, choices=("depth", "normals"), help="what the checkpoint predicts")
    p.add_argument("--base", type=Path, required=True, help="diffusers Stable Diffusion 2.1 directory")
    p.add_argument("--prompt", default=None, help="task prompt (default: the official prompt for --task)")
    p.add_argument("--prompt-embedding", type=Path, default=None,
                   help="precomputed prompt embedding (.safetensors, [S,D] or [1,S,D]) instead of the text encoder")
    p.add_argument("--processing-resolution", type=int, default=768, help="default long side (multiple of 64)")
    p.add_argument("--normals-convention", choices=("optical", "opengl"), default=None,
                   help="axis convention of the normals output (required for --task normals)")
    p.add_argument("--model-id", default=None, help="name recorded in config.json (default d3-official-<task>)")
    return p


def _vae_line(check: dict[str, Any]) -> str:
    if not check["compared"]:
        return "no VAE in the checkpoint to compare with --base"
    if check["equal"]:
        return f"its VAE equals --base ({check['compared']} tensors)"
    return f"its VAE DIFFERS from --base (largest difference {check['max_abs_diff']:.3g} at {check['worst_key']})"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        from tqdm import tqdm

        with tqdm(total=1, desc="d3-convert-official", unit="ckpt", file=sys.stderr) as bar:
            summary = convert(args.checkpoint, args.base, args.out_dir, task=args.task, prompt=args.prompt,
                              prompt_embedding=args.prompt_embedding,
                              processing_resolution=args.processing_resolution,
                              normals_convention=args.normals_convention, model_id=args.model_id)
            bar.update()
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"d3-convert-official: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(f"d3-convert-official: dropped {summary['dropped_total']} training-only tensors "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(summary['dropped_keys'].items())) or 'none'}); "
          f"tau = {summary['timestep']:.4f}; read {summary['checkpoint_form']}; {_vae_line(summary['vae_check'])}",
          file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
