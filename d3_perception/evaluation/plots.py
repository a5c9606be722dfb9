"""PNG plots of a bag evaluation (matplotlib, Agg backend: no display needed).

Margins are fixed in inches instead of ``tight_layout`` (which draws every figure once more to measure it: 40 %
of the plotting time), PNGs use fast zlib compression (level 1), and the montage is one composed image instead of
a grid of 4 x k axes (a third of the plotting time).
"""

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


def _margins(fig, left: float = 0.95, right: float = 0.25, bottom: float = 0.6, top: float = 0.4,
             hspace: float | None = None) -> None:
    """Fixed figure margins in inches (room for tick labels, axis labels and the title)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1.0 - right / w, bottom=bottom / h, top=1.0 - top / h, hspace=hspace)


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 1})
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
    _margins(fig, hspace=0.12)
    names.append(_save(fig, out_dir / "metrics_over_time.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    hist = result.error_hist.astype(np.float64)
    total = max(hist.sum(), 1.0)
    edges = np.linspace(0.0, 1.0 + 1.0 / (len(hist) - 1), len(hist) + 1)  # the last bar is [1, 1.01)
    ax.stairs(hist / total, edges, fill=True)  # one artist instead of 101 bars
    ax.set_xlabel("relative error |pred - gt| / gt (last bar: >= 1)")
    ax.set_ylabel("share of pixels")
    ax.set_title(f"per-pixel error over {int(total)} pixels")
    _margins(fig)
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
    _margins(fig)
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
    _margins(fig, hspace=0.12)
    names.append(_save(fig, out_dir / "scale_over_time.png"))

    if result.samples:
        names.append(_montage(result.samples, out_dir / "montage.png"))
    return names


_MONTAGE_COLUMNS = (("rgb", "image"), ("gt", "GT depth (m)"), ("pred", "prediction (m)"),
                    ("err", "|pred-gt|/gt (0-0.5)"))


def _colorize(img: np.ndarray, cmap: str, vmin: float | None, vmax: float | None) -> np.ndarray:
    """``[h,w]`` float -> ``[h,w,3]`` uint8 through ``cmap`` (limits: the finite min/max when None); NaN is white."""
    from matplotlib import colormaps

    finite = np.isfinite(img)
    if vmin is None or vmax is None:
        vmin, vmax = (float(img[finite].min()), float(img[finite].max())) if finite.any() else (0.0, 1.0)
    with np.errstate(invalid="ignore"):
        norm = np.clip((img - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    rgb = colormaps[cmap](np.where(finite, norm, 0.0), bytes=True)[..., :3]  # [h,w,3] uint8
    rgb[~finite] = 255
    return rgb


def _montage_cell(s: dict, key: str) -> np.ndarray | None:
    """``[h,w,3]`` uint8 panel of one montage sample, or None when the sample has no such image."""
    img = s.get(key)
    if key == "pred" and img is None:
        img = s["rel"]
    if img is None:
        return None
    if key == "rgb":
        return img
    if key == "err":
        return _colorize(img, "magma", 0.0, 0.5)
    gt = s["gt"]
    finite = gt[np.isfinite(gt)]
    vmin, vmax = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    fixed = key == "gt" or s.get("pred") is not None  # the relative prediction is scaled on its own
    return _colorize(img, "turbo", vmin if fixed else None, vmax if fixed else None)


def _montage(samples: list[dict], path: Path) -> str:
    """montage.png: image | GT | prediction | relative error, one row per sample, panels at their pixel size."""
    plt = _plt()
    cells = [[_montage_cell(s, key) for key, _ in _MONTAGE_COLUMNS] for s in samples]
    ch = max(c.shape[0] for row in cells for c in row if c is not None)
    cw = max(c.shape[1] for row in cells for c in row if c is not None)
    gap, left, top = 8, 28, 26  # px: between panels, for the row labels, for the column titles
    width = left + len(_MONTAGE_COLUMNS) * (cw + gap)
    height = top + len(samples) * (ch + gap)
    canvas = np.full((height, width, 3), 255, np.uint8)  # [H,W,3]
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    for r, row in enumerate(cells):
        y = top + r * (ch + gap)
        for c, cell in enumerate(row):
            x = left + c * (cw + gap)
            canvas[y - 1 : y + ch + 1, x - 1 : x + cw + 1] = 0  # 1 px frame
            canvas[y : y + ch, x : x + cw] = 255
            if cell is None:
                fig.text((x + cw / 2) / width, 1 - (y + ch / 2) / height, "n/a", ha="center", va="center")
            else:
                canvas[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
        fig.text(4 / width, 1 - (y + ch / 2) / height, f"frame {samples[r]['index']}", rotation=90, ha="left",
                 va="center")
    for c, (_, title) in enumerate(_MONTAGE_COLUMNS):
        fig.text((left + c * (cw + gap) + cw / 2) / width, 1 - 4 / height, title, ha="center", va="top")
    fig.figimage(canvas, origin="upper", zorder=-1)  # pixel for pixel, no axes and no resampling
    return _save(fig, path)
