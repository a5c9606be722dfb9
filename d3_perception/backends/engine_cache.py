"""TensorRT engine cache (DESIGN §4): keyed, atomic, self-checking, never loads a stale or corrupt plan.

Plain code with no TensorRT import, so the logic runs and is tested anywhere: the builder, the
deserialiser and the runners are injected (ONNX Runtime stands in for TensorRT in the unit tests).

Layout: ``<cache_dir>/<digest>.engine`` (serialized plan) and ``<cache_dir>/<digest>.json`` beside it, holding
the full key, the engine's SHA-256 and the validation report. A plan is used only if its JSON key equals
the wanted key field by field and the plan's hash matches; anything else is rebuilt (and overwritten).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from d3_perception.io_utils import atomic_write_bytes

__all__ = [
    "EngineCache",
    "EngineKey",
    "EngineRejected",
    "ShapeProfile",
    "ValidationReport",
    "probe_image",
    "validate_outputs",
]

logger = logging.getLogger(__name__)


class EngineRejected(RuntimeError):
    """A freshly built engine failed validation (NaN/Inf or error above tolerance); it was not cached."""


@dataclass(frozen=True)
class ShapeProfile:
    """TensorRT optimisation profile of the ``image`` input: ``[N,3,H,W]`` min / opt / max."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            shape = tuple(int(v) for v in getattr(self, name))
            if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
                raise ValueError(f"`{name}` must be [N,3,H,W] with positive sizes; got {list(shape)}")
            object.__setattr__(self, name, shape)
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max, strict=True)):
            raise ValueError(f"shape profile must satisfy min <= opt <= max per dim; got {self.min}, {self.opt}, "
                             f"{self.max}")

    @classmethod
    def for_resolution(cls, resolution: int, max_batch: int = 1, multiple: int = 64) -> ShapeProfile:
        """Any aspect ratio at long side ``resolution``: H, W in [64, resolution]; opt = 3:4 landscape."""
        if max_batch < 1:
            raise ValueError(f"`max_batch` must be >= 1; got {max_batch}")
        short = -(-(resolution * 3 // 4) // multiple) * multiple
        return cls(min=(1, 3, multiple, multiple), opt=(1, 3, short, resolution),
                   max=(max_batch, 3, resolution, resolution))

    def contains(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == 4 and all(a <= s <= b for a, s, b in zip(self.min, shape, self.max, strict=True))


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized TensorRT plan depends on."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # e.g. "8.7" (Jetson Orin), "8.9" (L4/RTX 40xx)
    precision: str  # "fp16" or "fp32"
    profile: ShapeProfile

    def __post_init__(self) -> None:
        if self.precision not in ("fp16", "fp32"):
            raise ValueError(f"`precision` must be 'fp16' or 'fp32'; got {self.precision!r}")
        for name in ("onnx_sha256", "tensorrt_version", "gpu_name", "compute_capability"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"`{name}` must be a non-empty string; got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = {k: list(v) for k, v in d["profile"].items()}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineKey:
        prof = data["profile"]
        return cls(**{**data, "profile": ShapeProfile(tuple(prof["min"]), tuple(prof["opt"]), tuple(prof["max"]))})

    def digest(self, length: int = 24) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class ValidationReport:
    """Candidate engine vs FP32 reference on a probe image."""

    passed: bool
    max_abs_error: dict[str, float]  # per task; inf when the candidate produced NaN/Inf
    tolerance: float
    finite: bool
    reason: str = ""
    probe_shape: tuple[int, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["probe_shape"] = list(self.probe_shape)
        d["max_abs_error"] = {k: (v if math.isfinite(v) else "inf") for k, v in self.max_abs_error.items()}
        return d


def probe_image(hw: tuple[int, int], input_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """A deterministic structured probe ``[1,3,H,W]`` float32 in ``input_range`` (gradients, disc, stripes)."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = xx / max(w - 1, 1), yy / max(h - 1, 1)
    disc = ((u - 0.6) ** 2 + (v - 0.4) ** 2 < 0.05).astype(np.float32)
    img = np.stack([u, v * (1 - disc) + disc, 0.5 + 0.5 * np.sin(12 * u + 5 * v)], axis=0)
    lo, hi = input_range
    return (img * (hi - lo) + lo)[None].astype(np.float32)


def validate_outputs(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray], tolerance: float,
                     probe_shape: tuple[int, ...] = ()) -> ValidationReport:
    """Compare per-task outputs; NaN/Inf anywhere or an error above ``tolerance`` fails."""
    errors: dict[str, float] = {}
    finite = True
    missing = sorted(set(reference) - set(candidate))
    if missing:
        return ValidationReport(False, {}, tolerance, False, f"candidate lacks outputs {missing}", probe_shape)
    for task, ref in reference.items():
        cand = np.asarray(candidate[task], dtype=np.float32)
        if cand.shape != ref.shape:
            return ValidationReport(False, errors, tolerance, finite,
                                    f"`{task}` must have shape {list(ref.shape)}; got {list(cand.shape)}", probe_shape)
        if not np.isfinite(cand).all():
            finite = False
            errors[task] = math.inf
            continue
        errors[task] = float(np.max(np.abs(cand - ref)))
    if not finite:
        bad = [t for t, e in errors.items() if math.isinf(e)]
        return ValidationReport(False, errors, tolerance, False, f"NaN/Inf in outputs {bad}", probe_shape)
    worst = max(errors.values(), default=0.0)
    if worst > tolerance:
        return ValidationReport(False, errors, tolerance, True,
                                f"max abs error {worst:.3g} above tolerance {tolerance:.3g}", probe_shape)
    return ValidationReport(True, errors, tolerance, True, "", probe_shape)


class EngineCache:
    """Directory of serialized engines, each with its key JSON beside it.

    ``key`` may be any frozen dataclass with ``to_dict``, ``from_dict`` and ``digest`` (:class:`EngineKey` for
    TensorRT plans, ``OpenVinoKey`` for OpenVINO compiled-model blobs); ``suffix`` names the payload files.
    """

    def __init__(self, cache_dir: str | os.PathLike, suffix: str = ".engine") -> None:
        self.cache_dir = Path(cache_dir)
        self.suffix = suffix

    def paths(self, key: EngineKey) -> tuple[Path, Path]:
        stem = self.cache_dir / f"d3-{key.digest()}"
        return stem.with_suffix(self.suffix), stem.with_suffix(".json")

    def load(self, key: EngineKey) -> bytes | None:
        """The cached plan for ``key``, or None (with the reason logged) if absent, mismatched or corrupt."""
        engine_path, key_path = self.paths(key)
        if not engine_path.is_file() or not key_path.is_file():
            logger.info("engine cache miss: %s", engine_path.name)
            return None
        try:
            meta = json.loads(key_path.read_text())
            stored = type(key).from_dict(meta["key"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning("engine cache: unreadable key file %s (%s); rebuilding", key_path, err)
            return None
        if stored != key:
            diff = [k for k, v in key.to_dict().items() if stored.to_dict().get(k) != v]
            logger.warning("engine cache: %s was built for a different %s; rebuilding", engine_path.name, diff)
            return None
        data = engine_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta.get("engine_sha256"):
            logger.warning("engine cache: %s is corrupt (hash mismatch); rebuilding", engine_path)
            return None
        return data

    def store(self, key: EngineKey, engine: bytes, report: ValidationReport | None = None) -> Path:
        """Write plan then key (each atomically): a reader never pairs a key with a half-written plan."""
        engine_path, key_path = self.paths(key)
        key_path.unlink(missing_ok=True)  # invalidate first, so a crash between the writes leaves a miss
        atomic_write_bytes(engine_path, engine)
        meta = {"key": key.to_dict(), "engine_sha256": hashlib.sha256(engine).hexdigest(),
                "engine_bytes": len(engine), "validation": report.to_dict() if report else None}
        atomic_write_bytes(key_path, (json.dumps(meta, indent=2) + "\n").encode())
        return engine_path

    def get_or_build(self, key: EngineKey, build: Callable[[], bytes],
                     deserialize: Callable[[bytes], Any],
                     validate: Callable[[Any], ValidationReport] | None = None) -> tuple[Any, str]:
        """Return ``(engine, status)`` with status "cached" or "built".

        A cached plan that fails to deserialize is treated as corrupt and rebuilt. A new plan is validated
        (``validate(engine)``) before it is cached; a failing one raises :class:`EngineRejected`.
        """
        data = self.load(key)
        if data is not None:
            try:
                return deserialize(data), "cached"
            except Exception as err:  # noqa: BLE001 - any deserialisation failure means "do not use"
                logger.warning("engine cache: %s failed to deserialize (%s); rebuilding", self.paths(key)[0], err)
        logger.info("building engine %s (%s)", key.digest(), key)
        data = build()
        if not data:
            raise EngineRejected("the engine builder returned no plan")
        engine = deserialize(data)
        report = validate(engine) if validate is not None else None
        if report is not None:
            logger.info("engine validation: max abs error %s (tolerance %g)", report.max_abs_error, report.tolerance)
            if not report.passed:
                raise EngineRejected(f"engine {key.digest()} rejected: {report.reason}")
        self.store(key, data, report)
        return engine, "built"
