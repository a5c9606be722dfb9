"""Quality of any backend on held-out synthetic frames (exact labels), and frames for INT8 calibration.

The frames are the ones ``d3_training.evaluate`` scores for the same ``kind`` (same seeds, same views):
``kind="world"`` (the default: the INT8 calibration and gate and ``bench/backend_quality.py``) gives the
in-distribution family of the bundled model's ``quality.json`` (the wide world it is trained on), ``"shift"``
its held-out family, ``"room"`` the first bundled model's rooms. They are rendered with
:mod:`d3_perception.synthetic` because ``d3_perception`` must not import ``d3_training``.

Metrics (one metrics core, :mod:`d3_perception.evaluation.metrics`): AbsRel and δ1 after a per-image
least-squares scale + shift fit in depth space, and the mean normal angle in degrees, averaged over frames.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "CALIBRATION_SEED",
    "HELD_OUT_SEED",
    "QUALITY_KEYS",
    "LabelledFrame",
    "heldout_quality",
    "quality_change",
    "synthetic_frames",
]

#: Seed of the held-out frames (the value of ``d3_training.evaluate.HELD_OUT_SEED``; training uses small seeds).
HELD_OUT_SEED = 9_999
#: Seed of the calibration frames for post-training quantisation: disjoint from the held-out frames.
CALIBRATION_SEED = 4_242
#: Reported keys: AbsRel (fraction, lower is better), δ1 (fraction, higher is better), mean angle (degrees).
QUALITY_KEYS = ("abs_rel", "delta1", "normals_mean_deg")
_VIEWS_PER_SCENE = 4


@dataclass(frozen=True)
class LabelledFrame:
    """rgb ``[H,W,3]`` uint8; depth_m ``[H,W]`` float32 metres (0 where invalid); normals ``[H,W,3]`` float32
    unit vectors in the camera optical frame (0 where invalid); valid ``[H,W]`` bool."""

    rgb: np.ndarray
    depth_m: np.ndarray
    normals: np.ndarray
    valid: np.ndarray


@lru_cache(maxsize=64)
def _sequence(scene_seed: int, kind: str, hw: tuple[int, int]):
    from d3_perception.synthetic import SyntheticSequence

    return SyntheticSequence(seed=scene_seed, size_hw=hw, kind=kind, fps=1.0)


def synthetic_frames(num_frames: int, hw: tuple[int, int] = (64, 64), seed: int = HELD_OUT_SEED,
                     kind: str = "world") -> Iterator[LabelledFrame]:
    """``num_frames`` deterministic views: frame i = scene (seed, i // 4) at view i % 4 (the training sampler's
    indexing, so seed 9999 gives exactly the held-out frames of ``d3_training.evaluate``)."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"`num_frames` must be an integer >= 1; got {num_frames!r}")
    for i in range(num_frames):
        scene_seed = seed * 1_000_003 + i // _VIEWS_PER_SCENE
        frame = _sequence(scene_seed, kind, tuple(hw)).frame(int((i % _VIEWS_PER_SCENE) * 7 + scene_seed % 5))
        valid = frame.valid & np.isfinite(frame.depth_m) & (frame.depth_m > 1e-5)
        depth = np.where(valid, frame.depth_m, 0).astype(np.float32)
        normals = np.where(valid[..., None], np.nan_to_num(frame.normals), 0).astype(np.float32)
        yield LabelledFrame(frame.rgb, depth, normals, valid)


def heldout_quality(backend, num_frames: int = 200, hw: tuple[int, int] = (64, 64), seed: int = HELD_OUT_SEED,
                    kind: str = "world") -> dict[str, float]:
    """Mean AbsRel, δ1 and normal angle of ``backend`` (any :class:`~d3_perception.backends.Backend`) on the
    held-out frames. Normals are compared as the backend returns them (checkpoints in the optical convention)."""
    from d3_perception.evaluation.metrics import align_depth, depth_metrics, normal_angles_deg

    rows: dict[str, list[float]] = {k: [] for k in QUALITY_KEYS}
    for frame in synthetic_frames(num_frames, hw, seed, kind):
        out = backend.predict(frame.rgb[None])
        if frame.valid.sum() <= 10:
            continue
        if "depth" in out:
            aligned, _, _ = align_depth(out["depth"][0], frame.depth_m, frame.valid, space="depth",
                                        min_depth_m=1e-3, max_depth_m=float("inf"))
            metrics = depth_metrics(aligned, frame.depth_m, frame.valid)
            rows["abs_rel"].append(metrics["abs_rel"])
            rows["delta1"].append(metrics["delta1"])
        if "normals" in out:
            pred = np.moveaxis(out["normals"][0], 0, -1)  # [3,H,W] -> [H,W,3]
            rows["normals_mean_deg"].append(float(normal_angles_deg(pred, frame.normals, frame.valid).mean()))
    return {k: float(np.mean(v)) for k, v in rows.items() if v}


def quality_change(candidate: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """Relative degradation per key (positive = worse): AbsRel and angle rise, δ1 falls; 0.01 = 1 % worse."""
    change = {}
    for key in QUALITY_KEYS:
        if key in candidate and key in reference and reference[key] != 0:
            sign = -1.0 if key == "delta1" else 1.0
            change[key] = sign * (candidate[key] - reference[key]) / abs(reference[key])
    return change
