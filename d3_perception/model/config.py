"""``ModelConfig``: everything a checkpoint needs besides its tensors, as a frozen dataclass <-> ``config.json``.

A checkpoint carries its run settings (STYLE rule 4): the learned timestep τ, the latent scale, the task
list with the prompt-embedding shape, the processing resolution, the input normalisation and the output
conventions. Call-time ``None`` means "the checkpoint's value".
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from d3_perception.geometry.normals import NORMAL_CONVENTIONS
from d3_perception.io_utils import atomic_write_bytes

__all__ = [
    "FORMAT_VERSION",
    "KNOWN_TASKS",
    "NORMALS_CONVENTIONS",
    "OFFICIAL_PROMPTS",
    "PAD_MULTIPLE",
    "RESIZE_POLICIES",
    "ModelConfig",
    "atomic_write_bytes",
    "check_processing_resolution",
    "checkpoint_hash",
    "resolve_checkpoint_dir",
    "sd21_unet_config",
    "sd21_vae_config",
    "tiny_unet_config",
    "tiny_vae_config",
]

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
KNOWN_TASKS = ("depth", "normals")
NORMALS_CONVENTIONS = tuple(NORMAL_CONVENTIONS)  # owned by geometry.normals (its axis-flip table)
# keep_aspect: long side -> processing_resolution, pad to PAD_MULTIPLE (the project's models);
# squash: resize to processing_resolution x processing_resolution, as official D³ training and inference do.
RESIZE_POLICIES = ("keep_aspect", "squash")
# Network inputs are padded to this multiple for every config (SD2.1 needs 64 = 8x VAE * 8x UNet; the tiny
# config needs only 16 = 4x VAE * 4x UNet, but one rule for all keeps exported shape profiles uniform).
PAD_MULTIPLE = 64

# The official D³ inference prompts (reference §1.1).
OFFICIAL_PROMPTS = {
    "depth": (
        "A grayscale depth estimation image, where darker areas represent closer depths and lighter areas "
        "indicate farther depths."
    ),
    "normals": "A surface normal estimation map.",
}


def sd21_unet_config() -> dict[str, Any]:
    """The Stable Diffusion 2.1 (768-v) ``unet/config.json`` values (865.9 M parameters)."""
    return {
        "sample_size": 96,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                             "DownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "only_cross_attention": False,
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-05,
        "cross_attention_dim": 1024,
        "attention_head_dim": [5, 10, 20, 20],
        "dual_cross_attention": False,
        "use_linear_projection": True,
        "class_embed_type": None,
        "num_class_embeds": None,
        "upcast_attention": True,
        "resnet_time_scale_shift": "default",
    }


def sd21_vae_config() -> dict[str, Any]:
    """The Stable Diffusion 2.1 ``vae/config.json`` values (83.7 M parameters, 8x downsampling)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 768,
        "scaling_factor": 0.18215,
    }


def tiny_unet_config() -> dict[str, Any]:
    """A 3.1 M-parameter UNet on the same code path (4x downsampling, cross-attention width 32)."""
    return {
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [32, 64, 128],
        "layers_per_block": 1,
        "act_fn": "silu",
        "norm_num_groups": 16,
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "use_linear_projection": True,
    }


