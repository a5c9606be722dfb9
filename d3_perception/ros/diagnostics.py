"""The node's status messages: ``diagnostic_msgs/DiagnosticArray`` for /diagnostics and the per-frame
``d3_perception/PredictionInfo``, built from the pipeline's statistics (:mod:`.pipeline_stats`) and results.

No rclpy entities here (the node publishes what these functions return), so they are testable alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from d3_perception.msg import PredictionInfo
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from d3_perception.ros.frame_quality import quality_alarms
from d3_perception.ros.params import NodeConfig
from d3_perception.ros.pipeline import FrameResult
from d3_perception.ros.pipeline_stats import (  # re-exported: the statistics' public names
    BAD_INPUT_KINDS,
    ERROR,
    OK,
    STALE,
    WARN,
    PipelineStats,
    Snapshot,
    WarnThrottle,
)

__all__ = ["BAD_INPUT_KINDS", "ERROR", "OK", "STALE", "WARN", "NodeState", "PipelineStats", "Snapshot",
           "WarnThrottle", "diagnostic_array", "prediction_info"]


def prediction_info(result: FrameResult, latency_ms: float, metric_mode: str, frames_dropped: int) -> PredictionInfo:
    """/info of one published frame (same header as its outputs)."""
    align = result.outputs.align
    info = PredictionInfo()
    info.header = result.header
    bi = result.backend_info
    info.backend, info.model_id = bi.name, bi.model_id
    info.processing_height, info.processing_width = (int(v) for v in result.processing_hw)
    info.inference_ms, info.total_ms = float(result.inference_ms), float(latency_ms)
    info.metric_mode = metric_mode
    info.scale, info.shift = float(align.scale), float(align.shift)
    info.alignment_points = int(align.points_used)
    info.alignment_residual_m = float(align.residual_m)
    info.frames_dropped = int(frames_dropped)
    q = result.outputs.quality
    info.mean_confidence, info.low_confidence_share = float(q.mean_confidence), float(q.low_confidence_share)
    info.scale_change, info.blended_share = float(q.scale_change), float(q.blended_share)
    return info


@dataclass(frozen=True)
class NodeState:
    """What /diagnostics reports besides the statistics."""

    name: str  # the node's fully qualified name
    backend_info: object | None  # BackendInfo of the running backend, None when unconfigured
    backend_switches: int
    configure_error: str  # "" unless the last configure failed
    active: bool
    active_since: float  # time.monotonic() of the last activation


def _level_and_message(state: NodeState, snap: Snapshot, cfg: NodeConfig) -> tuple[int, str]:
    if state.configure_error:
        return ERROR, state.configure_error
    if not state.active:
        return WARN, "inactive (lifecycle)"
    if time.monotonic() - max(state.active_since, 0) > cfg.stale_timeout_s and \
            snap.seconds_since_input > cfg.stale_timeout_s:
        age = snap.seconds_since_input
        return STALE, "no input yet" if math.isinf(age) else f"no input for {age:.1f} s"
    problems = []
    if snap.bad_input_recent:
        problems.append("bad input: " + ", ".join(f"{k} x{v}" for k, v in sorted(snap.bad_input_recent.items())))
    alarms = quality_alarms(snap.quality, cfg)
    if alarms:
        problems.append("self-check: " + ", ".join(alarms))
    return (WARN, "; ".join(problems)) if problems else (OK, "ok")


def diagnostic_array(state: NodeState, snaps: dict[str, tuple[Snapshot, NodeConfig]] | Snapshot,
                     cfg: NodeConfig, stamp) -> DiagnosticArray:
    """One status per camera, named ``<node>: <label>`` (``snaps``: label -> (statistics, that camera's config);
    the single camera's label is ``pipeline``), with level, message and the statistics as key/values."""
    if isinstance(snaps, Snapshot):
        snaps = {"pipeline": (snaps, cfg)}
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [_status(state, label, snap, camera_cfg) for label, (snap, camera_cfg) in snaps.items()]
    return array


def _status(state: NodeState, label: str, snap: Snapshot, cfg: NodeConfig) -> DiagnosticStatus:
    info = state.backend_info
    status = DiagnosticStatus()
    status.name = f"{state.name.lstrip('/')}: {label}"
    status.hardware_id = info.device if info is not None else ""
    level, status.message = _level_and_message(state, snap, cfg)
    values = {
        "state": "active" if state.active else ("unconfigured" if info is None else "inactive"),
        "backend": info.name if info else "",
        "device": info.device if info else "",
        "precision": info.precision if info else "",
        "model_id": info.model_id if info else "",
        "backend_switches": state.backend_switches,
        "metric_mode": cfg.metric.mode,
        "input_rate_hz": f"{snap.input_rate_hz:.2f}",
        "output_rate_hz": f"{snap.output_rate_hz:.2f}",
        "latency_p50_ms": f"{snap.latency_p50_ms:.1f}",
        "latency_p95_ms": f"{snap.latency_p95_ms:.1f}",
        "inference_p50_ms": f"{snap.inference_p50_ms:.1f}",
        "inference_p95_ms": f"{snap.inference_p95_ms:.1f}",
        "stamp_age_ms": f"{snap.stamp_age_ms:.1f}",
        "seconds_since_input": f"{snap.seconds_since_input:.2f}",
        "input_period_ms": f"{snap.input_period_ms:.1f}",
        "frames_received": snap.frames_received,
        "frames_processed": snap.frames_processed,
        "frames_dropped": snap.frames_dropped,
        "fresh_frame_waits": snap.fresh_frame_waits,
        "fresh_frame_timeouts": snap.fresh_frame_timeouts,
        "bad_input_total": sum(snap.bad_input.values()),
        "last_problem": snap.last_problem,
        # the numbers of the self-check alarms (worst frame since the previous status) and their bounds
        "mean_confidence": f"{snap.quality.mean_confidence:.4f}",
        "low_confidence_share": f"{snap.quality.low_confidence_share:.4f}",
        "scale_change": f"{snap.quality.scale_change:.4f}",
        "flicker": f"{snap.quality.flicker:.4f}",
        "alignment_residual_rel": f"{snap.quality.residual_rel:.4f}",
        "blended_share": f"{snap.quality.blended_share:.4f}",
        "alarm.max_residual_rel": cfg.alarm_max_residual_rel,
        "alarm.max_scale_change": cfg.alarm_max_scale_change,
        "alarm.max_low_confidence_share": cfg.alarm_max_low_confidence_share,
        "alarm.max_flicker": cfg.alarm_max_flicker,
    }
    values.update({f"bad_input.{k}": v for k, v in sorted(snap.bad_input.items())})
    status.level = bytes([int(level)])  # `byte` field: an int would serialize as garbage
    status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
    return status
