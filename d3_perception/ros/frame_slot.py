"""The latest-frame slot between the node's subscription callbacks and its worker, with the freshness wait.

Plain Python (no rclpy), so the policy is unit-testable with a fake clock. Callbacks :meth:`~FrameSlot.put`
the newest frame (a frame still waiting is displaced: one drop); the worker :meth:`~FrameSlot.take`\\ s it.

Freshness wait: when the worker frees up, the pending frame has been waiting for some part of the camera
period (uniform in ``[0, period)`` when the camera is faster than the model), and that wait adds to the
frame's latency. With ``max_age_s`` set, a pending frame older than that is not taken at once: the worker
waits for the next frame, which displaces it (counted as a drop, once, by the caller of ``put``) and is
processed instead; if none arrives by the time it was due (``next_within_s`` after the pending frame) the
pending frame is processed after all. With ``max_age_s`` = a quarter period (the node's default) the frame
age added to latency is at most about a quarter period while frames come on time, at the cost of some idle
worker time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FrameSlot", "TAKE_OUTCOMES"]

# How take() got its frame: "ready" (fresh enough, or no freshness limit), "fresher" (waited; a newer frame
# displaced the stale one), "timeout" (waited; nothing newer came, the stale frame is processed)
TAKE_OUTCOMES = ("ready", "fresher", "timeout")


class FrameSlot:
    """A one-frame buffer: ``put`` replaces, ``take`` blocks. Thread-safe.

    ``clock``: seconds, monotonic (``time.monotonic`` by default; the ``received_s`` given to ``put`` must use
    the same clock). ``poll_s``: the longest a waiting ``take`` sleeps before re-reading the clock and its
    ``stop`` event (a fake clock in a test advances without notifying).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, poll_s: float = 0.1) -> None:
        self._clock = clock
        self._poll_s = poll_s
        self._cond = threading.Condition()
        self._item: Any = None
        self._received_s = 0.0

    def put(self, item: Any, received_s: float, merge: Callable[[Any, Any], None] | None = None) -> Any:
        """Store ``item`` (received at ``received_s``); returns the item it displaced (a dropped frame) or None.

        ``merge(displaced, item)``, if given, runs under the lock before ``item`` becomes visible to ``take``
        (e.g. to carry a flag of the dropped frame over to the new one).
        """
        with self._cond:
            old = self._item
            if old is not None and merge is not None:
                merge(old, item)
            self._item, self._received_s = item, received_s
            self._cond.notify_all()
        return old

    def clear(self) -> None:
        with self._cond:
            self._item = None

    def pending(self) -> bool:
        """A frame is waiting."""
        with self._cond:
            return self._item is not None

    def take_nowait(self) -> Any:
        """The waiting frame (removed from the slot), or None: no freshness wait (several cameras batch)."""
        with self._cond:
            item, self._item = self._item, None
            return item

    def wake(self) -> None:
        """Wake a waiting ``take`` so that it re-checks its ``stop`` event."""
        with self._cond:
            self._cond.notify_all()

    def take(self, stop: threading.Event, max_age_s: float | None = None, next_within_s: float = 0.0
             ) -> tuple[Any, str]:
        """Block until a frame is there, then return ``(frame, outcome)`` (outcome: :data:`TAKE_OUTCOMES`).

        ``max_age_s``: a frame that has waited longer than this (by ``clock``) is stale: ``take`` holds it and
        waits for a newer one, until ``next_within_s`` after the stale frame arrived (when the next frame is
        due at the latest: the input period plus a tolerance), then takes the stale one after all. A frame
        already older than ``next_within_s`` is taken at once (the input paused or slowed down: nothing is
        due). None = take any frame at once. Returns ``(None, "ready")`` when ``stop`` is set (the slot keeps
        its frame).
        """
        with self._cond:
            while self._item is None:
                if stop.is_set():
                    return None, "ready"
                self._cond.wait(self._poll_s)
            outcome = "ready"
            now = self._clock()
            deadline = self._received_s + next_within_s
            if max_age_s is not None and now - self._received_s > max_age_s and now < deadline:
                stale = self._item
                outcome = "timeout"
                while not stop.is_set():
                    if self._item is not stale:
                        outcome = "fresher"
                        break
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        break
                    self._cond.wait(min(remaining, self._poll_s))
                if stop.is_set():
                    return None, "ready"
            item, self._item = self._item, None
            return item, outcome
