"""The one interface every inference backend implements."""

from __future__ import annotations

from collections.abc import Sequence
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


class Backend:
    """``predict(images) -> {"depth": [N,H,W] float32 in [0,1] (0 = near), "normals": [N,3,H,W] float32}``.

    ``images`` is ``[N,H,W,3]`` (or ``[H,W,3]``) uint8 RGB. Outputs have the input's H and W. Normals are unit
    vectors in the checkpoint's convention (``normals_convention`` of its config; see
    :mod:`d3_perception.geometry.normals` to convert them to the camera optical frame).

    A built-in backend implements only :meth:`run_network`; :meth:`predict` (here, once for all of them)
    checks the frames and tasks, resizes/pads them to the processing size (the checkpoint's
    ``resize_policy``) in chunks of :attr:`batch_size` and undoes that on the outputs. A plugin backend may instead override :meth:`predict` itself.
    """

    info: BackendInfo
    config: ModelConfig  # the checkpoint's config (normals_convention, input_range, processing_resolution, ...)
    #: True when ``predict`` guarantees unit normals (the built-in backends: ``postprocess`` renormalises), so
    #: consumers may skip renormalising; plugin backends that leave it False get renormalised by the node.
    unit_normals: bool = False
    batch_size: int = 4  # frames per network call

    @property
    def resize_policy(self) -> str:
        """How frames reach the network size: the checkpoint's ``resize_policy`` ("keep_aspect" or "squash")."""
        return getattr(getattr(self, "config", None), "resize_policy", "keep_aspect")

    def check_tasks(self, tasks: tuple[str, ...] | str | None) -> tuple[str, ...]:
        """``tasks`` as a tuple (None = :attr:`BackendInfo.tasks`); ValueError unless a non-empty subset of the
        checkpoint's tasks."""
        if tasks is None:
            return tuple(self.info.tasks)
        tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
        allowed = tuple(self.config.tasks)
        if not tasks or any(t not in allowed for t in tasks):
            raise ValueError(f"`tasks` must be a non-empty subset of the checkpoint's tasks {allowed}; got {tasks}")
        return tuple(dict.fromkeys(tasks))

    def predict(self, images: np.ndarray, tasks: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Run the model; ``tasks=None`` means every task the backend was built for."""
        from d3_perception.model.processing import check_inputs, postprocess, preprocess

        images = check_inputs(images)  # [N,H,W,3]
        tasks = self.check_tasks(tasks)
        chunks = []
        for start in range(0, images.shape[0], self.batch_size):
            x, geo = preprocess(images[start:start + self.batch_size], self.info.processing_resolution,
                                self.config.input_range, self.resize_policy)
            raw = self.run_network(x, tasks)
            chunks.append(postprocess({t: raw[t] for t in tasks}, geo))
        return {t: np.concatenate([c[t] for c in chunks]) for t in tasks}

    def predict_many(self, images: Sequence[np.ndarray], tasks: tuple[str, ...] | None = None
                     ) -> list[dict[str, np.ndarray]]:
        """Frames of different sizes (each ``[H_i,W_i,3]``) -> one output dict per frame (``{"depth": [1,H_i,W_i],
        "normals": [1,3,H_i,W_i]}``), as :meth:`predict` on each frame would give. Frames whose network inputs
        have the same size run together: one :meth:`run_network` call per size (and chunk of
        :attr:`batch_size`), however many cameras sent them. A backend that overrides only :meth:`predict`
        gets one call per input size."""
        from d3_perception.model.processing import check_inputs, postprocess, preprocess

        tasks = self.check_tasks(tasks)
        frames = [check_inputs(im) for im in images]  # each [1,H,W,3]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(frames):
            by_size.setdefault(f.shape[1:3], []).append(i)
        results: list[dict[str, np.ndarray]] = [{} for _ in frames]
        if type(self).run_network is Backend.run_network:  # a plugin with its own predict
            for idx in by_size.values():
                out = self.predict(np.concatenate([frames[i] for i in idx]), tasks=tasks)
                for k, i in enumerate(idx):
                    results[i] = {t: v[k:k + 1] for t, v in out.items()}
            return results
        # preprocess per input size, then one network input per padded size
        groups: dict[tuple[int, int], list[tuple[list[int], object, np.ndarray]]] = {}
        for idx in by_size.values():
            x, geo = preprocess(np.concatenate([frames[i] for i in idx]), self.info.processing_resolution,
                                self.config.input_range, self.resize_policy)
            groups.setdefault(geo.padded_hw, []).append((idx, geo, x))
        for parts in groups.values():
            x = np.concatenate([p[2] for p in parts])
            raws = [self.run_network(x[s:s + self.batch_size], tasks) for s in range(0, len(x), self.batch_size)]
            raw = {t: np.concatenate([r[t] for r in raws]) for t in tasks}
            start = 0
            for idx, geo, _ in parts:
                out = postprocess({t: raw[t][start:start + len(idx)] for t in tasks}, geo)
                start += len(idx)
                for k, i in enumerate(idx):
                    results[i] = {t: out[t][k:k + 1] for t in tasks}
        return results

    def run_network(self, x: np.ndarray, tasks: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """The raw network call: ``x`` ``[n,3,h,w]`` float32 in ``config.input_range`` (h, w multiples of 64) ->
        per task ``[n,C,h,w]`` float32 (at least the ``tasks`` asked for)."""
        raise NotImplementedError(f"{type(self).__name__} must implement run_network() or predict()")

    def close(self) -> None:
        """Release device memory; the backend is unusable afterwards."""
