"""d3-predict end to end on generated images, and the PLY writer it uses."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from d3_perception.geometry.ply import read_ply, write_ply
from d3_perception.model import build_random_checkpoint
from d3_perception.predict import main, save_outputs


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_random_checkpoint(tmp_path_factory.mktemp("predict") / "tiny", seed=0)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "wide.png"), (rng.random((30, 52, 3)) * 255).astype(np.uint8))
    cv2.imwrite(str(folder / "sub" / "tall.jpg"), (rng.random((50, 28, 3)) * 255).astype(np.uint8))
    return folder


def _argv(ckpt, out, *inputs, extra=()):
    return [*map(str, inputs), "--checkpoint", str(ckpt), "--output", str(out), "--backend", "torch",
            "--resolution", "64", *extra]


def test_folder_recursive_writes_every_output_at_input_size(ckpt, images, tmp_path):
    out = tmp_path / "out"
    assert main(_argv(ckpt, out, images, extra=["--recursive", "--ply", "--fov-deg", "60"])) == 0
    for stem, (h, w) in {"wide": (30, 52), "tall": (50, 28)}.items():
        depth16 = cv2.imread(str(out / f"{stem}_depth.png"), cv2.IMREAD_UNCHANGED)
        assert depth16.dtype == np.uint16 and depth16.shape == (h, w)
        depth = np.load(out / f"{stem}_depth.npy")
        assert depth.dtype == np.float32 and depth.shape == (h, w) and 0 <= depth.min() <= depth.max() <= 1
        np.testing.assert_allclose(depth16 / 65535.0, depth, atol=1e-4)
        normals = np.load(out / f"{stem}_normals.npy")
        assert normals.shape == (h, w, 3)
        np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-3)
        assert cv2.imread(str(out / f"{stem}_normals.png")).shape == (h, w, 3)
        assert cv2.imread(str(out / f"{stem}_depth_colored.png")).shape == (h, w, 3)
        cloud = read_ply(out / f"{stem}.ply")
        assert cloud.shape == (h * w,) and set(cloud.dtype.names) >= {"x", "y", "z", "nx", "red"}
        assert 0.5 <= cloud["z"].min() and cloud["z"].max() <= 10.0  # relative depth mapped to [near, far]
        conf = np.load(out / f"{stem}_confidence.npy")
        assert conf.dtype == np.float32 and conf.shape == (h, w) and 0 <= conf.min() and conf.max() <= 1
        preview = cv2.imread(str(out / f"{stem}_confidence.png"), cv2.IMREAD_UNCHANGED)
        assert preview.dtype == np.uint8 and preview.shape == (h, w)
        np.testing.assert_allclose(preview / 255.0, np.clip(conf, 0, 1), atol=0.5 / 255 + 1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["written"] == 2 and summary["failed"] == []


def test_unreadable_file_is_reported_skipped_and_sets_exit_1(ckpt, images, tmp_path, capsys):
    (images / "broken.png").write_bytes(b"definitely not a png")
    out = tmp_path / "out"
    rc = main(_argv(ckpt, out, images / "*.png", extra=["--tasks", "depth", "--no-preview"]))
    err = capsys.readouterr().err
    assert rc == 1 and "skipped" in err and "broken.png" in err
    assert (out / "wide_depth.npy").is_file() and not (out / "wide_normals.npy").exists()
    assert not (out / "wide_depth_colored.png").exists()
    assert json.loads((out / "summary.json").read_text())["failed"][0]["path"].endswith("broken.png")


def test_intrinsics_give_the_expected_back_projection(ckpt, images, tmp_path):
    out = tmp_path / "out"
    argv = _argv(ckpt, out, images / "wide.png",
                 extra=["--ply", "--fx", "40", "--cx", "0", "--cy", "0", "--near-m", "1", "--far-m", "2"])
    assert main(argv) == 0
    depth = np.load(out / "wide_depth.npy")
    cloud = read_ply(out / "wide.ply")
    z = 1.0 + depth.reshape(-1)
    u = np.tile(np.arange(52), 30)
    np.testing.assert_allclose(cloud["z"], z, rtol=1e-5)
    np.testing.assert_allclose(cloud["x"], u * z / 40.0, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("extra", "message"), [
    (["--ply"], "needs intrinsics"),
    (["--ply", "--fx", "100", "--fov-deg", "60"], "alternatives"),
    (["--near-m", "5", "--far-m", "1"], "near < far"),
    (["--colormap", "no_such_map"], "`--colormap`"),
    (["--resolution", "100"], "multiple of 64"),
])
def test_bad_options_exit_2_with_one_line(ckpt, images, tmp_path, capsys, extra, message):
    rc = main(_argv(ckpt, tmp_path / "out", images / "wide.png", extra=extra))
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and lines[-1].startswith("d3-predict: error:") and message in lines[-1]


def test_nothing_to_do_and_missing_checkpoint_exit_2_without_traceback(ckpt, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "d3_perception.predict", str(tmp_path / "none*.png"),
                           "--checkpoint", str(ckpt), "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "must name at least one image" in proc.stderr
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.zeros((16, 16, 3), np.uint8))
    assert main([str(img), "--checkpoint", str(tmp_path / "nockpt"), "--output", str(tmp_path / "o")]) == 2


def test_write_ply_round_trip_binary_and_ascii(tmp_path):
    pts = np.array([[0, 0, 1], [1, 2, 3], [np.nan, 0, 0]], np.float32)
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    nrm = np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]], np.float32)
    for binary in (True, False):
        path = write_ply(tmp_path / f"c{binary}.ply", pts, rgb, nrm, binary=binary)
        back = read_ply(path)
        assert back.shape == (2,)  # the NaN point is dropped
        np.testing.assert_allclose(np.stack([back["x"], back["y"], back["z"]], 1), pts[:2])
        assert back["green"].tolist() == [0, 255] and back["nz"].tolist() == [-1.0, 0.0]
    with pytest.raises(ValueError, match="`colors` must be uint8"):
        write_ply(tmp_path / "x.ply", pts, rgb.astype(np.float32))
    with pytest.raises(ValueError, match=r"`points` must be \[N,3\]"):
        write_ply(tmp_path / "x.ply", pts[:, :2])


def test_confidence_map_is_low_at_a_depth_step_and_high_on_the_planes(tmp_path):
    h, w = 40, 60
    depth = np.full((1, h, w), 0.2, np.float32)
    depth[:, :, w // 2:] = 0.7  # two fronto-parallel planes and the step between them
    normals = np.zeros((1, 3, h, w), np.float32)
    normals[:, 2] = 1.0  # opengl: toward the viewer, i.e. fronto-parallel like the planes
    written = save_outputs(tmp_path, "step", np.zeros((h, w, 3), np.uint8), {"depth": depth, "normals": normals},
                           cmap="Spectral", normals_to_optical="opengl", ply=False, intr=None, near_m=0.5,
                           far_m=10.0, previews=False)
    assert tmp_path / "step_confidence.npy" in written and not (tmp_path / "step_confidence.png").exists()
    conf = np.load(tmp_path / "step_confidence.npy")
    assert conf[:, w // 2 - 1: w // 2 + 1].max() < 0.1 and conf[:, np.r_[:w // 2 - 4, w // 2 + 4:w]].min() > 0.9
