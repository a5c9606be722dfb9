"""d3-export: ONNX file + parity report, fixed shapes, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from d3_perception.export import main
from d3_perception.model import build_random_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_random_checkpoint(tmp_path_factory.mktemp("export") / "tiny", seed=0)


def test_export_writes_onnx_and_a_passing_parity_report(ckpt, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    rc = main([str(ckpt), "--output", str(out), "--exporter", "legacy", "--tasks", "depth"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)  # stdout is pure JSON
    report = json.loads((tmp_path / "m.onnx.parity.json").read_text())
    assert summary["parity"]["passed"] is True and report["passed"] is True
    assert report["max_abs_error"]["depth"] <= 1e-3 and "normals" not in report["max_abs_error"]
    import onnx

    model = onnx.load(str(out))
    assert model.opset_import[0].version >= 17
    assert [o.name for o in model.graph.output] == ["depth"]
    assert [i.name for i in model.graph.input] == ["image"]  # τ and the prompt embedding are constants inside


def test_fixed_size_export_runs_at_that_size_only(ckpt, tmp_path):
    from d3_perception.backends import create_backend

    out = tmp_path / "fixed.onnx"
    assert main([str(ckpt), "-o", str(out), "--exporter", "legacy", "--height", "64", "--width", "128",
                 "--no-parity"]) == 0
    backend = create_backend("onnxruntime", ckpt, onnx_path=out, processing_resolution=128)
    res = backend.predict(np.zeros((2, 30, 60, 3), np.uint8))  # 30x60 -> 64x128: the exported size
    assert res["depth"].shape == (2, 30, 60)
    with pytest.raises(ValueError, match="must be 64x128 for this fixed-shape ONNX file"):
        backend.predict(np.zeros((60, 60, 3), np.uint8))


@pytest.mark.parametrize(("argv", "message"), [
    (["--height", "64"], "`--height` and `--width` must be given together"),
    (["--height", "60", "--width", "64"], "multiples of 64"),
    (["--tasks", "albedo"], "`tasks` must be a non-empty subset"),
    (["--opset", "13"], "`opset` must be >= 17"),
])
def test_bad_arguments_exit_2_with_one_line(ckpt, tmp_path, capsys, argv, message):
    rc = main([str(ckpt), "-o", str(tmp_path / "x.onnx"), "--exporter", "legacy", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("d3-export: error:") and message in err[-1]


def test_bad_calibration_resolution_is_refused_before_any_export(ckpt, tmp_path, capsys):
    pytest.importorskip("nncf", reason="INT8 export needs nncf")
    rc = main([str(ckpt), "-o", str(tmp_path / "x.onnx"), "--openvino", "--precision", "int8",
               "--calibration-resolution", "100"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "`--calibration-resolution` must be a multiple of 64" in err[-1]
    assert not (tmp_path / "x.onnx").exists()


def test_calibration_images_that_match_nothing_are_refused_before_any_export(ckpt, tmp_path, capsys):
    pytest.importorskip("nncf", reason="INT8 export needs nncf")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    for extra, message in (([str(tmp_path / "empty")], "nothing found in"),
                           ([str(tmp_path / "missing" / "*.png")], "nothing found in")):
        rc = main([str(ckpt), "-o", str(tmp_path / "x.onnx"), "--openvino", "--precision", "int8",
                   "--calibration-images", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and "`--calibration-images` must name image files" in err[-1] and message in err[-1], err
    rc = main([str(ckpt), "-o", str(tmp_path / "x.onnx"), "--openvino", "--precision", "bf16",
               "--calibration-images", str(tmp_path)])
    assert rc == 2 and "must come with --precision int8" in capsys.readouterr().err
    rc = main([str(ckpt), "-o", str(tmp_path / "x.onnx"), "--calibration-images", str(tmp_path)])  # no --openvino
    assert rc == 2 and "must come with --openvino --precision int8" in capsys.readouterr().err
    rc = main([str(ckpt), "-o", str(tmp_path / "x.onnx"), "--openvino", "--precision", "int8",
               "--calibration-bag", str(tmp_path / "no_such_bag")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err.strip().splitlines()[-1]
    rc = main([str(ckpt), "-o", str(tmp_path / "x.onnx"), "--openvino", "--precision", "int8",
               "--calibration-topic", "/cam/image_raw"])
    assert rc == 2 and "`--calibration-topic` must come with --calibration-bag" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_missing_checkpoint_and_tensorrt_without_gpu_fail_cleanly(ckpt, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "d3_perception.export", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr.strip().splitlines()[-1]
    from d3_perception.backends.tensorrt_backend import tensorrt_unavailable_reason

    if tensorrt_unavailable_reason() is not None:
        rc = main([str(ckpt), "-o", str(tmp_path / "t.onnx"), "--exporter", "legacy", "--no-parity", "--tensorrt"])
        assert rc == 2 and (tmp_path / "t.onnx").is_file()


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "examples:" in capsys.readouterr().out
