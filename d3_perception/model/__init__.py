"""The D³ predictor: config, torch module, checkpoint I/O (DESIGN §3).

```python
from d3_perception.model import ModelConfig, D3Predictor, save_pretrained, load_pretrained
model = load_pretrained("models/d3_tiny")             # strict, safetensors only
out = model.predict(rgb_uint8)                        # {"depth": [N,H,W], "normals": [N,3,H,W]}
```

Attributes are imported on first use (PEP 562), so ``d3_perception.model.config`` / ``.processing`` stay
usable without importing torch and diffusers (ONNX Runtime / TensorRT deployments).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CheckpointError": "d3_perception.model.checkpoint",
    "build_random_checkpoint": "d3_perception.model.checkpoint",
    "checkpoint_hash": "d3_perception.model.config",
    "load_pretrained": "d3_perception.model.checkpoint",
    "save_pretrained": "d3_perception.model.checkpoint",
    "OFFICIAL_PROMPTS": "d3_perception.model.config",
    "ModelConfig": "d3_perception.model.config",
    "D3Predictor": "d3_perception.model.predictor",
    "check_inputs": "d3_perception.model.processing",
}

__all__ = [
    "OFFICIAL_PROMPTS",
    "CheckpointError",
    "D3Predictor",
    "ModelConfig",
    "build_random_checkpoint",
    "check_inputs",
    "checkpoint_hash",
    "load_pretrained",
    "save_pretrained",
]

if TYPE_CHECKING:
    from d3_perception.model.checkpoint import (
        CheckpointError,
        build_random_checkpoint,
        checkpoint_hash,
        load_pretrained,
        save_pretrained,
    )
    from d3_perception.model.config import OFFICIAL_PROMPTS, ModelConfig
    from d3_perception.model.predictor import D3Predictor
    from d3_perception.model.processing import check_inputs


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'd3_perception.model' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
