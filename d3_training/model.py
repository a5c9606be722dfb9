"""The trainable D³ student (UNet copy + learned τ + prompts + adapters) and the frozen VAE helpers.

The student sees the *clean* latent at one learned timestep τ (fp32 parameter, no weight decay). It runs once
per step; the adapters are applied per expert timestep to its tapped features (`one_pass=True`). The
official code's formulation (one identical student pass per expert timestep) is kept as `one_pass=False` for the
benchmark and the equality test.
"""

from __future__ import annotations

import copy

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from d3_training.adapters import AdapterBank
from d3_training.experts import FeatureTaps, aligned_layers, layer_channels


class FrozenVAE(nn.Module):
    """Frozen AutoencoderKL: deterministic latent *mean* encode, differentiable decode (parameters frozen)."""

    def __init__(self, vae: AutoencoderKL, latent_scale: float) -> None:
        super().__init__()
        self.vae = vae.requires_grad_(False).eval()
        self.latent_scale = float(latent_scale)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [N,3,H,W] in [-1,1] -> scaled latent mean [N,4,H/f,W/f]."""
        return self.vae.encode(x).latent_dist.mean * self.latent_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents [N,4,h,w] -> maps [N,3,H,W] (gradients flow to z)."""
        return self.vae.decode(z / self.latent_scale).sample


class D3Student(nn.Module):
    """Trainable parts, wrapped by accelerate: UNet, τ, task prompt embeddings and (optionally) adapters.

    Prompt rows: index 0 is the experts' context (frozen buffer, used in stage 1), 1..T the task prompts.
    """

    def __init__(self, unet: UNet2DConditionModel, tasks: tuple[str, ...], context: torch.Tensor,
                 task_prompts: torch.Tensor, tau_init: float = 261.0, with_adapters: bool = True,
                 drop_last: int = 2, adapter_depth: int = 3,
                 adapter_cond_dim: int = 256, prompts_trainable: bool = True) -> None:
        super().__init__()
        self.unet = unet
        self.tasks = tuple(tasks)
        self.tau = nn.Parameter(torch.tensor(float(tau_init), dtype=torch.float32))
        self.register_buffer("context", context.detach().float().reshape(1, *context.shape[-2:]).clone())
        prompts = task_prompts.detach().float().clone()  # [T,S,D]
        if prompts_trainable:
            self.task_prompts = nn.Parameter(prompts)
        else:
            self.register_buffer("task_prompts", prompts)
        self.taps = aligned_layers(unet, drop_last)
        self.adapters = None
        if with_adapters:
            channels = layer_channels(unet, self.taps)
            self.adapters = AdapterBank(channels, adapter_cond_dim, adapter_depth)

    def prompt_rows(self, task_index: torch.Tensor) -> torch.Tensor:
        """task_index [R] (-1 = experts' context, 0..T-1 = task) -> [R,S,D]."""
        table = torch.cat([self.context, self.task_prompts], dim=0)  # [T+1,S,D]
        return table[task_index + 1]

    def forward(self, z: torch.Tensor, task_index: torch.Tensor, expert_t: torch.Tensor | None = None,
                one_pass: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """z [R,4,h,w] clean latents, task_index [R], expert_t [R,K] (None = no adapters) ->
        (y_lat [R,4,h,w] conv_out, adapted features {name: [R*K,C,h_l,w_l]} sample-major)."""
        ctx = self.prompt_rows(task_index).to(z.dtype)  # [R,S,D]
        tau = self.tau.expand(z.shape[0])  # [R] fp32, gradients reach τ through the time embedding
        if expert_t is None or self.adapters is None:
            return self.unet(z, tau, encoder_hidden_states=ctx).sample, {}
        k = expert_t.shape[1]
        with FeatureTaps(self.taps) as hooks:
            y = self.unet(z, tau, encoder_hidden_states=ctx).sample
            passes = [hooks.pop()]
            if not one_pass:  # official formulation: K identical student passes, one per expert timestep
                for _ in range(k - 1):
                    self.unet(z, tau, encoder_hidden_states=ctx)
                    passes.append(hooks.pop())
        if one_pass:
            feats = {n: f.repeat_interleave(k, dim=0) for n, f in passes[0].items()}  # [R*K,C,h,w]
        else:
            feats = {n: torch.stack([p[n] for p in passes], dim=1).flatten(0, 1) for n in passes[0]}
        adapted = self.adapters(feats, expert_t.reshape(-1).to(z.dtype))
        return y, adapted


def student_from_teacher(teacher: UNet2DConditionModel) -> UNet2DConditionModel:
    """A trainable deep copy of the teacher UNet (the student starts at θ0)."""
    student = copy.deepcopy(teacher)
    student.requires_grad_(True).train()
    return student


def init_task_prompts(context: torch.Tensor, tasks: tuple[str, ...], seed: int = 0, scale: float = 0.5) -> torch.Tensor:
    """Learned-prompt init for models without a text encoder: the teacher context plus a fixed per-task offset
    (deterministic), so tasks start distinguishable. context [1,S,D] -> [T,S,D]."""
    g = torch.Generator().manual_seed(seed)
    std = float(context.std()) or 1.0
    return torch.cat([context + scale * std * torch.randn(context.shape, generator=g) for _ in tasks], dim=0)
