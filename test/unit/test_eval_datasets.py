"""``d3-eval`` readers on tiny fabricated samples in every on-disk layout, and the benchmark CLI end to end.

The fabricated images *encode* their ground truth (grey level = relative depth, colour = optical-frame normal),
and :class:`ChannelBackend` decodes it, so a correct reader + protocol gives near-perfect metrics while a wrong
unit, crop, mask or normal frame gives clearly bad ones.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from d3_perception.backends.base import Backend, BackendInfo
from d3_perception.evaluation import benchmark_cli
from d3_perception.evaluation.datasets import DatasetError, load_dataset_config, open_dataset


class ChannelBackend(Backend):
    """depth = red / 255 (relative, 0 = near); normals = rgb / 255 * 2 - 1 (optical frame)."""

    info = BackendInfo("channel", "cpu", "fp32", "channel-test", ("depth", "normals"), 64)

    def predict(self, images, tasks=None):
        x = np.asarray(images, np.float32) / 255.0  # [N,H,W,3]
        return {"depth": x[..., 0].copy(), "normals": np.moveaxis(x * 2.0 - 1.0, -1, 1).copy()}


def _depth_field(h, w, near=1.0, far=5.0):
    yy, xx = np.mgrid[0:h, 0:w]
    return (near + (far - near) * (0.6 * xx / max(w - 1, 1) + 0.4 * yy / max(h - 1, 1))).astype(np.float32)


def _rgb_from_depth(d, near=1.0, far=5.0):
    g = np.clip(np.round(255 * (d - near) / (far - near)), 0, 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def _png(path: Path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.ndim == 3:
        arr = arr[:, :, ::-1]  # RGB -> BGR for OpenCV
    assert cv2.imwrite(str(path), arr)


def _tar_dir(src: Path, dst: Path):
    with tarfile.open(dst, "w") as tar:  # members "./<rel>" as Marigold's archives
        for p in sorted(src.rglob("*")):
            tar.add(p, arcname="./" + str(p.relative_to(src)), recursive=False)


def make_nyu(root: Path, as_tar=True, n=2):
    src = root / "nyu_src"
    lines = []
    for i in range(n):
        d = _depth_field(480, 640, 1.0, 5.0)
        rgb = _rgb_from_depth(d)
        rgb[:45] = 255 - rgb[:45]  # wrong outside the Eigen crop: must not count
        mm = np.round(d * 1000).astype(np.uint16)
        mm[200:210, 300:310] = 0  # missing raw depth
        folder = src / "test" / f"kitchen_{i:04d}"
        _png(folder / f"rgb_{i:04d}.png", rgb)
        _png(folder / f"depth_{i:04d}.png", mm)
        _png(folder / f"filled_{i:04d}.png", np.full_like(mm, 1))  # filled depth must never be used
        lines.append(f"test/kitchen_{i:04d}/rgb_{i:04d}.png test/kitchen_{i:04d}/depth_{i:04d}.png "
                     f"test/kitchen_{i:04d}/filled_{i:04d}.png")
    (root / "nyuv2").mkdir(parents=True, exist_ok=True)
    if as_tar:
        _tar_dir(src, root / "nyuv2" / "nyu_labeled_extracted.tar")
    else:
        src.rename(root / "nyuv2" / "nyu_labeled_extracted")
    split = root / "data_split/nyu_depth/labeled/filename_list_test.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("\n".join(lines) + "\n")


def make_kitti(root: Path):
    base = root / "kitti" / "kitti_eigen_split_test"
    d = _depth_field(375, 1242, 2.0, 60.0)
    rgb = _rgb_from_depth(d, 2.0, 60.0)
    gt = np.zeros((375, 1242), np.uint16)
    gt[::4, ::3] = np.round(d[::4, ::3] * 256).astype(np.uint16)  # sparse LiDAR, value / 256 = m
    gt[:60] = np.round(d[:60] * 2 * 256).astype(np.uint16)  # wrong above the Eigen crop: must not count
    _png(base / "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png", rgb)
    _png(base / "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png", gt)
    split = root / "data_split/kitti_depth/eigen_test_files_with_gt.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text(
        "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png "
        "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png 721.5377\n"
        "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000070.png None 721.5377\n"
    )


def make_eth3d(root: Path, bad_size=False):
    src = root / "eth3d_src"
    d = _depth_field(24, 36, 2.0, 20.0)
    d[0, 0] = np.inf  # no measurement
    _png(src / "rgb/office/images/dslr_images/DSC_0219.JPG.png", _rgb_from_depth(d, 2.0, 20.0))
    (src / "rgb/office/images/dslr_images/DSC_0219.JPG.png").rename(src / "rgb/office/images/dslr_images/DSC_0219.JPG")
    raw = src / "depth/office_dslr_depth/office/ground_truth_depth/dslr_images/DSC_0219.JPG"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes((d if not bad_size else d[:-1]).astype(np.float32).tobytes())
    (root / "eth3d").mkdir(parents=True, exist_ok=True)
    _tar_dir(src, root / "eth3d" / "eth3d.tar")
    split = root / "data_split/eth3d_depth/eth3d_filename_list.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("rgb/office/images/dslr_images/DSC_0219.JPG "
                     "depth/office_dslr_depth/office/ground_truth_depth/dslr_images/DSC_0219.JPG\n")


def make_scannet(root: Path):
    base = root / "scannet" / "scannet_val_sampled_800_1"
    d = _depth_field(48, 64, 0.5, 4.0)
    _png(base / "scene0406_02/color/000300.png", _rgb_from_depth(d, 0.5, 4.0))
    (base / "scene0406_02/color/000300.png").rename(base / "scene0406_02/color/000300.jpg")  # PNG bytes, .jpg name
    _png(base / "scene0406_02/depth/000300.png", np.round(d * 1000).astype(np.uint16))
    split = root / "data_split/scannet_depth/scannet_val_sampled_list_800_1.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("scene0406_02/color/000300.jpg scene0406_02/depth/000300.png\n")


def make_diode(root: Path):
    base = root / "diode" / "diode_val"
    d = _depth_field(48, 64, 1.0, 30.0)
    stem = "indoors/scene_00021/scan_00189/00021_00189_indoors_200_010"
    rgb = _rgb_from_depth(d, 1.0, 30.0)
    rgb[:, :8] = 0  # wrong where the mask is off
    mask = np.ones((48, 64), np.float32)
    mask[:, :8] = 0
    _png(base / f"{stem}.png", rgb)
    np.save(base / f"{stem}_depth.npy", d[:, :, None])  # official shape H x W x 1
    np.save(base / f"{stem}_depth_mask.npy", mask)
    split = root / "data_split/diode_depth/diode_val_all_filename_list.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text(f"{stem}.png {stem}_depth.npy {stem}_depth_mask.npy\n")


def _normal_field(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    n = np.stack([0.4 * (xx / w - 0.5), 0.3 * (yy / h - 0.5), -np.ones((h, w))], axis=-1)  # optical, facing camera
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)


def make_dsine(root: Path, name: str, exr: bool):
    base = root / "dsine_eval" / name
    n_opt = _normal_field(40, 56)
    rgb = np.round((n_opt + 1) / 2 * 255).astype(np.uint8)  # the "image" encodes the optical normal
    n_dsine = -n_opt  # DSINE stores x left, y up, z toward the camera
    rel = "test/000000_img.png"
    _png(base / rel, rgb)
    if exr:
        import OpenEXR

        gt = n_dsine.copy()
        gt[:4] = 0.0  # invalid (|n| <= 0.5)
        with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage},
                          {"RGB": gt}) as f:
            f.write(str(base / "test/000000_normal.exr"))
    else:
        v = np.round((n_dsine + 1) / 2 * 255).astype(np.uint8)
        v[:4] = 0  # invalid
        _png(base / "test/000000_normal.png", v)
    (base / "split").mkdir(parents=True, exist_ok=True)
    (base / "split" / "test.txt").write_text(rel + "\n")


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    make_nyu(root)
    make_kitti(root)
    make_eth3d(root)
    make_scannet(root)
    make_diode(root)
    make_dsine(root, "nyuv2", exr=False)
    make_dsine(root, "ibims", exr=True)
    return root


@pytest.fixture
def checkpoint_dir(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"normals_convention": "optical"}))
    return ckpt


def run_eval(monkeypatch, capsys, argv, resolutions=None):
    def create(args, resolution=None):
        if resolutions is not None:
            resolutions.append(resolution)
        return ChannelBackend()

    monkeypatch.setattr(benchmark_cli, "_create_backend", create)
    rc = benchmark_cli.main([*argv, "--no-progress"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_every_layout_reads_and_scores_near_perfect(data_root, checkpoint_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    rc, stdout, err = run_eval(monkeypatch, capsys, [
        "--checkpoint", str(checkpoint_dir), "--data-root", str(data_root), "--out", str(out),
        "--datasets", "nyuv2,kitti,eth3d,scannet,diode,nyuv2_normals,ibims_normals"])
    assert rc == 0, err
    report = json.loads((out / "benchmark.json").read_text())
    res = {r["name"]: r for r in report["datasets"]}
    assert res["nyuv2"]["evaluated"] == 2 and res["kitti"]["evaluated"] == 1 and res["kitti"]["split_samples"] == 1
    for name in ("nyuv2", "kitti", "eth3d", "scannet", "diode"):
        m = res[name]["metrics"]
        assert m["abs_rel"] < 0.01 and m["delta1"] == 1.0, (name, m)
        assert not res[name]["complete"]  # 1-2 fabricated samples are never the official split
    for name in ("nyuv2_normals", "ibims_normals"):
        m = res[name]["metrics"]
        assert m["mean"] < 1.0 and m["a11.25"] == 1.0, (name, m)
    md = (out / "benchmark.md").read_text()
    assert "Partial evaluation" in md and "Marigold + E2E FT [e2eft_tab5]" in md and "Lotus-G [lotus_tab2]" in md
    assert "| 5.2 | 96.6 |" in md  # a published number, beside ours
    assert "NYUv2" in stdout and "partial" in stdout


def test_folder_and_tar_roots_give_the_same_result(tmp_path):
    make_nyu(tmp_path / "a", as_tar=True)
    make_nyu(tmp_path / "b", as_tar=False)
    cfg = load_dataset_config("nyuv2")
    sa, sb = list(open_dataset(cfg, tmp_path / "a")), list(open_dataset(cfg, tmp_path / "b"))
    assert [s.name for s in sa] == [s.name for s in sb]
    np.testing.assert_array_equal(sa[0].depth_m, sb[0].depth_m)
    assert sa[0].depth_m[0, 0] == pytest.approx(1.0) and sa[0].depth_m[205, 305] == 0.0  # mm -> m, raw not filled


def test_kitti_benchmark_crop_and_eigen_mask(tmp_path):
    make_kitti(tmp_path)
    (s,) = list(open_dataset(load_dataset_config("kitti"), tmp_path))
    assert s.rgb.shape == (352, 1216, 3) and s.depth_m.shape == (352, 1216)
    mask = load_dataset_config("kitti").depth.valid_mask(s.depth_m)
    rows = np.where(mask.any(axis=1))[0]
    assert rows.min() >= 117 and rows.max() < 321


def test_dsine_ground_truth_is_converted_to_the_optical_frame(tmp_path):
    make_dsine(tmp_path, "nyuv2", exr=False)
    (s,) = list(open_dataset(load_dataset_config("nyuv2_normals"), tmp_path))
    n = s.normals
    assert np.all(n[:4] == 0)  # invalid rows stay zero
    assert np.all(n[4:, :, 2] < -0.9)  # facing the camera in the optical frame (z forward)


def test_missing_dataset_is_a_one_line_error_naming_the_expected_path(tmp_path, checkpoint_dir, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = run_eval(monkeypatch, capsys, ["--checkpoint", str(checkpoint_dir), "--data-root",
                                                str(tmp_path / "empty"), "--datasets", "kitti"])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "dataset not found: expected" in err and "kitti/kitti_eigen_split_test.tar" in err


def test_missing_split_file_names_the_override(tmp_path, checkpoint_dir, monkeypatch, capsys):
    make_scannet(tmp_path)
    (tmp_path / "data_split/scannet_depth/scannet_val_sampled_list_800_1.txt").unlink()
    rc, _, err = run_eval(monkeypatch, capsys, ["--checkpoint", str(checkpoint_dir), "--data-root", str(tmp_path),
                                                "--datasets", "scannet"])
    assert rc == 2 and "split file for scannet not found" in err and "--split-file scannet=PATH" in err


@pytest.mark.parametrize("case", ["short_line", "missing_member", "eth3d_size", "unknown_dataset", "not_a_tar"])
def test_malformed_datasets_give_one_line_errors(tmp_path, checkpoint_dir, monkeypatch, capsys, case):
    datasets = "nyuv2"
    if case == "short_line":
        make_nyu(tmp_path)
        (tmp_path / "data_split/nyu_depth/labeled/filename_list_test.txt").write_text("test/a/rgb_0001.png\n")
        expect = "must have 2 fields; got 1"
    elif case == "missing_member":
        make_nyu(tmp_path)
        (tmp_path / "data_split/nyu_depth/labeled/filename_list_test.txt").write_text("x/rgb.png x/depth.png\n")
        expect = "missing member ./x/rgb.png"
    elif case == "eth3d_size":
        make_eth3d(tmp_path, bad_size=True)
        datasets = "eth3d"
        expect = "must be raw float32 of the RGB size 24x36"
    elif case == "unknown_dataset":
        datasets = "middlebury"
        expect = "dataset config `middlebury` not found"
    else:
        make_nyu(tmp_path)
        (tmp_path / "nyuv2/nyu_labeled_extracted.tar").write_bytes(b"\x1f\x8b gzip, not a plain tar")
        expect = "not a readable uncompressed .tar"
    rc, _, err = run_eval(monkeypatch, capsys, ["--checkpoint", str(checkpoint_dir), "--data-root", str(tmp_path),
                                                "--datasets", datasets, "--out", str(tmp_path / "o")])
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and expect in err, err


def test_limit_marks_the_result_partial(tmp_path, checkpoint_dir, monkeypatch, capsys):
    make_nyu(tmp_path, n=3)
    rc, stdout, err = run_eval(monkeypatch, capsys, ["--checkpoint", str(checkpoint_dir), "--data-root", str(tmp_path),
                                                     "--datasets", "nyuv2", "--limit", "1", "--out", str(tmp_path / "o")])
    assert rc == 0, err
    r = json.loads((tmp_path / "o" / "benchmark.json").read_text())["datasets"][0]
    assert r["evaluated"] == 1 and r["split_samples"] == 3 and r["complete"] is False
    assert "(partial: 1/654)" in stdout


def test_protocol_resolution_builds_one_backend_per_resolution(tmp_path, checkpoint_dir, monkeypatch, capsys):
    make_nyu(tmp_path)
    make_scannet(tmp_path)
    make_kitti(tmp_path)
    calls: list = []
    rc, _, err = run_eval(monkeypatch, capsys, ["--checkpoint", str(checkpoint_dir), "--data-root", str(tmp_path),
                                                "--datasets", "nyuv2,scannet,kitti", "--resolution", "protocol",
                                                "--out", str(tmp_path / "o")], calls)
    assert rc == 0, err
    assert calls == [640, 1216]  # NYUv2 and ScanNet share the 640 px backend; KITTI runs at 1216
    rc, _, err = run_eval(monkeypatch, capsys, ["--checkpoint", str(checkpoint_dir), "--data-root", str(tmp_path),
                                                "--datasets", "nyuv2", "--resolution", "700"])
    assert rc == 2 and "multiple of 64" in err


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark_cli.main(["--help"])
    assert exc.value.code == 0
    assert "--datasets nyuv2,kitti --limit 20" in capsys.readouterr().out


def test_dataset_error_is_a_value_error_with_context():
    with pytest.raises(DatasetError, match="known: nyuv2, kitti"):
        load_dataset_config("nope")


def test_depth_sets_report_confidence_calibration_that_finds_smeared_edges(tmp_path, checkpoint_dir, monkeypatch,
                                                                          capsys):
    """A prediction smeared across a depth step (the flying pixels of back-projection): the node's confidence
    ranks those pixels last (AUSE well under random's) and the gate removes most flying points."""
    from d3_perception.evaluation.datasets import Sample

    h, w = 480, 640  # NYUv2's frame (its protocol crops to the Eigen box)
    depth = np.full((h, w), 2.0, np.float32)
    depth[:, w // 2:] = 6.0  # a step
    rel = (depth - 1.0) / 6.0
    smeared = cv2.blur(rel, (17, 1))  # the model's soft edge: 8 wrong columns either side

    class StepSet:
        config = load_dataset_config("nyuv2")
        root_path = tmp_path

        def __len__(self):
            return 3

        def __iter__(self):
            for i in range(3):
                yield Sample(f"step_{i}", np.zeros((h, w, 3), np.uint8), depth.copy())

    class SmearBackend(ChannelBackend):
        def predict(self, images, tasks=None):
            return {"depth": smeared[None].copy()}

    r = benchmark_cli.evaluate_dataset(StepSet(), SmearBackend(), progress=False, min_confidence=0.3)
    c = r["calibration"]
    assert c["frames"] == 3 and c["min_confidence"] == 0.3
    assert c["ause_over_random"] < 0.5  # the target, on its own failure mode
    fly = c["flying_points"]
    assert fly["share_before"] > 0.02 and fly["reduction"] >= 5 and fly["kept_share"] >= 0.85

    # and through the CLI: JSON, markdown table, console line; normals sets get none
    make_nyu(tmp_path / "data", n=1)
    out = tmp_path / "out"
    rc, stdout, err = run_eval(monkeypatch, capsys, ["--checkpoint", str(checkpoint_dir), "--data-root",
                                                     str(tmp_path / "data"), "--out", str(out), "--datasets", "nyuv2",
                                                     "--min-confidence", "0.2"])
    assert rc == 0, err
    res = json.loads((out / "benchmark.json").read_text())["datasets"][0]
    assert res["calibration"]["frames"] == 1 and res["calibration"]["min_confidence"] == 0.2
    assert "## Confidence calibration" in (out / "benchmark.md").read_text()
    assert "confidence: AUSE" in stdout
    rc, _, err = run_eval(monkeypatch, capsys, ["--checkpoint", str(checkpoint_dir), "--data-root",
                                                str(tmp_path / "data"), "--datasets", "nyuv2", "--min-confidence", "2"])
    assert rc == 2 and "`--min-confidence` must be in [0, 1]" in err
