"""Benchmark readers: depth sets in the Marigold evaluation layout, normal sets in DSINE's layout.

Exact on-disk layouts: docs/evaluation.md ("Data layout"). A dataset root is a folder or an uncompressed
``.tar`` built from inside the root (members ``./<relative path>``); the split file lists samples with paths
relative to the root. Per-dataset settings (root, split, caps, crops, sample count) live in
``config/eval/<name>.yaml`` and are loaded into :class:`DatasetConfig`.

Every problem with the data (missing root or split file, a member that is absent or undecodable, a size
mismatch) raises :class:`DatasetError` with a one-line message naming what was expected.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from d3_perception.evaluation.metrics import DepthProtocol

__all__ = [
    "CONFIG_DIR",
    "DEPTH_DATASETS",
    "NORMAL_DATASETS",
    "DatasetConfig",
    "DatasetError",
    "Sample",
    "load_dataset_config",
    "open_dataset",
]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config" / "eval"
#: Names accepted by ``d3-eval --datasets`` (each has ``config/eval/<name>.yaml``).
DEPTH_DATASETS: tuple[str, ...] = ("nyuv2", "kitti", "eth3d", "scannet", "diode")
NORMAL_DATASETS: tuple[str, ...] = ("nyuv2_normals", "scannet_normals", "ibims_normals", "sintel_normals")
_LAYOUTS = ("nyu", "kitti", "eth3d", "scannet", "diode", "dsine")


class DatasetError(ValueError):
    """Missing or malformed benchmark data; the message is one line naming what was expected."""


@dataclass(frozen=True)
class DatasetConfig:
    """One benchmark set (``config/eval/<name>.yaml``).

    Attributes:
        name: short id, e.g. ``nyuv2`` or ``ibims_normals``.
        title: column title in the report, e.g. ``NYUv2``.
        task: ``depth`` or ``normals``.
        layout: reader: ``nyu``, ``kitti``, ``eth3d``, ``scannet``, ``diode`` (Marigold) or ``dsine``.
        root: dataset folder or ``.tar`` relative to ``--data-root`` (a folder of the same stem also works).
        split_file: split list relative to ``--data-root`` (override with ``--split-file NAME=PATH``).
        expected_samples: size of the official split; fewer evaluated samples are reported as partial.
        processing_resolution: long side the protocol runs the model at (0 = native); ``--resolution`` wins.
        depth: the depth protocol (depth sets only).
        kitti_bm_crop: KITTI benchmark crop to 352x1216 of both RGB and GT before evaluation.
        normals_convention: frame of the stored GT normals: ``dsine`` (x left, y up, z toward the camera),
            ``opengl`` (x right, y up, z toward the camera) or ``optical`` (x right, y down, z forward).
        source: where the layout comes from.
    """

    name: str
    title: str
    task: str
    layout: str
    root: str
    split_file: str
    expected_samples: int
    processing_resolution: int = 0
    depth: DepthProtocol | None = None
    kitti_bm_crop: bool = False
    normals_convention: str = "dsine"
    source: str = ""

    def __post_init__(self) -> None:
        if self.task not in ("depth", "normals"):
            raise ValueError(f"`task` must be depth or normals; got {self.task!r}")
        if self.layout not in _LAYOUTS:
            raise ValueError(f"`layout` must be one of {_LAYOUTS}; got {self.layout!r}")
        if self.task == "depth" and self.depth is None:
            raise ValueError(f"`depth` protocol section is required for depth set {self.name!r}")
        if self.normals_convention not in _NORMAL_FLIPS:
            raise ValueError(f"`normals_convention` must be one of {sorted(_NORMAL_FLIPS)}; got {self.normals_convention!r}")
        if self.expected_samples < 1:
            raise ValueError(f"`expected_samples` must be >= 1; got {self.expected_samples}")


# Sign flips that take a stored normal to the optical frame (x right, y down, z forward); DSINE's stored
# frame is x left / y up / z toward the camera (docs/evaluation.md), so every axis flips.
_NORMAL_FLIPS: dict[str, tuple[float, float, float]] = {
    "optical": (1.0, 1.0, 1.0),
    "opengl": (1.0, -1.0, -1.0),
    "dsine": (-1.0, -1.0, -1.0),
}


def load_dataset_config(name_or_path: str | Path) -> DatasetConfig:
    """``nyuv2`` (-> ``config/eval/nyuv2.yaml``) or a path to a YAML file -> :class:`DatasetConfig`."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(DEPTH_DATASETS + NORMAL_DATASETS)
        raise DatasetError(f"dataset config `{name_or_path}` not found (expected {path}); known: {known}")
    try:
        data = yaml.safe_load(path.read_text())
        data = dict(data)
        if data.get("depth") is not None:
            data["depth"] = DepthProtocol.from_dict(data["depth"])
        data["expected_samples"] = int(data["expected_samples"])
        return DatasetConfig(**data)
    except (TypeError, ValueError, KeyError, yaml.YAMLError) as exc:
        raise DatasetError(f"dataset config {path} is malformed: {exc}") from None


