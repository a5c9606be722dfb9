"""``d3-synth-bag OUT``: a ROS 2 bag of a synthetic sequence with exact ground truth (no ROS needed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from d3_perception.cli_args import OneLineErrorParser, image_size, positive_float, positive_int, run_cli
from d3_perception.synthetic.scene import SCENE_KINDS

__all__ = ["build_parser", "main", "topic_names"]

EPILOG = """\
examples:
  d3-synth-bag synth_bag                                 # 100 frames 320x240 @ 10 Hz, MCAP, room, seed 0
  d3-synth-bag outdoor_bag --scene outdoor --frames 300 --size 640x480 --fps 30 --seed 4
  d3-synth-bag rs_bag --realsense --compressed           # RealSense topic names, 16UC1 mm aligned depth
  d3-synth-bag lidar_bag --sparse random --sparse-encoding 16UC1 --storage sqlite3 --overwrite
  ros2 bag info synth_bag && ros2 bag play synth_bag     # where ROS 2 is installed

topics (default naming, under --namespace, default /camera):
  image (rgb8) or image/compressed (JPEG, --compressed), camera_info, depth (32FC1 m, NaN = none),
  normals (32FC3, optical frame), sparse_depth (32FC1 m or 16UC1 mm; --sparse none to omit)
topics (--realsense, like realsense2_camera with align_depth):
  /camera/camera/color/image_raw[/compressed], /camera/camera/color/camera_info,
  /camera/camera/aligned_depth_to_color/image_raw (16UC1 mm, 0 = none), .../aligned_depth_to_color/camera_info,
  /camera/camera/ground_truth/normals (32FC3)
All messages of a frame share one header (stamp = start + index / fps, frame_id); bag time = stamp.
"""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="d3-synth-bag", description="Write a ROS 2 bag (MCAP or sqlite3) of a procedural synthetic sequence: "
        "camera images, camera_info, exact depth and normals, LiDAR-like sparse depth.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output bag directory (must not exist unless --overwrite)")
    p.add_argument("--frames", type=positive_int, default=100, help="number of frames (default 100)")
    p.add_argument("--size", type=image_size(8, 4096), default=(240, 320), metavar="WxH", help="image size (default 320x240)")
    p.add_argument("--fps", type=positive_float, default=10.0, help="frame rate in Hz (default 10)")
    p.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    p.add_argument("--scene", choices=SCENE_KINDS, default="room", help="world kind (default room)")
    p.add_argument("--hfov-deg", type=positive_float, default=70.0, help="horizontal field of view (default 70)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="bag storage (default mcap)")
    p.add_argument("--compressed", action="store_true", help="JPEG image/compressed instead of raw rgb8 image")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    p.add_argument("--realsense", action="store_true",
                   help="RealSense topic names (/camera/camera/...) with 16UC1 mm aligned depth")
    p.add_argument("--namespace", default="/camera", help="topic namespace of the default naming (default /camera)")
    p.add_argument("--frame-id", default="camera_color_optical_frame", help="header frame_id")
    p.add_argument("--sparse", choices=("scan", "random", "none"), default="scan",
                   help="sparse_depth pattern, or none (default scan; not written with --realsense)")
    p.add_argument("--sparse-encoding", choices=("32FC1", "16UC1"), default="32FC1",
                   help="sparse_depth encoding (default 32FC1 m)")
    p.add_argument("--start-time-s", type=float, default=1_700_000_000.0,
                   help="stamp of the first frame in seconds since the epoch (default 1700000000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def topic_names(namespace: str = "/camera", *, realsense: bool = False, compressed: bool = False) -> dict[str, str]:
    """Role -> topic: image, camera_info, depth, depth_info (or None), normals, sparse_depth (or None)."""
    if realsense:
        base = "/camera/camera"
        image = f"{base}/color/image_raw"
        return {"image": image + "/compressed" if compressed else image, "camera_info": f"{base}/color/camera_info",
                "depth": f"{base}/aligned_depth_to_color/image_raw",
                "depth_info": f"{base}/aligned_depth_to_color/camera_info",
                "normals": f"{base}/ground_truth/normals", "sparse_depth": None}
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return {"image": f"{ns}/image/compressed" if compressed else f"{ns}/image", "camera_info": f"{ns}/camera_info",
            "depth": f"{ns}/depth", "depth_info": None, "normals": f"{ns}/normals", "sparse_depth": f"{ns}/sparse_depth"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("d3-synth-bag", lambda: _run(args), (FileExistsError, FileNotFoundError, ValueError),
                   interrupted=f"interrupted; `{args.out}` is incomplete")


def _run(args) -> int:
    from tqdm import tqdm

    from d3_perception.geometry.units import m_to_mm
    from d3_perception.rosbag_io import BagWriter
    from d3_perception.synthetic.sequence import SyntheticSequence
    from d3_perception.synthetic.sparse import sparse_depth

    if args.seed < 0:
        raise ValueError(f"`--seed` must be >= 0; got {args.seed}")
    if not 1 <= args.jpeg_quality <= 100:
        raise ValueError(f"`--jpeg-quality` must be in [1, 100]; got {args.jpeg_quality}")
    if args.start_time_s < 0:
        raise ValueError(f"`--start-time-s` must be >= 0; got {args.start_time_s}")
    if (args.out.exists() or args.out.is_symlink()) and not args.overwrite:
        raise FileExistsError(f"output `{args.out}` already exists; pass --overwrite to replace it")
    topics = topic_names(args.namespace, realsense=args.realsense, compressed=args.compressed)
    seq = SyntheticSequence(args.seed, args.size, args.fps, args.scene, hfov_deg=args.hfov_deg,
                            num_frames=args.frames)
    rng = np.random.default_rng(args.seed + 1)
    start_ns = int(round(args.start_time_s * 1e9))
    fid = args.frame_id
    with BagWriter(args.out, storage=args.storage, overwrite=args.overwrite) as bag:
        for frame in tqdm(seq, total=args.frames, desc="d3-synth-bag", unit="frame", disable=args.no_progress):
            stamp = start_ns + int(round(frame.index * 1e9 / args.fps))
            # camera_info first within a frame, like camera drivers
            bag.write_camera_info(topics["camera_info"], frame.K, args.size, stamp, fid)
            if args.compressed:
                bag.write_compressed_image(topics["image"], frame.rgb, stamp, fid, quality=args.jpeg_quality)
            else:
                bag.write_image(topics["image"], frame.rgb, "rgb8", stamp, fid)
            if args.realsense:
                bag.write_image(topics["depth"], m_to_mm(frame.depth_m), "16UC1", stamp, fid)
                bag.write_camera_info(topics["depth_info"], frame.K, args.size, stamp, fid)
            else:
                bag.write_image(topics["depth"], frame.depth_m, "32FC1", stamp, fid)
            bag.write_image(topics["normals"], frame.normals, "32FC3", stamp, fid)
            if topics["sparse_depth"] and args.sparse != "none":
                sparse = sparse_depth(frame.depth_m, rng, pattern=args.sparse)
                if args.sparse_encoding == "16UC1":
                    bag.write_image(topics["sparse_depth"], m_to_mm(sparse), "16UC1", stamp, fid)
                else:
                    bag.write_image(topics["sparse_depth"], sparse, "32FC1", stamp, fid)
        counts = dict(bag.counts)
    size_mb = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) / 1e6
    print(f"wrote {args.out} ({args.storage}, {size_mb:.1f} MB): {args.frames} frames "
          f"{args.size[1]}x{args.size[0]} @ {args.fps:g} Hz, scene {args.scene} seed {args.seed}")
    for topic, n in counts.items():
        print(f"  {topic}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
