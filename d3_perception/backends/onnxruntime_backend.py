"""ONNX Runtime backend: CPU execution provider, plus the CUDA and TensorRT providers when installed.

The ONNX file comes from ``onnx_path`` or from the cache next to the checkpoint (exported on first use,
keyed by checkpoint hash + tasks + shape). ``checkpoint`` may also be an exported ``.onnx`` file: its
``d3_config`` metadata then replaces ``config.json`` (deployment without torch weights).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from d3_perception.backends.base import Backend, BackendInfo

__all__ = ["OnnxRuntimeBackend", "make_session"]

logger = logging.getLogger(__name__)


def make_session(onnx_path: str | os.PathLike, providers: list | None = None, num_threads: int | None = None):
    """An ``InferenceSession`` with full graph optimisation and thread spinning off.

    Spinning off matters on small machines: ORT's spin-waiting workers otherwise steal the cores other
    processes (torch, the ROS executor) need (measured 2x slowdown of torch beside it on 2 cores).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 0:
            raise ValueError(f"`num_threads` must be an integer >= 0 (0 = ORT default); got {num_threads!r}")
        opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), sess_options=opts,
                                providers=providers or ["CPUExecutionProvider"])


def _providers(device: str | None, precision: str, cache_dir: Path | None) -> list:
    """Execution providers for ``device`` ("cpu", "cuda", None = best available)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device is not None and device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"`device` must be 'cpu', 'cuda' or 'cuda:N' for onnxruntime; got {device!r}")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"`precision` must be 'fp32' (or 'fp16' with the TensorRT EP) for onnxruntime; "
                         f"got {precision!r}")
    if device == "cpu":
        if precision != "fp32":
            raise ValueError("`precision` must be 'fp32' on the ONNX Runtime CPU provider (fp16 is no faster "
                             f"there); got {precision!r}")
        return ["CPUExecutionProvider"]
    device_id = int(device.split(":")[1]) if device and ":" in device else 0
    providers: list = []
    if "TensorrtExecutionProvider" in available:
        trt_opts = {"device_id": device_id, "trt_fp16_enable": precision == "fp16"}
        if cache_dir is not None:
            trt_opts.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir / "ort_trt")})
        providers.append(("TensorrtExecutionProvider", trt_opts))
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": device_id}))
    if device is not None and device.startswith("cuda") and not providers:
        raise ValueError(f"`device` {device!r} needs onnxruntime-gpu (CUDA/TensorRT providers); available: "
                         f"{available}")
    if precision == "fp16" and not any(p[0] == "TensorrtExecutionProvider" for p in providers):
        raise ValueError("`precision` 'fp16' needs the TensorRT execution provider for onnxruntime; got "
                         f"providers {available}")
    providers.append("CPUExecutionProvider")
    return providers


LEGACY_EXPORT_MAX_BYTES = 1 << 30


def _auto_exporter(checkpoint_dir: Path) -> str:
    """The exporter for a one-off export at backend start: TorchScript tracing takes ~2 s for a small model
    where dynamo takes 40-130 s on 2 CPU cores, but tracing writes one file per tensor and peaks at ~10 GiB
    for SD2.1 size, so models of 1 GiB and more go through dynamo."""
    weights = sum(f.stat().st_size for f in Path(checkpoint_dir).glob("*.safetensors"))
    return "legacy" if weights < LEGACY_EXPORT_MAX_BYTES else "dynamo"


class OnnxRuntimeBackend(Backend):
    """``predict`` = shared numpy pre-processing -> ``session.run`` -> shared post-processing."""

    unit_normals = True  # predict() ends in processing.postprocess, which renormalises

    def __init__(self, checkpoint: str | os.PathLike, *, device: str | None = None, precision: str = "fp32",
                 processing_resolution: int | None = None, tasks: tuple[str, ...] | None = None,
                 cache_dir: str | os.PathLike | None = None, onnx_path: str | os.PathLike | None = None,
                 num_threads: int | None = None, batch_size: int = 4, exporter: str = "auto") -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as err:
            from d3_perception.backends import BackendUnavailable

            raise BackendUnavailable(f"onnxruntime is not installed ({err})") from None
        from d3_perception.backends.onnx_io import (
            OnnxSpec,
            config_from_onnx,
            export_onnx,
            onnx_cache_path,
            read_onnx_metadata,
        )
        from d3_perception.model.config import check_processing_resolution

        if processing_resolution is not None:
            check_processing_resolution(processing_resolution)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1; got {batch_size!r}")
        checkpoint = Path(checkpoint)
        # Settings first: a refusal (e.g. bf16) must come before a one-off export that could take a minute.
        trt_cache = Path(cache_dir) if cache_dir is not None else (
            Path(onnx_path).parent if onnx_path is not None else
            checkpoint.parent if checkpoint.suffix == ".onnx" else checkpoint / ".cache")
        providers = _providers(device, precision, trt_cache)
        if checkpoint.suffix == ".onnx" and onnx_path is None:
            onnx_path, ckpt_dir = checkpoint, None
        else:
            ckpt_dir = checkpoint
        if onnx_path is None:
            from d3_perception.model import ModelConfig

            cfg = ModelConfig.from_json(ckpt_dir)
            wanted = tuple(tasks) if tasks is not None else cfg.tasks
            bad = [t for t in wanted if t not in cfg.tasks]
            if bad or not wanted:
                raise ValueError(f"`tasks` must be a non-empty subset of the checkpoint's tasks {cfg.tasks}; "
                                 f"got {wanted}")
            if exporter == "auto":
                exporter = _auto_exporter(ckpt_dir)
            spec = OnnxSpec(tasks=tuple(dict.fromkeys(wanted)), hw=None, exporter=exporter)
            onnx_path = onnx_cache_path(ckpt_dir, spec, cache_dir)
            if not onnx_path.is_file():
                logger.info("exporting %s to ONNX (one-off, cached at %s)", ckpt_dir, onnx_path)
                export_onnx(ckpt_dir, onnx_path, tasks=spec.tasks, exporter=exporter)
        onnx_path = Path(onnx_path)
        meta = read_onnx_metadata(onnx_path)
        self.config = config_from_onnx(onnx_path)
        if ckpt_dir is not None and meta.get("d3_checkpoint_hash"):
            from d3_perception.model.config import checkpoint_hash

            if meta["d3_checkpoint_hash"] != checkpoint_hash(ckpt_dir):
                raise ValueError(f"`onnx_path` {onnx_path} must be exported from checkpoint {ckpt_dir}; its "
                                 f"checkpoint hash {meta['d3_checkpoint_hash']} differs (re-export it)")
        self._fixed_hw = None if meta.get("d3_hw", "dynHW") == "dynHW" else tuple(
            int(v) for v in meta["d3_hw"].split("x"))
        self._graph_tasks = self.config.tasks
        if tasks is not None:
            bad = [t for t in tasks if t not in self._graph_tasks]
            if bad:
                raise ValueError(f"`tasks` must be a subset of the ONNX file's tasks {self._graph_tasks}; got "
                                 f"{tuple(tasks)}")
        self._tasks = tuple(dict.fromkeys(tasks)) if tasks is not None else self._graph_tasks
        self._session = make_session(onnx_path, providers, num_threads)
        self._resolution = processing_resolution or self.config.processing_resolution
        self._batch_size = batch_size
        self.onnx_path = onnx_path
        active = self._session.get_providers()[0]
        self.info = BackendInfo(name="onnxruntime", device=active, precision=precision,
                                model_id=self.config.model_id, tasks=self._tasks,
                                processing_resolution=self._resolution)
        logger.info("onnxruntime backend: %s via %s (%s), tasks %s, resolution %d, file %s",
                    self.config.model_id, active, precision, self._tasks, self._resolution, onnx_path)

    def run_network(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Raw network call: ``x`` ``[N,3,H,W]`` float32 -> the graph's per-task outputs."""
        if self._fixed_hw is not None and tuple(x.shape[2:]) != self._fixed_hw:
            raise ValueError(f"`image` must be {self._fixed_hw[0]}x{self._fixed_hw[1]} for this fixed-shape ONNX "
                             f"file; got {x.shape[2]}x{x.shape[3]} (export with dynamic H and W)")
        outs = self._session.run(list(self._graph_tasks), {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(self._graph_tasks, outs, strict=True))

    def predict(self, images: np.ndarray, tasks: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        from d3_perception.model.processing import check_inputs, postprocess, preprocess

        images = check_inputs(images)
        if tasks is None:
            tasks = self._tasks
        elif isinstance(tasks, str):
            tasks = (tasks,)
        bad = [t for t in tasks if t not in self._graph_tasks]
        if bad or not tasks:
            raise ValueError(f"`tasks` must be a non-empty subset of {self._graph_tasks}; got {tuple(tasks)}")
        chunks = []
        for start in range(0, images.shape[0], self._batch_size):
            x, geo = preprocess(images[start:start + self._batch_size], self._resolution, self.config.input_range,
                                self.config.resize_policy)
            raw = self.run_network(x)
            chunks.append(postprocess({t: raw[t] for t in tasks}, geo))
        return {t: np.concatenate([c[t] for c in chunks]) for t in tasks}

    def close(self) -> None:
        self._session = None
