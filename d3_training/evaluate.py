"""Quality of a checkpoint on held-out synthetic scenes (exact labels): AbsRel and δ1 after a per-image
least-squares scale+shift fit in depth space (Marigold protocol), and the mean normal angle in degrees.

    python -m d3_training.evaluate models/d3_demo_tiny --num-frames 200 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

HELD_OUT_SEED = 9_999  # training configs use small seeds; scenes of this seed are never seen in training


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


def evaluate_checkpoint(checkpoint: str | Path, num_frames: int = 100, hw: tuple[int, int] = (64, 64),
                        seed: int = HELD_OUT_SEED, kind: str = "room", progress: bool = True) -> dict:
    from d3_perception.model.checkpoint import load_pretrained
    from d3_training.data import SyntheticDataset

    model = load_pretrained(checkpoint)
    data = SyntheticDataset(hw, num_frames, seed, kind)
    rows: dict[str, list[float]] = {"abs_rel": [], "delta1": [], "normals_mean_deg": []}
    for i in tqdm(range(num_frames), desc="evaluate", disable=not progress):
        s = data[i]
        rgb = ((s["rgb"].transpose(1, 2, 0) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        out = model.predict(rgb[None], processing_resolution=max(64, (max(hw) + 63) // 64 * 64))
        if "depth" in out and s["valid_depth"].sum() > 10:
            a, d = depth_metrics(out["depth"][0], s["depth_m"], s["valid_depth"])
            rows["abs_rel"].append(a)
            rows["delta1"].append(d)
        if "normals" in out and s["valid_normals"].sum() > 10:
            rows["normals_mean_deg"].append(normal_angle_deg(out["normals"][0], s["normals"], s["valid_normals"]))
    result = {k: float(np.mean(v)) for k, v in rows.items() if v}
    result.update({"num_frames": num_frames, "resolution": list(hw), "seed": seed, "kind": kind,
                   "checkpoint": str(checkpoint), "tau": float(model.timestep)})
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m d3_training.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python -m d3_training.evaluate models/d3_demo_tiny --num-frames 200")
    p.add_argument("checkpoint")
    p.add_argument("--num-frames", type=int, default=100)
    p.add_argument("--resolution", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    try:
        res = evaluate_checkpoint(args.checkpoint, args.num_frames, tuple(args.resolution), args.seed)
    except (ValueError, FileNotFoundError) as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
