"""Inference backends behind one interface (DESIGN §4) and the factory that picks one.

```python
from d3_perception.backends import create_backend
backend = create_backend("auto", "models/d3_tiny")        # TensorRT -> OpenVINO -> ONNX Runtime -> torch
out = backend.predict(rgb_uint8)                           # {"depth": [N,H,W], "normals": [N,3,H,W]}
```
"""

from __future__ import annotations

import logging
import os

from d3_perception.backends.base import Backend, BackendInfo

__all__ = ["BACKENDS", "PRECISIONS", "Backend", "BackendInfo", "BackendUnavailable", "create_backend"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt", "openvino")
AUTO_ORDER = ("tensorrt", "openvino", "onnxruntime", "torch")
#: Every precision some backend accepts (each backend refuses the ones it cannot run, naming why).
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


class BackendUnavailable(RuntimeError):
    """A backend cannot run on this machine (library or device missing); ``auto`` then tries the next one."""


def create_backend(name: str, checkpoint: str | os.PathLike, *, device: str | None = None,
                   precision: str = "fp32", processing_resolution: int | None = None,
                   cache_dir: str | os.PathLike | None = None, onnx_path: str | os.PathLike | None = None,
                   tasks: tuple[str, ...] | None = None, **kwargs) -> Backend:
    """Build a backend for a checkpoint directory.

    name: "torch", "onnxruntime", "tensorrt", "openvino" or "auto" (TensorRT -> OpenVINO (x86 CPU without
        CUDA) -> ONNX Runtime -> torch; each skip is logged with its reason).
    device: torch device ("cpu", "cuda", "cuda:1"); for ONNX Runtime "cpu" or "cuda" selects providers; for
        OpenVINO "cpu" or "gpu[:N]" (Intel GPU).
    precision: "fp32", "bf16" (torch, OpenVINO CPU), "fp16" (torch on CUDA, TensorRT, OpenVINO GPU) or "int8"
        (OpenVINO, after ``d3-export --openvino --precision int8``).
    processing_resolution: long side in pixels (multiple of 64); None = the checkpoint's value.
    cache_dir: where exported ONNX files and TensorRT engines live; None = ``<checkpoint>/.cache``.
    onnx_path: an existing ONNX file to use instead of exporting one (ONNX Runtime, TensorRT, OpenVINO; for
        OpenVINO also an IR ``.xml`` from ``d3-export --openvino``).
    tasks: subset of the checkpoint's tasks to run; None = all.
    """
    if name not in BACKENDS:
        raise ValueError(f"`name` must be one of {BACKENDS}; got {name!r}")
    common = dict(device=device, precision=precision, processing_resolution=processing_resolution, tasks=tasks)
    if name == "torch":
        from d3_perception.backends.torch_backend import TorchBackend

        return TorchBackend(checkpoint, **common, **kwargs)
    if name == "onnxruntime":
        from d3_perception.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(checkpoint, cache_dir=cache_dir, onnx_path=onnx_path, **common, **kwargs)
    if name == "tensorrt":
        from d3_perception.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(checkpoint, cache_dir=cache_dir, onnx_path=onnx_path, **common, **kwargs)
    # --- openvino (issue #18) ---
    if name == "openvino":
        from d3_perception.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(checkpoint, cache_dir=cache_dir, onnx_path=onnx_path, **common, **kwargs)
    # --- end openvino ---
    reasons: list[str] = []
    for candidate in AUTO_ORDER:
        if candidate == "openvino":  # issue #18: only the x86-CPU path; a skip is logged like the others
            from d3_perception.backends.openvino_backend import auto_skip_reason

            skip = auto_skip_reason(device)
            if skip is not None:
                reasons.append(f"{candidate}: {skip}")
                logger.info("auto backend: skipping %s: %s", candidate, skip)
                continue
        try:
            backend = create_backend(candidate, checkpoint, cache_dir=cache_dir, onnx_path=onnx_path,
                                     **common, **kwargs)
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
