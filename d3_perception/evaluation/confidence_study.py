"""``python -m d3_perception.evaluation.confidence_study``: measure confidence, gating and temporal stability.

Runs a checkpoint (default the bundled ``models/d3_demo_tiny``) on procedural synthetic frames with exact
ground truth and writes the numbers (JSON), the plots (``--img-dir``) and a generated results section into
``--doc`` between the markers ``<!-- study:begin -->`` and ``<!-- study:end -->`` (the rest of the page is
left as it is). Steps:

1. tune the cue scales on tuning scenes (seeds 100-103: not the evaluation scenes) by the combined AUSE,
   and pick ``min_confidence`` there (most flying points removed while keeping >= 85 % of the points);
2. calibration on held-out rooms (seeds 9999+) and on the ``outdoor`` family (never seen in training):
   sparsification/AUSE per cue and combined vs oracle and random; flying points before/after the gate;
3. temporal stability per metric mode: static camera with per-frame sensor noise, and the moving camera of
   the scene's trajectory (flicker after reprojection with the exact pose), raw vs stabilised.

``--node-defaults``: no tuning and no doc section: step 2 for the node's own defaults (``ConfidenceConfig()``
and ``DEFAULT_MIN_CONFIDENCE``) on the rooms, the outdoor family and the wide world's two families
(``world``, ``shift``), printed and written to ``--json``: what the node does with this checkpoint; beside it
the same at the threshold step 1's rule picks for this checkpoint (its own ``min_confidence`` to set).
``--edge-errors SIGMA_PX`` replaces the checkpoint by a stand-in whose only errors are at depth edges: the exact
depth and normals smeared by a Gaussian of that many output pixels, as the upsampled output of a network that
has the geometry right is smeared. The bundled tiny model's errors are mostly regional, so no gate can meet the
flying-point target on it; the stand-in measures what the confidence and gate do where a strong checkpoint's
flying pixels are. Its numbers describe the method, not any model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from d3_perception.cli_args import OneLineErrorParser, positive_float, positive_int, run_cli

__all__ = ["main"]

THRESHOLDS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8)
CUE_SETS = {"edges": ("edges",), "normals": ("normals",), "sparse": ("sparse",),
            "edges+normals": ("edges", "normals"), "combined": ("edges", "normals", "sparse")}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="python -m d3_perception.evaluation.confidence_study",
                           description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("--checkpoint", default="models/d3_demo_tiny", help="checkpoint directory")
    p.add_argument("--backend", default="onnxruntime", choices=("torch", "onnxruntime"))
    p.add_argument("--height", type=positive_int, default=96, help="frame height (default 96)")
    p.add_argument("--width", type=positive_int, default=128, help="frame width (default 128)")
    p.add_argument("--frames", type=positive_int, default=25, help="frames per calibration scene (default 25)")
    p.add_argument("--temporal-frames", type=positive_int, default=20, help="frames per temporal run (default 20)")
    p.add_argument("--noise-dn", type=float, default=3.0, help="per-frame Gaussian sensor noise, grey levels")
    p.add_argument("--threads", type=positive_int, default=1, help="inference threads (default 1: shared CPU)")
    p.add_argument("--doc", type=Path, default=Path("docs/confidence.md"))
    p.add_argument("--img-dir", type=Path, default=Path("docs/img"))
    p.add_argument("--json", type=Path, default=Path("docs/results/confidence_study.json"))
    p.add_argument("--node-defaults", action="store_true",
                   help="score the node's default confidence settings and gate (no tuning, no doc section)")
    p.add_argument("--edge-errors", type=positive_float, metavar="SIGMA_PX",
                   help="with --node-defaults: instead of the checkpoint, exact depth and normals smeared across "
                        "depth edges by a Gaussian of SIGMA_PX output pixels (errors only where flying pixels are)")
    return p


TUNING_SEEDS = (100, 101, 102, 103)  # rooms never used for evaluation
NODE_DEFAULT_FAMILIES = (("room (held-out seeds)", "room", (9999, 10000, 10001, 10002)),
                         ("outdoor (held-out family)", "outdoor", (9999, 10000)),
                         ("world (held-out seeds)", "world", (9999, 10000, 10001, 10002)),
                         ("shift (held-out family)", "shift", (9999, 10000, 10001, 10002)))


def _node_defaults(args) -> int:
    """Calibration of the node's defaults on every family (``--node-defaults``)."""
    from d3_perception.evaluation.calibration import FlyingPoints
    from d3_perception.evaluation.report import write_json
    from d3_perception.geometry.confidence import DEFAULT_MIN_CONFIDENCE, ConfidenceConfig

    t0 = time.time()
    model = _EdgeErrors(args.edge_errors) if args.edge_errors else _Model(args)
    hw, config = (args.height, args.width), ConfidenceConfig()
    # the study's rule for this checkpoint (or stand-in): the largest threshold keeping >= 85 % on the tuning rooms
    picked = _pick_threshold(_frames(model, "room", TUNING_SEEDS, args.frames, hw, args.noise_dn), config)
    results = {"config": asdict(config), "min_confidence": DEFAULT_MIN_CONFIDENCE, "picked_min_confidence": picked,
               "families": {}}
    for family, kind, seeds in NODE_DEFAULT_FAMILIES:
        cal = _calibration(_frames(model, kind, seeds, args.frames, hw, args.noise_dn), config, DEFAULT_MIN_CONFIDENCE,
                           extra_thresholds=(picked,))
        fly = FlyingPoints(**cal["flying"][str(DEFAULT_MIN_CONFIDENCE)])
        at_picked = FlyingPoints(**cal["flying"][str(picked)])
        at85 = cal["at_85_percent_kept"]  # the oracle: the 15 % largest errors dropped
        oracle = FlyingPoints(at85["points"], at85["flying"], at85["kept"], at85["oracle_flying"])
        ause = cal["ause"]
        row = {"ause_combined_over_random": ause["combined"] / ause["random"], "flying_before": fly.share_before,
               "flying_after": fly.share_after, "kept": fly.kept_share, "reduction": fly.reduction,
               "oracle_reduction_at_85_percent_kept": oracle.reduction,
               "at_picked": {"flying_after": at_picked.share_after, "kept": at_picked.kept_share,
                             "reduction": at_picked.reduction},
               "by_threshold": {t: {"kept": f.kept_share, "reduction": f.reduction}
                                for t, f in ((t, FlyingPoints(**v)) for t, v in cal["flying"].items())}}
        results["families"][family] = row
        print(f"{family}: combined AUSE / random {row['ause_combined_over_random']:.2f}; flying points "
              f"{row['flying_before']:.3f} -> {row['flying_after']:.3f} ({row['reduction']:.2f}x) keeping "
              f"{100 * row['kept']:.0f} %; best possible at 85 % kept {row['oracle_reduction_at_85_percent_kept']:.2f}x; "
              f"at min_confidence {picked}: {at_picked.reduction:.2f}x keeping {100 * at_picked.kept_share:.0f} %")
    print(f"min_confidence by the study's rule for this {'stand-in' if args.edge_errors else 'checkpoint'} "
          f"(largest keeping >= 85 % on the tuning rooms): {picked} (the node's default: {DEFAULT_MIN_CONFIDENCE})")
    source = ({"edge_errors_sigma_px": args.edge_errors} if args.edge_errors
              else {"checkpoint": args.checkpoint, "backend": args.backend})
    results["run"] = {**source, "frame_hw": list(hw), "seconds": round(time.time() - t0, 1)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, results)  # strict JSON: a ratio without flying points is null, not NaN
    print(f"confidence study (node defaults): {results['run']['seconds']} s, wrote {args.json}")
    return 0


