"""Quality of a checkpoint on held-out synthetic scenes (exact labels): AbsRel and δ1 after a per-image
least-squares scale+shift fit in depth space (Marigold protocol), and the mean normal angle in degrees. Every
result carries the same metrics for the trivial *row ramp* (far at the top, fitted with the same alignment; its
normals face the camera), so a model that only learned "far is up" is visible at a glance.

Held-out families (fixed seed ``HELD_OUT_SEED``, never used by a training config):
  in_distribution  scene kind ``world``: the wide world's training recipe, other scenes
  shift            scene kind ``shift``: object/texture families and camera rolls the recipe never produces
  (``--kind room``: the original room generator the first bundled model was trained and recorded on)

    python -m d3_training.evaluate models/d3_demo_tiny --num-frames 200 --families --json out.json
    python -m d3_training.evaluate models/d3_demo_tiny --num-frames 200 --kind room
    python -m d3_training.evaluate models/d3_demo_tiny --num-frames 200 --families --vae-ceiling
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

HELD_OUT_SEED = 9_999  # training configs use small seeds; scenes of this seed are never seen in training
EVAL_FAMILIES = {"in_distribution": "world", "shift": "shift"}  # report name -> scene kind
RAMP_NORMAL = np.array([0.0, 0.0, -1.0], np.float32)  # the row ramp's normals: facing the camera (optical frame)
METRICS = ("abs_rel", "delta1", "normals_mean_deg")


def row_ramp(hw: tuple[int, int]) -> np.ndarray:
    """The trivial layout prior: ``[H,W]`` float32 relative depth H-1-v (row v = 0 at the top is farthest)."""
    h, w = hw
    return np.repeat((h - 1 - np.arange(h, dtype=np.float32))[:, None], w, axis=1)


def depth_metrics(pred: np.ndarray, gt_m: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """pred [H,W] relative, gt_m [H,W] metres -> (AbsRel, δ1) after an LSQ scale+shift fit over `valid`."""
    from d3_perception.geometry.alignment import fit_scale_shift

    try:
        scale, shift, _ = fit_scale_shift(pred, gt_m, valid)
    except ValueError:  # constant prediction: the best affine fit is the mean depth
        scale, shift = 0.0, float(gt_m[valid].mean())
    aligned = np.clip(scale * pred + shift, 1e-3, None)[valid]
    gt = gt_m[valid]
    abs_rel = float(np.mean(np.abs(aligned - gt) / gt))
    delta1 = float(np.mean(np.maximum(aligned / gt, gt / aligned) < 1.25))
    return abs_rel, delta1


def normal_angle_deg(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> float:
    """pred, gt [3,H,W] -> mean angle (deg) over `valid`."""
    p = pred / np.maximum(np.linalg.norm(pred, axis=0, keepdims=True), 1e-6)
    cos = np.clip((p * gt).sum(0), -1, 1)[valid]
    return float(np.degrees(np.arccos(cos)).mean())


def frame_fingerprint(sample: dict) -> list[float]:
    """[valid fraction, mean valid depth m, mean RGB in [-1,1]] of one evaluation sample (6 decimals)."""
    valid = sample["valid_depth"]
    depth = float(sample["depth_m"][valid].mean()) if valid.any() else 0.0
    return [round(float(valid.mean()), 6), round(depth, 6), round(float(sample["rgb"].mean()), 6)]


def frames_fingerprint(num_frames: int, hw: tuple[int, int] = (64, 64), seed: int = HELD_OUT_SEED,
                       kind: str = "room") -> list[list[float]]:
    """:func:`frame_fingerprint` of each evaluation frame, ``[num_frames][3]``, without running a model."""
    from d3_training.data import SyntheticDataset

    data = SyntheticDataset(hw, num_frames, seed, kind)
    return [frame_fingerprint(data[i]) for i in range(num_frames)]


def same_frames(a, b) -> bool:
    """Whether two fingerprints describe the same frames. Compared with a tolerance, not bytes: the last bits
    of sin/exp differ between CPUs and numpy builds, while a changed scene, pose or texture moves these means far
    more (a change too small to move any frame's means, like another draw of zero-mean noise, barely moves the
    metrics either)."""
    fa, fb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return fa.shape == fb.shape and bool(np.allclose(fa, fb, rtol=1e-4, atol=1e-4))


def _frame_rgb(sample: dict) -> np.ndarray:
    return ((sample["rgb"].transpose(1, 2, 0) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def evaluate_checkpoint(checkpoint: str | Path, num_frames: int = 100, hw: tuple[int, int] = (64, 64),
                        seed: int = HELD_OUT_SEED, kind: str = "room", progress: bool = True) -> dict:
    """Mean AbsRel / δ1 / normal angle of ``checkpoint`` over ``num_frames`` held-out frames of ``kind`` at
    ``hw``, plus ``row_ramp``: the same metrics of the row ramp on the same frames, and ``frames_fingerprint``
    (:func:`frames_fingerprint` of those frames, to check a recorded result against the current generator)."""
    from d3_perception.model.checkpoint import load_pretrained
    from d3_training.data import SyntheticDataset

    model = load_pretrained(checkpoint)
    data = SyntheticDataset(hw, num_frames, seed, kind)
    rows: dict[str, list[float]] = {k: [] for k in METRICS}
    ramp_rows: dict[str, list[float]] = {k: [] for k in METRICS}
    ramp = row_ramp(hw)
    ramp_normals = np.broadcast_to(RAMP_NORMAL[:, None, None], (3, *hw))
    fingerprint = []
    for i in tqdm(range(num_frames), desc=f"evaluate {kind}", disable=not progress):
        s = data[i]
        fingerprint.append(frame_fingerprint(s))
        out = model.predict(_frame_rgb(s)[None], processing_resolution=max(64, (max(hw) + 63) // 64 * 64))
        if s["valid_depth"].sum() > 10:
            for target, pred in ((rows, out.get("depth")), (ramp_rows, ramp[None])):
                if pred is not None:
                    a, d = depth_metrics(pred[0], s["depth_m"], s["valid_depth"])
                    target["abs_rel"].append(a)
                    target["delta1"].append(d)
        if s["valid_normals"].sum() > 10:
            if "normals" in out:
                rows["normals_mean_deg"].append(normal_angle_deg(out["normals"][0], s["normals"], s["valid_normals"]))
            ramp_rows["normals_mean_deg"].append(normal_angle_deg(ramp_normals, s["normals"], s["valid_normals"]))
    result = {k: float(np.mean(v)) for k, v in rows.items() if v}
    result.update({"num_frames": num_frames, "resolution": list(hw), "seed": seed, "kind": kind,
                   "checkpoint": str(checkpoint), "tau": float(model.timestep),
                   "row_ramp": {k: float(np.mean(v)) for k, v in ramp_rows.items() if v},
                   "frames_fingerprint": fingerprint})
    return result


def vae_ceiling(checkpoint: str | Path, num_frames: int = 100, hw: tuple[int, int] = (64, 64),
                seed: int = HELD_OUT_SEED, kind: str = "world", progress: bool = True) -> dict:
    """The same metrics as :func:`evaluate_checkpoint` for the exact labels passed through the checkpoint's VAE
    alone (the training targets: depth as its 2/98 % quantile map, normals as they are -> encode -> decode ->
    the network's heads): the best any student that decodes through this VAE can score on these frames."""
    import torch

    from d3_perception.model.checkpoint import load_pretrained
    from d3_training.data import SyntheticDataset
    from d3_training.losses import normalize_depth

    model = load_pretrained(checkpoint)
    data = SyntheticDataset(hw, num_frames, seed, kind)
    rows: dict[str, list[float]] = {k: [] for k in METRICS}

    def round_trip(maps: np.ndarray) -> np.ndarray:  # [3,H,W] in [-1,1] -> decoded, clamped as the heads do
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(maps, np.float32))[None]
            return model.decode(model.encode(x)).clamp(-1.0, 1.0)[0].numpy()

    for i in tqdm(range(num_frames), desc=f"vae ceiling {kind}", disable=not progress):
        s = data[i]
        depth, valid = np.asarray(s["depth_m"], np.float32), np.asarray(s["valid_depth"], bool)
        if valid.sum() > 10:
            d01 = normalize_depth(torch.from_numpy(depth)[None], torch.from_numpy(valid)[None])[0].numpy()
            pred = (round_trip(np.repeat((d01 * 2 - 1)[None], 3, 0)).mean(0) + 1.0) * 0.5  # the depth head
            a, d = depth_metrics(pred, depth, valid)
            rows["abs_rel"].append(a)
            rows["delta1"].append(d)
        if s["valid_normals"].sum() > 10:
            normals = round_trip(np.asarray(s["normals"], np.float32))
            rows["normals_mean_deg"].append(normal_angle_deg(normals, s["normals"], s["valid_normals"]))
    return {**{k: float(np.mean(v)) for k, v in rows.items() if v},
            "num_frames": num_frames, "resolution": list(hw), "seed": seed, "kind": kind,
            "checkpoint": str(checkpoint)}


