"""d3-demo end to end: real synthetic camera + real d3_perception_node processes, outputs on disk."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    for key in ("ROS_DOMAIN_ID", "ROS_LOG_DIR"):  # the demo chooses these itself
        env.pop(key, None)
    return env


def _child_pids(out: Path) -> list[int]:
    text = (out / "logs" / "commands.txt").read_text()
    return [int(p) for p in re.findall(r" pid (\d+):", text)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "d3_perception.ros.demo", "--duration", "10", "--size", "96x72", "--rate-hz", "4",
         "--backend", "torch", "--output", str(out)],
        env=_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-5:]
    assert summary[0].startswith("d3-demo:") and "frames processed" in summary[0]
    assert str(out / "montage.png") in summary[3] and str(out / "report.md") in summary[4]

    montage = cv2.imread(str(out / "montage.png"))
    assert montage.shape == (72, 6 * 96, 3)
    assert montage.std() > 10  # not a blank image
    m = json.loads((out / "metrics.json").read_text())
    for value in (m["depth"]["abs_rel"], m["depth"]["delta1"], m["normals"]["mean_angle_deg"],
                  m["latency_ms"]["p50"], m["latency_ms"]["p95"]):
        assert value is not None and np.isfinite(value)
    assert 0.0 <= m["depth"]["delta1"] <= 1.0 and 0.0 <= m["normals"]["mean_angle_deg"] <= 180.0
    assert 0.0 < m["latency_ms"]["p50"] <= m["latency_ms"]["p95"] < 30_000
    frames = m["frames"]
    assert frames["processed_by_node"] >= 1 and frames["published_by_camera"] >= frames["processed_by_node"]
    assert frames["evaluated"] >= 1
    bundled = (REPO / "models" / "d3_demo_tiny" / "config.json").is_file()
    assert m["model"]["random_weights"] is (not bundled)
    report = (out / "report.md").read_text()
    assert "AbsRel" in report and ("random weights" in report) is (not bundled)
    header = (out / "cloud.ply").read_bytes()[:400].decode("ascii", errors="replace")
    n_vertex = int(re.search(r"element vertex (\d+)", header).group(1))
    assert header.startswith("ply") and 0 < n_vertex <= 96 * 72 and "property uchar red" in header
    assert "property float nx" in header
    assert not [p for p in _child_pids(out) if _alive(p)]  # everything it started is gone


@pytest.mark.parametrize("inherited_sigint", ["default", "ignored"])
def test_demo_ctrl_c_stops_everything(tmp_path, inherited_sigint):
    """SIGINT stops the demo and both children, also when started as a shell's background job (SIGINT
    inherited as ignored); the child's disposition is set here, whatever pytest's own is."""
    from conftest import default_sigint, ignored_sigint

    out = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "d3_perception.ros.demo", "--duration", "60", "--size", "64x48", "--backend", "torch",
         "--output", str(out)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        preexec_fn=default_sigint if inherited_sigint == "default" else ignored_sigint)
    try:
        deadline = time.monotonic() + 60
        while not (out / "logs" / "commands.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        pids = _child_pids(out)
        assert len(pids) == 2
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    assert not [p for p in pids if _alive(p)]


def test_demo_refuses_a_missing_checkpoint_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "d3_perception.ros.demo", "--checkpoint", str(tmp_path / "nope"),
         "--output", str(tmp_path / "o")], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "`--checkpoint` must be" in proc.stderr


def test_demo_refuses_a_busy_domain_with_one_line(ros_env, tmp_path):
    # the ros_env fixture holds the lock of its domain, exactly like a running test or another d3-demo
    proc = subprocess.run(
        [sys.executable, "-m", "d3_perception.ros.demo", "--domain-id", ros_env["ROS_DOMAIN_ID"], "--backend",
         "torch", "--output", str(tmp_path / "o")], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and f"ROS_DOMAIN_ID {ros_env['ROS_DOMAIN_ID']} is busy" in err