class _Model:
    """The backend plus the optical-frame conversion of its normals."""

    def __init__(self, args) -> None:
        from d3_perception.backends import create_backend

        kw = {"num_threads": args.threads} if args.backend == "onnxruntime" else {}
        self.backend = create_backend(args.backend, args.checkpoint, **kw)
        if args.backend == "torch":
            import torch

            torch.set_num_threads(args.threads)
        self.convention = self.backend.config.normals_convention

    def predict(self, rgbs: list[np.ndarray], K, frames) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(relative [H,W], normals [3,H,W] optical)]`` for each frame (``frames``, the ground truth, unused)."""
        from d3_perception.geometry.normals import to_optical_frame_planes

        out = []
        for i in range(0, len(rgbs), 8):
            pred = self.backend.predict(np.stack(rgbs[i:i + 8]))
            for rel, nrm in zip(pred["depth"], pred["normals"], strict=True):
                planes = np.stack(to_optical_frame_planes(nrm, self.convention, K, normalise=False))
                out.append((rel.astype(np.float32), planes))
        return out


class _EdgeErrors:
    """A stand-in for a checkpoint that has the geometry right: the exact depth (sky and other invalid pixels
    filled with 1.5x the farthest valid depth, as a network answers "far" there) and the exact normals, each
    smeared by a Gaussian of ``sigma_px`` output pixels (cv2), so the errors sit where depth jumps; the depth is
    returned as relative depth in [0, 1] (the metric fit recovers the affine map)."""

    def __init__(self, sigma_px: float) -> None:
        self.sigma_px = float(sigma_px)

    def predict(self, rgbs, K, frames) -> list[tuple[np.ndarray, np.ndarray]]:
        import cv2

        out = []
        for f in frames:
            valid = f.valid & np.isfinite(f.depth_m)
            far = 1.5 * float(f.depth_m[valid].max()) if valid.any() else 1.0
            depth = cv2.GaussianBlur(np.where(valid, f.depth_m, far).astype(np.float32), (0, 0), self.sigma_px)
            lo, hi = float(depth.min()), float(depth.max())
            rel = ((depth - lo) / max(hi - lo, 1e-6)).astype(np.float32)
            n = cv2.GaussianBlur(np.nan_to_num(f.normals, nan=0.0).astype(np.float32), (0, 0), self.sigma_px)
            n /= np.maximum(np.linalg.norm(n, axis=2, keepdims=True), 1e-6)
            out.append((rel, np.ascontiguousarray(n.transpose(2, 0, 1))))
        return out


def _noisy(rgb: np.ndarray, rng, sigma: float) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) + rng.normal(0.0, sigma, rgb.shape), 0, 255).astype(np.uint8)


def _frames(model: _Model, kind: str, seeds, n: int, hw, noise: float):
    """Frames spread over each scene's trajectory with their prediction, sparse reference and sparse-mode depth."""
    from d3_perception.geometry.alignment import MetricAligner, MetricConfig
    from d3_perception.synthetic import SyntheticSequence, sparse_depth

    rows = []
    for seed in seeds:
        seq = SyntheticSequence(seed=seed, size_hw=hw, fps=10, kind=kind)
        rng = np.random.default_rng(seed)
        frames = [seq.frame(i) for i in range(0, 10 * n, 10)]  # 1 s apart: different views
        rgbs = [_noisy(f.rgb, rng, noise) for f in frames]
        for f, (rel, nrm) in zip(frames, model.predict(rgbs, seq.K, frames), strict=True):
            sparse = sparse_depth(f.depth_m, rng, pattern="scan")
            fit = MetricAligner(MetricConfig(mode="sparse_depth")).update(rel, sparse)
            if not fit.is_metric:
                continue
            rows.append({"frame": f, "rel": rel, "normals": nrm, "sparse": sparse,
                         "depth": MetricAligner.apply(rel, fit)})
    return rows


