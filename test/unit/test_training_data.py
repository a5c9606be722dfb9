"""Dataset readers on files fabricated in the published layouts, the folder format, and the mixture sampler."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from d3_training.config import DatasetSpec
from d3_training.data import DataError, MixtureSampler, build_dataset, build_mixed

HW = (16, 24)


def _rgb(path: Path, h=30, w=40, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))


def _depth_png(path: Path, depth_units: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), depth_units.astype(np.uint16))


def test_hypersim_layout_mm_and_65m_limit(tmp_path):
    root = tmp_path / "hypersim"
    _rgb(root / "ai_001_001/rgb_cam_00_fr0000.png")
    depth_mm = np.full((30, 40), 2500)
    depth_mm[:, :20] = 65535  # 65.535 m: beyond Hypersim's 65 m -> invalid
    _depth_png(root / "ai_001_001/depth_plane_cam_00_fr0000.png", depth_mm)
    ds = build_dataset(DatasetSpec(kind="hypersim", path=str(root)), HW)
    s = ds[0]
    assert len(ds) == 1 and s["rgb"].shape == (3, *HW) and s["rgb"].min() >= -1
    assert np.allclose(s["depth_m"][s["valid_depth"]], 2.5)
    assert 0 < s["valid_depth"].mean() < 1 and not s["valid_normals"].any()


def test_hypersim_split_file_and_bad_line(tmp_path):
    root = tmp_path / "h"
    _rgb(root / "ai_001_002/rgb_cam_00_fr0001.png")
    _depth_png(root / "ai_001_002/depth_plane_cam_00_fr0001.png", np.full((30, 40), 1000))
    split = tmp_path / "split.txt"
    split.write_text("ai_001_002/rgb_cam_00_fr0001.png ai_001_002/depth_plane_cam_00_fr0001.png\n")
    assert len(build_dataset(DatasetSpec(kind="hypersim", path=str(root), split_file=str(split)), HW)) == 1
    split.write_text("ai_001_002/missing.png ai_001_002/depth_plane_cam_00_fr0001.png\n")
    with pytest.raises(DataError, match="line 1 must name existing files"):
        build_dataset(DatasetSpec(kind="hypersim", path=str(root), split_file=str(split)), HW)


@pytest.mark.parametrize("top", [("rgb", "depth"), ("vkitti_2.0.3_rgb", "vkitti_2.0.3_depth")])
def test_vkitti2_layout_cm_and_80m_limit(tmp_path, top):
    root = tmp_path / "vkitti"
    _rgb(root / top[0] / "Scene02/clone/frames/rgb/Camera_0/rgb_00000.jpg", 375, 1242)
    depth_cm = np.full((375, 1242), 1234)  # 12.34 m
    depth_cm[:100] = 65535  # sky, 655.35 m -> invalid (> 80 m)
    _depth_png(root / top[1] / "Scene02/clone/frames/depth/Camera_0/depth_00000.png", depth_cm)
    ds = build_dataset(DatasetSpec(kind="vkitti2", path=str(root), kitti_crop=True), HW)
    s = ds[0]
    assert np.allclose(s["depth_m"][s["valid_depth"]], 12.34, atol=1e-4)
    assert not s["valid_depth"][0].any() and s["valid_depth"][-1].all()


def test_folder_format_all_depth_and_normal_encodings(tmp_path):
    root = tmp_path / "folder"
    for stem in ("a", "b", "c"):
        _rgb(root / f"rgb/{stem}.png")
    _depth_png(root / "depth/a.png", np.full((30, 40), 3000))  # 3 m in mm
    np.save(root / "depth/b.npy", np.full((30, 40), 4.0, np.float32))
    n = np.zeros((30, 40, 3), np.float32)
    n[..., 1] = 1.0  # opengl: y up -> optical (0, -1, 0)
    (root / "normals").mkdir()
    np.save(root / "normals/a.npy", n)
    png = np.zeros((30, 40, 3), np.uint8)
    png[...] = (127, 127, 0)  # RGB -> n = (~0, ~0, -1)
    cv2.imwrite(str(root / "normals/b.png"), cv2.cvtColor(png, cv2.COLOR_RGB2BGR))
    ds = build_dataset(DatasetSpec(kind="folder", path=str(root), normals_convention="opengl"), HW)
    a, b, c = ds[0], ds[1], ds[2]
    assert np.allclose(a["depth_m"], 3.0) and np.allclose(b["depth_m"], 4.0) and not c["valid_depth"].any()
    assert np.allclose(a["normals"][:, 0, 0], [0, -1, 0])
    # png normals are decoded, converted from opengl (z toward the camera) and renormalised
    assert np.allclose(b["normals"][:, 0, 0], [0, 0, 1], atol=0.01)
    assert not c["valid_normals"].any()


def test_missing_paths_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="must be an existing directory"):
        build_dataset(DatasetSpec(kind="folder", path=str(tmp_path / "nope")), HW)
    (tmp_path / "empty/rgb").mkdir(parents=True)
    with pytest.raises(DataError, match="must contain .png/.jpg images; got none"):
        build_dataset(DatasetSpec(kind="folder", path=str(tmp_path / "empty")), HW)


def test_unlabeled_folder_recursive(tmp_path):
    _rgb(tmp_path / "imgs/x/1.jpg")
    _rgb(tmp_path / "imgs/2.png")
    ds = build_dataset(DatasetSpec(kind="unlabeled", path=str(tmp_path / "imgs")), HW)
    assert len(ds) == 2 and not ds[0]["valid_depth"].any()


def test_synthetic_has_exact_labels():
    s = build_dataset(DatasetSpec(kind="synthetic", num_samples=4), (32, 32))[1]
    assert s["valid_depth"].mean() > 0.9 and s["depth_m"][s["valid_depth"]].min() > 0.1
    norms = np.linalg.norm(s["normals"], axis=0)[s["valid_normals"]]
    assert np.allclose(norms, 1, atol=1e-4)


def test_synthetic_world_recipe_trains_and_the_shift_family_is_refused():
    ds = build_dataset(DatasetSpec(kind="synthetic", num_samples=8, scene_kind="world"), (32, 32))
    samples = [ds[i] for i in range(8)]
    for s in samples:  # exact labels where valid, zeros elsewhere
        norms = np.linalg.norm(s["normals"], axis=0)
        assert np.allclose(norms[s["valid_normals"]], 1, atol=1e-4) and not norms[~s["valid_normals"]].any()
        assert (s["depth_m"][s["valid_depth"]] > 0).all() and not s["depth_m"][~s["valid_depth"]].any()
    assert len({s["rgb"].tobytes() for s in samples}) == 8
    with pytest.raises(DataError, match="`scene_kind` must not be 'shift'"):
        build_dataset(DatasetSpec(kind="synthetic", scene_kind="shift"), (32, 32))
    with pytest.raises(DataError, match="`scene_kind` must be one of"):
        build_dataset(DatasetSpec(kind="synthetic", scene_kind="cave"), (32, 32))


def test_mixture_follows_probabilities_recycles_and_seeks_exactly():
    sampler = MixtureSampler([3, 1000], [0.5, 0.5], seed=0)
    draws = sampler.take(2000)
    counts = Counter(d for d, _ in draws)
    assert 900 < counts[0] < 1100  # the 3-item set is re-cycled, not exhausted
    small = [i for d, i in draws if d == 0]
    assert sorted(small[:3]) == [0, 1, 2] and sorted(small[3:6]) == [0, 1, 2]  # one permutation per epoch
    again = MixtureSampler([3, 1000], [0.5, 0.5], seed=0)
    again.seek(1500)
    assert again.take(500) == draws[1500:]


def test_ranks_take_disjoint_slices_of_the_global_batch():
    specs = (DatasetSpec(kind="synthetic", num_samples=8),)
    r0, r1, single = (build_mixed(specs, (16, 16), 0) for _ in range(3))
    b0, b1 = r0.next_batch(2, 2, 0), r1.next_batch(2, 2, 1)
    both = single.next_batch(4)
    assert np.array_equal(np.concatenate([b0["rgb"], b1["rgb"]]), both["rgb"])


def test_loader_threads_give_the_same_stream():
    specs = (DatasetSpec(kind="synthetic", num_samples=8),)
    plain, threaded = build_mixed(specs, (16, 16), 0), build_mixed(specs, (16, 16), 0, num_workers=2)
    for _ in range(2):
        assert np.array_equal(plain.next_batch(3)["depth_m"], threaded.next_batch(3)["depth_m"])


def _write_h5(path: Path, array: np.ndarray, key: str = "dataset"):
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh.create_dataset(key, data=array)


def test_hypersim_raw_hdf5_layout(tmp_path):
    pytest.importorskip("h5py")
    from d3_training.data import hypersim_planar_depth

    scene = tmp_path / "ai_001_001/images"
    h, w = 12, 16
    _write_h5(scene / "scene_cam_00_final_hdf5/frame.0000.color.hdf5", np.full((h, w, 3), 0.5, np.float32))
    dist = np.full((h, w), 3.0, np.float32)
    _write_h5(scene / "scene_cam_00_geometry_hdf5/frame.0000.depth_meters.hdf5", dist)
    entity = np.zeros((h, w), np.int32)
    entity[0] = -1  # sky / no geometry
    _write_h5(scene / "scene_cam_00_geometry_hdf5/frame.0000.render_entity_id.hdf5", entity)
    normal = np.zeros((h, w, 3), np.float32)
    normal[..., 2] = 1.0  # Hypersim camera frame: z backward = toward the camera
    _write_h5(scene / "scene_cam_00_geometry_hdf5/frame.0000.normal_cam.hdf5", normal)
    s = build_dataset(DatasetSpec(kind="hypersim_raw", path=str(tmp_path)), (h, w))[0]
    planar = hypersim_planar_depth(dist)
    assert planar.max() < 3.0 and planar[h // 2, w // 2] == pytest.approx(3.0, abs=5e-3)  # centre ray ~ z
    assert np.allclose(s["depth_m"][1:], planar[1:]) and not s["valid_depth"][0].any()
    assert np.allclose(s["normals"][:, 5, 5], [0, 0, -1])  # optical: facing the camera is -z
    assert s["rgb"].max() > 0  # tone-mapped, not black


def test_d3_official_h5_layout(tmp_path):
    pytest.importorskip("h5py")
    _rgb(tmp_path / "rgb/ai_001_002.png")
    _rgb(tmp_path / "rgb/Scene01_00001.jpg")
    _write_h5(tmp_path / "depth_ori/ai_001_002.h5", np.full((30, 40), 70.0, np.float32), key="depth")  # > 65 m
    _write_h5(tmp_path / "depth_ori/Scene01_00001.h5", np.full((30, 40), 70.0, np.float32), key="depth")  # < 80
    ds = build_dataset(DatasetSpec(kind="d3_official", path=str(tmp_path)), HW)
    by_stem = {p.stem: ds[i] for i, p in enumerate(ds.rgb)}
    assert not by_stem["ai_001_002"]["valid_depth"].any() and by_stem["Scene01_00001"]["valid_depth"].all()
