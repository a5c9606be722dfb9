"""Frozen timestep experts: the teacher UNet run on noised latents at stratified timesteps, read through hooks.

Aligned layers (reference §1.3): the mid-block output plus the per-layer outputs of every up-block (attention
output where the layer has one, else the resnet; the block's last layer is read after its upsampler), minus the
last ``drop_last`` of them. For SD2.1 that is exactly the official 11 taps (mid, us1..us10); for the tiny UNet it
is mid + 4 up-block taps. diffusers' up-blocks return only their final hidden state, hence forward hooks.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import nn


def aligned_layers(unet: UNet2DConditionModel, drop_last: int = 2) -> dict[str, nn.Module]:
    """Name -> module whose forward output is an aligned feature map, in network order."""
    taps: dict[str, nn.Module] = {"mid": unet.mid_block}
    k = 0
    for block in unet.up_blocks:
        attns = getattr(block, "attentions", None)
        n_layers = len(block.resnets)
        for i in range(n_layers):
            k += 1
            last = i == n_layers - 1
            if last and getattr(block, "upsamplers", None):
                taps[f"us{k}"] = block.upsamplers[0]
            elif attns is not None and len(attns) > i:
                taps[f"us{k}"] = attns[i]
            else:
                taps[f"us{k}"] = block.resnets[i]
    names = list(taps)
    keep = names[: len(names) - drop_last] if drop_last > 0 else names
    if len(keep) < 1:
        raise ValueError(f"`drop_last` must leave at least one aligned layer; got {drop_last} of {len(names)}")
    return {n: taps[n] for n in keep}


def layer_channels(unet: UNet2DConditionModel, taps: dict[str, nn.Module]) -> dict[str, int]:
    """Channels of each tap from the config (no forward pass): mid = last block width, up-block i = the i-th
    width from the end (diffusers up-blocks output their own width, also after the upsampler)."""
    boc = list(unet.config.block_out_channels)
    channels = [boc[-1]]
    for i, block in enumerate(unet.up_blocks):
        channels += [boc[::-1][i]] * len(block.resnets)
    return dict(zip(taps, channels[: len(taps)], strict=True))


class FeatureTaps:
    """Forward hooks that store each tapped module's output tensor in ``features`` (a context manager)."""

    def __init__(self, taps: dict[str, nn.Module]) -> None:
        self.taps = taps
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def fn(_module, _inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            if hasattr(output, "sample"):
                output = output.sample
            self.features[name] = output

        return fn

    def __enter__(self) -> FeatureTaps:
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.taps.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def pop(self) -> dict[str, torch.Tensor]:
        out, self.features = self.features, {}
        return out


def stratified_timesteps(n: int, k: int, generator: torch.Generator | None = None, t_min: int = 1,
                         t_max: int = 999, device: torch.device | str = "cpu") -> torch.Tensor:
    """t[b, j] = floor(t_min + (j + u) * (t_max - t_min) / k), u ~ U[0,1): one draw per bin. -> [n, k] long."""
    u = torch.rand(n, k, generator=generator)
    t = torch.floor(t_min + (torch.arange(k)[None] + u) * (t_max - t_min) / k).long().clamp(t_min, t_max - 1)
    return t.to(device)


class Experts(nn.Module):
    """The frozen teacher UNet viewed as an ensemble of timestep experts."""

    def __init__(self, unet: UNet2DConditionModel, scheduler: DDPMScheduler, drop_last: int = 2) -> None:
        super().__init__()
        self.unet = unet.requires_grad_(False).eval()
        self.scheduler = scheduler
        self.taps = aligned_layers(unet, drop_last)

    @torch.no_grad()
    def forward(self, z0: torch.Tensor, context: torch.Tensor, timesteps: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """z0 [N,4,h,w] clean latents, context [N,S,D], timesteps [N,K] -> features {name: [N*K,C,h_l,w_l]}
        in sample-major order (row n*K + k is sample n at timestep k). All experts run as one batched call."""
        n, k = timesteps.shape
        z = z0.repeat_interleave(k, dim=0)  # [N*K,4,h,w]
        t = timesteps.reshape(-1)  # [N*K]
        noise = torch.randn(z.shape, generator=generator, dtype=torch.float32).to(z)
        zt = self.scheduler.add_noise(z, noise, t.to(z.device))
        with FeatureTaps(self.taps) as hooks:
            self.unet(zt, t.to(z.device), encoder_hidden_states=context.repeat_interleave(k, dim=0))
            return hooks.pop()
