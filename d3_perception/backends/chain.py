"""The running backend plus the ones to switch to when it keeps failing (the node's runtime fallback).

``predict`` counts consecutive failures; at ``max_failures`` it starts the next backend of ``fallbacks`` (names
for :func:`~d3_perception.backends.create_backend`), closes the failing one and carries on with the new one.
Thread-safe: the worker predicts while parameter callbacks and diagnostics read :attr:`backend`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from d3_perception.backends.base import Backend

__all__ = ["ActiveBackend", "BackendChain"]


@dataclass(frozen=True)
class ActiveBackend:
    """The running backend with what its outputs need downstream."""

    backend: Backend
    normals_convention: str  # "optical" or "opengl" (see d3_perception.geometry.normals)
    renormalise: bool  # the backend does not promise unit normals (Backend.unit_normals is False)

    def describe(self) -> str:
        i = self.backend.info
        return (f"model {i.model_id!r} on {i.name} ({i.device}, {i.precision}), tasks {','.join(i.tasks)}, "
                f"processing resolution {i.processing_resolution}, normals convention {self.normals_convention}")


class BackendChain:
    """``create(name) -> Backend`` builds a fallback; ``log(text)`` reports switches and exhausted fallbacks;
    ``on_switch(backend)`` runs (before the old backend closes) whenever a new backend takes over."""

    def __init__(self, first: Backend, fallbacks: Sequence[str], create: Callable[[str], Backend],
                 checkpoint: str | os.PathLike = "", log: Callable[[str], None] = lambda text: None,
                 on_switch: Callable[[ActiveBackend], None] = lambda active: None) -> None:
        self._lock = threading.Lock()
        self._queue = list(fallbacks)
        self._create, self._checkpoint, self._log, self._on_switch = create, checkpoint, log, on_switch
        self.failures = 0  # consecutive failed predict calls of the current backend
        self.switches = 0
        self._active: ActiveBackend | None = self._activate(first)

    def _activate(self, backend: Backend) -> ActiveBackend:
        from d3_perception.backends import normals_convention

        active = ActiveBackend(backend, normals_convention(backend, self._checkpoint),
                               not getattr(backend, "unit_normals", False))
        self._on_switch(active)
        return active

    def current(self) -> ActiveBackend | None:
        """The running backend (None once closed)."""
        return self._active

    @property
    def backend(self) -> Backend | None:
        active = self._active
        return active.backend if active is not None else None

    @property
    def fallbacks(self) -> list[str]:
        return list(self._queue)

    def predict(self, images: np.ndarray, tasks: tuple[str, ...], max_failures: int) -> dict[str, np.ndarray]:
        """``backend.predict(images, tasks)``; re-raises its error after counting it (and switching backend when
        this was failure number ``max_failures``). RuntimeError when the chain is closed."""
        backend = self._open_backend()
        return self._counted(backend, lambda: backend.predict(images, tasks=tasks), max_failures)

    def predict_many(self, images: Sequence[np.ndarray], tasks: tuple[str, ...], max_failures: int
                     ) -> list[dict[str, np.ndarray]]:
        """:meth:`Backend.predict_many` (one batched call for frames of several cameras), counted like
        :meth:`predict`; a backend without it (a duck-typed plugin) runs :meth:`predict` per frame."""
        backend = self._open_backend()
        many = getattr(backend, "predict_many", None)
        return self._counted(backend, lambda: many(images, tasks) if many is not None else [
            backend.predict(np.asarray(im)[None], tasks=tasks) for im in images], max_failures)

    def _open_backend(self) -> Backend:
        if self.backend is None:
            raise RuntimeError("the backend is closed")
        return self.backend

    def _counted(self, backend: Backend, call, max_failures: int):
        """``call()``; a failure is counted (and switches backend at number ``max_failures``) and re-raised,
        a success resets the count."""
        try:
            out = call()
        except Exception as exc:
            self.failures += 1
            if self.failures >= max_failures:
                self._fall_back(backend, f"{self.failures} consecutive failures, last: {exc}")
            raise
        self.failures = 0
        return out

    def _fall_back(self, failing: Backend, reason: str) -> None:
        while self._queue:
            name = self._queue.pop(0)
            try:
                backend = self._create(name)
            except Exception as exc:  # noqa: BLE001 - try the next one
                self._log(f"fallback backend {name} could not start: {exc}")
                continue
            self._log(f"backend {failing.info.name} failed ({reason}); switched to {backend.info.name}")
            self.switches += 1
            active = self._activate(backend)
            with self._lock:
                self._active, self.failures = active, 0
            failing.close()
            return
        self.failures = 0
        self._log(f"backend keeps failing ({reason}) and no fallback backend is left")

    def close(self) -> None:
        with self._lock:
            active, self._active = self._active, None
        if active is not None:
            active.backend.close()
