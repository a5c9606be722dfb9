"""Reports: JSON + Markdown (+ CSV) for ``d3-eval-bag`` and ``d3-eval``.

JSON files are written atomically (temp file + rename) so that a crash never leaves a half report that looks
complete; an incomplete run says so in the JSON ``status`` and in the Markdown title.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from d3_perception.evaluation.metrics import DEPTH_METRICS

__all__ = ["fmt", "write_bag_report", "write_json"]


def _clean(obj):
    """NaN/inf -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            obj = obj.item()
        except (ValueError, AttributeError):
            return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def fmt(value, digits: int = 3, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value * scale:.{digits}f}"


def write_bag_report(result, out_dir: Path, bag: str, plots: list[str]) -> dict[str, Path]:
    """metrics.json, report.md, per_frame.csv in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    summary = result.summary()
    summary["bag"] = str(bag)
    summary["plots"] = plots
    paths = {"json": out_dir / "metrics.json", "markdown": out_dir / "report.md", "csv": out_dir / "per_frame.csv"}
    write_json(paths["json"], summary)
    with open(paths["csv"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "stamp_ns", "time_s", "status", "scale", "shift", "fit_scale", "fit_shift",
                    "gt_valid_fraction", "pred_valid_fraction", "model_ms", "record_latency_ms", *DEPTH_METRICS,
                    "normal_mean_deg"])
        for r in result.frames:
            w.writerow([r.index, r.stamp_ns, f"{r.time_s:.6f}", r.status, r.scale, r.shift, r.fit_scale, r.fit_shift,
                        r.gt_valid_fraction, r.pred_valid_fraction, r.model_ms, r.record_latency_ms,
                        *[r.metrics.get(k, math.nan) for k in DEPTH_METRICS], r.normals.get("mean", math.nan)])
    paths["markdown"].write_text(_bag_markdown(result, summary, bag, plots))
    return paths


def _bag_markdown(result, summary: dict, bag: str, plots: list[str]) -> str:
    c = result.counts
    cfg = result.config
    title = "# d3-eval-bag report" if result.complete else "# d3-eval-bag report — INCOMPLETE (partial results)"
    lines = [title, ""]
    if not result.complete:
        lines += [f"**The run stopped early:** {result.error}", "",
                  f"Only {c['evaluated']} of {c['matched']} matched frames were evaluated; these numbers are "
                  "not the result for the whole bag.", ""]
    source = (f"recorded predictions `{result.topics.pred}`" if result.topics.pred
              else f"model `{(result.model or {}).get('model_id', '?')}` on backend "
                   f"`{(result.model or {}).get('name', '?')}` ({(result.model or {}).get('device', '?')}, "
                   f"{(result.model or {}).get('precision', '?')}, processing resolution "
                   f"{(result.model or {}).get('processing_resolution', '?')})")
    lines += [f"- bag: `{bag}`", f"- predictions: {source}",
              f"- topics: image `{result.topics.image}`, ground truth `{result.topics.depth}`, camera_info "
              f"`{result.topics.camera_info}`, sparse `{result.topics.sparse}`, GT normals `{result.topics.normals}`",
              f"- metric mode: `{cfg.metric_mode}`"
              + (f" (alignment in {cfg.alignment_space} space)" if cfg.metric_mode in ("per_frame", "global") else "")
              + (f", global scale {fmt(result.global_fit['scale'], 4)} shift {fmt(result.global_fit['shift'], 4)}"
                 if result.global_fit else "")
              + (f", scale {cfg.fixed_scale:g} shift {cfg.fixed_shift:g}" if cfg.metric_mode == "fixed" else ""),
              f"- valid GT range: ({cfg.min_depth_m:g}, {cfg.max_depth_m:g}) m; stamp tolerance {cfg.max_dt_ms:g} ms",
              ""]
    lines += ["## Frames", "", "| matched | evaluated | with metrics | no metric depth | unmatched images | "
              "unmatched GT | undecodable |", "|---|---|---|---|---|---|---|",
              f"| {c['matched']} | {c['evaluated']} | {c['with_metrics']} | {c['no_metric']} | {c['unmatched_frames']} | "
              f"{c['unmatched_gt']} | {sum(c['skipped_undecodable'].values())} |", ""]
    a = result.aggregate
    lines += ["## Depth (mean over frames)", "",
              "| AbsRel ↓ | SqRel ↓ | RMSE (m) ↓ | RMSE-log ↓ | log10 ↓ | δ1 ↑ | δ2 ↑ | δ3 ↑ |",
              "|---|---|---|---|---|---|---|---|",
              "| " + " | ".join(fmt(a.get(k), 4) for k in DEPTH_METRICS) + " |", ""]
    if result.normals:
        n = result.normals
        lines += ["## Normals (all valid pixels pooled)", "", "| mean° ↓ | median° ↓ | RMSE° ↓ | <11.25° ↑ | <22.5° ↑ | <30° ↑ |",
                  "|---|---|---|---|---|---|",
                  f"| {fmt(n['mean'], 2)} | {fmt(n['median'], 2)} | {fmt(n['rmse'], 2)} | {fmt(n['a11.25'], 1, 100)} % | "
                  f"{fmt(n['a22.5'], 1, 100)} % | {fmt(n['a30'], 1, 100)} % |", ""]
    cal = getattr(result, "calibration", None)
    if cal:
        fly = cal["flying_points"]
        lines += ["## Confidence (docs/confidence.md)", "",
                  "| AUSE of AbsRel ↓ | random's | ratio ↓ (target ≤ 0.5) | flying points before → after gate | "
                  "points kept | gate |", "|---|---|---|---|---|---|",
                  f"| {fmt(cal['ause']['combined'], 4)} | {fmt(cal['ause']['random'], 4)} | "
                  f"{fmt(cal['ause_over_random'], 2)} | "
                  + ("no points | - " if fly is None else
                     f"{fmt(fly['share_before'], 3)} → {fmt(fly['share_after'], 3)} | {fmt(fly['kept_share'], 3)} ")
                  + f"| min_confidence {cal['min_confidence']} |", ""]
    lat = result.latency_ms
    lines += ["## Latency, drift, valid pixels", "", "| quantity | value |", "|---|---|"]
    if lat.get("model"):
        lines.append(f"| model latency p50 / p95 (ms per frame) | {fmt(lat['model']['p50'], 1)} / {fmt(lat['model']['p95'], 1)} |")
    if lat.get("recorded_stamp_to_bag"):
        r = lat["recorded_stamp_to_bag"]
        lines.append(f"| recorded stamp-to-bag latency p50 / p95 (ms) | {fmt(r['p50'], 1)} / {fmt(r['p95'], 1)} |")
    for key, label in (("fit_scale", "per-frame fit scale"), ("fit_shift", "per-frame fit shift"),
                       ("applied_scale", "applied scale"), ("applied_shift", "applied shift")):
        d = result.drift.get(key)
        if d:
            slope = fmt(d.get("slope_per_s"), 4)
            lines.append(f"| {label}: mean / std / CV / slope per s | {fmt(d['mean'], 4)} / {fmt(d['std'], 4)} / "
                         f"{fmt(d['cv'], 3)} / {slope} |")
    vf = result.valid_fraction
    lines += [f"| valid GT pixels (mean fraction) | {fmt(vf['gt'], 3)} |",
              f"| valid predicted pixels among valid GT | {fmt(vf['pred'], 3)} |"]
    t = result.timing_s
    lines += [f"| wall time (s): total / model / bag read+decode / metrics / bag write | {fmt(t['total'], 2)} / "
              f"{fmt(t['model'], 2)} / {fmt(t['read_decode'], 2)} / {fmt(t['metrics'], 2)} / {fmt(t['write_bag'], 2)} |",
              ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    lines += ["Per-frame values: `per_frame.csv`; everything: `metrics.json`.", ""]
    return "\n".join(lines)
