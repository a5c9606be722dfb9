"""The node's cameras, without rclpy: one :class:`~d3_perception.ros.pipeline.CameraPipeline` per camera and the
worker's step across them (issue #17 part 2).

With one camera (the ``cameras`` parameter empty) a step is exactly the single-camera pipeline: the newest frame
(with the freshness wait), one model call. With several, the worker takes the newest fresh frame of every
camera, waiting at most ``camera_sync_wait_s`` for cameras whose next frame is due (a stalled camera is not
waited for), and runs **one batched backend call** for all of them
(:meth:`~d3_perception.backends.base.Backend.predict_many`: one network call per processing size). If that call
fails, each frame is retried alone, so one camera's bad frame costs the others nothing. Statistics, bad-input
counts, metric alignment and message buffers stay per camera.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from d3_perception.backends.chain import BackendChain
from d3_perception.ros.params import NodeConfig
from d3_perception.ros.pipeline import CameraPipeline, Frame, FrameResult

__all__ = ["CameraSet", "camera_topic"]


def camera_topic(camera: str, name: str) -> str:
    """The topic ``name`` (relative, or ``~/info``) of camera ``camera``: ``camera/name`` (``camera/info``), or
    ``name`` itself for the single camera ('')."""
    return f"{camera}/{name.removeprefix('~/')}" if camera else name


class CameraSet:
    """``names``: the camera names ('' = the single camera); ``warn(camera, text)`` logs a bad-input warning."""

    def __init__(self, names: tuple[str, ...], cfg: NodeConfig, warn: Callable[[str, str], None],
                 per_camera: dict[str, NodeConfig] | None = None) -> None:
        """``per_camera``: a camera's own config (its overrides of PER_CAMERA parameters); default ``cfg``."""
        self._arrived = threading.Event()
        self.pipelines = {name: CameraPipeline((per_camera or {}).get(name, cfg),
                                               warn=lambda text, n=name: warn(n, text), on_frame=self._arrived.set)
                          for name in names}
        self.sync_wait_s = cfg.camera_sync_wait_s

    @property
    def single(self) -> bool:
        return len(self.pipelines) == 1

    def set_config(self, cfg: NodeConfig, per_camera: dict[str, NodeConfig] | None = None) -> None:
        self.sync_wait_s = cfg.camera_sync_wait_s
        for name, pipe in self.pipelines.items():
            pipe.set_config((per_camera or {}).get(name, cfg))

    def clear(self) -> None:
        for pipe in self.pipelines.values():
            pipe.slot.clear()

    def wake(self) -> None:
        self._arrived.set()
        for pipe in self.pipelines.values():
            pipe.slot.wake()

    def close(self) -> None:
        for pipe in self.pipelines.values():
            pipe.close()

    def reset(self) -> None:
        for pipe in self.pipelines.values():
            pipe.reset()

    def gather(self, stop: threading.Event) -> dict[str, Frame]:
        """The frames of the next step (camera -> frame); empty when ``stop`` is set or nothing came."""
        if self.single:
            name, pipe = next(iter(self.pipelines.items()))
            frame = pipe.next_frame(stop)
            return {name: frame} if frame is not None and not stop.is_set() else {}
        if not any(p.slot.pending() for p in self.pipelines.values()):
            self._arrived.wait(0.1)
        self._arrived.clear()
        deadline = time.monotonic() + self.sync_wait_s
        while not stop.is_set():
            due = [p for p in self.pipelines.values() if not p.slot.pending() and p.frame_due()]
            remaining = deadline - time.monotonic()
            if not due or remaining <= 0:
                break
            self._arrived.wait(remaining)
            self._arrived.clear()
        if stop.is_set():
            return {}
        frames = {name: pipe.slot.take_nowait() for name, pipe in self.pipelines.items()}
        return {name: frame for name, frame in frames.items() if frame is not None}

    def process(self, frames: dict[str, Frame], wants: dict[str, dict[str, bool]],
                backends: BackendChain) -> list[tuple[str, FrameResult]]:
        """Every camera's messages for ``frames`` (``wants``: camera -> wanted outputs), model in one batch."""
        if self.single:
            (name, frame), = frames.items()
            result = self.pipelines[name].process(frame, wants[name], backends)
            return [(name, result)] if result is not None else []
        active = backends.current()
        preps = {}
        for name, frame in frames.items():
            prep = self.pipelines[name].prepare(frame, wants[name], active)
            if prep is not None:
                preps[name] = prep
        if not preps:
            return []
        tasks = tuple(t for t in ("depth", "normals") if any(t in p.tasks for p in preps.values()))
        max_failures = next(iter(self.pipelines.values())).cfg.max_consecutive_failures
        t0 = time.perf_counter()
        try:
            outs = backends.predict_many([p.rgb for p in preps.values()], tasks, max_failures)
        except Exception:  # noqa: BLE001 - retried frame by frame: only the culprit's frame is lost
            outs = []
            for name, prep in preps.items():
                try:
                    outs.append(backends.predict(prep.rgb[None], tasks, max_failures))
                except Exception as exc:  # noqa: BLE001 - counted per camera
                    self.pipelines[name].model_failed(prep, exc)
                    outs.append(None)
        inference_ms = (time.perf_counter() - t0) * 1e3
        results = []
        for (name, prep), out in zip(preps.items(), outs, strict=True):
            result = self.pipelines[name].complete(prep, out, inference_ms) if out is not None else None
            if result is not None:
                results.append((name, result))
        return results
