"""``d3-predict``: image files, folders or globs -> depth and normals maps, previews and point clouds.

Per input image ``<stem>`` it writes into ``--output``:
  ``<stem>_depth.png`` (uint16, 0..65535 = relative depth 0..1, 0 = near), ``<stem>_depth.npy`` (float32 [H,W]),
  ``<stem>_depth_colored.png`` (colour-mapped preview), ``<stem>_normals.png`` (RGB = (n + 1) / 2),
  ``<stem>_normals.npy`` (float32 [H,W,3], unit, camera optical frame by default), ``<stem>.ply`` (``--ply``),
  ``<stem>_confidence.npy`` (float32 [H,W] in [0,1], 1 = trust; docs/confidence.md) and its grey preview
  ``<stem>_confidence.png`` (uint8, 255 = 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d3_perception.backends import BACKENDS, PRECISIONS
from d3_perception.image_files import IMAGE_SUFFIXES, collect_inputs, read_rgb

__all__ = ["IMAGE_SUFFIXES", "collect_inputs", "main", "save_outputs"]

logger = logging.getLogger(__name__)


EPILOG = """examples:
  d3-predict photo.jpg -o out/        # the bundled demo model (synthetic-trained; says so on stderr)
  d3-predict photo.jpg --checkpoint models/d3_tiny --output out/
  d3-predict frames/ --recursive --checkpoint models/d3_tiny --backend onnxruntime --output out/
  d3-predict 'shots/*.png' --checkpoint ckpt/ --tasks depth --resolution 512 --output out/ --colormap magma
  # pseudo-metric point cloud: relative depth mapped to [near, far] metres, 60 deg horizontal field of view
  d3-predict desk.png --checkpoint ckpt/ --output out/ --ply --fov-deg 60 --near-m 0.4 --far-m 3.0
  d3-predict desk.png --checkpoint ckpt/ --output out/ --ply --fx 525 --fy 525 --cx 319.5 --cy 239.5