def _cue_maps(rows, config) -> list[dict[str, np.ndarray]]:
    """Per frame: each cue set's confidence (``CUE_SETS``) with ``config``'s scales."""
    from d3_perception.geometry.confidence import ConfidenceEstimator

    ests = {name: ConfidenceEstimator(replace(config, sources=src)) for name, src in CUE_SETS.items()}
    out = []
    for r in rows:
        f = r["frame"]
        out.append({name: est.compute(r["depth"], f.K, r["normals"], r["sparse"]).copy()
                    for name, est in ests.items()})
    return out


def _errors(row) -> tuple[np.ndarray, np.ndarray]:
    gt, d = row["frame"].depth_m, row["depth"]
    with np.errstate(invalid="ignore"):
        valid = row["frame"].valid & (d > 0)
    return valid, np.abs(d[valid] - gt[valid]) / gt[valid]


def _calibration(rows, config, min_confidence: float = 0.0, extra_thresholds: tuple[float, ...] = ()) -> dict:
    """AUSE per cue set, sparsification curves, flying points per threshold (:data:`THRESHOLDS`,
    ``min_confidence`` and ``extra_thresholds``; all points and GT-edge band)."""
    from d3_perception.evaluation.calibration import FlyingPoints, SparsificationAccumulator, flying_points
    from d3_perception.geometry import backproject

    acc = SparsificationAccumulator()
    coarse = SparsificationAccumulator()
    thresholds = sorted({*THRESHOLDS, min_confidence, *extra_thresholds})
    fly = {t: FlyingPoints() for t in thresholds}
    fly_no_ref = {t: FlyingPoints() for t in thresholds}  # no sparse reference: edges + normals only
    band_fly = {t: FlyingPoints() for t in thresholds}
    from d3_perception.geometry.confidence import ConfidenceEstimator

    coarse_est = ConfidenceEstimator(replace(config, grid_long_side=max(16, max(rows[0]["depth"].shape) // 2)))
    pooled_err, pooled_conf = [], []
    bins = np.linspace(0.0, 1.0, 11)
    reliability = {"pixels": np.zeros(10, np.int64), "good": np.zeros(10, np.int64)}  # good: AbsRel <= 10 %
    for r, maps in zip(rows, _cue_maps(rows, config), strict=True):
        valid, err = _errors(r)
        acc.add(err, {name: m[valid] for name, m in maps.items()})
        which = np.clip(np.digitize(maps["combined"][valid], bins) - 1, 0, 9)
        reliability["pixels"] += np.bincount(which, minlength=10)
        reliability["good"] += np.bincount(which, weights=err <= 0.1, minlength=10).astype(np.int64)
        pooled_err.append(err)
        pooled_conf.append(maps["combined"][valid])
        f = r["frame"]
        coarse.add(err, {"combined, grid step 2": coarse_est.compute(r["depth"], f.K, r["normals"], r["sparse"])[valid]})
        points = backproject(r["depth"], f.K)
        band_gt = np.where(_edge_band(f.depth_m), f.depth_m, np.nan)
        for t in thresholds:
            keep = maps["combined"] >= np.float32(t)
            fly[t] = fly[t] + flying_points(points, f.depth_m, f.K, keep)
            fly_no_ref[t] = fly_no_ref[t] + flying_points(points, f.depth_m, f.K, maps["edges+normals"] >= np.float32(t))
            band_fly[t] = band_fly[t] + flying_points(points, band_gt, f.K, keep)
    ause = acc.ause() | coarse.ause()
    # the best any gate can do keeping 85 % of all points (drop the 15 % largest errors) vs the combined map's
    err, conf = np.concatenate(pooled_err), np.concatenate(pooled_conf)
    keep_n = int(0.85 * err.size)
    at85 = {"points": int(err.size), "flying": int(np.count_nonzero(err > 0.1)), "kept": keep_n,
            "combined_flying": int(np.count_nonzero(err[np.argsort(-conf, kind="stable")[:keep_n]] > 0.1)),
            "oracle_flying": int(np.count_nonzero(np.sort(err)[:keep_n] > 0.1))}
    return {"ause": ause, "curves": {k: v.tolist() for k, v in acc.curves().items()},
            "fractions": acc.fractions.tolist(), "frames": acc.frames,
            "flying": {str(t): asdict(v) for t, v in fly.items()}, "at_85_percent_kept": at85,
            "flying_without_reference": {str(t): asdict(v) for t, v in fly_no_ref.items()},
            "reliability": {"bins": bins.tolist(), **{k: v.tolist() for k, v in reliability.items()}},
            "flying_edge_band": {str(t): asdict(v) for t, v in band_fly.items()}}


def _edge_band(depth: np.ndarray, rel: float = 0.05, radius: int = 2) -> np.ndarray:
    """GT pixels within ``radius`` px of a relative depth jump > ``rel`` (or of a pixel with no depth)."""
    import cv2

    d = np.nan_to_num(depth, nan=1e3)
    jump = np.zeros(d.shape, bool)
    jump[:, 1:] |= np.abs(d[:, 1:] - d[:, :-1]) > rel * np.minimum(d[:, 1:], d[:, :-1])
    jump[1:] |= np.abs(d[1:] - d[:-1]) > rel * np.minimum(d[1:], d[:-1])
    return cv2.dilate(jump.astype(np.uint8), np.ones((2 * radius + 1,) * 2, np.uint8)) > 0


def _search(rows, errs, base, grid: dict) -> list[tuple[float, tuple]]:
    """``[(combined AUSE / random, values)]`` over the grid, best first (``base``: the other settings)."""
    from d3_perception.evaluation.calibration import SparsificationAccumulator
    from d3_perception.geometry.confidence import ConfidenceEstimator

    scores = []
    for values in itertools.product(*grid.values()):
        est, acc = ConfidenceEstimator(replace(base, **dict(zip(grid, values, strict=True)))), SparsificationAccumulator()
        for r, (valid, err) in zip(rows, errs, strict=True):
            f = r["frame"]
            acc.add(err, {"c": est.compute(r["depth"], f.K, r["normals"], r["sparse"])[valid]})
        a = acc.ause()
        scores.append((a["c"] / a["random"], values))
    return sorted(scores)


def _tune(rows) -> tuple[object, dict]:
    """Cue scales by the AUSE on the tuning rows, in two stages: the edge and normal scales and the combination
    rule without a sparse reference (modes fixed, depth_range), then the residual scale with it."""
    from d3_perception.geometry.confidence import ConfidenceConfig

    errs = [_errors(r) for r in rows]
    grid1 = {"edge_scale": (0.05, 0.1, 0.2, 0.4, 0.8, 1.6), "normal_scale": (0.005, 0.01, 0.02, 0.05, 0.1, 0.3),
             "combine": ("geomean", "min")}
    first = _search(rows, errs, ConfidenceConfig(sources=("edges", "normals")), grid1)
    base = ConfidenceConfig(**dict(zip(grid1, first[0][1], strict=True)))
    # one rule for both cases (stage 1's); the sparse cue's weight only acts where there is a reference
    grid2 = {"residual_scale": (0.005, 0.01, 0.02, 0.05, 0.1), "sparse_weight": (1.0, 2.0, 4.0, 8.0)}
    second = _search(rows, errs, base, grid2)
    best = replace(base, **dict(zip(grid2, second[0][1], strict=True)))
    table = [{"stage": "edges+normals", "ause_over_random": sc, **dict(zip(grid1, v, strict=True))} for sc, v in first[:3]]
    table += [{"stage": "all cues", "ause_over_random": sc, **dict(zip(grid2, v, strict=True))} for sc, v in second[:3]]
    return best, {"grid_edges_normals": {k: list(v) for k, v in grid1.items()},
                  "grid_sparse": {k: list(v) for k, v in grid2.items()}, "best": table}


def _pick_threshold(rows, config, min_kept: float = 0.85) -> float:
    """The largest threshold (2 significant digits, rounded down) that keeps >= ``min_kept`` of the valid
    points of ``rows``: the most flying points removed under that constraint."""
    from d3_perception.geometry.confidence import ConfidenceEstimator

    est = ConfidenceEstimator(config)
    pooled = np.concatenate([est.compute(r["depth"], r["frame"].K, r["normals"], r["sparse"])[_errors(r)[0]]
                             for r in rows])
    q = float(np.quantile(pooled, 1.0 - min_kept))
    if q <= 0:
        return 0.0
    digits = 1 - int(np.floor(np.log10(q)))
    return float(np.floor(q * 10**digits) / 10**digits)


def _metric_modes(first_rel: np.ndarray, first_gt: np.ndarray, valid: np.ndarray) -> dict:
    from d3_perception.evaluation.metrics import fit_scale_shift_lstsq
    from d3_perception.geometry.alignment import MetricConfig

    scale, shift, _ = fit_scale_shift_lstsq(first_rel, np.nan_to_num(first_gt, nan=1.0), valid)
    return {"fixed": MetricConfig(mode="fixed", fixed_scale=max(scale, 1e-3), fixed_shift=shift),
            "depth_range": MetricConfig(mode="depth_range"),
            "sparse_depth, smoothing 0": MetricConfig(mode="sparse_depth", smoothing=0.0),
            "sparse_depth, smoothing 0.8 (default)": MetricConfig(mode="sparse_depth", smoothing=0.8)}


def _temporal_run(model: _Model, seed: int, hw, n: int, noise: float, moving: bool) -> dict:
    """Flicker and AbsRel per metric mode, raw vs stabilised, on one static or moving run."""
    from d3_perception.evaluation.temporal import flicker, reproject_depth
    from d3_perception.geometry.alignment import MetricAligner
    from d3_perception.geometry.temporal import TemporalStabilizer
    from d3_perception.synthetic import SyntheticSequence, sparse_depth

    seq = SyntheticSequence(seed=seed, size_hw=hw, fps=10, kind="room")
    rng = np.random.default_rng(seed + 7)
    frames = [seq.frame(i if moving else 0) for i in range(n)]
    rgbs = [_noisy(f.rgb, rng, noise) for f in frames]
    preds = model.predict(rgbs, seq.K, frames)
    sparse = [sparse_depth(f.depth_m, rng, pattern="scan") for f in frames]
    modes = _metric_modes(preds[0][0], frames[0].depth_m, frames[0].valid)
    result = {}
    for name, cfg in modes.items():
        aligner, stab = MetricAligner(cfg), TemporalStabilizer()
        outs = {"raw": [], "stabilised": []}
        blended = []
        for (rel, _), sp, rgb in zip(preds, sparse, rgbs, strict=True):
            d = MetricAligner.apply(rel, aligner.update(rel, sp))
            outs["raw"].append(d)
            outs["stabilised"].append(stab.update(d, rgb))
            blended.append(stab.blended_share)
        rec = {"blended_share": float(np.mean(blended[1:]))}
        for kind, ds in outs.items():
            fl, absrel, late = [], [], []
            for t in range(1, n):
                prev = ds[t - 1]
                if moving:
                    prev = reproject_depth(prev, seq.K, frames[t - 1].pose, frames[t].pose)
                fl.append(flicker(ds[t], prev))
                absrel.append(_absrel(ds[t], frames[t]))
                late.append(_absrel(ds[t - 1], frames[t]))
            rec[kind] = {"flicker": float(np.nanmean(fl)), "abs_rel": float(np.nanmean(absrel)),
                         "abs_rel_one_frame_late": float(np.nanmean(late))}
        # lag in frames: how far the output is behind this frame's raw depth, in units of the raw change since
        # the previous frame (0 = none; an exponential average of a steady motion gives blend / (1 - blend))
        behind = [np.nanmean(np.abs(outs["stabilised"][t] - outs["raw"][t])) for t in range(1, n)]
        step = [np.nanmean(np.abs(outs["raw"][t - 1] - outs["raw"][t])) for t in range(1, n)]
        rec["lag_frames"] = float(np.sum(behind) / np.sum(step))
        result[name] = rec
    if moving:  # the floor of the reprojection itself: exact depth
        result["gt_floor"] = float(np.nanmean([flicker(frames[t].depth_m, reproject_depth(
            frames[t - 1].depth_m, seq.K, frames[t - 1].pose, frames[t].pose)) for t in range(1, n)]))
    return result


def _absrel(d: np.ndarray, frame) -> float:
    with np.errstate(invalid="ignore"):
        valid = frame.valid & (d > 0)
    return float(np.mean(np.abs(d[valid] - frame.depth_m[valid]) / frame.depth_m[valid])) if valid.any() else np.nan


def _merge_runs(runs: list[dict]) -> dict:
    """Mean of each number over runs (same keys)."""
    def walk(items):
        if isinstance(items[0], dict):
            return {k: walk([it[k] for it in items]) for k in items[0]}
        return float(np.nanmean(items))
    return walk(runs)


def _run(args) -> int:
    from d3_perception.geometry.confidence import ConfidenceConfig

    t0, load0 = time.time(), os.getloadavg()
    hw = (args.height, args.width)
    model = _Model(args)
    tuning = _frames(model, "room", TUNING_SEEDS, args.frames, hw, args.noise_dn)
    best, tuning_info = _tune(tuning)
    min_conf = _pick_threshold(tuning, best)
    tuning_cal = _calibration(tuning, best, min_conf)
    results = {"config": asdict(best), "min_confidence": min_conf, "tuning": tuning_info,
               "tuning_ause": tuning_cal["ause"], "tuning_flying": tuning_cal["flying"][str(min_conf)],
               "defaults_ause_tuning": _calibration(tuning, ConfidenceConfig())["ause"],
               "calibration": {}, "temporal": {}}
    for family, kind, seeds in (("room (held-out seeds)", "room", (9999, 10000, 10001, 10002)),
                                ("outdoor (held-out family)", "outdoor", (9999, 10000))):
        results["calibration"][family] = _calibration(_frames(model, kind, seeds, args.frames, hw, args.noise_dn), best,
                                                      min_conf)
    for moving in (False, True):
        runs = [_temporal_run(model, seed, hw, args.temporal_frames * (2 if moving else 1), args.noise_dn, moving)
                for seed in (9999, 10000, 10001)]
        results["temporal"]["moving" if moving else "static"] = _merge_runs(runs)
    results["run"] = {"checkpoint": args.checkpoint, "backend": args.backend, "frame_hw": list(hw),
                      "noise_dn": args.noise_dn, "threads": args.threads, "seconds": round(time.time() - t0, 1),
                      "load_average_1min_start_end": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
                      "cpu_count": os.cpu_count()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    from d3_perception.evaluation.confidence_report import write_plots, write_section

    args.img_dir.mkdir(parents=True, exist_ok=True)
    write_plots(results, args.img_dir)
    write_section(results, args.doc, args.img_dir, args.json)
    print(f"confidence study: {results['run']['seconds']} s, wrote {args.json}, {args.doc}, plots in {args.img_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.edge_errors and not args.node_defaults:
        parser.error("--edge-errors needs --node-defaults (the tuned study runs the checkpoint)")
    if args.node_defaults and args.json == Path("docs/results/confidence_study.json"):
        # never overwrite the study's own results
        args.json = Path("docs/results/confidence_node_defaults" + ("_edge_errors" if args.edge_errors else "") + ".json")
    return run_cli("confidence_study", lambda: (_node_defaults if args.node_defaults else _run)(args),
                   (FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
