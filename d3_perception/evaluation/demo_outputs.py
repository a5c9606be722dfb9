"""What ``d3-demo`` computes and writes, without ROS: per-frame metrics against exact ground truth, the
montage, the PLY cloud, ``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from d3_perception.evaluation.metrics import align_depth, depth_metrics, normal_angles_deg
from d3_perception.geometry.ply import write_ply as geometry_write_ply

__all__ = ["DemoAccumulator", "FrameResult", "colorize_depth", "colorize_normals", "montage", "write_ply"]

PANEL_TITLES = ("RGB", "predicted depth", "GT depth", "predicted normals", "GT normals", "AbsRel error")


def _align(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Least-squares scale+shift of an affine-invariant depth to metres (float32, >= 1e-3 m)."""
    aligned, _, _ = align_depth(pred, target, mask, space="depth", min_depth_m=1e-3)
    return aligned


def _depth_errors(pred_m: np.ndarray, target_m: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    m = depth_metrics(pred_m, target_m, mask)
    return {"abs_rel": m["abs_rel"], "delta1": m["delta1"], "rmse_m": m["rmse"]}


@dataclass
class FrameResult:
    """One evaluated frame (arrays at the prediction's resolution)."""

    stamp_ns: int
    rgb: np.ndarray  # [H,W,3] uint8
    gt_depth_m: np.ndarray  # [H,W] float32, NaN invalid
    gt_normals: np.ndarray  # [H,W,3] float32 optical frame
    pred_aligned_m: np.ndarray  # [H,W] float32, relative depth after scale+shift to GT
    pred_normals: np.ndarray | None  # [H,W,3] float32 optical frame
    pred_metric_m: np.ndarray | None  # [H,W] float32, the node's own metric depth (sparse_depth mode)
    K: np.ndarray  # [3,3] at the prediction's resolution
    metrics: dict[str, float] = field(default_factory=dict)


def _fit_to(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if arr.shape[:2] == hw:
        return arr
    return cv2.resize(arr, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)


class DemoAccumulator:
    """Collects per-frame metrics and latencies; keeps the last evaluated frame for the montage/PLY."""

    def __init__(self) -> None:
        self.frames: list[dict[str, float]] = []
        self.latencies_ms: list[float] = []
        self.last: FrameResult | None = None

    def add(self, stamp_ns: int, rgb, gt_depth_m, gt_normals, K, pred_rel, pred_normals=None,
            pred_metric_m=None, latency_ms: float | None = None) -> FrameResult | None:
        """Evaluate one prediction against ground truth; None when no pixel is valid for both."""
        if latency_ms is not None:
            self.latencies_ms.append(float(latency_ms))
        hw = pred_rel.shape[:2]
        if hw != gt_depth_m.shape[:2]:
            from d3_perception.geometry.intrinsics import scale_intrinsics

            K = scale_intrinsics(K, gt_depth_m.shape[:2], hw)
        rgb, gt_d, gt_n = (_fit_to(a, hw) for a in (rgb, gt_depth_m, gt_normals))
        valid = np.isfinite(gt_d) & (gt_d > 0) & np.isfinite(pred_rel)
        if valid.sum() < 16 or np.ptp(pred_rel[valid]) <= 0:
            return None
        aligned = _align(pred_rel, gt_d, valid)
        metrics = _depth_errors(aligned, gt_d, valid)
        if pred_normals is not None:
            pn = _fit_to(pred_normals, hw)
            nvalid = valid & np.isfinite(gt_n).all(axis=2) & np.isfinite(pn).all(axis=2)
            if nvalid.any():
                ang = normal_angles_deg(pn, gt_n, nvalid)
                metrics.update(normal_mean_deg=float(ang.mean()), normal_median_deg=float(np.median(ang)))
        else:
            pn = None
        pm = None
        if pred_metric_m is not None:
            pm = _fit_to(pred_metric_m, hw)
            mvalid = valid & np.isfinite(pm) & (pm > 0)
            if mvalid.sum() >= 16:
                m = _depth_errors(pm, gt_d, mvalid)
                metrics.update(metric_abs_rel=m["abs_rel"], metric_delta1=m["delta1"])
        self.frames.append(metrics)
        self.last = FrameResult(stamp_ns, rgb, gt_d, gt_n, aligned, pn, pm, np.asarray(K, np.float64), metrics)
        return self.last

    def summary(self) -> dict:
        """Means over frames of every metric, latency p50/p95 (ms), frame count."""
        keys = sorted({k for f in self.frames for k in f})
        out: dict = {"frames_evaluated": len(self.frames)}
        for k in keys:
            vals = [f[k] for f in self.frames if k in f and math.isfinite(f[k])]
            out[k] = float(np.mean(vals)) if vals else None
        lat = np.asarray(self.latencies_ms, np.float64)
        out["latency_p50_ms"] = float(np.percentile(lat, 50)) if lat.size else None
        out["latency_p95_ms"] = float(np.percentile(lat, 95)) if lat.size else None
        return out


# ------------------------------------------------------------------------------------------ images
def colorize_depth(depth_m: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``[H,W]`` metres -> ``[H,W,3]`` uint8 RGB turbo (near = red... far = blue reversed); NaN black."""
    x = np.clip((depth_m - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    u8 = np.nan_to_num(255.0 * (1.0 - x), nan=0.0).astype(np.uint8)
    rgb = cv2.applyColorMap(u8, cv2.COLORMAP_TURBO)[:, :, ::-1]
    return np.where(np.isfinite(depth_m)[:, :, None], rgb, 0).astype(np.uint8)


def colorize_normals(normals: np.ndarray | None, hw: tuple[int, int]) -> np.ndarray:
    """``[H,W,3]`` unit normals -> uint8 RGB ``(n + 1) / 2 * 255``; NaN (or no normals) black."""
    if normals is None:
        return np.zeros((*hw, 3), np.uint8)
    rgb = np.nan_to_num((np.clip(normals, -1, 1) + 1.0) * 127.5, nan=0.0)
    return rgb.astype(np.uint8)


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    out = np.ascontiguousarray(panel)
    scale = max(0.3, min(0.6, panel.shape[1] / 400))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (tw + 6, th + base + 6), (0, 0, 0), thickness=-1)
    cv2.putText(out, text, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def montage(result: FrameResult) -> np.ndarray:
    """``[H, 6W, 3]`` uint8 RGB: RGB | predicted depth | GT depth | predicted normals | GT normals | error."""
    gt = result.gt_depth_m
    finite = gt[np.isfinite(gt)]
    lo, hi = (np.percentile(finite, 1), np.percentile(finite, 99)) if finite.size else (0.0, 1.0)
    hw = gt.shape[:2]
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.abs(result.pred_aligned_m - gt) / gt  # [H,W] relative error, NaN where no GT
    err_u8 = np.nan_to_num(np.clip(err / 0.5, 0, 1) * 255, nan=0).astype(np.uint8)  # 0 .. 50 %
    err_rgb = np.where(np.isfinite(err)[:, :, None], cv2.applyColorMap(err_u8, cv2.COLORMAP_INFERNO)[:, :, ::-1], 0)
    panels = (result.rgb, colorize_depth(result.pred_aligned_m, lo, hi), colorize_depth(gt, lo, hi),
              colorize_normals(result.pred_normals, hw), colorize_normals(result.gt_normals, hw),
              err_rgb.astype(np.uint8))
    return np.concatenate([_label(p, t) for p, t in zip(panels, PANEL_TITLES, strict=True)], axis=1)


def write_ply(path: Path, points: np.ndarray, rgb: np.ndarray, normals: np.ndarray | None) -> int:
    """Binary PLY of the finite points (``[H,W,3]`` each); returns the number of points written.

    Written by :func:`d3_perception.geometry.ply.write_ply` (x y z [nx ny nz] red green blue).
    """
    pts = points.reshape(-1, 3)
    cols = rgb.reshape(-1, 3)
    nrm = normals.reshape(-1, 3) if normals is not None else None
    keep = np.isfinite(pts).all(axis=1)
    if nrm is not None:
        keep &= np.isfinite(nrm).all(axis=1)
    pts, cols = pts[keep].astype(np.float32), cols[keep].astype(np.uint8)
    nrm = nrm[keep].astype(np.float32) if nrm is not None else None
    geometry_write_ply(path, pts, colors=cols, normals=nrm)
    return int(pts.shape[0])


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")
