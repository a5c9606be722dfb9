"""Timestep-conditioned adapters (reference §1.2) and the aggregation loss L_agg (§1.3).

Written by hand: neither diffusers nor torch ships AdaRMSNorm/SwiGLU FFN stacks conditioned on a time mapping.
Each adapter maps student token features [N,C,h,w] into the feature space of the expert at timestep t; its output
projection is zero-initialised, so every adapter starts as the identity.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class FourierFeatures(nn.Module):
    """Fixed random Gaussian Fourier features of a scalar in [0,1]: [N] -> [N, 2*num_freqs] (cos, sin)."""

    def __init__(self, dim: int, std: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"`dim` must be even; got {dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=g) * std)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * t.float()[:, None] * self.freqs[None]  # [N, dim/2]
        return torch.cat([angles.cos(), angles.sin()], dim=-1)


class SwiGLU(nn.Module):
    def __init__(self, dim_in: int, dim_hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.proj(x).chunk(2, dim=-1)
        return F.silu(a) * b


class AdaRMSNorm(nn.Module):
    """RMSNorm whose scale is 1 + W_c·cond (W_c zero-initialised)."""

    def __init__(self, dim: int, dim_cond: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.to_scale = nn.Linear(dim_cond, dim, bias=False)
        nn.init.zeros_(self.to_scale.weight)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x [N,L,C], cond [N,Dc]
        x = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype)
        return x * (1 + self.to_scale(cond))[:, None, :]


class TimeMapping(nn.Module):
    """m(t) = MappingNet(W_in · Fourier(t/999)): RMSNorm -> depth x [RMSNorm -> SwiGLU -> Linear, residual] -> RMSNorm."""

    def __init__(self, dim: int = 256, depth: int = 2, expansion: int = 3) -> None:
        super().__init__()
        self.fourier = FourierFeatures(dim)
        self.w_in = nn.Linear(dim, dim, bias=False)
        self.norm_in = nn.RMSNorm(dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.RMSNorm(dim), SwiGLU(dim, dim * expansion), nn.Linear(dim * expansion, dim, bias=False))
            for _ in range(depth)
        )
        self.norm_out = nn.RMSNorm(dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.norm_in(self.w_in(self.fourier(t / 999.0)))  # [N, dim]
        for block in self.blocks:
            h = h + block(h)
        return self.norm_out(h)


class FFNStack(nn.Module):
    """depth x [h <- h + W_down · SwiGLU(AdaRMSNorm(h; m(t)))] over tokens; W_down zero-init (identity at start)."""

    def __init__(self, dim: int, dim_cond: int, depth: int = 3, expansion: int = 1) -> None:
        super().__init__()
        self.norms = nn.ModuleList(AdaRMSNorm(dim, dim_cond) for _ in range(depth))
        self.ffns = nn.ModuleList(SwiGLU(dim, dim * expansion) for _ in range(depth))
        self.downs = nn.ModuleList(nn.Linear(dim * expansion, dim, bias=False) for _ in range(depth))
        for down in self.downs:
            nn.init.zeros_(down.weight)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [N, h*w, C]
        for norm, ffn, down in zip(self.norms, self.ffns, self.downs, strict=True):
            tokens = tokens + down(ffn(norm(tokens, cond)))
        return tokens.transpose(1, 2).reshape(n, c, h, w)


class AdapterBank(nn.Module):
    """One FFNStack per aligned layer plus the shared time mapping."""

    def __init__(self, channels: dict[str, int], dim_cond: int = 256, depth: int = 3) -> None:
        super().__init__()
        self.names = list(channels)
        self.mapping = TimeMapping(dim_cond)
        self.adapters = nn.ModuleDict({_key(k): FFNStack(c, dim_cond, depth) for k, c in channels.items()})

    def forward(self, feats: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
        """feats[name] [N,C,h,w] and expert timesteps t [N] -> adapted features, same shapes."""
        cond = self.mapping(t)
        return {k: self.adapters[_key(k)](feats[k], cond.to(feats[k].dtype)) for k in self.names}


def _key(name: str) -> str:
    return name.replace(".", "_")


def aggregation_loss(student: dict[str, torch.Tensor], experts: dict[str, torch.Tensor]) -> torch.Tensor:
    """L_agg = sum_l (1 - mean_{n,p} cos(student_l, expert_l)), cosine over channels; experts detached."""
    total = 0.0
    for name, s in student.items():
        e = experts[name].detach()
        if s.shape != e.shape:
            raise ValueError(f"`{name}` student/expert features must have equal shapes; got {tuple(s.shape)} "
                             f"vs {tuple(e.shape)}")
        total = total + (1 - F.cosine_similarity(s.float(), e.float(), dim=1).mean())
    return total
