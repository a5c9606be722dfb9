"""Per-GPU memory estimate of a D³ training config: parameters, gradients, optimizer states, frozen modules and
activations with / without gradient checkpointing.

Activations are measured, not guessed: the student UNet and the VAE decoder run once on the *meta* device
(no memory, no compute) with hooks that add up every leaf module's output. Without checkpointing, autograd keeps
about that much; with checkpointing it keeps the checkpointed blocks' outputs plus one block's internals during
recomputation. Allocator fragmentation and CUDA context (~0.5-1 GB) come on top; the estimate adds 10 %.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    student_params: int
    adapter_params: int
    teacher_params: int
    vae_params: int
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    frozen_gib: float
    activations_gib: float
    activations_no_ckpt_gib: float
    activations_ckpt_gib: float
    total_gib: float
    settings: dict


def _leaf_outputs(model: nn.Module, run, units: list[nn.Module]) -> tuple[int, int, int]:
    """(all leaf output elements, elements outside units + unit outputs, max elements inside one unit)."""
    unit_of = {}
    for u in units:
        for m in u.modules():
            unit_of[id(m)] = id(u)
    total, kept, per_unit = [0], [0], {}

    def leaf_hook(m, _i, o):
        n = o.numel() if isinstance(o, torch.Tensor) else 0
        total[0] += n
        if id(m) in unit_of:
            per_unit[unit_of[id(m)]] = per_unit.get(unit_of[id(m)], 0) + n
        else:
            kept[0] += n

    def unit_hook(_m, _i, o):
        o = o[0] if isinstance(o, (tuple, list)) else o
        o = getattr(o, "sample", o)
        kept[0] += o.numel() if isinstance(o, torch.Tensor) else 0

    handles = [m.register_forward_hook(leaf_hook) for m in model.modules() if not list(m.children())]
    handles += [u.register_forward_hook(unit_hook) for u in units]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return total[0], kept[0], max(per_unit.values(), default=0)


def _unet_units(unet) -> list[nn.Module]:
    units = []
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        units += list(block.resnets) + list(getattr(block, "attentions", None) or [])
    return units


def estimate_memory(unet_config: dict, vae_config: dict, hw: tuple[int, int], batch_size: int = 1, num_tasks: int = 1,
                    precision: str = "bf16", optimizer: str = "adamw", gradient_checkpointing: bool = False,
                    with_adapters: bool = True, num_expert_timesteps: int = 3, drop_last: int = 2,
                    adapter_cond_dim: int = 256, adapter_depth: int = 3) -> MemoryEstimate:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from d3_training.adapters import AdapterBank
    from d3_training.experts import FeatureTaps, aligned_layers, layer_channels

    act_bytes = 2 if precision in ("bf16", "fp16") else 4
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        f = 2 ** (len(vae_config["block_out_channels"]) - 1)
        rows = batch_size * num_tasks
        z = torch.empty(rows, unet_config.get("in_channels", 4), hw[0] // f, hw[1] // f)
        ctx = torch.empty(rows, 77, unet_config["cross_attention_dim"])
        t = torch.full((rows,), 261.0)
        taps = FeatureTaps(aligned_layers(unet, drop_last)) if with_adapters else None
        with taps if taps is not None else contextlib.nullcontext():
            u_tot, u_kept, u_max = _leaf_outputs(unet, lambda: unet(z, t, encoder_hidden_states=ctx), _unet_units(unet))
        tap_numel = sum(f.numel() for f in taps.features.values()) if taps is not None else 0
        dec_units = [vae.decoder.mid_block, *vae.decoder.up_blocks]
        d_tot, d_kept, d_max = _leaf_outputs(vae.decoder, lambda: vae.decode(z), dec_units)
        adapters = AdapterBank(layer_channels(unet, aligned_layers(unet, drop_last)), adapter_cond_dim,
                               adapter_depth) if with_adapters else None
    n_student = sum(p.numel() for p in unet.parameters()) + 1  # + τ
    n_adapt = sum(p.numel() for p in adapters.parameters()) if with_adapters else 0
    n_vae = sum(p.numel() for p in vae.parameters())
    trainable = n_student + n_adapt
    weights = trainable * 4  # fp32 master weights (autocast computes in bf16)
    grads = trainable * 4
    opt = trainable * (2 if optimizer == "adamw8bit" else 8)
    frozen = (n_student + n_vae) * act_bytes  # teacher UNet + VAE cast to the compute precision
    no_ckpt = (u_tot + d_tot) * act_bytes
    ckpt = (u_kept + u_max + d_kept + d_max) * act_bytes
    # adapters run on R*K rows of every aligned layer; each FFN block keeps ~5 tensors of the layer's size
    # (normalised input, SwiGLU projection of width 2C, gated product, output)
    adapter_act = tap_numel * num_expert_timesteps * 5 * adapter_depth * act_bytes
    act = (ckpt if gradient_checkpointing else no_ckpt) + adapter_act
    total = (weights + grads + opt + frozen + act) * 1.10
    return MemoryEstimate(
        n_student, n_adapt, n_student, n_vae, weights / GIB, grads / GIB, opt / GIB, frozen / GIB, act / GIB,
        (no_ckpt + adapter_act) / GIB, (ckpt + adapter_act) / GIB, total / GIB,
        {"resolution": list(hw), "batch_size": batch_size, "tasks": num_tasks, "precision": precision,
         "optimizer": optimizer, "gradient_checkpointing": gradient_checkpointing, "adapters": with_adapters})


def estimate_for_config(cfg) -> MemoryEstimate:
    from d3_perception.model.config import ModelConfig

    mc = ModelConfig.preset(cfg.model.preset)
    phases = [p for n, p in cfg.schedule.phases() if n not in ("vae", "teacher")]
    batch = max(p.batch_size for p in phases)
    opt = "adamw8bit" if any(p.optimizer == "adamw8bit" for p in phases) else "adamw"
    uses_agg = cfg.schedule.name in ("two_stage", "joint")
    return estimate_memory(mc.unet, mc.vae, tuple(cfg.data.resolution), batch, len(cfg.model.tasks),
                           cfg.run.mixed_precision if cfg.run.mixed_precision != "no" else "fp32", opt,
                           cfg.model.gradient_checkpointing, uses_agg, cfg.model.num_expert_timesteps,
                           cfg.model.tap_drop_last, cfg.model.adapter_cond_dim, cfg.model.adapter_depth)


def format_estimate(e: MemoryEstimate) -> str:
    s = e.settings
    lines = [
        f"memory estimate per GPU ({s['precision']}, {s['optimizer']}, checkpointing {s['gradient_checkpointing']}, "
        f"batch {s['batch_size']} x {s['tasks']} task(s), {s['resolution'][0]}x{s['resolution'][1]})",
        f"  trainable: student {e.student_params / 1e6:.1f} M + adapters {e.adapter_params / 1e6:.1f} M; frozen: "
        f"teacher {e.teacher_params / 1e6:.1f} M, VAE {e.vae_params / 1e6:.1f} M",
        f"  weights (fp32 master)      {e.weights_gib:7.2f} GiB",
        f"  gradients (fp32)           {e.grads_gib:7.2f} GiB",
        f"  optimizer states           {e.optimizer_gib:7.2f} GiB",
        f"  frozen teacher + VAE       {e.frozen_gib:7.2f} GiB",
        f"  activations                {e.activations_gib:7.2f} GiB  (without checkpointing "
        f"{e.activations_no_ckpt_gib:.2f}, with {e.activations_ckpt_gib:.2f})",
        f"  total (+10 % allocator)    {e.total_gib:7.2f} GiB",
    ]
    return "\n".join(lines)