@dataclass
class Sample:
    """One benchmark sample.

    Attributes:
        name: the RGB path relative to the root (stable id for per-sample results).
        rgb: ``[H,W,3]`` uint8 RGB.
        depth_m: ``[H,W]`` float32 GT depth in metres (0 / non-finite = invalid); depth sets only.
        mask: ``[H,W]`` bool mask shipped with the data (DIODE) or None.
        normals: ``[H,W,3]`` float32 GT normals in the camera optical frame, zero vector = invalid; normal sets only.
    """

    name: str
    rgb: np.ndarray
    depth_m: np.ndarray | None = None
    mask: np.ndarray | None = None
    normals: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


class _Root:
    """Read member files of a folder or an uncompressed tar by relative path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if path.is_file():
            try:
                self._tar = tarfile.open(path, mode="r:")  # uncompressed only, as in the Marigold loader
            except (tarfile.TarError, OSError) as exc:
                raise DatasetError(f"{path} is not a readable uncompressed .tar ({exc})") from None
            for member in self._tar.getmembers():
                if member.isfile():
                    self._members[_normalise(member.name)] = member

    def read(self, rel: str) -> bytes:
        key = _normalise(rel)
        if self._tar is None:
            file = self.path / key
            if not file.is_file():
                raise DatasetError(f"missing file {file} (listed in the split file)")
            return file.read_bytes()
        member = self._members.get(key)
        if member is None:
            raise DatasetError(f"missing member ./{key} in {self.path} (listed in the split file)")
        handle = self._tar.extractfile(member)
        if handle is None:
            raise DatasetError(f"unreadable member ./{key} in {self.path}")
        try:
            return handle.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DatasetError(f"truncated member ./{key} in {self.path} ({exc})") from None

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


def _normalise(rel: str) -> str:
    rel = rel.strip().replace("\\", "/")
    while rel.startswith("./"):
        rel = rel[2:]
    return rel.lstrip("/")


def _resolve_root(data_root: Path, rel: str) -> Path:
    """``nyuv2/x.tar`` -> that tar, or the folder ``nyuv2/x`` (the same data unpacked), or an error."""
    candidates = [data_root / rel]
    if rel.endswith(".tar"):
        candidates.append(data_root / rel[: -len(".tar")])
    else:
        candidates.append(data_root / f"{rel}.tar")
    for cand in candidates:
        if cand.exists():
            return cand
    raise DatasetError(f"dataset not found: expected {' or '.join(str(c) for c in candidates)}")


def _decode_rgb(data: bytes, rel: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3:
        raise DatasetError(f"`{rel}` must be an RGB image file; could not decode {len(data)} bytes")
    return np.ascontiguousarray(img[:, :, ::-1])  # BGR -> RGB


def _decode_png16(data: bytes, rel: str, divisor: float) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint16 or img.ndim != 2:
        got = "undecodable" if img is None else f"{img.dtype} {img.shape}"
        raise DatasetError(f"`{rel}` must be a single-channel 16-bit PNG; got {got}")
    return img.astype(np.float32) / np.float32(divisor)


def _decode_npy(data: bytes, rel: str) -> np.ndarray:
    import io

    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"`{rel}` must be a .npy array ({exc})") from None
    return np.squeeze(arr)


def _decode_exr(data: bytes, rel: str) -> np.ndarray:
    """3-channel float EXR -> ``[H,W,3]`` float32 (R,G,B = x,y,z)."""
    import os
    import tempfile

    try:
        import OpenEXR
    except ImportError:
        raise DatasetError(f"reading `{rel}` needs the OpenEXR package (pip install openexr)") from None
    # The OpenEXR binding reads from a path; OpenCV wheels are built without EXR support.
    with tempfile.NamedTemporaryFile(suffix=".exr", delete=False) as tmp:
        tmp.write(data)
    try:
        with OpenEXR.File(tmp.name) as exr:
            channels = exr.channels()
            if "RGB" in channels:
                arr = np.asarray(channels["RGB"].pixels, dtype=np.float32)
            elif all(c in channels for c in "RGB"):
                arr = np.stack([np.asarray(channels[c].pixels, dtype=np.float32) for c in "RGB"], axis=-1)
            else:
                raise DatasetError(f"`{rel}` must hold R,G,B channels; got {sorted(channels)}")
    except (OSError, RuntimeError) as exc:
        raise DatasetError(f"`{rel}` is not a readable EXR ({exc})") from None
    finally:
        os.unlink(tmp.name)
    return arr


def _check_same_hw(a: np.ndarray, b: np.ndarray, what: str, rel: str) -> None:
    if a.shape[:2] != b.shape[:2]:
        raise DatasetError(f"{what} of `{rel}` must match the RGB size {a.shape[:2]}; got {b.shape[:2]}")


class BenchmarkDataset:
    """Iterates :class:`Sample` of one benchmark set in split order (``limit`` = first N samples)."""

    def __init__(self, config: DatasetConfig, data_root: Path, split_file: Path | None = None) -> None:
        self.config = config
        data_root = Path(data_root)
        if not data_root.is_dir():
            raise DatasetError(f"`--data-root` must be a folder; got {data_root}")
        self.root_path = _resolve_root(data_root, config.root)
        split_path = Path(split_file) if split_file is not None else data_root / config.split_file
        if not split_path.is_file():
            raise DatasetError(
                f"split file for {config.name} not found: expected {split_path} (pass --split-file {config.name}=PATH)"
            )
        self.entries = self._parse_split(split_path)
        if not self.entries:
            raise DatasetError(f"split file {split_path} lists no samples")
        self._root = _Root(self.root_path)

    def _parse_split(self, path: Path) -> list[list[str]]:
        need = {"nyu": 2, "kitti": 2, "eth3d": 2, "scannet": 2, "diode": 3, "dsine": 1}[self.config.layout]
        entries = []
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < need:
                raise DatasetError(
                    f"{path}:{lineno}: a {self.config.layout} split line must have {need} fields; got {len(fields)}"
                )
            if self.config.layout == "kitti" and fields[1] == "None":
                continue  # Eigen test lines without LiDAR ground truth are not evaluated (697 -> 652)
            entries.append(fields)
        return entries

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Sample]:
        reader = getattr(self, f"_read_{self.config.layout}")
        for fields in self.entries:
            yield reader(fields)

    def close(self) -> None:
        self._root.close()

    # --- Marigold depth layouts -------------------------------------------------------------------------------
    def _read_nyu(self, fields: list[str]) -> Sample:
        rgb = _decode_rgb(self._root.read(fields[0]), fields[0])
        depth = _decode_png16(self._root.read(fields[1]), fields[1], 1000.0)  # mm -> m; raw depth, not filled
        _check_same_hw(rgb, depth, "depth", fields[0])
        return Sample(fields[0], rgb, depth)

    _read_scannet = _read_nyu

    def _read_kitti(self, fields: list[str]) -> Sample:
        rgb = _decode_rgb(self._root.read(fields[0]), fields[0])
        depth = _decode_png16(self._root.read(fields[1]), fields[1], 256.0)
        _check_same_hw(rgb, depth, "depth", fields[0])
        if self.config.kitti_bm_crop:
            h, w = depth.shape
            if h < 352 or w < 1216:
                raise DatasetError(f"KITTI frame `{fields[0]}` must be at least 352x1216 for the benchmark crop; got {h}x{w}")
            top, left = h - 352, int((w - 1216) / 2)
            rgb = rgb[top : top + 352, left : left + 1216]
            depth = depth[top : top + 352, left : left + 1216]
        return Sample(fields[0], np.ascontiguousarray(rgb), np.ascontiguousarray(depth))

    def _read_eth3d(self, fields: list[str]) -> Sample:
        rgb = _decode_rgb(self._root.read(fields[0]), fields[0])
        raw = self._root.read(fields[1])
        h, w = rgb.shape[:2]
        # Headerless float32 despite the .JPG suffix; its shape is the RGB's (4032x6048 in the release).
        if len(raw) != h * w * 4:
            raise DatasetError(
                f"`{fields[1]}` must be raw float32 of the RGB size {h}x{w} ({h * w * 4} bytes); got {len(raw)} bytes"
            )
        depth = np.frombuffer(raw, dtype=np.float32).reshape(h, w).copy()
        depth[~np.isfinite(depth)] = 0.0  # inf = no measurement
        return Sample(fields[0], rgb, depth)

    def _read_diode(self, fields: list[str]) -> Sample:
        rgb = _decode_rgb(self._root.read(fields[0]), fields[0])
        depth = _decode_npy(self._root.read(fields[1]), fields[1]).astype(np.float32)
        mask = _decode_npy(self._root.read(fields[2]), fields[2]) != 0
        _check_same_hw(rgb, depth, "depth", fields[0])
        _check_same_hw(rgb, mask, "mask", fields[0])
        return Sample(fields[0], rgb, depth, mask=mask)

    # --- DSINE normal layout ----------------------------------------------------------------------------------
    def _read_dsine(self, fields: list[str]) -> Sample:
        rel = fields[0]
        if "_img." not in rel:
            raise DatasetError(f"DSINE split entries must name `<stem>_img.<ext>`; got `{rel}`")
        stem = rel[: rel.rindex("_img.")]
        rgb = _decode_rgb(self._root.read(rel), rel)
        for ext in (".png", ".exr"):
            try:
                data = self._root.read(f"{stem}_normal{ext}")
            except DatasetError:
                continue
            break
        else:
            raise DatasetError(f"missing ground truth `{stem}_normal.png` or `{stem}_normal.exr` in {self.root_path}")
        if ext == ".png":
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if img is None or img.ndim != 3 or img.dtype != np.uint8:
                raise DatasetError(f"`{stem}_normal.png` must be an 8-bit 3-channel PNG")
            raw = img[:, :, ::-1].astype(np.float32)  # BGR -> R,G,B = x,y,z
            valid = np.any(img != 0, axis=-1)  # (0,0,0) = invalid
            normals = raw / 255.0 * 2.0 - 1.0
        else:
            normals = _decode_exr(data, f"{stem}_normal.exr")
            valid = np.linalg.norm(normals, axis=-1) > 0.5  # plane-fitted GT: short vectors are invalid
        _check_same_hw(rgb, normals, "normals", rel)
        normals = normals * np.asarray(_NORMAL_FLIPS[self.config.normals_convention], np.float32)
        normals[~valid] = 0.0
        return Sample(rel, rgb, normals=normals.astype(np.float32))


def open_dataset(config: DatasetConfig, data_root: str | Path, split_file: str | Path | None = None) -> BenchmarkDataset:
    """Validate the root and split of one benchmark set and return its reader (raises :class:`DatasetError`)."""
    return BenchmarkDataset(config, Path(data_root), Path(split_file) if split_file else None)


def normals_to_optical(normals: np.ndarray, convention: str) -> np.ndarray:
    """``[...,3]`` normals in ``convention`` (see :class:`DatasetConfig`) -> optical frame (sign flips only)."""
    if convention not in _NORMAL_FLIPS:
        raise ValueError(f"`convention` must be one of {sorted(_NORMAL_FLIPS)}; got {convention!r}")
    return normals * np.asarray(_NORMAL_FLIPS[convention], dtype=normals.dtype)

