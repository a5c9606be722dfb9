"""Inference backends behind one interface (DESIGN §4) and the factory that picks one.

```python
from d3_perception.backends import create_backend
backend = create_backend("auto", "models/d3_tiny")        # TensorRT -> OpenVINO -> ONNX Runtime -> torch
out = backend.predict(rgb_uint8)                           # {"depth": [N,H,W], "normals": [N,3,H,W]}
```
This module is the one place that creates backends (built-in names, ``auto``, ``python:module:callable``
plugins) and owns the backend names and the ``auto`` order; :class:`~d3_perception.backends.chain.BackendChain`
switches to the next backend after repeated failures.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from d3_perception.backends.base import Backend, BackendInfo

__all__ = ["AUTO_ORDER", "BACKENDS", "PLUGIN_PREFIX", "PRECISIONS", "Backend", "BackendInfo", "BackendUnavailable",
           "create_backend", "fallback_names", "normals_convention"]

logger = logging.getLogger(__name__)

AUTO_ORDER = ("tensorrt", "openvino", "onnxruntime", "torch")  # what "auto" tries, fastest first
BACKENDS = ("auto", *AUTO_ORDER)  # the built-in backend names (the one list: node parameters, launch, CLIs)
PLUGIN_PREFIX = "python:"  # "python:module:callable": a plugin (or test) factory called like create_backend
#: Every precision some backend accepts (each backend refuses the ones it cannot run, naming why).
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


class BackendUnavailable(RuntimeError):
    """A backend cannot run on this machine (library or device missing); ``auto`` then tries the next one."""


def create_backend(name: str, checkpoint: str | os.PathLike, *, device: str | None = None,
                   precision: str = "fp32", processing_resolution: int | None = None,
                   cache_dir: str | os.PathLike | None = None, onnx_path: str | os.PathLike | None = None,
                   tasks: tuple[str, ...] | None = None, num_threads: int | None = None, **kwargs) -> Backend:
    """Build a backend for a checkpoint directory.

    name: "torch", "onnxruntime", "tensorrt", "openvino" or "auto" (TensorRT -> OpenVINO (x86 CPU without
        CUDA) -> ONNX Runtime -> torch; each skip is logged with its reason), or "python:module:callable":
        ``callable(checkpoint=, device=, precision=, processing_resolution=, cache_dir=, ...)`` returning a
        :class:`Backend` (plugins, test backends).
    device: torch device ("cpu", "cuda", "cuda:1"); for ONNX Runtime "cpu" or "cuda" selects providers; for
        OpenVINO "cpu" or "gpu[:N]" (Intel GPU).
    precision: "fp32", "bf16" (torch, OpenVINO CPU), "fp16" (torch on CUDA, TensorRT, OpenVINO GPU) or "int8"
        (OpenVINO, after ``d3-export --openvino --precision int8``).
    processing_resolution: long side in pixels (multiple of 64); None = the checkpoint's value.
    cache_dir: where exported ONNX files and TensorRT engines live; None = ``<checkpoint>/.cache``.
    onnx_path: an existing ONNX file to use instead of exporting one (ONNX Runtime, TensorRT, OpenVINO; for
        OpenVINO also an IR ``.xml`` from ``d3-export --openvino``).
    tasks: subset of the checkpoint's tasks to run; None = all.
    num_threads: CPU inference threads of torch (process-wide), ONNX Runtime and OpenVINO; None = the
        runtime's default (all cores). TensorRT and plugins do not take it.
    """
    if isinstance(name, str) and name.startswith(PLUGIN_PREFIX):
        return _plugin_factory(name)(checkpoint=str(checkpoint), device=device, precision=precision,
                                     processing_resolution=processing_resolution, cache_dir=cache_dir, **kwargs)
    if name not in BACKENDS:
        raise ValueError(f"`name` must be one of {BACKENDS}; got {name!r}")
    common = dict(device=device, precision=precision, processing_resolution=processing_resolution, tasks=tasks)
    if name == "torch":
        from d3_perception.backends.torch_backend import TorchBackend

        return TorchBackend(checkpoint, num_threads=num_threads, **common, **kwargs)
    if name == "onnxruntime":
        from d3_perception.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(checkpoint, cache_dir=cache_dir, onnx_path=onnx_path, num_threads=num_threads,
                                  **common, **kwargs)
    if name == "tensorrt":
        from d3_perception.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(checkpoint, cache_dir=cache_dir, onnx_path=onnx_path, **common, **kwargs)
    if name == "openvino":
        from d3_perception.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(checkpoint, cache_dir=cache_dir, onnx_path=onnx_path, num_threads=num_threads,
                               **common, **kwargs)
    reasons: list[str] = []
    for candidate in AUTO_ORDER:
        if candidate == "openvino":  # only the x86-CPU path; a skip is logged like the others
            from d3_perception.backends.openvino_backend import auto_skip_reason

            skip = auto_skip_reason(device)
            if skip is not None:
                reasons.append(f"{candidate}: {skip}")
                logger.info("auto backend: skipping %s: %s", candidate, skip)
                continue
        try:
            backend = create_backend(candidate, checkpoint, cache_dir=cache_dir, onnx_path=onnx_path,
                                     num_threads=num_threads, **common, **kwargs)
        except (BackendUnavailable, ImportError) as err:
            reasons.append(f"{candidate}: {err}")
            logger.info("auto backend: skipping %s: %s", candidate, err)
            continue
        except ValueError as err:
            # A setting this backend cannot honour (e.g. bf16 on ONNX Runtime): try the next one.
            if candidate == AUTO_ORDER[-1]:
                raise
            reasons.append(f"{candidate}: {err}")
            logger.info("auto backend: skipping %s: %s", candidate, err)
            continue
        if reasons:
            logger.warning("auto backend: using %s (skipped %s)", candidate, "; ".join(reasons))
        return backend
    raise BackendUnavailable("no backend could start: " + "; ".join(reasons))


def _plugin_factory(name: str):
    parts = name.split(":")
    if len(parts) != 3 or not all(parts[1:]):
        raise ValueError(f"`name` must be python:module:callable for a plugin backend; got {name!r}")
    factory = getattr(importlib.import_module(parts[1]), parts[2], None)
    if not callable(factory):
        raise ValueError(f"`name` {name!r} must name a callable; {parts[1]}.{parts[2]} is not one")
    return factory


def fallback_names(current: str, configured: Sequence[str] = ()) -> list[str]:
    """Backends to try, in order, when ``current`` keeps failing: ``configured`` when given, else the
    backends after ``current`` in :data:`AUTO_ORDER` (all of them for a plugin)."""
    if configured:
        return list(configured)
    start = AUTO_ORDER.index(current) + 1 if current in AUTO_ORDER else 0
    return [b for b in AUTO_ORDER[start:] if b != current]


def normals_convention(backend: Backend, checkpoint: str | os.PathLike = "") -> str:
    """The convention of ``backend``'s normals ("optical" or "opengl"): the backend's own attribute, else its
    config's, else the checkpoint's config.json, else "optical"."""
    for obj in (backend, getattr(backend, "config", None)):
        name = getattr(obj, "normals_convention", None)
        if isinstance(name, str):
            return name
    try:
        return json.loads((Path(checkpoint) / "config.json").read_text()).get("normals_convention", "optical")
    except (OSError, ValueError, AttributeError):
        return "optical"
