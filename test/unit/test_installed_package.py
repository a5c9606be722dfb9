"""The ament_cmake install: ament index, share directory, node executables, console scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _console_scripts() -> list[str]:
    """Console scripts declared in pyproject.toml's [project.scripts] table."""
    text = (REPO / "pyproject.toml").read_text()
    table = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return sorted(line.split("=", 1)[0].strip() for line in table.splitlines() if "=" in line)


@pytest.mark.ros
def test_share_directory_found_through_ament_index():
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    share = Path(get_package_share_directory("d3_perception"))
    for sub in ("launch", "config", "models"):
        assert (share / sub).is_dir(), f"{share / sub} missing from the installed share directory"
    for rel in ("config/d3_perception.yaml", "config/synthetic_camera.yaml", "config/fastdds_shm.xml",
                "launch/camera.launch.py", "launch/demo.launch.py"):
        assert (share / rel).is_file(), f"{rel} missing from {share}"
    # `ros2 run d3_perception <exe>` and launch_ros look in <prefix>/lib/<package>/.
    lib = Path(get_package_prefix("d3_perception")) / "lib" / "d3_perception"
    for exe in ("d3_perception_node", "synthetic_camera"):
        assert os.access(lib / exe, os.X_OK), f"{lib / exe} is not an installed executable"


@pytest.mark.parametrize("script", _console_scripts())
def test_console_script_help(script):
    exe = shutil.which(script, path=str(Path(sys.executable).parent)) or shutil.which(script)
    if exe is None:
        pytest.fail(f"console script {script} is not installed (pip install -e . / scripts/setup_env.sh)")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout.lower(), result.stdout[:500]
    assert "example" in result.stdout.lower(), f"{script} --help shows no examples"
