"""``D3Predictor``: noise-free, deterministic, single-step dense prediction (arXiv 2512.07062).

VAE-encode (latent *mean*) -> one UNet call at the learned timestep τ with the stored task prompt
embedding(s) -> VAE-decode -> depth in [0,1] (0 = near) or unit normals. Several tasks run as one batched
UNet call: the image is encoded once and its latent repeated per task.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from d3_perception.model.config import ModelConfig
from d3_perception.model.processing import check_inputs, postprocess, preprocess

__all__ = ["D3Predictor"]

logger = logging.getLogger(__name__)


class D3Predictor(nn.Module):
    """The D³ student: diffusers ``AutoencoderKL`` + ``UNet2DConditionModel`` + τ + prompt embeddings.

    Attributes:
        config: the frozen :class:`ModelConfig`.
        vae, unet: the diffusers modules.
        timestep: τ, a 0-dim fp32 ``nn.Parameter`` (trainable in ``d3_training``).
        prompt_embeds: ``[T,S,D]`` buffer, one embedding per task in ``config.tasks`` order.
    """

    def __init__(self, config: ModelConfig, unet: UNet2DConditionModel | None = None,
                 vae: AutoencoderKL | None = None, timestep: float | torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"`config` must be a ModelConfig; got {type(config).__name__}")
        self.config = config
        self.unet = unet if unet is not None else UNet2DConditionModel(**config.unet)
        self.vae = vae if vae is not None else AutoencoderKL(**config.vae)
        tau = config.timestep if timestep is None else timestep
        self.timestep = nn.Parameter(torch.as_tensor(tau, dtype=torch.float32).reshape(()).clone())
        self.register_buffer("prompt_embeds", self._stack_prompts(prompt_embeds), persistent=True)

    def _stack_prompts(self, prompt_embeds: torch.Tensor | dict[str, torch.Tensor] | None) -> torch.Tensor:
        cfg = self.config
        t, (s, d) = len(cfg.tasks), cfg.prompt_embedding_shape
        if prompt_embeds is None:
            return torch.zeros(t, s, d)  # [T,S,D], filled by load_pretrained or the caller
        if isinstance(prompt_embeds, dict):
            missing = [task for task in cfg.tasks if task not in prompt_embeds]
            if missing:
                raise ValueError(f"`prompt_embeds` must have an entry per task {cfg.tasks}; missing {missing}")
            prompt_embeds = torch.stack([torch.as_tensor(prompt_embeds[task]).reshape(s, d) for task in cfg.tasks])
        prompt_embeds = torch.as_tensor(prompt_embeds, dtype=torch.float32)
        if prompt_embeds.dim() == 2:
            prompt_embeds = prompt_embeds[None]
        if tuple(prompt_embeds.shape) != (t, s, d):
            raise ValueError(f"`prompt_embeds` must have shape [T,S,D] = {[t, s, d]}; got {list(prompt_embeds.shape)}")
        return prompt_embeds.clone()

    @classmethod
    def from_config(cls, config: ModelConfig, seed: int | None = None) -> D3Predictor:
        """A predictor with freshly initialised (random) weights; ``seed`` makes them reproducible."""
        if seed is None:
            return cls(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config)
            model.prompt_embeds.normal_(0.0, 1.0)
        return model

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.config.tasks

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ network (pure tensor path)
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[N,3,h,w]`` in ``input_range`` -> scaled latent mean ``[N,4,h/f,w/f]`` (deterministic)."""
        moments = self.vae.encoder(x)  # [N,2*4,h/f,w/f]
        if self.vae.quant_conv is not None:
            moments = self.vae.quant_conv(moments)
        mean = moments[:, : moments.shape[1] // 2]  # posterior mean, never a sample: [N,4,h/f,w/f]
        return mean * self.config.latent_scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B,4,h/f,w/f]`` -> decoded maps ``[B,3,h,w]`` (roughly in [-1,1])."""
        z = latents / self.config.latent_scale
        if self.vae.post_quant_conv is not None:
            z = self.vae.post_quant_conv(z)
        return self.vae.decoder(z)

    def task_indices(self, tasks: Sequence[str] | None) -> list[int]:
        if tasks is None:
            return list(range(len(self.config.tasks)))
        if isinstance(tasks, str):
            tasks = (tasks,)
        bad = [t for t in tasks if t not in self.config.tasks]
        if bad or not tasks:
            raise ValueError(f"`tasks` must be a non-empty subset of the checkpoint's tasks {self.config.tasks}; "
                             f"got {tuple(tasks)}")
        return [self.config.tasks.index(t) for t in dict.fromkeys(tasks)]

    def forward(self, x: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """``x`` ``[N,3,h,w]`` in ``input_range`` (h, w multiples of 64) -> per task:
        ``"depth"`` ``[N,1,h,w]`` in [0,1] (0 = near), ``"normals"`` ``[N,3,h,w]`` unit vectors.

        With ``config.resize_policy == "squash"`` every task returns the raw decoded maps ``[N,3,h,w]``
        (unclamped): the official order resizes them back to the frame size before clamping, so the heads
        run in ``processing.postprocess`` (``apply_heads``).
        """
        idx = self.task_indices(tasks)
        n = x.shape[0]
        t = len(idx)
        # 1. Encode once with the posterior mean.
        z = self.encode(x)  # [N,4,h',w']
        # 2. Batch the latent per task: task-major order so each task's frames are contiguous.
        # (expand + reshape rather than repeat/repeat_interleave: exports with a symbolic batch size)
        z_all = z.unsqueeze(0).expand(t, *z.shape).reshape(t * n, *z.shape[1:])  # [T*N,4,h',w']
        emb = self.prompt_embeds[idx].to(z.dtype)  # [T,S,D]
        emb_all = emb.unsqueeze(1).expand(t, n, *emb.shape[1:]).reshape(t * n, *emb.shape[1:])  # [T*N,S,D]
        # τ stays fp32 whatever the model dtype: bf16 would round 261 to 260 (spacing 2); diffusers computes the
        # sinusoidal embedding in fp32 and casts it to the sample dtype itself.
        tau = self.timestep.float().expand(t * n)  # [T*N]
        # 3. One UNet call at τ; its conv_out is the target latent directly (no ε/v conversion).
        y_lat = self.unet(z_all, tau, encoder_hidden_states=emb_all, return_dict=False)[0]  # [T*N,4,h',w']
        # 4. Decode all tasks in one call.
        y = self.decode(y_lat)  # [T*N,3,h,w], unclamped
        if self.config.resize_policy == "squash":
            return {self.config.tasks[i]: y[k * n:(k + 1) * n] for k, i in enumerate(idx)}  # raw [N,3,h,w] each
        y = y.clamp(-1.0, 1.0)
        # 5. Task heads.
        out: dict[str, torch.Tensor] = {}
        for k, i in enumerate(idx):
            y_k = y[k * n:(k + 1) * n]  # [N,3,h,w]
            task = self.config.tasks[i]
            if task == "depth":
                out[task] = (y_k.mean(dim=1, keepdim=True) + 1.0) * 0.5  # [N,1,h,w] in [0,1]
            else:
                out[task] = F.normalize(y_k, dim=1, eps=1e-6)  # [N,3,h,w] unit
        return out

    # ------------------------------------------------------------------ frames in, maps out
    @torch.inference_mode()
    def predict(self, images: np.ndarray, tasks: Sequence[str] | None = None,
                processing_resolution: int | None = None, batch_size: int = 4) -> dict[str, np.ndarray]:
        """Frames ``[N,H,W,3]`` (or ``[H,W,3]``) uint8 / float32-in-[0,1] RGB ->
        ``{"depth": [N,H,W] float32 in [0,1], "normals": [N,3,H,W] float32 unit}`` at the input size.

        ``processing_resolution=None`` uses the checkpoint's value; ``tasks=None`` runs every task.
        """
        images = check_inputs(images)
        self.task_indices(tasks)  # validate before any work
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1; got {batch_size!r}")
        resolution = self.config.processing_resolution if processing_resolution is None else processing_resolution
        param = self.vae.encoder.conv_in.weight  # model dtype/device (τ itself is kept fp32)
        chunks: list[dict[str, np.ndarray]] = []
        for start in range(0, images.shape[0], batch_size):
            x_np, geo = preprocess(images[start:start + batch_size], resolution, self.config.input_range,
                                   self.config.resize_policy)
            x = torch.from_numpy(x_np).to(device=param.device, dtype=param.dtype)  # [n,3,h_pad,w_pad]
            raw = self(x, tasks)
            raw_np = {k: v.float().cpu().numpy() for k, v in raw.items()}
            chunks.append(postprocess(raw_np, geo))
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