def tiny_vae_config() -> dict[str, Any]:
    """A 0.96 M-parameter VAE (4x downsampling) on the same code path."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 1,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 16,
        "sample_size": 128,
        "scaling_factor": 1.0,
    }


def _vae_downsampling(vae: dict[str, Any]) -> int:
    return 2 ** (len(vae.get("block_out_channels", [64])) - 1)


def _unet_downsampling(unet: dict[str, Any]) -> int:
    return 2 ** (len(unet.get("block_out_channels", [320, 640, 1280, 1280])) - 1)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and run settings of one D³ checkpoint (``config.json``).

    Fields:
        unet: diffusers ``UNet2DConditionModel`` constructor arguments.
        vae: diffusers ``AutoencoderKL`` constructor arguments.
        latent_scale: latents are ``latent_scale * E(x).mean``; the decoder sees ``y / latent_scale``.
        timestep: the learned τ (float, in UNet timestep units 0..999); the tensor in ``model.safetensors``
            is authoritative and equal to this value when written by ``save_pretrained``.
        tasks: output tasks in batch order, subset of ``("depth", "normals")``, no duplicates.
        prompt_embedding_shape: ``[S, D]`` of each task's stored text embedding (D = UNet cross-attention dim).
        prompts: the text each embedding was computed from (provenance only; the runtime never encodes text).
        processing_resolution: default long side of the network input in pixels (multiple of 64).
        input_range: RGB in [0,1] is mapped affinely onto this range before the VAE (SD: (-1, 1)).
        normals_convention: "optical" (x right, y down, z forward) or "opengl" (x right, y up, z to viewer).
        depth_convention: always "relative_near_zero": depth in [0,1], 0 = near, affine-invariant.
        resize_policy: how frames reach the network grid (see ``model.processing``): "keep_aspect" (long side
            = processing_resolution, pad to a multiple of 64; the project's models) or "squash" (resize to a
            square processing_resolution x processing_resolution, bilinear without antialiasing, and the
            unclamped output resized back before clamping: how the official D³ checkpoints were trained).
            Configs written before this field existed load as "keep_aspect".
        model_id: a short human-readable name published in diagnostics.
        provenance: free-form facts (source checkpoint, training run, git SHA, date).
    """

    unet: dict[str, Any]
    vae: dict[str, Any]
    latent_scale: float = 0.18215
    timestep: float = 261.0
    tasks: tuple[str, ...] = ("depth",)
    prompt_embedding_shape: tuple[int, int] = (77, 1024)
    prompts: dict[str, str] = field(default_factory=dict)
    processing_resolution: int = 768
    input_range: tuple[float, float] = (-1.0, 1.0)
    normals_convention: str = "optical"
    depth_convention: str = "relative_near_zero"
    resize_policy: str = "keep_aspect"
    model_id: str = "d3"
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        # Normalise containers (JSON gives lists) and defend against later mutation of the caller's dicts.
        object.__setattr__(self, "unet", copy.deepcopy(dict(self.unet)))
        object.__setattr__(self, "vae", copy.deepcopy(dict(self.vae)))
        object.__setattr__(self, "tasks", tuple(self.tasks) if not isinstance(self.tasks, str) else (self.tasks,))
        object.__setattr__(self, "prompt_embedding_shape", tuple(int(v) for v in self.prompt_embedding_shape))
        object.__setattr__(self, "input_range", tuple(float(v) for v in self.input_range))
        object.__setattr__(self, "prompts", dict(self.prompts))
        object.__setattr__(self, "provenance", copy.deepcopy(dict(self.provenance)))
        self._check()

    def _check(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"`format_version` must be {FORMAT_VERSION}; got {self.format_version!r}")
        if not self.tasks:
            raise ValueError("`tasks` must name at least one task; got ()")
        for task in self.tasks:
            if task not in KNOWN_TASKS:
                raise ValueError(f"`tasks` must be a subset of {KNOWN_TASKS}; got {task!r}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"`tasks` must not repeat a task; got {self.tasks}")
        unknown_prompts = set(self.prompts) - set(self.tasks)
        if unknown_prompts:
            raise ValueError(f"`prompts` must only name tasks of `tasks` {self.tasks}; got {sorted(unknown_prompts)}")
        if not (isinstance(self.latent_scale, (int, float)) and math.isfinite(self.latent_scale)
                and self.latent_scale > 0):
            raise ValueError(f"`latent_scale` must be a finite number > 0; got {self.latent_scale!r}")
        if not (isinstance(self.timestep, (int, float)) and math.isfinite(self.timestep)
                and 0.0 <= self.timestep <= 1000.0):
            raise ValueError(f"`timestep` must be a finite number in [0, 1000]; got {self.timestep!r}")
        if len(self.prompt_embedding_shape) != 2 or min(self.prompt_embedding_shape) < 1:
            raise ValueError(f"`prompt_embedding_shape` must be [S, D] with S, D >= 1; got "
                             f"{list(self.prompt_embedding_shape)}")
        cross_dim = self.unet.get("cross_attention_dim", 1280)
        if isinstance(cross_dim, (list, tuple)):
            raise ValueError(f"`unet.cross_attention_dim` must be one integer; got {cross_dim}")
        if self.prompt_embedding_shape[1] != cross_dim:
            raise ValueError(f"`prompt_embedding_shape[1]` must equal `unet.cross_attention_dim` {cross_dim}; "
                             f"got {self.prompt_embedding_shape[1]}")
        latent_channels = self.vae.get("latent_channels", 4)
        for key in ("in_channels", "out_channels"):
            if self.unet.get(key, 4) != latent_channels:
                raise ValueError(f"`unet.{key}` must equal `vae.latent_channels` {latent_channels} (D³ feeds "
                                 f"the clean latent and decodes conv_out); got {self.unet.get(key, 4)}")
        if self.vae.get("in_channels", 3) != 3 or self.vae.get("out_channels", 3) != 3:
            raise ValueError("`vae.in_channels` and `vae.out_channels` must be 3 (RGB in, 3-channel map out); "
                             f"got {self.vae.get('in_channels', 3)}, {self.vae.get('out_channels', 3)}")
        if PAD_MULTIPLE % self.network_multiple != 0:
            raise ValueError(f"the network's downsampling {self.network_multiple} (VAE x UNet) must divide "
                             f"{PAD_MULTIPLE}; got vae {self.vae.get('block_out_channels')}, "
                             f"unet {self.unet.get('block_out_channels')}")
        check_processing_resolution(self.processing_resolution, "processing_resolution")
        lo, hi = self.input_range
        if len(self.input_range) != 2 or not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"`input_range` must be (low, high) with low < high; got {self.input_range}")
        if self.normals_convention not in NORMALS_CONVENTIONS:
            raise ValueError(f"`normals_convention` must be one of {NORMALS_CONVENTIONS}; "
                             f"got {self.normals_convention!r}")
        if self.depth_convention != "relative_near_zero":
            raise ValueError(f"`depth_convention` must be 'relative_near_zero'; got {self.depth_convention!r}")
        if self.resize_policy not in RESIZE_POLICIES:
            raise ValueError(f"`resize_policy` must be one of {RESIZE_POLICIES}; got {self.resize_policy!r}")
        if not isinstance(self.model_id, str) or not self.model_id:
            raise ValueError(f"`model_id` must be a non-empty string; got {self.model_id!r}")

    # ------------------------------------------------------------------ derived values
    @property
    def vae_downsampling(self) -> int:
        """Image pixels per latent pixel (8 for SD2.1, 4 for tiny)."""
        return _vae_downsampling(self.vae)

    @property
    def network_multiple(self) -> int:
        """The smallest input size multiple the network accepts (VAE x UNet downsampling)."""
        return _vae_downsampling(self.vae) * _unet_downsampling(self.unet)

    # ------------------------------------------------------------------ presets and I/O
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """``"sd21"`` (full Stable Diffusion 2.1 size, 949.6 M parameters) or ``"tiny"`` (4.1 M parameters).

        ``overrides`` replace fields, e.g. ``ModelConfig.preset("tiny", tasks=("depth", "normals"))``.
        """
        if name == "sd21":
            base = cls(unet=sd21_unet_config(), vae=sd21_vae_config(), latent_scale=0.18215, timestep=261.0,
                       tasks=("depth",), prompt_embedding_shape=(77, 1024), processing_resolution=768,
                       model_id="d3-sd21")
        elif name == "tiny":
            base = cls(unet=tiny_unet_config(), vae=tiny_vae_config(), latent_scale=1.0, timestep=261.0,
                       tasks=("depth", "normals"), prompt_embedding_shape=(77, 32), processing_resolution=128,
                       model_id="d3-tiny")
        else:
            raise ValueError(f"`name` must be one of ('sd21', 'tiny'); got {name!r}")
        return base.replace(**overrides) if overrides else base

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed."""
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"`changes` must name ModelConfig fields; got unknown {sorted(unknown)}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tasks"] = list(self.tasks)
        out["prompt_embedding_shape"] = list(self.prompt_embedding_shape)
        out["input_range"] = list(self.input_range)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise ValueError(f"`config` must be a JSON object; got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"`config` has unknown keys {sorted(unknown)} (written by a newer version?)")
        missing = {"unet", "vae"} - set(data)
        if missing:
            raise ValueError(f"`config` must contain {sorted(missing)}; got keys {sorted(data)}")
        return cls(**data)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` atomically (temp file + os.replace)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> ModelConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"`config.json` must exist; got no file at {path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"`{path}` must be valid JSON; got {err}") from None
        return cls.from_dict(data)


def check_processing_resolution(value: Any, name: str = "processing_resolution") -> int:
    """Validate a long-side resolution: an int multiple of 64 in [64, 4096]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}` must be an integer multiple of {PAD_MULTIPLE}; got {value!r}")
    if value < PAD_MULTIPLE or value > 4096 or value % PAD_MULTIPLE:
        raise ValueError(f"`{name}` must be a multiple of {PAD_MULTIPLE} in [{PAD_MULTIPLE}, 4096]; got {value}")
    return value


def resolve_checkpoint_dir(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint directory (a path to its config.json or model.safetensors is accepted too)."""
    path = Path(checkpoint)
    if path.is_file() and path.name in (CONFIG_NAME, WEIGHTS_NAME):
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(f"`checkpoint` must be a directory with {CONFIG_NAME} and {WEIGHTS_NAME}; "
                                f"got {str(path)!r} (does not exist)")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"`checkpoint` must contain {name}; got a directory without it: {path}")
    return path


def checkpoint_hash(checkpoint: str | os.PathLike, length: int = 16) -> str:
    """SHA-256 of ``config.json`` + ``model.safetensors`` (hex prefix): the key of derived artefacts."""
    path = resolve_checkpoint_dir(checkpoint)
    digest = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        with open(path / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:length]
