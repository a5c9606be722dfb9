"""Pipeline statistics for /diagnostics: rates, latency percentiles, drops, bad-input counts, throttled warnings.

Plain Python (no rclpy): the pipeline feeds it; :mod:`d3_perception.ros.diagnostics` turns
:meth:`PipelineStats.snapshot` into a ``diagnostic_msgs/DiagnosticStatus``. Thread-safe: subscription callbacks, the worker and the
diagnostics timer run on different threads.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from d3_perception.ros.frame_quality import QualitySample, worst

__all__ = ["BAD_INPUT_KINDS", "OK", "WARN", "ERROR", "STALE", "PipelineStats", "Snapshot", "WarnThrottle"]

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels

# Every kind of bad input the node counts (a key of bad_input.<kind> in /diagnostics).
BAD_INPUT_KINDS = (
    "image_decode",  # encoding unknown, step/size/data length wrong (message says which)
    "image_too_large",  # refused by header before decoding (max_input_pixels)
    "image_encoding",  # a valid encoding that is not a colour camera image (e.g. 32FC1 on `image`)
    "compressed_decode",  # empty or corrupt CompressedImage
    "stamp_backwards",  # header stamp older than the previous frame's (bag loop, clock jump)
    "stamp_zero",  # header stamp 0 (driver without a clock)
    "stamp_too_old",  # older than max_stamp_age_s
    "frame_id_empty",
    "camera_info_invalid",  # K zero/NaN/non-positive focal length
    "camera_info_size",  # camera_info size differs from the image (scaled if the aspect ratio matches)
    "camera_info_missing",  # cloud/camera_info requested but no valid camera_info yet
    "sparse_depth_decode",  # wrong encoding, size/step mismatch
    "sparse_depth_empty",  # no valid (finite, > 0) reference pixel
    "sparse_depth_size",  # reference of another size (rescaled if the aspect ratio matches)
    "sparse_depth_unsynced",  # no reference within metric.sync_tolerance_s of the image
    "model_error",  # the backend raised
    "model_output",  # the backend returned NaN/inf or wrong shapes
    "publish_error",
)


class WarnThrottle:
    """Per-key time throttle: ``should_log(key)`` is True at most once per ``period_s``; counts the rest."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def should_log(self, key: str, now: float | None = None) -> tuple[bool, int]:
        """(log now?, how many were suppressed since the last logged one)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            last = self._last.get(key)
            if last is None or now - last >= self.period_s:
                self._last[key] = now
                n = self._suppressed.pop(key, 0)
                return True, n
            self._suppressed[key] += 1
            return False, 0


@dataclass(frozen=True)
class Snapshot:
    """One read of the statistics (units in names)."""

    frames_received: int
    frames_processed: int
    frames_dropped: int
    input_rate_hz: float
    output_rate_hz: float
    latency_p50_ms: float  # image stamp -> outputs published
    latency_p95_ms: float
    inference_p50_ms: float
    inference_p95_ms: float
    stamp_age_ms: float  # age of the latest input stamp at its receipt
    seconds_since_input: float  # inf if never
    input_period_ms: float  # smoothed interval between input frames (NaN until two arrived)
    fresh_frame_waits: int  # times the worker waited for a fresher frame (wait_for_fresh_frame)
    fresh_frame_timeouts: int  # ... of which no newer frame came in time (the stale one was processed)
    bad_input: dict[str, int]
    bad_input_recent: dict[str, int]  # since the previous snapshot
    last_problem: str
    quality: QualitySample = QualitySample()  # the worst frame values since the previous snapshot (the latest
    # frame's when none came since): what the self-check alarms judge


class PipelineStats:
    """Counters and windows; ``window`` samples for percentiles, ``rate_window_s`` for rates.

    The input period is an exponential average (weight ``period_alpha`` per frame) of the intervals between
    frame arrivals; an interval over :data:`PERIOD_OUTLIER` times the average (a pause of the stream) is left
    out, unless three come in a row (the camera really slowed down: the average restarts from it).
    """

    PERIOD_OUTLIER = 4.0

    def __init__(self, window: int = 300, rate_window_s: float = 5.0, period_alpha: float = 0.1) -> None:
        self._lock = threading.Lock()
        self.rate_window_s = rate_window_s
        self.period_alpha = period_alpha
        self.frames_received = 0
        self.frames_processed = 0
        self.frames_dropped = 0
        self.fresh_frame_waits = 0
        self.fresh_frame_timeouts = 0
        self._period_s = float("nan")
        self._period_outliers = 0
        self._in_times: deque[float] = deque(maxlen=1000)
        self._out_times: deque[float] = deque(maxlen=1000)
        self._latency_ms: deque[float] = deque(maxlen=window)
        self._inference_ms: deque[float] = deque(maxlen=window)
        self._stamp_age_ms = float("nan")
        self._last_input = None
        self.bad_input: Counter[str] = Counter()
        self._bad_reported: Counter[str] = Counter()
        self.last_problem = ""
        self._quality_latest = QualitySample()
        self._quality_worst: QualitySample | None = None  # since the previous snapshot

    def input(self, stamp_age_ms: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.frames_received += 1
            if self._last_input is not None:
                self._update_period(now - self._last_input)
            self._in_times.append(now)
            self._last_input = now
            self._stamp_age_ms = stamp_age_ms

    def _update_period(self, dt: float) -> None:
        if dt <= 0:
            return
        if self._period_s != self._period_s:  # NaN: first interval
            self._period_s = dt
        elif dt <= self.PERIOD_OUTLIER * self._period_s:
            self._period_outliers = 0
            self._period_s += self.period_alpha * (dt - self._period_s)
        else:
            self._period_outliers += 1
            if self._period_outliers >= 3:
                self._period_s, self._period_outliers = dt, 0

    def input_period_s(self) -> float | None:
        """Smoothed interval between input frames in seconds; None until two frames arrived."""
        with self._lock:
            p = self._period_s
        return p if p == p else None

    def last_input_s(self) -> float | None:
        """``time.monotonic()`` of the latest input frame; None before the first."""
        with self._lock:
            return self._last_input

    def fresh_wait(self, timed_out: bool) -> None:
        """The worker waited for a fresher frame; ``timed_out``: none came, the stale frame was processed."""
        with self._lock:
            self.fresh_frame_waits += 1
            self.fresh_frame_timeouts += int(timed_out)

    def dropped(self, n: int = 1) -> None:
        with self._lock:
            self.frames_dropped += n

    def output(self, latency_ms: float, inference_ms: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.frames_processed += 1
            self._out_times.append(now)
            self._latency_ms.append(latency_ms)
            self._inference_ms.append(inference_ms)

    def quality(self, sample: QualitySample) -> None:
        """One published frame's trust numbers (a short bad spell between two snapshots is not missed)."""
        with self._lock:
            self._quality_latest = sample
            self._quality_worst = sample if self._quality_worst is None else worst(self._quality_worst, sample)

    def bad(self, kind: str, reason: str) -> None:
        with self._lock:
            self.bad_input[kind] += 1
            self.last_problem = f"{kind}: {reason}"

    def _rate(self, times: deque[float], now: float) -> float:
        recent = [t for t in times if now - t <= self.rate_window_s]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0], recent[-1] - recent[0])
        return (len(recent) - 1) / span if span > 0 else 0.0

    def snapshot(self, now: float | None = None) -> Snapshot:
        now = time.monotonic() if now is None else now
        with self._lock:
            lat = np.asarray(self._latency_ms) if self._latency_ms else np.full(1, np.nan)
            inf = np.asarray(self._inference_ms) if self._inference_ms else np.full(1, np.nan)
            recent = {k: v - self._bad_reported[k] for k, v in self.bad_input.items() if v > self._bad_reported[k]}
            self._bad_reported = Counter(self.bad_input)
            quality = self._quality_worst if self._quality_worst is not None else self._quality_latest
            self._quality_worst = None
            return Snapshot(
                frames_received=self.frames_received,
                frames_processed=self.frames_processed,
                frames_dropped=self.frames_dropped,
                input_rate_hz=self._rate(self._in_times, now),
                output_rate_hz=self._rate(self._out_times, now),
                latency_p50_ms=float(np.percentile(lat, 50)),
                latency_p95_ms=float(np.percentile(lat, 95)),
                inference_p50_ms=float(np.percentile(inf, 50)),
                inference_p95_ms=float(np.percentile(inf, 95)),
                stamp_age_ms=self._stamp_age_ms,
                seconds_since_input=(now - self._last_input) if self._last_input is not None else float("inf"),
                input_period_ms=self._period_s * 1e3,
                fresh_frame_waits=self.fresh_frame_waits,
                fresh_frame_timeouts=self.fresh_frame_timeouts,
                bad_input=dict(self.bad_input),
                bad_input_recent=recent,
                last_problem=self.last_problem,
                quality=quality,
            )
