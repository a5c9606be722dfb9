"""Without ``--checkpoint`` the CLIs run the bundled demo model and say so in one line (issue #19).

d3-predict runs as a real subprocess (the way a newcomer types it); d3-eval, d3-eval-bag and d3-export run
in-process on fabricated data with the real bundled model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from d3_perception import cli_args

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "d3_demo_tiny"
pytestmark = pytest.mark.skipif(not (DEMO / "model.safetensors").is_file(), reason="no bundled demo model")


def _announcement(err: str, prog: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{prog}: no --checkpoint given")]
    assert len(lines) == 1, err
    line = lines[0]
    assert str(DEMO) in line and "trained only on synthetic scenes" in line, line
    assert "--checkpoint DIR" in line and "d3-convert-official" in line, line  # how to use real weights
    return line


def test_bundled_demo_checkpoint_is_the_one_d3_demo_uses():
    from d3_perception.ros import demo

    assert cli_args.bundled_demo_checkpoint() == DEMO
    ckpt, _, random_model = demo._resolve_checkpoint(type("A", (), {"checkpoint": ""})(), Path("/nonexistent"))
    assert Path(ckpt) == DEMO and not random_model


def test_d3_predict_photo_without_checkpoint(tmp_path):
    photo = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(photo), (rng.random((48, 80, 3)) * 255).astype(np.uint8))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "d3_perception.predict", str(photo), "-o", str(tmp_path / "out"),
                           "--backend", "torch"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _announcement(proc.stderr, "d3-predict")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["written"] == 1 and summary["model_id"] == "d3-tiny-two_stage"
    depth = np.load(tmp_path / "out" / "photo_depth.npy")
    assert depth.shape == (48, 80) and np.isfinite(depth).all() and depth.std() > 0


def test_d3_export_without_checkpoint_writes_to_the_current_folder(tmp_path, monkeypatch, capsys):
    from d3_perception.export import main

    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in DEMO.iterdir())
    assert main(["--exporter", "legacy", "--tasks", "depth"]) == 0
    out = capsys.readouterr()
    _announcement(out.err, "d3-export")
    summary = json.loads(out.out)
    assert Path(summary["onnx"]) == tmp_path / "d3-tiny-two_stage.onnx" and summary["parity"]["passed"]
    assert sorted(p.name for p in DEMO.iterdir()) == before  # nothing written into the bundled model


def test_d3_eval_bag_without_checkpoint(tmp_path, capsys):
    from test_eval_bag import make_bag  # test/unit is on sys.path (pytest rootdir import)

    from d3_perception.evaluation import bag_cli

    make_bag(tmp_path / "bag", "mcap", n=3, normals=False)
    rc = bag_cli.main([str(tmp_path / "bag"), "--out", str(tmp_path / "eval"), "--backend", "torch",
                       "--no-progress", "--no-plots", "--metric-mode", "global"])
    err = capsys.readouterr().err
    assert rc == 0, err
    _announcement(err, "d3-eval-bag")
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["counts"]["evaluated"] >= 2


def test_d3_eval_without_checkpoint(tmp_path, capsys):
    from test_eval_datasets import make_nyu

    from d3_perception.evaluation import benchmark_cli

    make_nyu(tmp_path / "data", n=1)
    rc = benchmark_cli.main(["--data-root", str(tmp_path / "data"), "--datasets", "nyuv2", "--out",
                             str(tmp_path / "eval"), "--backend", "torch", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    _announcement(err, "d3-eval")
    report = json.loads((tmp_path / "eval" / "benchmark.json").read_text())
    assert Path(report["checkpoint"]) == DEMO and report["datasets"][0]["evaluated"] == 1


def test_no_bundled_model_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from d3_perception.predict import main

    monkeypatch.setattr(cli_args, "bundled_demo_checkpoint", lambda: None)
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((16, 16, 3), np.uint8))
    assert main([str(tmp_path / "a.png"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`--checkpoint` must be given" in err[0] and "d3-convert-official" in err[0]
