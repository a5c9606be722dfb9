"""Image files on disk: finding them (files, folders, globs) and reading them as RGB, for every CLI that takes
images (``d3-predict``, ``d3-export --calibration-images``)."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "collect_inputs", "read_rgb"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def collect_inputs(patterns: list[str], recursive: bool = False) -> tuple[list[Path], list[str]]:
    """Expand files, folders and globs (sorted, de-duplicated). Returns (images, patterns matching nothing)."""
    found: dict[Path, None] = {}
    unmatched: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            it = path.rglob("*") if recursive else path.iterdir()
            hits = sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            hits = [path]
        else:
            hits = sorted(Path(p) for p in glob.glob(pattern, recursive=recursive) if Path(p).is_file())
        if not hits:
            unmatched.append(pattern)
        for hit in hits:
            found.setdefault(hit, None)
    return list(found), unmatched


def read_rgb(path: Path) -> np.ndarray | None:
    """``[H,W,3]`` uint8 RGB of an image file; None when OpenCV cannot read it."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
