"""PNG plots of a bag evaluation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["write_bag_plots"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path.name


def write_bag_plots(result, out_dir: Path) -> list[str]:
    """Write the plots of a :class:`~d3_perception.evaluation.bag_eval.BagEvalResult`; returns the file names.

    metrics_over_time.png (AbsRel, delta1, valid fractions), error_histogram.png (per-pixel |pred-gt|/gt),
    absrel_by_depth.png (AbsRel per GT depth bin), scale_over_time.png (applied and per-frame-fit scale/shift),
    montage.png (RGB | GT | prediction | relative error for a few frames).
    """
    plt = _plt()
    out_dir = Path(out_dir)
    names = []
    recs = result.frames
    t = np.array([r.time_s for r in recs])

    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    axes[0].plot(t, [r.metrics.get("abs_rel", math.nan) for r in recs], ".-", ms=3)
    axes[0].set_ylabel("AbsRel")
    axes[1].plot(t, [r.metrics.get("delta1", math.nan) for r in recs], ".-", ms=3, color="tab:green")
    axes[1].set_ylabel("δ1")
    axes[1].set_ylim(-0.02, 1.02)
    axes[2].plot(t, [r.gt_valid_fraction for r in recs], label="GT valid")
    axes[2].plot(t, [r.pred_valid_fraction for r in recs], label="prediction valid (of GT valid)")
    axes[2].set_ylabel("fraction")
    axes[2].set_xlabel("time since first frame (s)")
    axes[2].legend(loc="lower right", fontsize=8)
    axes[0].set_title(f"per-frame metrics, metric mode `{result.config.metric_mode}`")
    names.append(_save(fig, out_dir / "metrics_over_time.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    hist = result.error_hist.astype(np.float64)
    total = max(hist.sum(), 1.0)
    edges = np.linspace(0.0, 1.0, len(hist))
    ax.bar(edges, hist / total, width=1.0 / (len(hist) - 1), align="edge")
    ax.set_xlabel("relative error |pred - gt| / gt (last bar: >= 1)")
    ax.set_ylabel("share of pixels")
    ax.set_title(f"per-pixel error over {int(total)} pixels")
    names.append(_save(fig, out_dir / "error_histogram.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    e = result.depth_bins["edges_m"]
    cnt = result.depth_bins["count"]
    with np.errstate(invalid="ignore", divide="ignore"):
        absrel = np.where(cnt > 0, result.depth_bins["abs_rel_sum"] / np.maximum(cnt, 1), np.nan)
    used = cnt > 0
    if np.any(used):
        ax.bar(e[:-1][used], absrel[used], width=np.diff(e)[used], align="edge", edgecolor="k")
        ax.set_xscale("log")
    ax.set_xlabel("ground-truth depth (m)")
    ax.set_ylabel("AbsRel")
    ax.set_title("AbsRel by ground-truth depth")
    names.append(_save(fig, out_dir / "absrel_by_depth.png"))

    fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    axes[0].plot(t, [r.fit_scale for r in recs], ".", ms=3, label="per-frame fit to GT")
    axes[1].plot(t, [r.fit_shift for r in recs], ".", ms=3, label="per-frame fit to GT")
    if result.config.metric_mode in ("sparse_depth", "fixed", "global"):
        axes[0].plot(t, [r.scale for r in recs], "-", label=f"applied ({result.config.metric_mode})")
        axes[1].plot(t, [r.shift for r in recs], "-", label=f"applied ({result.config.metric_mode})")
    axes[0].set_ylabel("scale")
    axes[1].set_ylabel("shift")
    axes[1].set_xlabel("time since first frame (s)")
    axes[0].legend(fontsize=8)
    axes[0].set_title("scale / shift over time")
    names.append(_save(fig, out_dir / "scale_over_time.png"))

    samples = result.samples
    if samples:
        cols = ("rgb", "gt", "pred", "err")
        fig, axes = plt.subplots(len(samples), 4, figsize=(12, 2.6 * len(samples)), squeeze=False)
        for row, s in enumerate(samples):
            gt = s["gt"]
            finite = gt[np.isfinite(gt)]
            vmin, vmax = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
            for c, key in enumerate(cols):
                ax = axes[row, c]
                ax.set_xticks([])
                ax.set_yticks([])
                img = s.get(key)
                if key == "pred" and img is None:
                    img = s["rel"]
                if img is None:
                    ax.text(0.5, 0.5, "n/a", ha="center", va="center")
                elif key == "rgb":
                    ax.imshow(img)
                elif key == "err":
                    ax.imshow(img, cmap="magma", vmin=0.0, vmax=0.5)
                else:
                    ax.imshow(img, cmap="turbo", vmin=vmin if key == "gt" or s.get("pred") is not None else None,
                              vmax=vmax if key == "gt" or s.get("pred") is not None else None)
                if row == 0:
                    ax.set_title({"rgb": "image", "gt": "GT depth (m)", "pred": "prediction (m)",
                                  "err": "|pred-gt|/gt (0-0.5)"}[key])
            axes[row, 0].set_ylabel(f"frame {s['index']}")
        names.append(_save(fig, out_dir / "montage.png"))
    return names
