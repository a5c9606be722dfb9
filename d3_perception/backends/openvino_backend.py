"""OpenVINO backend: the project's ONNX export (or an INT8 IR from ``d3-export --openvino``) compiled for an
x86 CPU (fp32, bf16 via the inference-precision hint, int8) or an Intel GPU.

Compiled models are per network input shape ``[N,3,H,W]`` (static shapes run ~15 % faster than a dynamic
graph on the CPU plugin); the start shape (3:4 landscape at the processing resolution) is compiled at
construction so that a compile failure surfaces there (``auto`` then falls back), others on first use.
Each compiled model is exported into an :class:`~d3_perception.backends.engine_cache.EngineCache` under an
:class:`OpenVinoKey` (model hash, OpenVINO version, device, precision, shape): atomic writes, a stale or
corrupt blob is rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from d3_perception.backends.base import Backend, BackendInfo
from d3_perception.backends.engine_cache import (
    EngineCache,
    ShapeProfile,
    ValidationReport,
    probe_image,
)

__all__ = [
    "PRECISIONS",
    "OpenVinoBackend",
    "OpenVinoKey",
    "auto_skip_reason",
    "int8_model_path",
    "model_sha256",
    "read_model_config",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
#: OpenVINO's inference-precision hint per project precision. INT8 IRs run their quantised ops in int8 and
#: the rest in bf16 (the CPU plugin's own default on bf16-capable CPUs).
_INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "bf16"}
_X86 = ("x86_64", "amd64", "i686", "x86")
_D3_RT_INFO = "d3"  # rt_info section of an IR written by d3-export: config, checkpoint hash, tasks


@dataclass(frozen=True)
class OpenVinoKey:
    """Everything an exported OpenVINO compiled model depends on."""

    model_sha256: str
    openvino_version: str
    device_name: str  # e.g. "CPU: Intel(R) Core(TM) i7-1165G7" (full name: blobs are CPU-ISA specific)
    precision: str
    input_shape: tuple[int, int, int, int]  # the static network input; the start shape when `dynamic`
    dynamic: bool = False  # compiled with dynamic H and W (one blob for every shape)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {PRECISIONS}; got {self.precision!r}")
        for name in ("model_sha256", "openvino_version", "device_name"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"`{name}` must be a non-empty string; got {getattr(self, name)!r}")
        shape = tuple(int(v) for v in self.input_shape)
        if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
            raise ValueError(f"`input_shape` must be [N,3,H,W] with positive sizes; got {list(shape)}")
        object.__setattr__(self, "input_shape", shape)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpenVinoKey:
        return cls(**{**data, "input_shape": tuple(data["input_shape"])})

    def digest(self, length: int = 24) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:length]


def auto_skip_reason(device: str | None) -> str | None:
    """Why ``auto`` should not try OpenVINO here (None = try it): it is the x86-CPU path for machines
    without CUDA; with a CUDA GPU, TensorRT / ONNX Runtime CUDA / torch CUDA are faster."""
    try:
        import openvino  # noqa: F401
    except ImportError as err:
        return f"openvino is not installed ({err}; pip install 'd3_perception[openvino]')"
    if device is not None and str(device).lower().startswith("cuda"):
        return f"device {device!r} is a CUDA device"
    if platform.machine().lower() not in _X86 and not (device and str(device).lower().startswith("gpu")):
        return f"not an x86 CPU ({platform.machine()})"
    if device is None:
        try:
            import torch

            if torch.cuda.is_available():
                return "a CUDA GPU is present (the CUDA backends are faster there)"
        except ImportError:
            pass
    return None


def _ov_device(device: str | None) -> str:
    """Project device string -> OpenVINO device name ("cpu" -> "CPU", "gpu" / "gpu:1" -> "GPU" / "GPU.1")."""
    if device is None or str(device).lower() == "cpu":
        return "CPU"
    text = str(device)
    low = text.lower()
    if low == "gpu" or low.startswith(("gpu:", "gpu.")):
        return "GPU" if low == "gpu" else f"GPU.{text[4:]}"
    raise ValueError(f"`device` must be 'cpu', 'gpu' or 'gpu:N' for openvino; got {device!r}")


def model_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of an ONNX file (with its external data) or of an IR (``.xml`` + ``.bin``), hex."""
    path = Path(path)
    if path.suffix != ".xml":
        from d3_perception.backends.onnx_io import file_sha256

        return file_sha256(path)
    digest = hashlib.sha256()
    for f in (path, path.with_suffix(".bin")):
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def int8_model_path(cache_base: str | os.PathLike, checkpoint_hash: str, tasks: tuple[str, ...]) -> Path:
    """Where ``d3-export --openvino --precision int8`` puts the INT8 IR of a checkpoint (keyed by the
    checkpoint, not by one ONNX file, so that any fp32 export of it finds the same IR)."""
    if not checkpoint_hash:
        raise ValueError("`checkpoint_hash` must be non-empty (the ONNX file carries no d3_checkpoint_hash)")
    return Path(cache_base) / "openvino" / f"d3-{checkpoint_hash}-{'+'.join(tasks)}-int8.xml"


