"""The node's latest-frame slot and its freshness wait (d3_perception.ros.frame_slot), on a fake clock,
and the input-period estimate it uses (PipelineStats). No rclpy: the node wires these together as
``take(stop, ratio * period, period)`` and counts a drop for every frame ``put`` displaces."""

from __future__ import annotations

import threading

import pytest

from d3_perception.ros.frame_slot import FrameSlot
from d3_perception.ros.pipeline_stats import PipelineStats

PERIOD = 1 / 30
MAX_AGE = 0.5 * PERIOD  # as the node: fresh_frame_max_age_ratio 0.5
DUE = 1.5 * PERIOD  # as the node: the next frame is due 1.5 periods after the pending one at the latest


class FakeClock:
    """Seconds that move only when the test says; ``waiting`` is set once a blocked ``take`` re-reads it."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t
        self.calls = 0
        self.waiting = threading.Event()

    def __call__(self) -> float:
        self.calls += 1
        if self.calls >= 2:  # take() reads the clock once to judge the frame, then again in its wait loop
            self.waiting.set()
        return self.t


class Counted:
    """``put`` as the node does it: every displaced frame is one drop."""

    def __init__(self, slot: FrameSlot) -> None:
        self.slot, self.drops = slot, 0

    def put(self, frame, received_s):
        if self.slot.put(frame, received_s) is not None:
            self.drops += 1


def _take_in_thread(slot, stop, max_age_s, max_wait_s):
    result = {}
    t = threading.Thread(target=lambda: result.update(out=slot.take(stop, max_age_s, max_wait_s)), daemon=True)
    t.start()
    return t, result


def test_stale_pending_frame_is_superseded_by_the_next_one_and_dropped_once():
    clock = FakeClock()
    slot = FrameSlot(clock, poll_s=0.01)
    q = Counted(slot)
    q.put("stale", clock.t)
    clock.t += 0.7 * PERIOD  # the worker frees up 23 ms after the frame arrived: older than half a period
    worker, result = _take_in_thread(slot, threading.Event(), MAX_AGE, DUE)
    assert clock.waiting.wait(5.0), "take() did not start waiting for a fresher frame"
    assert worker.is_alive()
    clock.t += 0.3 * PERIOD  # the next camera frame, one period after the stale one
    q.put("fresh", clock.t)
    worker.join(5.0)
    assert result["out"] == ("fresh", "fresher")
    assert q.drops == 1  # the stale frame, exactly once
    q.put("next", clock.t)
    assert q.drops == 1  # the slot was emptied by take(): nothing displaced


def test_without_a_next_frame_the_pending_one_is_processed_when_the_next_was_due():
    clock = FakeClock()
    slot = FrameSlot(clock, poll_s=0.01)
    q = Counted(slot)
    q.put("stale", clock.t)
    clock.t += 0.9 * PERIOD
    worker, result = _take_in_thread(slot, threading.Event(), MAX_AGE, DUE)
    assert clock.waiting.wait(5.0)
    clock.t += 0.59 * PERIOD  # 1.49 periods after the stale frame: still waiting
    worker.join(0.1)
    assert worker.is_alive()
    clock.t += 0.02 * PERIOD  # past 1.5 periods: the next frame is not coming, take the stale one
    worker.join(5.0)
    assert result["out"] == ("stale", "timeout")
    assert q.drops == 0


def test_a_frame_older_than_when_the_next_was_due_is_taken_at_once():
    clock = FakeClock()
    slot = FrameSlot(clock)
    slot.put("old", clock.t)
    clock.t += 2 * PERIOD  # the input paused or slowed down: no frame is due, waiting would only add latency
    assert slot.take(threading.Event(), MAX_AGE, DUE) == ("old", "ready")


def test_frames_arriving_during_the_wait_are_each_dropped_once_and_the_newest_wins():
    clock = FakeClock()
    slot = FrameSlot(clock, poll_s=0.01)
    q = Counted(slot)
    q.put("a", clock.t)
    clock.t += PERIOD
    worker, result = _take_in_thread(slot, threading.Event(), MAX_AGE, DUE)
    assert clock.waiting.wait(5.0)
    with slot._cond:  # the slot's (reentrant) lock: the worker cannot wake between the two frames
        q.put("b", clock.t)
        q.put("c", clock.t + 0.001)
    worker.join(5.0)
    assert result["out"] == ("c", "fresher")
    assert q.drops == 2  # a (superseded while the worker waited) and b (superseded before it woke)


@pytest.mark.parametrize("age", [0.0, 0.4 * PERIOD])
def test_a_fresh_enough_frame_is_taken_at_once(age):
    clock = FakeClock()
    slot = FrameSlot(clock)
    slot.put("f", clock.t)
    clock.t += age
    assert slot.take(threading.Event(), MAX_AGE, DUE) == ("f", "ready")
    assert clock.calls == 1  # no wait loop


def test_policy_off_or_period_unknown_takes_any_frame_at_once():
    clock = FakeClock()
    slot = FrameSlot(clock)
    slot.put("f", clock.t)
    clock.t += 10.0
    assert slot.take(threading.Event(), None, PERIOD) == ("f", "ready")
    slot.put("g", clock.t - 10.0)
    assert slot.take(threading.Event(), MAX_AGE, 0.0) == ("g", "ready")  # no period yet: nothing is due


def test_stop_ends_a_wait_and_an_empty_take():
    clock = FakeClock()
    slot = FrameSlot(clock, poll_s=0.01)
    stop = threading.Event()
    worker, result = _take_in_thread(slot, stop, MAX_AGE, DUE)  # empty slot: blocks
    stop.set()
    slot.wake()
    worker.join(5.0)
    assert result["out"] == (None, "ready")
    stop.clear()
    slot.put("stale", clock.t - PERIOD)
    clock.calls = 0
    worker, result = _take_in_thread(slot, stop, MAX_AGE, DUE)
    assert clock.waiting.wait(5.0)
    stop.set()
    worker.join(5.0)
    assert result["out"] == (None, "ready")


def test_merge_runs_before_the_new_frame_is_visible():
    slot = FrameSlot()
    old, new = {"reset": True}, {"reset": False}
    slot.put(old, 0.0)
    assert slot.put(new, 0.0, lambda a, b: b.update(reset=b["reset"] or a["reset"])) is old
    assert slot.take(threading.Event()) == ({"reset": True}, "ready")


def test_input_period_is_a_smoothed_arrival_interval_that_ignores_pauses():
    stats = PipelineStats()
    assert stats.input_period_s() is None
    t = 0.0
    for _ in range(50):
        stats.input(1.0, now=t)
        t += PERIOD
    assert stats.input_period_s() == pytest.approx(PERIOD, rel=1e-6)
    stats.input(1.0, now=t + 5.0)  # a 5 s pause of the stream: left out
    t += 5.0 + PERIOD
    stats.input(1.0, now=t)
    assert stats.input_period_s() == pytest.approx(PERIOD, rel=1e-6)
    for _ in range(3):  # the camera drops to 2 Hz: three long intervals in a row restart the average
        t += 0.5
        stats.input(1.0, now=t)
    assert stats.input_period_s() == pytest.approx(0.5)
    snap = stats.snapshot(now=t)
    assert snap.input_period_ms == pytest.approx(500.0)
    stats.fresh_wait(timed_out=False)
    stats.fresh_wait(timed_out=True)
    snap = stats.snapshot(now=t)
    assert (snap.fresh_frame_waits, snap.fresh_frame_timeouts) == (2, 1)
