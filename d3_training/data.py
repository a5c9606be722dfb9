"""Training data: synthetic scenes on the fly, a generic folder format, Hypersim, Virtual KITTI 2, unlabeled
image folders, and a deterministic fixed-probability mixture whose position is part of the checkpoint.

Every dataset returns samples (dicts of numpy arrays) at the training resolution H×W:
    rgb        [3,H,W] float32 in [-1,1]
    depth_m    [H,W] float32 metres (0 where invalid)          valid_depth   [H,W] bool
    normals    [3,H,W] float32 unit, optical frame (x right, y down, z forward; 0 where invalid)
    valid_normals [H,W] bool
Missing labels are zeros with an all-False mask. Images are resized to cover H×W (aspect kept) and
centre-cropped; depth/normals use nearest-neighbour resampling so no invalid value is blended in.

Generic folder format (``kind: folder``)::

    root/rgb/<stem>.png|jpg|jpeg
    root/depth/<stem>.png   uint16 millimetres (0 = invalid)  | <stem>.npy float metres | <stem>.exr float metres
    root/normals/<stem>.npy [H,W,3] float in [-1,1] | <stem>.png 8-bit RGB = (n+1)/2·255 | <stem>.exr float
Either label folder may be missing. Normals are in the optical frame unless ``normals_convention: opengl``
(x right, y up, z toward the camera), which is converted on load.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")  # must be set before cv2 is imported to read .exr

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from d3_training.config import DatasetSpec  # noqa: E402

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
# Published valid depth ranges (metres, both strict): reference dataset_layouts §0.
DEFAULT_RANGES = {"hypersim": (1e-5, 65.0), "hypersim_raw": (1e-5, 65.0), "vkitti2": (1e-5, 80.0),
                  "d3_official": (1e-5, 80.0), "folder": (1e-5, 1e4),
                  "synthetic": (1e-5, 1e4), "unlabeled": (1e-5, 1e4)}


class DataError(ValueError):
    """A dataset path or file that cannot be used; one-line message."""


# ----------------------------------------------------------------------------- decoding helpers
def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"`{path}` must be a readable image; got unreadable file")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # [H,W,3] uint8


def read_depth_m(path: Path, png_divisor: float = 1000.0) -> np.ndarray:
    """Depth file -> [H,W] float32 metres; 16-bit PNG divided by `png_divisor` (mm: 1000, cm: 100)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        d = np.load(path).astype(np.float32)
    elif suffix in (".png", ".exr"):
        d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
        if d is None:
            raise DataError(f"`{path}` must be a readable depth image; got unreadable file")
        if suffix == ".png":
            if d.dtype != np.uint16:
                raise DataError(f"`{path}` must be a 16-bit PNG; got {d.dtype}")
            d = d.astype(np.float32) / png_divisor
        d = d.astype(np.float32)
        if d.ndim == 3:
            d = d[..., 0]
    else:
        raise DataError(f"`{path}` must be .png (uint16), .npy or .exr; got {suffix}")
    d = np.squeeze(d)
    if d.ndim != 2:
        raise DataError(f"`{path}` must hold an [H,W] depth map; got shape {d.shape}")
    return d