def read_model_config(path: str | os.PathLike):
    """The :class:`ModelConfig` stored in an exported ONNX file or in an IR written by ``d3-export``."""
    from d3_perception.model.config import ModelConfig

    path = Path(path)
    if path.suffix != ".xml":
        from d3_perception.backends.onnx_io import config_from_onnx

        return config_from_onnx(path)
    import openvino as ov

    model = ov.Core().read_model(str(path))
    if not model.has_rt_info([_D3_RT_INFO, "config"]):
        raise ValueError(f"`onnx_path` must be an IR written by d3-export (it carries d3 config); got {path}")
    return ModelConfig.from_dict(json.loads(model.get_rt_info([_D3_RT_INFO, "config"]).astype(str)))


class OpenVinoBackend(Backend):
    """OpenVINO infer requests (one per input shape) behind ``Backend.predict``'s shared pre/post-processing.

    checkpoint: checkpoint directory (exported to ONNX on first use, cached like ONNX Runtime's), an exported
        ``.onnx`` file, or an INT8 IR ``.xml`` from ``d3-export --openvino --precision int8``.
    device: "cpu" (default) or "gpu" / "gpu:N" (Intel GPU). precision: "fp32", "bf16" (inference precision
        hint; CPU with AVX-512 bf16 / AMX), "fp16" (GPU) or "int8" (needs the INT8 IR: ``onnx_path`` or the
        default location :func:`int8_model_path`).
    num_threads: inference threads (None = OpenVINO's default, all cores). batch_size: frames per call.
    dynamic_shapes: compile one dynamic-H/W model instead of one static model per shape.
    """

    unit_normals = True  # Backend.predict ends in processing.postprocess, which renormalises

    def __init__(self, checkpoint: str | os.PathLike, *, device: str | None = None, precision: str = "fp32",
                 processing_resolution: int | None = None, tasks: tuple[str, ...] | None = None,
                 cache_dir: str | os.PathLike | None = None, onnx_path: str | os.PathLike | None = None,
                 num_threads: int | None = None, batch_size: int = 1, exporter: str = "auto",
                 dynamic_shapes: bool = False) -> None:
        from d3_perception.backends import BackendUnavailable

        try:
            import openvino as ov
        except ImportError as err:
            raise BackendUnavailable(f"openvino is not installed ({err}); pip install 'd3_perception[openvino]'"
                                     ) from None
        from d3_perception.backends.onnx_io import default_cache_dir
        from d3_perception.model.config import check_processing_resolution

        # Settings first: a refusal must come before a one-off export that could take a minute.
        if precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {PRECISIONS} for openvino; got {precision!r}")
        ov_device = _ov_device(device)
        if ov_device == "CPU" and precision == "fp16":
            raise ValueError("`precision` must be fp32, bf16 or int8 on the OpenVINO CPU device; got 'fp16'")
        if ov_device != "CPU" and precision == "bf16":
            raise ValueError("`precision` must be fp32, fp16 or int8 on an OpenVINO GPU; got 'bf16'")
        if processing_resolution is not None:
            check_processing_resolution(processing_resolution)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1; got {batch_size!r}")
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                        or num_threads < 1):
            raise ValueError(f"`num_threads` must be an integer >= 1 or None; got {num_threads!r}")
        self._core = ov.Core()
        if ov_device.split(".")[0] not in {d.split(".")[0] for d in self._core.available_devices}:
            raise BackendUnavailable(f"OpenVINO device {ov_device} is not available (have "
                                     f"{self._core.available_devices})")
        capabilities = self._core.get_property(ov_device, "OPTIMIZATION_CAPABILITIES")
        if precision == "bf16" and "BF16" not in capabilities:
            # OpenVINO would silently run f32 instead: say so rather than report a precision it does not run
            raise ValueError(f"`precision` 'bf16' needs a CPU with AVX-512 bf16 or AMX; this {ov_device} offers "
                             f"{list(capabilities)} (use fp32 or int8)")
        checkpoint = Path(checkpoint)
        base_cache = Path(cache_dir) if cache_dir is not None else None
        if onnx_path is None and checkpoint.suffix in (".onnx", ".xml"):  # deployment from an exported file
            onnx_path = checkpoint
        if onnx_path is None:
            model_path = self._export_if_needed(checkpoint, tasks, base_cache, exporter)
        else:
            model_path = Path(onnx_path)
            if not model_path.is_file():
                raise FileNotFoundError(f"`onnx_path` must be an existing .onnx or .xml file; got {str(model_path)!r}")
            if checkpoint.is_dir() and model_path.suffix == ".onnx":
                from d3_perception.backends.onnx_io import read_onnx_metadata
                from d3_perception.model.config import checkpoint_hash

                stored = read_onnx_metadata(model_path).get("d3_checkpoint_hash")
                if stored and stored != checkpoint_hash(checkpoint):
                    raise ValueError(f"`onnx_path` {model_path} must be exported from checkpoint {checkpoint}; its "
                                     f"checkpoint hash {stored} differs (re-export it)")
        cache_base = base_cache if base_cache is not None else (
            default_cache_dir(checkpoint) if checkpoint.is_dir() else model_path.parent)
        if precision == "int8" and model_path.suffix != ".xml":
            from d3_perception.backends.onnx_io import config_from_onnx, read_onnx_metadata

            int8_path = int8_model_path(cache_base, read_onnx_metadata(model_path).get("d3_checkpoint_hash", ""),
                                        config_from_onnx(model_path).tasks)
            if not int8_path.is_file():
                raise ValueError("`precision` 'int8' needs a quantised model: run `d3-export "
                                 f"{checkpoint} --openvino --precision int8` first (looked for {int8_path})")
            model_path = int8_path
        self.model_path = model_path
        self.config = read_model_config(model_path)
        self._graph_tasks = self.config.tasks
        wanted = tuple(dict.fromkeys(tasks)) if tasks is not None else self._graph_tasks
        bad = [t for t in wanted if t not in self._graph_tasks]
        if bad or not wanted:
            raise ValueError(f"`tasks` must be a non-empty subset of the model's tasks {self._graph_tasks}; got "
                             f"{wanted}")
        self._tasks = wanted
        self._ov_device, self._precision = ov_device, precision
        self._num_threads, self._dynamic = num_threads, bool(dynamic_shapes)
        self._resolution = processing_resolution or self.config.processing_resolution
        self.batch_size = batch_size
        self._model_sha = model_sha256(model_path)
        self._device_name = f"{ov_device}: {self._core.get_property(ov_device, 'FULL_DEVICE_NAME')}"
        self._version = ov.get_version()
        self.cache = EngineCache(cache_base / "openvino", suffix=".blob")
        self._requests: dict[tuple[int, ...], Any] = {}  # input shape (or "dynamic" marker) -> infer request
        self.cache_status: dict[tuple[int, ...], str] = {}
        start = ShapeProfile.for_resolution(self._resolution).opt
        try:
            self._request_for((batch_size, *start[1:]))
        except Exception as err:  # noqa: BLE001 - any compile failure: this backend cannot run this model here
            raise BackendUnavailable(f"OpenVINO could not compile {model_path.name} for {ov_device} "
                                     f"({precision}): {err}") from None
        self.info = BackendInfo(name="openvino", device=self._device_name, precision=precision,
                                model_id=self.config.model_id, tasks=self._tasks,
                                processing_resolution=self._resolution)
        logger.info("openvino backend: %s on %s (%s), tasks %s, resolution %d, model %s", self.config.model_id,
                    self._device_name, precision, self._tasks, self._resolution, model_path)

    @staticmethod
    def _export_if_needed(checkpoint: Path, tasks, base_cache: Path | None, exporter: str) -> Path:
        """The cached fp32 ONNX export of a checkpoint directory (shared with the ONNX Runtime backend)."""
        from d3_perception.backends.onnx_io import OnnxSpec, export_onnx, onnx_cache_path
        from d3_perception.backends.onnxruntime_backend import _auto_exporter
        from d3_perception.model import ModelConfig

        cfg = ModelConfig.from_json(checkpoint)
        wanted = tuple(dict.fromkeys(tasks)) if tasks is not None else cfg.tasks
        bad = [t for t in wanted if t not in cfg.tasks]
        if bad or not wanted:
            raise ValueError(f"`tasks` must be a non-empty subset of the checkpoint's tasks {cfg.tasks}; got {wanted}")
        if exporter == "auto":
            exporter = _auto_exporter(checkpoint)
        spec = OnnxSpec(tasks=wanted, hw=None, exporter=exporter)
        path = onnx_cache_path(checkpoint, spec, base_cache)
        if not path.is_file():
            logger.info("exporting %s to ONNX (one-off, cached at %s)", checkpoint, path)
            export_onnx(checkpoint, path, tasks=spec.tasks, exporter=exporter)
        return path

    def _properties(self, precision: str) -> dict[str, Any]:
        import openvino.properties as props
        import openvino.properties.hint as hints

        out: dict[str, Any] = {hints.inference_precision: _INFERENCE_PRECISION[precision],
                               hints.performance_mode: hints.PerformanceMode.LATENCY}
        if self._num_threads is not None and self._ov_device == "CPU":
            out[props.inference_num_threads] = self._num_threads
        return out

    def _compile(self, shape: tuple[int, ...], precision: str):
        model = self._core.read_model(str(self.model_path))
        if not self._dynamic:
            model.reshape({model.inputs[0].get_any_name(): list(shape)})
        return self._core.compile_model(model, self._ov_device, self._properties(precision))

    def _request_for(self, shape: tuple[int, ...]):
        """The infer request for network input ``shape`` ``[N,3,H,W]``: from memory, the disk cache, or compiled."""
        slot = (0, 3, 0, 0) if self._dynamic else tuple(shape)
        if slot in self._requests:
            return self._requests[slot]
        key = OpenVinoKey(model_sha256=self._model_sha, openvino_version=self._version,
                          device_name=self._device_name, precision=self._precision,
                          input_shape=(1, 3, 64, 64) if self._dynamic else tuple(shape), dynamic=self._dynamic)
        compiled, status = self.cache.get_or_build(
            key, build=lambda: self._compile(shape, self._precision).export_model().getvalue(),
            deserialize=lambda blob: self._core.import_model(blob, self._ov_device, self._properties(self._precision)),
            validate=lambda candidate: self._validate(candidate, shape))
        logger.info("openvino compiled model %s for %s: %s", key.digest(), list(shape), status)
        self.cache_status[slot] = status
        self._requests[slot] = compiled.create_infer_request()
        return self._requests[slot]

    def _validate(self, compiled, shape: tuple[int, ...]) -> ValidationReport:
        """A new compiled model must give finite outputs on a probe image before it is cached. Reduced
        precisions are not judged by a max-abs-error threshold: on random weights bf16 moves single normals by
        more than 1 while held-out quality of a trained model does not change; ``d3-export --openvino``
        measures that quality instead (docs/model.md)."""
        probe = np.repeat(probe_image(shape[2:], self.config.input_range), shape[0], axis=0)
        got = self._outputs(compiled.create_infer_request(), probe)
        bad = [task for task, value in got.items() if not np.isfinite(value).all()]
        return ValidationReport(not bad, {}, 0.0, not bad, f"NaN/Inf in outputs {bad}" if bad else "", probe.shape)

    def _outputs(self, request, x: np.ndarray) -> dict[str, np.ndarray]:
        result = request.infer({0: x})
        return {out.get_any_name(): np.asarray(result[out], dtype=np.float32) for out in request.model_outputs}

    def run_network(self, x: np.ndarray, tasks: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Raw network call: ``x`` ``[N,3,H,W]`` float32 in the input range -> the graph's per-task outputs (all
        of them; ``Backend.predict`` does the shared pre/post-processing and picks ``tasks``)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self._outputs(self._request_for(tuple(x.shape)), x)

    def close(self) -> None:
        self._requests.clear()
