"""TensorRT backend (TensorRT 10 Python API, imported lazily): ONNX -> cached engine -> CUDA inference.

Only ``build_serialized_engine`` and ``TrtRunner`` touch TensorRT; everything around them (cache keys,
atomic writes, validation, fallback) lives in :mod:`engine_cache` and is tested with ONNX Runtime standing
in. Device buffers are torch CUDA tensors (no pycuda dependency).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from d3_perception.backends.base import Backend, BackendInfo
from d3_perception.backends.engine_cache import (
    EngineCache,
    EngineKey,
    ShapeProfile,
    ValidationReport,
    probe_image,
    validate_outputs,
)

__all__ = ["TensorRTBackend", "TrtRunner", "build_serialized_engine", "tensorrt_unavailable_reason"]

logger = logging.getLogger(__name__)

DEFAULT_FP16_TOLERANCE = 0.05  # on depth in [0,1] and unit normals


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT and a CUDA device are usable, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as err:
        return f"tensorrt is not installed ({err})"
    try:
        import torch
    except ImportError:
        return "torch is needed for CUDA buffers"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def _gpu_identity(device_index: int) -> tuple[str, str]:
    import torch

    major, minor = torch.cuda.get_device_capability(device_index)
    return torch.cuda.get_device_name(device_index), f"{major}.{minor}"


class _TrtLogger:
    """Maps TensorRT severities onto Python logging (created lazily: needs tensorrt)."""

    @staticmethod
    def make():
        import tensorrt as trt

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity, msg) -> None:  # noqa: D401 - TensorRT callback
                level = {trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
                         trt.ILogger.Severity.ERROR: logging.ERROR,
                         trt.ILogger.Severity.WARNING: logging.WARNING,
                         trt.ILogger.Severity.INFO: logging.DEBUG}.get(severity, logging.DEBUG)
                logger.log(level, "TensorRT: %s", msg)

        return Logger()


def build_serialized_engine(onnx_path: str | os.PathLike, precision: str, profile: ShapeProfile,
                            workspace_bytes: int = 2 << 30) -> bytes:
    """``trtexec``-equivalent build through the TensorRT 10 API; returns the serialized plan."""
    import tensorrt as trt

    trt_logger = _TrtLogger.make()
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape("image", profile.min, profile.opt, profile.max)
    config.add_optimization_profile(opt_profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    return bytes(plan)


class TrtRunner:
    """Deserialized engine + execution context; ``run(x [N,3,H,W] float32) -> {output name: array}``."""

    def __init__(self, plan: bytes, device_index: int = 0) -> None:
        import tensorrt as trt
        import torch

        self._torch, self._trt = torch, trt
        self._device = torch.device("cuda", device_index)
        self._runtime = trt.Runtime(_TrtLogger.make())
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the plan (corrupt or built for another version/GPU)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        logger.info("TensorRT engine: inputs %s, outputs %s", self.inputs, self.outputs)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        inp = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self._device)  # [N,3,H,W]
        if not self.context.set_input_shape("image", tuple(inp.shape)):
            raise ValueError(f"`image` shape {tuple(inp.shape)} is outside the engine's optimisation profile")
        self.context.set_tensor_address("image", inp.data_ptr())
        outs: dict[str, Any] = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.float16 if self.engine.get_tensor_dtype(name) == self._trt.DataType.HALF else torch.float32
            outs[name] = torch.empty(shape, dtype=dtype, device=self._device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream(self._device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return {k: v.float().cpu().numpy() for k, v in outs.items()}


class TensorRTBackend(Backend):
    """ONNX (exported and cached like the ONNX Runtime backend) -> engine cache -> ``TrtRunner``.

    Injection points (used by the tests with ONNX Runtime standing in; defaults use TensorRT):
    ``builder(onnx_path, precision, profile) -> bytes``, ``runner_factory(plan) -> obj with .run(x)``,
    ``reference_factory(onnx_path) -> obj with .run(x)`` (FP32 ONNX Runtime), ``identity=(gpu_name, cc)``
    and ``tensorrt_version``.
    """

    unit_normals = True  # predict() ends in processing.postprocess, which renormalises

    def __init__(self, checkpoint: str | os.PathLike, *, device: str | None = None, precision: str = "fp16",
                 processing_resolution: int | None = None, tasks: tuple[str, ...] | None = None,
                 cache_dir: str | os.PathLike | None = None, onnx_path: str | os.PathLike | None = None,
                 max_batch: int = 1, fp16_tolerance: float = DEFAULT_FP16_TOLERANCE,
                 builder: Callable[[Path, str, ShapeProfile], bytes] | None = None,
                 runner_factory: Callable[[bytes], Any] | None = None,
                 reference_factory: Callable[[Path], Any] | None = None,
                 identity: tuple[str, str] | None = None, tensorrt_version: str | None = None,
                 exporter: str = "dynamo", batch_size: int | None = None) -> None:
        from d3_perception.backends import BackendUnavailable
        from d3_perception.backends.onnx_io import (
            OnnxSpec,
            config_from_onnx,
            default_cache_dir,
            export_onnx,
            file_sha256,
            onnx_cache_path,
        )
        from d3_perception.model.config import check_processing_resolution

        if precision not in ("fp16", "fp32"):
            raise ValueError(f"`precision` must be 'fp16' or 'fp32' for tensorrt; got {precision!r}")
        device_index = 0
        if device is not None:
            if not str(device).startswith("cuda"):
                raise ValueError(f"`device` must be 'cuda' or 'cuda:N' for tensorrt; got {device!r}")
            device_index = int(str(device).split(":")[1]) if ":" in str(device) else 0
        injected = builder is not None and runner_factory is not None
        if not injected:
            reason = tensorrt_unavailable_reason()
            if reason is not None:
                raise BackendUnavailable(reason)
            import tensorrt as trt

            builder = builder or (lambda p, prec, prof: build_serialized_engine(p, prec, prof))
            runner_factory = runner_factory or (lambda plan: TrtRunner(plan, device_index))
            tensorrt_version = tensorrt_version or trt.__version__
            identity = identity or _gpu_identity(device_index)
        if identity is None or tensorrt_version is None:
            raise ValueError("`identity` and `tensorrt_version` must be given with an injected builder")
        if processing_resolution is not None:
            check_processing_resolution(processing_resolution)
        checkpoint = Path(checkpoint)
        base_cache = Path(cache_dir) if cache_dir is not None else None
        if onnx_path is None and checkpoint.suffix == ".onnx":  # deployment from an exported file alone
            onnx_path = checkpoint
        if onnx_path is None:
            from d3_perception.model import ModelConfig

            cfg = ModelConfig.from_json(checkpoint)
            spec = OnnxSpec(tasks=tuple(tasks) if tasks else cfg.tasks, hw=None, exporter=exporter)
            onnx_path = onnx_cache_path(checkpoint, spec, base_cache)
            if not onnx_path.is_file():
                export_onnx(checkpoint, onnx_path, tasks=spec.tasks, exporter=exporter)
        onnx_path = Path(onnx_path)
        self.config = config_from_onnx(onnx_path)
        resolution = processing_resolution or self.config.processing_resolution
        profile = ShapeProfile.for_resolution(resolution, max_batch)
        key = EngineKey(onnx_sha256=file_sha256(onnx_path), tensorrt_version=tensorrt_version,
                        gpu_name=identity[0], compute_capability=identity[1], precision=precision, profile=profile)
        engine_dir = (base_cache if base_cache is not None else
                      (default_cache_dir(checkpoint) if checkpoint.is_dir() else onnx_path.parent)) / "tensorrt"
        self.cache = EngineCache(engine_dir)

        def validate(runner: Any) -> ValidationReport:
            probe = probe_image(profile.opt[2:], self.config.input_range)
            if reference_factory is not None:
                reference = reference_factory(onnx_path)
            else:
                from d3_perception.backends.onnxruntime_backend import make_session

                session = make_session(onnx_path)
                names = [o.name for o in session.get_outputs()]
                reference = type("Ref", (), {"run": staticmethod(
                    lambda x: dict(zip(names, session.run(names, {"image": x}), strict=True)))})()
            tol = fp16_tolerance if precision == "fp16" else 1e-3
            return validate_outputs(runner.run(probe), reference.run(probe), tol, probe.shape)

        self._runner, self.cache_status = self.cache.get_or_build(
            key, build=lambda: builder(onnx_path, precision, profile), deserialize=runner_factory, validate=validate)
        self._profile = profile
        self._resolution = resolution
        self._batch_size = batch_size or max_batch
        self._tasks = tuple(tasks) if tasks else self.config.tasks
        self.key = key
        self.info = BackendInfo(name="tensorrt", device=f"cuda:{device_index} ({identity[0]})", precision=precision,
                                model_id=self.config.model_id, tasks=self._tasks, processing_resolution=resolution)
        logger.info("tensorrt backend: %s, engine %s (%s), %s", self.config.model_id, key.digest(),
                    self.cache_status, precision)

    def predict(self, images: np.ndarray, tasks: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        from d3_perception.model.processing import check_inputs, postprocess, preprocess

        images = check_inputs(images)
        tasks = self._tasks if tasks is None else ((tasks,) if isinstance(tasks, str) else tuple(tasks))
        bad = [t for t in tasks if t not in self.config.tasks]
        if bad or not tasks:
            raise ValueError(f"`tasks` must be a non-empty subset of {self.config.tasks}; got {tasks}")
        chunks = []
        for start in range(0, images.shape[0], self._batch_size):
            x, geo = preprocess(images[start:start + self._batch_size], self._resolution, self.config.input_range,
                                self.config.resize_policy)
            raw = self._runner.run(x)
            chunks.append(postprocess({t: raw[t] for t in tasks}, geo))
        return {t: np.concatenate([c[t] for c in chunks]) for t in tasks}

    def close(self) -> None:
        self._runner = None