def evaluate_families(checkpoint: str | Path, num_frames: int = 200, hw: tuple[int, int] = (64, 64),
                      seed: int = HELD_OUT_SEED, progress: bool = True) -> dict[str, dict]:
    """:func:`evaluate_checkpoint` on both held-out families: ``{"in_distribution": {...}, "shift": {...}}``."""
    return {name: evaluate_checkpoint(checkpoint, num_frames, hw, seed, kind, progress)
            for name, kind in EVAL_FAMILIES.items()}


def quality_table(columns: dict[str, dict[str, dict]]) -> str:
    """Markdown table: one row per (family, model column) with AbsRel, δ1, normals.

    ``columns``: {label: families result of :func:`evaluate_families`}; the row ramp is taken from the first
    column that has it (it depends only on the frames, not on the model).
    """
    lines = ["| family | model | AbsRel ↓ | δ1 ↑ | normals mean ° ↓ |", "|---|---|---|---|---|"]
    for family in EVAL_FAMILIES:
        rows = [(label, res[family]) for label, res in columns.items() if family in res]
        ramp = next((r["row_ramp"] for _, r in rows if "row_ramp" in r), None)
        for label, r in rows + ([("row ramp", ramp)] if ramp is not None else []):
            cells = [f"{r[k]:.3f}" if k in r else "n/a" for k in ("abs_rel", "delta1")]
            cells.append(f"{r['normals_mean_deg']:.1f}" if "normals_mean_deg" in r else "n/a")
            lines.append(f"| {family} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from d3_perception.cli_args import OneLineErrorParser
    from d3_perception.synthetic import SCENE_KINDS

    p = OneLineErrorParser(prog="python -m d3_training.evaluate", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="example:\n  python -m d3_training.evaluate models/d3_demo_tiny --num-frames 200 --families")
    p.add_argument("checkpoint")
    p.add_argument("--num-frames", type=int, default=100)
    p.add_argument("--resolution", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--kind", choices=SCENE_KINDS, default="room", help="scene kind of the frames (default room)")
    where.add_argument("--families", action="store_true",
                       help="both held-out families of the wide world (in_distribution = world, shift)")
    p.add_argument("--vae-ceiling", action="store_true",
                   help="score the exact labels passed through the checkpoint's VAE alone instead of the model: "
                        "the best any student decoding through it can reach")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    try:
        if args.vae_ceiling:
            kinds = EVAL_FAMILIES if args.families else {args.kind: args.kind}
            res = {name: vae_ceiling(args.checkpoint, args.num_frames, tuple(args.resolution), args.seed, kind)
                   for name, kind in kinds.items()}
            res = res if args.families else res[args.kind]
        elif args.families:
            res = evaluate_families(args.checkpoint, args.num_frames, tuple(args.resolution), args.seed)
        else:
            res = evaluate_checkpoint(args.checkpoint, args.num_frames, tuple(args.resolution), args.seed, args.kind)
    except (ValueError, FileNotFoundError) as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(res, indent=1)
    print(text)
    if args.families and not args.vae_ceiling:
        print(quality_table({"model": res}))
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