def read_normals(path: Path, convention: str = "optical") -> np.ndarray:
    """Normals file -> [H,W,3] float32 in the optical frame (0 vectors where invalid)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        n = np.load(path).astype(np.float32)
        if n.ndim == 3 and n.shape[0] == 3 and n.shape[-1] != 3:
            n = n.transpose(1, 2, 0)
    elif suffix in (".png", ".exr"):
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.ndim != 3:
            raise DataError(f"`{path}` must be a readable 3-channel normal image; got unreadable file")
        raw = cv2.cvtColor(raw[..., :3], cv2.COLOR_BGR2RGB)
        n = raw.astype(np.float32) / 255.0 * 2 - 1 if suffix == ".png" else raw.astype(np.float32)
        if suffix == ".png":
            n[(raw == 0).all(-1)] = 0
    else:
        raise DataError(f"`{path}` must be .npy, .png or .exr; got {suffix}")
    if n.ndim != 3 or n.shape[-1] != 3:
        raise DataError(f"`{path}` must hold [H,W,3] normals; got shape {n.shape}")
    if convention == "opengl":
        n = n * np.array([1, -1, -1], np.float32)
    return n


def resize_cover(arr: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    """Resize so the image covers (H,W) with its aspect kept, then centre-crop."""
    h, w = hw
    ih, iw = arr.shape[:2]
    s = max(h / ih, w / iw)
    nh, nw = max(h, round(ih * s)), max(w, round(iw * s))
    if (nh, nw) != (ih, iw):
        interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        arr = cv2.resize(arr, (nw, nh), interpolation=interp)
    top, left = (nh - h) // 2, (nw - w) // 2
    return arr[top:top + h, left:left + w]


def make_sample(rgb: np.ndarray, hw: tuple[int, int], depth_m: np.ndarray | None = None,
                normals: np.ndarray | None = None, depth_range: tuple[float, float] = (1e-5, 1e4)) -> dict:
    """Full-size arrays -> training sample at `hw` (see module docstring)."""
    rgb = resize_cover(rgb, hw, nearest=False)
    out = {"rgb": (rgb.astype(np.float32) / 127.5 - 1).transpose(2, 0, 1).copy()}
    if depth_m is not None:
        d = resize_cover(np.nan_to_num(depth_m, nan=0.0, posinf=0.0), hw, nearest=True).astype(np.float32)
        valid = (d > depth_range[0]) & (d < depth_range[1])
        out["depth_m"], out["valid_depth"] = np.where(valid, d, 0).astype(np.float32), valid
    else:
        out["depth_m"], out["valid_depth"] = np.zeros(hw, np.float32), np.zeros(hw, bool)
    if normals is not None:
        n = resize_cover(np.nan_to_num(normals), hw, nearest=True).astype(np.float32)
        norm = np.linalg.norm(n, axis=-1)
        valid = norm > 1e-4
        n = np.where(valid[..., None], n / np.maximum(norm, 1e-6)[..., None], 0)
        out["normals"], out["valid_normals"] = n.transpose(2, 0, 1).astype(np.float32).copy(), valid
    else:
        out["normals"], out["valid_normals"] = np.zeros((3, *hw), np.float32), np.zeros(hw, bool)
    return out


# ----------------------------------------------------------------------------- datasets
class SyntheticDataset(torch.utils.data.Dataset):
    """`num_samples` deterministic views: sample i = scene (seed, i // views) at trajectory time of view i % views.
    Rendered on the fly with exact depth (z, metres) and optical-frame normals. ``kind``: a scene kind of
    ``d3_perception.synthetic.SCENE_KINDS``; ``world`` is the wide world's training recipe (its own FOV and sensor
    effects per scene), ``shift`` its held-out family (evaluation only: :func:`build_dataset` refuses it)."""

    def __init__(self, hw: tuple[int, int], num_samples: int = 2000, seed: int = 0, kind: str = "room",
                 views_per_scene: int = 4) -> None:
        from d3_perception.synthetic import SCENE_KINDS

        if kind not in SCENE_KINDS:
            raise DataError(f"`scene_kind` must be one of {SCENE_KINDS}; got {kind!r}")
        self.hw, self.num_samples, self.seed, self.kind, self.views = hw, num_samples, seed, kind, views_per_scene

    def __len__(self) -> int:
        return self.num_samples

    @staticmethod
    @lru_cache(maxsize=64)
    def _sequence(scene_seed: int, kind: str, hw: tuple[int, int]):
        from d3_perception.synthetic import SyntheticSequence

        return SyntheticSequence(seed=scene_seed, size_hw=hw, kind=kind, fps=1.0)

    def __getitem__(self, i: int) -> dict:
        scene_seed = self.seed * 1_000_003 + i // self.views
        seq = self._sequence(scene_seed, self.kind, tuple(self.hw))
        frame = seq.frame(int((i % self.views) * 7 + scene_seed % 5))
        return make_sample(frame.rgb, self.hw, np.where(frame.valid, frame.depth_m, 0),
                           np.where(frame.valid[..., None], frame.normals, 0))


def _require_dir(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"`{what}` must be an existing directory; got {str(p)!r}")
    return p


def _find(folder: Path, stem: str, exts: tuple[str, ...]) -> Path | None:
    for ext in exts:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


class FolderDataset(torch.utils.data.Dataset):
    """The generic folder format (module docstring)."""

    def __init__(self, root: str | Path, hw: tuple[int, int], depth_range=(1e-5, 1e4), normals_convention="optical"):
        self.root = _require_dir(root, "data.path")
        rgb_dir = _require_dir(self.root / "rgb", "data.path/rgb")
        self.rgb = sorted(p for p in rgb_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not self.rgb:
            raise DataError(f"`{rgb_dir}` must contain .png/.jpg images; got none")
        self.hw, self.depth_range, self.convention = hw, depth_range, normals_convention

    def __len__(self) -> int:
        return len(self.rgb)

    def __getitem__(self, i: int) -> dict:
        stem = self.rgb[i].stem
        depth = _find(self.root / "depth", stem, (".png", ".npy", ".exr"))
        normals = _find(self.root / "normals", stem, (".npy", ".png", ".exr"))
        return make_sample(read_rgb(self.rgb[i]), self.hw, read_depth_m(depth) if depth else None,
                           read_normals(normals, self.convention) if normals else None, self.depth_range)


class PairListDataset(torch.utils.data.Dataset):
    """RGB + 16-bit depth PNG pairs (Hypersim processed: mm, < 65 m; Virtual KITTI 2: cm, < 80 m)."""

    def __init__(self, pairs: list[tuple[Path, Path]], hw, png_divisor: float, depth_range, crop=None):
        if not pairs:
            raise DataError("dataset must contain at least one RGB/depth pair; got none")
        self.pairs, self.hw, self.div, self.depth_range, self.crop = pairs, hw, png_divisor, depth_range, crop

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        rgb_path, depth_path = self.pairs[i]
        rgb, depth = read_rgb(rgb_path), read_depth_m(depth_path, self.div)
        if self.crop is not None:
            rgb, depth = self.crop(rgb), self.crop(depth)
        return make_sample(rgb, self.hw, depth, None, self.depth_range)


def hypersim_pairs(root: Path, split_file: str | None) -> list[tuple[Path, Path]]:
    """Marigold-processed Hypersim: `<scene>/rgb_cam_XX_frYYYY.png` + `depth_plane_cam_XX_frYYYY.png` (mm)."""
    if split_file:
        return _split_pairs(root, split_file)
    out = []
    for rgb in sorted(root.glob("*/rgb_*.png")):
        depth = rgb.with_name(rgb.name.replace("rgb_", "depth_plane_", 1))
        if depth.is_file():
            out.append((rgb, depth))
    return out


def vkitti2_pairs(root: Path, split_file: str | None) -> list[tuple[Path, Path]]:
    """Virtual KITTI 2: `rgb/SceneXX/<variant>/frames/rgb/Camera_N/rgb_NNNNN.jpg` and the matching
    `depth/.../frames/depth/Camera_N/depth_NNNNN.png` (cm). The official archive names `vkitti_2.0.3_rgb/`,
    `vkitti_2.0.3_depth/` are accepted too."""
    if split_file:
        return _split_pairs(root, split_file)
    out = []
    for rgb_top, depth_top in (("rgb", "depth"), ("vkitti_2.0.3_rgb", "vkitti_2.0.3_depth")):
        for rgb in sorted((root / rgb_top).glob("Scene*/*/frames/rgb/Camera_*/rgb_*.jpg")):
            rel = rgb.relative_to(root / rgb_top)
            parts = list(rel.parts)
            parts[parts.index("rgb")] = "depth"
            depth = (root / depth_top).joinpath(*parts).with_name(rgb.stem.replace("rgb_", "depth_") + ".png")
            if depth.is_file():
                out.append((rgb, depth))
    return out


def _split_pairs(root: Path, split_file: str) -> list[tuple[Path, Path]]:
    path = Path(split_file)
    if not path.is_file():
        raise DataError(f"`split_file` must exist; got {split_file!r}")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DataError(f"`{path}` line {n} must hold '<rgb> <depth>'; got {line!r}")
        rgb, depth = root / fields[0], root / fields[1]
        if not rgb.is_file() or not depth.is_file():
            raise DataError(f"`{path}` line {n} must name existing files under {root}; got {line!r}")
        out.append((rgb, depth))
    return out


def kitti_benchmark_crop(arr: np.ndarray) -> np.ndarray:
    """352×1216 KITTI benchmark crop: top = H-352, left = (W-1216)//2."""
    h, w = arr.shape[:2]
    top, left = max(0, h - 352), max(0, (w - 1216) // 2)
    return arr[top:top + 352, left:left + 1216]


def _h5(path: Path, key: str = "dataset") -> np.ndarray:
    try:
        import h5py
    except ImportError:
        raise DataError("HDF5 datasets need h5py (pip install h5py); got it not installed") from None
    with h5py.File(path, "r") as fh:
        if key not in fh:
            raise DataError(f"`{path}` must hold the HDF5 dataset {key!r}; got keys {sorted(fh)}")
        return np.asarray(fh[key])


def hypersim_tonemap(color: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Hypersim HDR color -> uint8: gamma 1/2.2, scaled so the 90th-percentile brightness becomes 0.8."""
    brightness = 0.3 * color[..., 0] + 0.59 * color[..., 1] + 0.11 * color[..., 2]
    p90 = np.percentile(brightness[valid], 90) if valid.any() else 0.0
    scale = 1.0 if p90 < 1e-4 else (0.8 ** 2.2) / p90
    return (np.clip(np.power(np.maximum(scale * color, 0), 1 / 2.2), 0, 1) * 255).round().astype(np.uint8)


def hypersim_planar_depth(distance_m: np.ndarray, focal_px_at_1024: float = 886.81) -> np.ndarray:
    """Euclidean distance to the camera centre -> planar z-depth (focal scaled to the image width)."""
    h, w = distance_m.shape
    f = focal_px_at_1024 * w / 1024.0
    x = np.arange(w) - w / 2 + 0.5
    y = np.arange(h) - h / 2 + 0.5
    return (distance_m * f / np.sqrt(x[None] ** 2 + y[:, None] ** 2 + f**2)).astype(np.float32)


class HypersimRawDataset(torch.utils.data.Dataset):
    """The Hypersim download layout: `<scene>/images/scene_<cam>_final_hdf5/frame.NNNN.color.hdf5` with
    `..._geometry_hdf5/frame.NNNN.depth_meters.hdf5` (distance -> planar depth), optional
    `render_entity_id` (-1 = invalid) and `normal_cam` (Hypersim camera frame x right, y up, z backward ->
    optical). HDF5 key `dataset`; tone-mapped like the Marigold preprocessing; valid < 65 m."""

    def __init__(self, root: str | Path, hw, depth_range=(1e-5, 65.0)) -> None:
        root = _require_dir(root, "data.path")
        self.frames = sorted(root.glob("*/images/scene_*_final_hdf5/frame.*.color.hdf5"))
        if not self.frames:
            raise DataError(f"`{root}` must contain <scene>/images/scene_*_final_hdf5/frame.*.color.hdf5; got none")
        self.hw, self.depth_range = hw, depth_range

    def __len__(self) -> int:
        return len(self.frames)

    def _geometry(self, color: Path, name: str) -> Path:
        geo = color.parent.with_name(color.parent.name.replace("_final_hdf5", "_geometry_hdf5"))
        return geo / color.name.replace(".color.hdf5", f".{name}.hdf5")

    def __getitem__(self, i: int) -> dict:
        color = self.frames[i]
        depth = hypersim_planar_depth(_h5(self._geometry(color, "depth_meters")).astype(np.float32))
        valid = np.isfinite(depth)
        entity = self._geometry(color, "render_entity_id")
        if entity.is_file():
            valid &= _h5(entity) != -1
        depth = np.where(valid, depth, 0).astype(np.float32)
        normals = None
        normal_file = self._geometry(color, "normal_cam")
        if normal_file.is_file():
            normals = np.nan_to_num(_h5(normal_file).astype(np.float32)) * np.array([1, -1, -1], np.float32)
            normals[~valid] = 0
        rgb = hypersim_tonemap(np.nan_to_num(_h5(color).astype(np.float32)), valid)
        return make_sample(rgb, self.hw, depth, normals, self.depth_range)


class D3OfficialDataset(torch.utils.data.Dataset):
    """The official D³ training folders (reference dataset_layouts §10): `rgb/<stem>.png|jpg` with
    `depth_ori/<stem>.h5` (key "depth", metric) and/or `normal/<stem>.h5` (key "depth", [H,W,3] in [-1,1]).
    Valid depth by stem: `ai*` (Hypersim) < 65 m, `Scene*` (VKITTI) and `coco*` < 80 m."""

    def __init__(self, root: str | Path, hw, normals_convention: str = "optical") -> None:
        self.root = _require_dir(root, "data.path")
        rgb_dir = _require_dir(self.root / "rgb", "data.path/rgb")
        self.rgb = sorted(p for p in rgb_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not self.rgb:
            raise DataError(f"`{rgb_dir}` must contain .png/.jpg images; got none")
        self.hw, self.convention = hw, normals_convention

    def __len__(self) -> int:
        return len(self.rgb)

    def __getitem__(self, i: int) -> dict:
        stem = self.rgb[i].stem
        depth_file, normal_file = self.root / "depth_ori" / f"{stem}.h5", self.root / "normal" / f"{stem}.h5"
        depth = np.squeeze(_h5(depth_file, "depth")).astype(np.float32) if depth_file.is_file() else None
        normals = _h5(normal_file, "depth").astype(np.float32) if normal_file.is_file() else None
        if normals is not None and self.convention == "opengl":
            normals = normals * np.array([1, -1, -1], np.float32)
        max_m = 65.0 if stem.startswith("ai") else 80.0
        return make_sample(read_rgb(self.rgb[i]), self.hw, depth, normals, (1e-5, max_m))


class UnlabeledDataset(torch.utils.data.Dataset):
    """Any folder of images (recursive) for stage-1 prior aggregation; no labels."""

    def __init__(self, root: str | Path, hw: tuple[int, int]) -> None:
        root = _require_dir(root, "data.path")
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise DataError(f"`{root}` must contain .png/.jpg images; got none")
        self.hw = hw

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        return make_sample(read_rgb(self.files[i]), self.hw)


def build_dataset(spec: DatasetSpec, hw: tuple[int, int]) -> torch.utils.data.Dataset:
    lo, hi = DEFAULT_RANGES[spec.kind]
    rng = (spec.min_depth_m if spec.min_depth_m is not None else lo, spec.max_depth_m if spec.max_depth_m is not None else hi)
    if spec.kind == "synthetic":
        if spec.scene_kind == "shift":  # held out by construction: no training config may draw from it
            raise DataError("`scene_kind` must not be 'shift' in training data (it is the held-out shift family; "
                            "train on 'world'); got 'shift'")
        return SyntheticDataset(hw, spec.num_samples, spec.seed, spec.scene_kind)
    if spec.kind == "folder":
        return FolderDataset(spec.path, hw, rng, spec.normals_convention)
    if spec.kind == "unlabeled":
        return UnlabeledDataset(spec.path, hw)
    if spec.kind == "hypersim_raw":
        return HypersimRawDataset(spec.path, hw, rng)
    if spec.kind == "d3_official":
        return D3OfficialDataset(spec.path, hw, spec.normals_convention)
    root = _require_dir(spec.path, "data.path")
    if spec.kind == "hypersim":
        return PairListDataset(hypersim_pairs(root, spec.split_file), hw, 1000.0, rng)
    crop = kitti_benchmark_crop if spec.kitti_crop else None
    return PairListDataset(vkitti2_pairs(root, spec.split_file), hw, 100.0, rng, crop)


# ----------------------------------------------------------------------------- mixture + resumable sampling
class MixtureSampler:
    """Deterministic index stream over several datasets mixed by fixed probabilities.

    Draw k: dataset d ~ Categorical(weights) from a generator seeded by (seed, k); within d, items follow a
    per-epoch permutation seeded by (seed, d, epoch), re-cycled when exhausted (so the mixture holds at any length).
    The state is only the number of draws: `seek(n)` replays the choices, which makes resume exact.
    """

    def __init__(self, sizes: list[int], weights: list[float], seed: int = 0) -> None:
        if not sizes or any(s < 1 for s in sizes) or len(sizes) != len(weights):
            raise ValueError(f"`sizes` must be positive, one per weight; got {sizes}, {weights}")
        w = np.asarray(weights, np.float64)
        self.sizes, self.p, self.seed = list(sizes), w / w.sum(), seed
        self.seek(0)

    def seek(self, n: int) -> None:
        self.position, self.counts, self._perms = 0, [0] * len(self.sizes), {}
        for _ in range(n):
            self.next()

    def _choose(self, k: int) -> int:
        if len(self.sizes) == 1:
            return 0
        return int(np.random.default_rng([self.seed, 7, k]).choice(len(self.sizes), p=self.p))

    def next(self) -> tuple[int, int]:
        d = self._choose(self.position)
        j = self.counts[d]
        epoch, pos = divmod(j, self.sizes[d])
        key = (d, epoch)
        if key not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k[0] != d}
            self._perms[key] = np.random.default_rng([self.seed, 11, d, epoch]).permutation(self.sizes[d])
        self.counts[d] += 1
        self.position += 1
        return d, int(self._perms[key][pos])

    def take(self, n: int) -> list[tuple[int, int]]:
        return [self.next() for _ in range(n)]


class MixedData:
    """Datasets + MixtureSampler -> collated batches; each rank keeps its slice of every global batch."""

    def __init__(self, datasets: list, weights: list[float], seed: int, hflip: bool = False, num_workers: int = 0) -> None:
        self.datasets = datasets
        self.sampler = MixtureSampler([len(d) for d in datasets], weights, seed)
        self.hflip, self.seed = hflip, seed
        # threads, not processes: decoding (cv2) and rendering (numpy) release the GIL, and the indices are drawn
        # up front, so the stream stays deterministic and resumable
        self.pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None

    def state_dict(self) -> dict:
        return {"position": self.sampler.position}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.seek(int(state["position"]))

    def next_batch(self, per_device: int, num_processes: int = 1, rank: int = 0) -> dict[str, torch.Tensor]:
        draws = self.sampler.take(per_device * num_processes)[rank * per_device:(rank + 1) * per_device]
        position = self.sampler.position

        def load(draw: tuple[int, int]) -> dict:
            d, i = draw
            s = self.datasets[d][i]
            if self.hflip and np.random.default_rng([self.seed, 13, d, i, position]).random() < 0.5:
                s = _hflip(s)
            return s

        samples = list(self.pool.map(load, draws)) if self.pool is not None else [load(x) for x in draws]
        return collate(samples)


def _hflip(s: dict) -> dict:
    out = {k: np.ascontiguousarray(v[..., ::-1]) for k, v in s.items()}
    out["normals"] = out["normals"] * np.array([-1, 1, 1], np.float32)[:, None, None]
    return out


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def build_mixed(specs: tuple[DatasetSpec, ...], hw: tuple[int, int], seed: int, hflip: bool = False,
                num_workers: int = 0) -> MixedData:
    datasets = [build_dataset(s, hw) for s in specs]
    return MixedData(datasets, [s.weight for s in specs], seed, hflip, num_workers)
