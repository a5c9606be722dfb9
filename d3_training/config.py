"""Training configuration: layered YAML (``base_config`` relative to the including file) into frozen dataclasses.

A config file may name ``base_config: other.yaml`` (or a list); bases are loaded first and the including file's
keys are merged on top (dicts recursively, everything else replaced). Command-line overrides ``a.b.c=value`` are
applied last (values parsed as YAML). Unknown keys are an error that names the key and the allowed ones.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from d3_perception.geometry.normals import NORMAL_CONVENTIONS

logger = logging.getLogger(__name__)

TASKS = ("depth", "normals")
SCHEDULES = ("two_stage", "joint", "task_only")
MIXED_PRECISION = ("no", "fp16", "bf16")
PHASES = ("vae", "teacher", "stage1", "stage2", "joint", "task_only")


class ConfigError(ValueError):
    """A training config that cannot be used; the message is one line meant for the user."""


@dataclass(frozen=True)
class DatasetSpec:
    """One data source. ``kind``: synthetic | folder | hypersim | hypersim_raw | vkitti2 | d3_official | unlabeled."""

    kind: str
    path: str | None = None
    weight: float = 1.0
    split_file: str | None = None
    num_samples: int = 2000  # synthetic only: scenes in the (deterministic) set
    seed: int = 0  # synthetic only
    scene_kind: str = "room"  # synthetic only
    min_depth_m: float | None = None  # None = the reader's published range
    max_depth_m: float | None = None
    normals_convention: str = "optical"  # folder only: optical | opengl (x right, y up, z toward camera)
    kitti_crop: bool = False  # vkitti2 only: 352x1216 KITTI benchmark crop

    def __post_init__(self) -> None:
        kinds = ("synthetic", "folder", "hypersim", "hypersim_raw", "vkitti2", "d3_official", "unlabeled")
        if self.kind not in kinds:
            raise ConfigError(f"`data.*.kind` must be one of {kinds}; got {self.kind!r}")
        if self.kind != "synthetic" and not self.path:
            raise ConfigError(f"`data.*.path` must be set for kind {self.kind!r}; got {self.path!r}")
        if not self.weight > 0:
            raise ConfigError(f"`data.*.weight` must be > 0; got {self.weight}")
        if self.num_samples < 1:
            raise ConfigError(f"`data.*.num_samples` must be >= 1; got {self.num_samples}")
        if self.normals_convention not in NORMAL_CONVENTIONS:  # the runtime's table: one list of conventions
            raise ConfigError(f"`normals_convention` must be one of {sorted(NORMAL_CONVENTIONS)}; got "
                              f"{self.normals_convention!r}")


@dataclass(frozen=True)
class DataConfig:
    resolution: tuple[int, int] = (64, 64)  # training crop H, W (multiples of 8)
    labeled: tuple[DatasetSpec, ...] = (DatasetSpec(kind="synthetic"),)
    unlabeled: tuple[DatasetSpec, ...] = ()  # extra RGB-only sources for stage 1 (mixed with `labeled`)
    hflip: bool = False
    num_workers: int = 0

    def __post_init__(self) -> None:
        h, w = self.resolution
        if h % 8 or w % 8 or h < 16 or w < 16:
            raise ConfigError(f"`data.resolution` must be two multiples of 8 >= 16; got {self.resolution}")
        if not self.labeled and not self.unlabeled:
            raise ConfigError("`data.labeled` must list at least one dataset; got none")


@dataclass(frozen=True)
class ModelSection:
    preset: str = "tiny"  # tiny | sd21 (architecture of VAE / UNet)
    tasks: tuple[str, ...] = ("depth", "normals")
    teacher_path: str | None = None  # diffusers dir with unet/ (+ vae/); None = pretrained in this run
    tau_init: float = 261.0
    num_expert_timesteps: int = 3
    tap_drop_last: int = 2  # aligned layers = mid + up-block per-layer outputs minus the last N
    adapter_depth: int = 3
    adapter_cond_dim: int = 256
    gradient_checkpointing: bool = False
    prompt_embeds_trainable: bool = True  # tiny models have no text encoder: prompts are learned

    def __post_init__(self) -> None:
        if self.preset not in ("tiny", "sd21"):
            raise ConfigError(f"`model.preset` must be 'tiny' or 'sd21'; got {self.preset!r}")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"`model.tasks` must be distinct names from {TASKS}; got {list(self.tasks)}")
        if not 0 < self.tau_init < 1000:
            raise ConfigError(f"`model.tau_init` must be in (0, 1000); got {self.tau_init}")
        if self.num_expert_timesteps < 1:
            raise ConfigError(f"`model.num_expert_timesteps` must be >= 1; got {self.num_expert_timesteps}")


@dataclass(frozen=True)
class LossWeights:
    agg: float = 1.0
    depth_mse: float = 8.0
    depth_ssi: float = 2.0
    depth_grad: float = 100.0
    normals_mse: float = 8.0
    normals_angular: float = 3.0


@dataclass(frozen=True)
class PhaseConfig:
    """Optimisation settings of one phase (VAE / teacher pretraining, stage 1, stage 2, joint)."""

    steps: int = 100
    batch_size: int = 8  # per device, per micro-step
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    warmup_type: str = "linear"  # linear | log (DeepSpeed WarmupDecayLR default, used by the official code)
    decay: str = "linear"  # linear (to 0 at `steps`) | constant | cosine
    grad_clip: float = 1.0
    tau_lr_mult: float = 100.0
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes)
    ema_decay: float | None = None
    max_minutes: float | None = None  # wall-clock cap: the phase checkpoints and ends early
    time_based_schedule: bool = False  # LR progress = max(step/steps, elapsed/max_minutes) (not bit-exact on resume)
    agg_weight: float | None = None  # None = the phase default (stage1/joint 1, stage2/task_only 0)
    effective_batch: int | None = None  # set: grad_accum = effective_batch / (batch_size * num_processes)

    def grad_accum_for(self, num_processes: int) -> int:
        """Accumulation steps: `grad_accum`, or what keeps `effective_batch` on `num_processes` devices."""
        if self.effective_batch is None:
            return self.grad_accum
        per_step = self.batch_size * num_processes
        if self.effective_batch % per_step:
            raise ConfigError(f"`effective_batch` {self.effective_batch} must be divisible by batch_size x processes "
                              f"= {per_step}; got a remainder")
        return self.effective_batch // per_step

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError(f"`steps`, `batch_size`, `grad_accum` must be >= 1; got {self.steps}, "
                              f"{self.batch_size}, {self.grad_accum}")
        if not self.lr > 0:
            raise ConfigError(f"`lr` must be > 0; got {self.lr}")
        if self.warmup_type not in ("linear", "log") or self.decay not in ("linear", "constant", "cosine"):
            raise ConfigError(f"`warmup_type` must be linear|log and `decay` linear|constant|cosine; got "
                              f"{self.warmup_type!r}, {self.decay!r}")
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise ConfigError(f"`optimizer` must be 'adamw' or 'adamw8bit'; got {self.optimizer!r}")
        if self.effective_batch is not None and self.effective_batch % self.batch_size:
            raise ConfigError(f"`effective_batch` must be a multiple of `batch_size` {self.batch_size}; got "
                              f"{self.effective_batch}")
        if self.time_based_schedule and self.max_minutes is None:
            raise ConfigError("`time_based_schedule` needs `max_minutes`; got max_minutes null")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"`ema_decay` must be in (0, 1) or null; got {self.ema_decay}")


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "two_stage"
    vae: PhaseConfig | None = None  # pretrain a tiny VAE first (machines without SD2.1 weights)
    teacher: PhaseConfig | None = None  # pretrain a tiny diffusion teacher first
    stage1: PhaseConfig = PhaseConfig()
    stage2: PhaseConfig = PhaseConfig()
    joint: PhaseConfig = PhaseConfig(steps=30000, lr=3e-5)

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ConfigError(f"`schedule.name` must be one of {SCHEDULES}; got {self.name!r}")

    def phases(self) -> list[tuple[str, PhaseConfig]]:
        out: list[tuple[str, PhaseConfig]] = []
        if self.vae is not None:
            out.append(("vae", self.vae))
        if self.teacher is not None:
            out.append(("teacher", self.teacher))
        if self.name == "two_stage":
            out += [("stage1", self.stage1), ("stage2", self.stage2)]
        elif self.name == "joint":
            out.append(("joint", self.joint))
        else:
            out.append(("task_only", self.stage2))
        return out


@dataclass(frozen=True)
class RunConfig:
    output_dir: str = "runs/d3"
    seed: int = 0
    mixed_precision: str = "no"
    log_every: int = 10
    image_every: int = 200
    checkpoint_every: int = 200
    keep_last: int = 2
    max_consecutive_nan: int = 3
    threads: int | None = None  # torch CPU threads (None = torch default)
    export_dir: str | None = None  # None = <output_dir>/export
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"`run.mixed_precision` must be one of {MIXED_PRECISION}; got {self.mixed_precision!r}")
        if self.keep_last < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ConfigError("`run.keep_last`, `run.checkpoint_every`, `run.log_every` must be >= 1; got "
                              f"{self.keep_last}, {self.checkpoint_every}, {self.log_every}")


@dataclass(frozen=True)
class TrainConfig:
    run: RunConfig = RunConfig()
    model: ModelSection = ModelSection()
    data: DataConfig = DataConfig()
    loss: LossWeights = LossWeights()
    schedule: ScheduleConfig = ScheduleConfig()

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _build(cls: type, data: Any, where: str) -> Any:
    """Dict -> (nested) frozen dataclass, rejecting unknown keys with the allowed list."""
    if dataclasses.is_dataclass(cls):
        if data is None:
            return None
        if not isinstance(data, dict):
            raise ConfigError(f"`{where}` must be a mapping; got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"unknown config key `{where}.{unknown[0]}`; allowed: {', '.join(sorted(fields))}"
                              .replace("`.", "`"))
        hints = _type_hints(cls)
        kwargs = {k: _convert(hints[k], v, f"{where}.{k}".lstrip(".")) for k, v in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"`{where or 'config'}`: {exc}") from None
    return data


def _type_hints(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


def _convert(hint: Any, value: Any, where: str) -> Any:
    import types
    import typing

    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _convert(non_none[0], value, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{where}` must be a list; got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"`{where}` must have {len(args)} items; got {list(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"`{where}` must be a number; got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"`{where}` must be a number; got {value!r}") from None
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"`{where}` must be an integer; got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"`{where}` must be true or false; got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"`{where}` must be a string; got {value!r}")
        return value
    return value


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml_layers(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read ``path`` and its ``base_config`` chain (paths relative to the including file) into one dict."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"`base_config` must not form a cycle; got {' -> '.join(map(str, (*_seen, path)))}")
    if not path.is_file():
        raise ConfigError(f"config file must exist; got {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} must be valid YAML; got {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping; got {type(data).__name__}")
    bases = data.pop("base_config", None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _merge(merged, load_yaml_layers(path.parent / base, (*_seen, path)))
    merged = _merge(merged, data)
    _resolve_paths(merged, path.parent)
    return merged


def _resolve_paths(data: dict, root: Path) -> None:
    """Dataset, teacher and run paths in a file are relative to that file (like `base_config`)."""
    for section in ("labeled", "unlabeled"):
        for spec in (data.get("data") or {}).get(section) or []:
            if isinstance(spec, dict):
                for key in ("path", "split_file"):
                    if isinstance(spec.get(key), str) and not spec[key].startswith("/"):
                        spec[key] = str(root / spec[key])
    run = data.get("run") or {}
    for key in ("output_dir", "export_dir"):
        if isinstance(run.get(key), str) and not run[key].startswith("/"):
            run[key] = str((root / run[key]).resolve())
    model = data.get("model") or {}
    if isinstance(model.get("teacher_path"), str) and not model["teacher_path"].startswith("/"):
        model["teacher_path"] = str(root / model["teacher_path"])


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to a nested dict."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override must look like `key.sub=value`; got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node: Any = out
        parts = key.strip().replace("[", ".").replace("]", "").split(".")
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise ConfigError(f"override `{key}` must index an existing list item; got index {p!r} "
                                      f"of {len(node)} items")
                if last:
                    node[int(p)] = value
                else:
                    node[int(p)] = dict(node[int(p)]) if isinstance(node[int(p)], dict) else node[int(p)]
                    node = node[int(p)]
            elif last:
                node[p] = value
            else:
                if not isinstance(node.get(p), (dict, list)):
                    node[p] = {}
                node = node[p]
    return out


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, data, "")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    data = load_yaml_layers(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides or []))


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = ["ConfigError", "DataConfig", "DatasetSpec", "LossWeights", "ModelSection", "PhaseConfig",
           "RunConfig", "ScheduleConfig", "TrainConfig", "apply_overrides", "config_from_dict",
           "load_config", "load_yaml_layers", "save_config"]