exit status: 0 all images written, 1 some images failed (each is reported), 2 bad arguments or no model.
"""


@dataclass(frozen=True)
class _Intrinsics:
    fx: float | None
    fy: float | None
    cx: float | None
    cy: float | None
    fov_deg: float | None

    def K(self, hw: tuple[int, int]) -> np.ndarray:
        if self.fov_deg is not None:
            from d3_perception.geometry.intrinsics import intrinsics_from_fov

            return intrinsics_from_fov(hw, self.fov_deg)
        h, w = hw
        cx = (w - 1) / 2.0 if self.cx is None else self.cx
        cy = (h - 1) / 2.0 if self.cy is None else self.cy
        return np.array([[self.fx, 0.0, cx], [0.0, self.fy, cy], [0.0, 0.0, 1.0]])


def _colorize(depth: np.ndarray, cmap: str) -> np.ndarray:
    """Depth ``[H,W]`` in [0,1] -> RGB uint8 via a matplotlib colormap, stretched to the 2%/98% quantiles."""
    import matplotlib

    lo, hi = np.quantile(depth, [0.02, 0.98])
    scaled = np.clip((depth - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return (matplotlib.colormaps[cmap](scaled)[..., :3] * 255.0 + 0.5).astype(np.uint8)


def save_outputs(out_dir: Path, stem: str, rgb: np.ndarray, result: dict[str, np.ndarray], *, cmap: str,
                 normals_to_optical: str | None, ply: bool, intr: _Intrinsics | None, near_m: float,
                 far_m: float, previews: bool = True) -> list[Path]:
    """Write every file for one image; returns the paths written."""
    import cv2

    written: list[Path] = []

    def imwrite(path: Path, arr: np.ndarray) -> None:
        if not cv2.imwrite(str(path), arr):
            raise OSError(f"could not write {path}")
        written.append(path)

    depth = result.get("depth")
    normals = None
    if depth is not None:
        d = depth[0]  # [H,W]
        np.save(out_dir / f"{stem}_depth.npy", d.astype(np.float32))
        written.append(out_dir / f"{stem}_depth.npy")
        imwrite(out_dir / f"{stem}_depth.png", np.round(np.clip(d, 0, 1) * 65535.0).astype(np.uint16))
        if previews:
            imwrite(out_dir / f"{stem}_depth_colored.png", cv2.cvtColor(_colorize(d, cmap), cv2.COLOR_RGB2BGR))
    if "normals" in result:
        n = np.moveaxis(result["normals"][0], 0, -1)  # [H,W,3]
        if normals_to_optical is not None:
            from d3_perception.geometry.normals import to_optical_frame

            n = np.nan_to_num(to_optical_frame(n, normals_to_optical))
        normals = n.astype(np.float32)
        np.save(out_dir / f"{stem}_normals.npy", normals)
        written.append(out_dir / f"{stem}_normals.npy")
        vis = np.round((np.clip(normals, -1, 1) + 1.0) * 127.5).astype(np.uint8)
        imwrite(out_dir / f"{stem}_normals.png", cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
    if depth is not None:
        conf = _confidence(depth[0], normals if normals_to_optical is not None else None, intr, near_m, far_m)
        np.save(out_dir / f"{stem}_confidence.npy", conf)
        written.append(out_dir / f"{stem}_confidence.npy")
        if previews:
            imwrite(out_dir / f"{stem}_confidence.png", np.round(np.clip(conf, 0, 1) * 255.0).astype(np.uint8))
    if ply and depth is not None and intr is not None:
        from d3_perception.geometry.ply import write_ply
        from d3_perception.geometry.pointcloud import backproject

        h, w = depth.shape[1:]
        depth_m = near_m + depth[0] * (far_m - near_m)  # pseudo-metric: relative depth mapped to [near, far]
        pts = backproject(depth_m, intr.K((h, w))).reshape(-1, 3)  # [H*W,3] optical frame
        nrm = normals.reshape(-1, 3) if normals is not None and normals_to_optical is not None else None
        written.append(write_ply(out_dir / f"{stem}.ply", pts, rgb.reshape(-1, 3), nrm))
    return written


def _confidence(relative: np.ndarray, normals_optical: np.ndarray | None, intr: _Intrinsics | None,
                near_m: float, far_m: float) -> np.ndarray:
    """``[H,W]`` float32 confidence of one relative depth map (the node's estimator and defaults): the cues are
    scale-free, so the ``[near_m, far_m]`` mapping stands in for metres; the normals cue when the optical-frame
    normals are known (intrinsics: the given ones, else a 60 degree field of view, as the node without
    camera_info); no sparse reference here."""
    from d3_perception.geometry.confidence import ConfidenceEstimator
    from d3_perception.geometry.intrinsics import intrinsics_from_fov

    hw = relative.shape
    geo = (np.float32(near_m) + relative.astype(np.float32) * np.float32(far_m - near_m)).astype(np.float32)
    K = intr.K(hw) if intr is not None else intrinsics_from_fov(hw, 60.0)
    return ConfidenceEstimator().compute(geo, K, normals_optical).astype(np.float32, copy=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d3-predict", description=__doc__.splitlines()[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns (quote globs)")
    p.add_argument("--checkpoint", "-c", type=Path, default=None,
                   help="checkpoint directory (or exported .onnx); default: the bundled demo model "
                        "models/d3_demo_tiny (trained on synthetic scenes only)")
    p.add_argument("--output", "-o", type=Path, required=True, help="output folder (created)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="inference backend (default auto: TensorRT -> OpenVINO -> ONNX Runtime -> torch)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: best available)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="default fp32")
    p.add_argument("--resolution", type=int, default=None,
                   help="processing resolution, long side in px, multiple of 64 (default: the checkpoint's)")
    p.add_argument("--tasks", nargs="+", choices=("depth", "normals"), default=None,
                   help="tasks to run (default: all tasks of the checkpoint)")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders / ** in globs")
    p.add_argument("--colormap", default="Spectral", help="matplotlib colormap for the depth preview")
    p.add_argument("--no-preview", action="store_true", help="skip the colour-mapped depth preview")
    p.add_argument("--normals-frame", choices=("optical", "model"), default="optical",
                   help="normals in the camera optical frame (x right, y down, z forward; default) or as the "
                        "model outputs them")
    p.add_argument("--ply", action="store_true", help="write a PLY point cloud per image (needs intrinsics)")
    p.add_argument("--fx", type=float, default=None, help="focal length x in px (input resolution)")
    p.add_argument("--fy", type=float, default=None, help="focal length y in px (default: fx)")
    p.add_argument("--cx", type=float, default=None, help="principal point x in px (default: image centre)")
    p.add_argument("--cy", type=float, default=None, help="principal point y in px (default: image centre)")
    p.add_argument("--fov-deg", type=float, default=None, help="horizontal field of view instead of --fx/--fy")
    p.add_argument("--near-m", type=float, default=0.5, help="PLY: metres for relative depth 0 (default 0.5)")
    p.add_argument("--far-m", type=float, default=10.0, help="PLY: metres for relative depth 1 (default 10)")
    p.add_argument("--verbose", "-v", action="store_true", help="log at INFO level")
    return p


def _check_args(args: argparse.Namespace) -> _Intrinsics | None:
    if not (0.0 <= args.near_m < args.far_m):
        raise ValueError(f"`--near-m` and `--far-m` must satisfy 0 <= near < far; got {args.near_m}, {args.far_m}")
    import matplotlib

    if args.colormap not in matplotlib.colormaps:
        raise ValueError(f"`--colormap` must be a matplotlib colormap name; got {args.colormap!r}")
    if not args.ply:
        return None
    if args.fov_deg is not None and args.fx is not None:
        raise ValueError("`--fov-deg` and `--fx` are alternatives; got both")
    if args.fov_deg is None and args.fx is None:
        raise ValueError("`--ply` needs intrinsics: give --fx [--fy --cx --cy] or --fov-deg")
    fx = args.fx
    fy = args.fy if args.fy is not None else fx
    if fx is not None and (fx <= 0 or fy <= 0):
        raise ValueError(f"`--fx`/`--fy` must be > 0; got {fx}, {fy}")
    return _Intrinsics(fx, fy, args.cx, args.cy, args.fov_deg)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    # which backend runs, why others were skipped, and a one-off ONNX export are worth one line each
    logging.getLogger("d3_perception.backends").setLevel(logging.INFO)
    try:
        intr = _check_args(args)
        files, unmatched = collect_inputs(args.inputs, args.recursive)
        for pattern in unmatched:
            print(f"d3-predict: warning: {pattern!r} matched no image", file=sys.stderr)
        if not files:
            raise ValueError(f"`inputs` must name at least one image; got nothing from {args.inputs}")
        from d3_perception.backends import create_backend
        from d3_perception.cli_args import checkpoint_or_demo

        args.checkpoint = checkpoint_or_demo(args.checkpoint, "d3-predict")
        backend = create_backend(args.backend, args.checkpoint, device=args.device, precision=args.precision,
                                 processing_resolution=args.resolution,
                                 tasks=tuple(args.tasks) if args.tasks else None)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as err:
        print(f"d3-predict: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return _run(args, backend, files, intr)


def _run(args: argparse.Namespace, backend, files: list[Path], intr: _Intrinsics | None) -> int:
    from tqdm import tqdm

    args.output.mkdir(parents=True, exist_ok=True)
    convention = backend.config.normals_convention if args.normals_frame == "optical" else None
    failed: list[tuple[Path, str]] = []
    stems: dict[str, int] = {}
    n_ok = 0
    try:
        for path in tqdm(files, desc="d3-predict", unit="img", file=sys.stderr):
            stem = path.stem
            if stem in stems:  # two inputs with one name (different folders): keep both
                stems[stem] += 1
                stem = f"{stem}_{stems[stem]}"
            else:
                stems[stem] = 0
            rgb = read_rgb(path)
            if rgb is None:
                failed.append((path, "not a readable image"))
                tqdm.write(f"d3-predict: skipped {path}: not a readable image", file=sys.stderr)
                continue
            try:
                result = backend.predict(rgb)
                save_outputs(args.output, stem, rgb, result, cmap=args.colormap, normals_to_optical=convention,
                             ply=args.ply, intr=intr, near_m=args.near_m, far_m=args.far_m,
                             previews=not args.no_preview)
            except (ValueError, OSError) as err:
                failed.append((path, str(err)))
                tqdm.write(f"d3-predict: skipped {path}: {err}", file=sys.stderr)
                continue
            n_ok += 1
    except KeyboardInterrupt:
        print("d3-predict: interrupted", file=sys.stderr)
        return 130
    summary = {"written": n_ok, "failed": [{"path": str(p), "reason": r} for p, r in failed],
               "output": str(args.output), "backend": backend.info.name, "model_id": backend.info.model_id}
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"d3-predict: {n_ok} of {len(files)} images written to {args.output}"
          + (f"; {len(failed)} failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
