"""PyTorch backend: the reference implementation (CPU or CUDA; fp32, bf16, fp16)."""

from __future__ import annotations

import logging
import os

import numpy as np

from d3_perception.backends.base import Backend, BackendInfo

__all__ = ["PRECISIONS", "TorchBackend"]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")


class TorchBackend(Backend):
    """Runs :class:`~d3_perception.model.D3Predictor` in ``torch.inference_mode``.

    ``device``: ``None`` = "cuda" when available, else "cpu". ``precision``: weights and activations in that
    dtype; fp16 is refused on the CPU (PyTorch's CPU fp16 kernels are about 1000x slower than fp32 there).
    ``num_threads``: ``torch.set_num_threads`` (process-wide: torch has one intra-op pool); None = leave it.
    """

    unit_normals = True  # predict() ends in processing.postprocess, which renormalises

    def __init__(self, checkpoint: str | os.PathLike, *, device: str | None = None, precision: str = "fp32",
                 processing_resolution: int | None = None, tasks: tuple[str, ...] | None = None,
                 batch_size: int = 4, num_threads: int | None = None) -> None:
        import torch

        from d3_perception.model import load_pretrained
        from d3_perception.model.config import check_processing_resolution

        if precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {PRECISIONS}; got {precision!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"`device` must be available; got {device!r} but CUDA is not")
        if dev.type == "cpu" and precision == "fp16":
            raise ValueError("`precision` must be fp32 or bf16 on the CPU; got 'fp16' (CPU fp16 is unusably slow)")
        if processing_resolution is not None:
            check_processing_resolution(processing_resolution)
        if num_threads is not None:
            if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
                raise ValueError(f"`num_threads` must be an integer >= 1 or None; got {num_threads!r}")
            torch.set_num_threads(num_threads)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self._model = load_pretrained(checkpoint, device=dev, dtype=dtype, tasks=tasks)
        self._resolution = processing_resolution
        self.batch_size = batch_size
        cfg = self._model.config
        self.config = cfg
        self.info = BackendInfo(name="torch", device=str(dev), precision=precision, model_id=cfg.model_id,
                                tasks=cfg.tasks,
                                processing_resolution=processing_resolution or cfg.processing_resolution)
        logger.info("torch backend: %s on %s (%s), tasks %s, resolution %d", cfg.model_id, dev, precision,
                    cfg.tasks, self.info.processing_resolution)

    @property
    def model(self):
        """The underlying :class:`D3Predictor` (read it, do not mutate it)."""
        return self._model

    def run_network(self, x: np.ndarray, tasks: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Raw network call: ``x`` ``[N,3,H,W]`` float32 -> per task ``[N,C,H,W]`` float32 (numpy)."""
        import torch

        param = self._model.vae.encoder.conv_in.weight  # the model's dtype and device
        with torch.inference_mode():
            raw = self._model(torch.from_numpy(np.ascontiguousarray(x)).to(device=param.device, dtype=param.dtype),
                              tasks)
        return {k: v.float().cpu().numpy() for k, v in raw.items()}

    def close(self) -> None:
        import torch

        self._model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
