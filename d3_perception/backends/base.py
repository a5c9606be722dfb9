"""The one interface every inference backend implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from d3_perception.model.config import ModelConfig


@dataclass(frozen=True)
class BackendInfo:
    """What a backend runs: logged once at start-up and published in PredictionInfo."""

    name: str  # "torch", "onnxruntime" or "tensorrt"
    device: str  # e.g. "cpu", "cuda:0", "CPUExecutionProvider"
    precision: str  # "fp32", "fp16" or "bf16"
    model_id: str
    tasks: tuple[str, ...]  # subset of ("depth", "normals"), in output order
    processing_resolution: int  # long side of the network input in pixels


class Backend(abc.ABC):
    """``predict(images) -> {"depth": [N,H,W] float32 in [0,1] (0 = near), "normals": [N,3,H,W] float32}``.

    ``images`` is ``[N,H,W,3]`` (or ``[H,W,3]``) uint8 RGB. Outputs have the input's H and W. Normals are unit
    vectors in the checkpoint's convention (``normals_convention`` of its config; see
    :mod:`d3_perception.geometry.normals` to convert them to the camera optical frame).
    """

    info: BackendInfo
    config: ModelConfig  # the checkpoint's config (normals_convention, input_range, processing_resolution, ...)
    #: True when ``predict`` guarantees unit normals (the built-in backends: ``postprocess`` renormalises), so
    #: consumers may skip renormalising; plugin backends that leave it False get renormalised by the node.
    unit_normals: bool = False

    @abc.abstractmethod
    def predict(self, images: np.ndarray, tasks: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Run the model; ``tasks=None`` means every task of the checkpoint."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device memory; the backend is unusable afterwards."""
