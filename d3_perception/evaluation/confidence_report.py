"""Plots and the generated Markdown section of the confidence study (:mod:`.confidence_study`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from d3_perception.evaluation.calibration import FlyingPoints

__all__ = ["write_plots", "write_section"]

MARK_BEGIN, MARK_END = "<!-- study:begin -->", "<!-- study:end -->"
CURVE_STYLE = {"oracle": ("k", "--"), "random": ("0.6", ":"), "edges": ("tab:orange", "-"),
               "normals": ("tab:green", "-"), "sparse": ("tab:purple", "-"), "edges+normals": ("tab:olive", "-"),
               "combined": ("tab:blue", "-")}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def write_plots(results: dict, img_dir: Path) -> list[str]:
    """confidence_sparsification.png, confidence_gating.png, temporal_flicker.png; returns the file names."""
    plt = _plt()
    img_dir = Path(img_dir)
    families = list(results["calibration"])
    fig, axes = plt.subplots(1, len(families), figsize=(5.2 * len(families), 4.0), squeeze=False)
    for ax, fam in zip(axes[0], families, strict=True):
        cal = results["calibration"][fam]
        f = np.asarray(cal["fractions"])
        for name, curve in cal["curves"].items():
            color, style = CURVE_STYLE.get(name, ("0.3", "-"))
            ax.plot(f, curve, style, color=color, label=f"{name} (AUSE {cal['ause'].get(name, 0.0):.3f})")
        ax.set(title=f"{fam}: {cal['frames']} frames", xlabel="fraction of pixels removed (least confident first)",
               ylabel="AbsRel of the kept pixels")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(img_dir / "confidence_sparsification.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(families), figsize=(5.2 * len(families), 3.8), squeeze=False)
    for ax, fam in zip(axes[0], families, strict=True):
        fly = {float(t): FlyingPoints(**v) for t, v in results["calibration"][fam]["flying"].items()}
        ts = sorted(fly)
        ax.plot(ts, [fly[t].share_after for t in ts], "o-", label="flying share of kept points")
        ax.plot(ts, [fly[t].kept_share for t in ts], "s-", label="share of points kept")
        ax.axvline(results["min_confidence"], color="k", ls=":", label=f"default min_confidence {results['min_confidence']}")
        ax.axhline(0.85, color="0.6", ls="--", lw=0.8)
        ax.set(title=fam, xlabel="min_confidence", ylim=(0, 1.02))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(img_dir / "confidence_gating.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, motion in zip(axes, ("static", "moving"), strict=True):
        rec = {k: v for k, v in results["temporal"][motion].items() if isinstance(v, dict)}
        x = np.arange(len(rec))
        ax.bar(x - 0.2, [v["raw"]["flicker"] for v in rec.values()], 0.4, label="raw per-frame output")
        ax.bar(x + 0.2, [v["stabilised"]["flicker"] for v in rec.values()], 0.4, label="stabilised")
        ax.set_xticks(x, [k.replace(", ", "\n") for k in rec], fontsize=7)
        ax.set(title=f"{motion} camera", ylabel="flicker (mean |d_t - d_t-1| / d_t)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img_dir / "temporal_flicker.png", dpi=90)
    plt.close(fig)
    return ["confidence_sparsification.png", "confidence_gating.png", "temporal_flicker.png"]


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _calibration_md(results: dict) -> list[str]:
    fams = list(results["calibration"])
    lines = ["### Sparsification (AUSE of AbsRel, lower is better)", "",
             "| confidence | " + " | ".join(f"{f}: AUSE | / random" for f in fams) + " |",
             "|---|" + "---:|---:|" * len(fams)]
    names = [n for n in results["calibration"][fams[0]]["ause"] if n != "random"] + ["random"]
    for name in names:
        cells = []
        for f in fams:
            a = results["calibration"][f]["ause"]
            cells += [f"{a[name]:.4f}", f"{a[name] / a['random']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Reliability of the combined confidence (share of pixels with AbsRel <= 10 % per confidence bin; "
              "pixels in the bin):", ""]
    lines += ["| bin | " + " | ".join(fams) + " |", "|---|" + "---:|" * len(fams)]
    for i in range(10):
        cells = []
        for f in fams:
            rel = results["calibration"][f]["reliability"]
            n = rel["pixels"][i]
            cells.append(f"{rel['good'][i] / n:.2f} ({n})" if n else "-")
        lines.append(f"| {i / 10:.1f}-{(i + 1) / 10:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "Target combined AUSE <= 0.5 x random: " + ", ".join(
        f"{f} {results['calibration'][f]['ause']['combined'] / results['calibration'][f]['ause']['random']:.2f} "
        f"({_met(results['calibration'][f]['ause']['combined'] <= 0.5 * results['calibration'][f]['ause']['random'])})"
        for f in fams) + ".", "", "![sparsification curves](img/confidence_sparsification.png)", ""]
    t = str(results["min_confidence"])
    lines += [f"### Flying points (> 10 % of GT range off along the ray), gate `min_confidence` = {t}", "",
              "| data | points | flying before | flying after | reduction | points kept | at 85 % kept: combined | "
              "at 85 % kept: oracle (best possible) | GT-edge-band flying before / after (share of all / kept) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for f in fams:
        cal = results["calibration"][f]
        fp, band, a = FlyingPoints(**cal["flying"][t]), FlyingPoints(**cal["flying_edge_band"][t]), cal["at_85_percent_kept"]
        lines.append(f"| {f} | {fp.points} | {fp.share_before:.3f} | {fp.share_after:.3f} | {fp.reduction:.2f}x | "
                     f"{fp.kept_share:.3f} | {a['combined_flying'] / a['kept']:.3f} | {a['oracle_flying'] / a['kept']:.3f} | "
                     f"{band.flying / fp.points:.3f} / {band.kept_flying / max(fp.kept, 1):.3f} |")
        nr = FlyingPoints(**cal["flying_without_reference"][t])
        lines.append(f"| {f}, no sparse reference (edges + normals) | {nr.points} | {nr.share_before:.3f} | "
                     f"{nr.share_after:.3f} | {nr.reduction:.2f}x | {nr.kept_share:.3f} | | | |")
    lines += ["", "Target flying points reduced >= 5x keeping >= 85 % of the points: " + ", ".join(
        f"{f} {FlyingPoints(**results['calibration'][f]['flying'][t]).reduction:.2f}x at "
        f"{FlyingPoints(**results['calibration'][f]['flying'][t]).kept_share:.0%} kept "
        f"({_met(FlyingPoints(**results['calibration'][f]['flying'][t]).reduction >= 5 and FlyingPoints(**results['calibration'][f]['flying'][t]).kept_share >= 0.85)}; "
        f"the oracle bound at 85 % kept is "
        f"{results['calibration'][f]['at_85_percent_kept']['flying'] / results['calibration'][f]['at_85_percent_kept']['points'] / max(results['calibration'][f]['at_85_percent_kept']['oracle_flying'] / results['calibration'][f]['at_85_percent_kept']['kept'], 1e-9):.2f}x)"
        for f in fams) + ".", "", "![gating](img/confidence_gating.png)", ""]
    return lines


def _temporal_md(results: dict) -> list[str]:
    st, mv = results["temporal"]["static"], results["temporal"]["moving"]
    lines = ["### Temporal stability (flicker = mean |d_t - d_t-1| / d_t; moving: d_t-1 reprojected with the exact pose)",
             "", "| metric mode | static raw | static stabilised | ratio | moving raw | moving stabilised | "
             "blended share (static / moving) | moving lag (frames) | AbsRel static raw / stab | AbsRel moving raw / stab |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, s in st.items():
        m = mv[mode]
        ratio = s["raw"]["flicker"] / s["stabilised"]["flicker"]
        lines.append(f"| {mode} | {s['raw']['flicker']:.5f} | {s['stabilised']['flicker']:.5f} | {ratio:.1f}x | "
                     f"{m['raw']['flicker']:.5f} | {m['stabilised']['flicker']:.5f} | {s['blended_share']:.2f} / "
                     f"{m['blended_share']:.2f} | {m['lag_frames']:.2f} | {s['raw']['abs_rel']:.4f} / {s['stabilised']['abs_rel']:.4f} | "
                     f"{m['raw']['abs_rel']:.4f} / {m['stabilised']['abs_rel']:.4f} |")
    worst = min(s["raw"]["flicker"] / s["stabilised"]["flicker"] for s in st.values())
    lag = max(m["lag_frames"] for k, m in mv.items() if isinstance(m, dict))
    lines += ["", f"Reprojection floor (exact depth, nearest-pixel splat): {mv['gt_floor']:.5f}. "
              f"Target static flicker >= 2x lower: worst mode {worst:.1f}x ({_met(worst >= 2)}); moving camera lagged "
              f"at most {lag:.2f} frames ({_met(lag <= 1)}). Lag = mean |stabilised - raw| / mean |raw_t - raw_(t-1)| "
              "on the moving runs (0 = the raw frame passed through, 1 = a whole frame behind).", "",
              "![flicker](img/temporal_flicker.png)", ""]
    return lines


def write_section(results: dict, doc: Path, img_dir: Path, json_path: Path) -> None:
    """Replace the text between the study markers of ``doc`` (appended when the markers are missing)."""
    run = results["run"]
    cfg = results["config"]
    body = [MARK_BEGIN, "", "## Measured (generated by `python -m d3_perception.evaluation.confidence_study`)", "",
            f"Checkpoint `{run['checkpoint']}` ({run['backend']}, {run['threads']} thread(s)), frames "
            f"{run['frame_hw'][1]}x{run['frame_hw'][0]}, sensor noise {run['noise_dn']} grey levels, "
            f"{run['seconds']} s on {run['cpu_count']} shared cores (1-min load average at start / end "
            f"{run['load_average_1min_start_end'][0]} / {run['load_average_1min_start_end'][1]}). Raw numbers: "
            f"`{os.path.relpath(json_path, doc.parent)}`.", "",
            "Metric depth of the calibration frames: the node's `sparse_depth` mode (robust fit to 16 noisy scan rows).",
            f"Chosen on the tuning scenes (room seeds 100-103; cue scales and rule without a reference first, then "
            f"the residual scale): edge_scale {cfg['edge_scale']}, normal_scale {cfg['normal_scale']}, "
            f"residual_scale {cfg['residual_scale']}, sparse_weight {cfg['sparse_weight']}, combine `{cfg['combine']}`, "
            f"default `min_confidence` {results['min_confidence']} (the largest threshold keeping >= 85 % of the tuning "
            f"points; flying points there {FlyingPoints(**results['tuning_flying']).share_before:.3f} -> "
            f"{FlyingPoints(**results['tuning_flying']).share_after:.3f}). Combined AUSE / "
            f"random on the tuning scenes: tuned {results['tuning_ause']['combined'] / results['tuning_ause']['random']:.2f}, "
            f"built-in defaults {results['defaults_ause_tuning']['combined'] / results['defaults_ause_tuning']['random']:.2f}.",
            ""]
    body += _calibration_md(results) + _temporal_md(results) + [MARK_END]
    text = doc.read_text() if doc.exists() else ""
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + "\n".join(body) + rest.split(MARK_END, 1)[1]
    else:
        text = text + ("\n" if text else "") + "\n".join(body) + "\n"
    doc.write_text(text)
