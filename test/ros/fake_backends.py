"""Test backends for the node, loaded with ``backend: python:fake_backends:<factory>`` (test/ros on PYTHONPATH).

``gt``: the "model" reads relative depth from the image itself, so tests know the exact model output:
relative depth = red channel / 255 (0 = near). Normals: +z toward the viewer in the opengl convention for
every pixel (a fronto-parallel surface). Behaviour switches, read from the image's top-left pixel:
  green == 1 -> raise RuntimeError (backend failing during inference)
and from environment variables of the node process:
  D3_FAKE_DELAY_S  -> sleep this long per call (a slow model)
The checkpoint, when given, must be a directory whose config.json parses (so corrupt checkpoints fail).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from d3_perception.backends.base import Backend, BackendInfo


class GtBackend(Backend):
    def __init__(self, name: str = "fake_gt", delay_s: float = 0.0, always_fail: bool = False,
                 tasks: tuple[str, ...] = ("depth", "normals"), normals_length: float = 1.0) -> None:
        self.info = BackendInfo(name=name, device="cpu", precision="fp32", model_id="fake-gt",
                                tasks=tasks, processing_resolution=64)
        self.normals_convention = "opengl"
        self.delay_s = delay_s
        self.always_fail = always_fail
        self.normals_length = normals_length  # != 1: breaks the unit-normals contract (node must renormalise)
        self.calls = 0

    def predict(self, images, tasks=None):
        self.calls += 1
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.always_fail or images[0, 0, 0, 1] == 1:
            raise RuntimeError("fake backend failure (requested by the test image)")
        depth = images[..., 0].astype(np.float32) / 255.0  # [N,H,W]
        out = {"depth": depth} if "depth" in self.info.tasks else {}
        if "normals" in self.info.tasks and (tasks is None or "normals" in tasks):
            n, h, w = depth.shape
            normals = np.zeros((n, 3, h, w), dtype=np.float32)
            normals[:, 2] = self.normals_length  # opengl: toward the viewer
            if self.normals_length != 1.0:
                normals[:, :, 2, 3] = 0.0  # one zero vector: no direction at all
            out["normals"] = normals
        return out


def _check_checkpoint(checkpoint: str) -> None:
    if checkpoint:
        json.loads((Path(checkpoint) / "config.json").read_text())  # raises on a corrupt file


def gt(checkpoint: str = "", **kwargs) -> Backend:
    _check_checkpoint(checkpoint)
    return GtBackend(delay_s=float(os.environ.get("D3_FAKE_DELAY_S", "0")))


def failing(checkpoint: str = "", **kwargs) -> Backend:
    """A backend that always raises (for the runtime fallback test)."""
    _check_checkpoint(checkpoint)
    return GtBackend(name="fake_failing", always_fail=True)


def gt_fallback(checkpoint: str = "", **kwargs) -> Backend:
    _check_checkpoint(checkpoint)
    return GtBackend(name="fake_fallback")


def normals_only(checkpoint: str = "", **kwargs) -> Backend:
    """A single-task normals checkpoint (like the official D3 normals model)."""
    _check_checkpoint(checkpoint)
    return GtBackend(name="fake_normals", tasks=("normals",))


def normals_not_unit(checkpoint: str = "", **kwargs) -> Backend:
    """A normals-only plugin that returns normals of length 2.5 and one zero vector (pixel row 2, column 3)."""
    _check_checkpoint(checkpoint)
    return GtBackend(name="fake_not_unit", tasks=("normals",), normals_length=2.5)
