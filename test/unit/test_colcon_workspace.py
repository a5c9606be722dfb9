"""The ROS 2 workspace route: `colcon build` of this package, then import from its install space."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)


@pytest.mark.ros
@pytest.mark.timeout(600)
def test_colcon_build_and_import(tmp_path):
    colcon = shutil.which("colcon", path=str(VENV / "bin"))
    if colcon is None:
        pytest.skip("colcon is not installed (colcon-common-extensions)")
    src = tmp_path / "ws" / "src" / "d3_perception"
    ignore = shutil.ignore_patterns(".venv", "build", "install", "log", ".git", "outputs", "__pycache__", "*.onnx*")
    shutil.copytree(REPO, src, ignore=ignore)
    ws = tmp_path / "ws"
    env = dict(os.environ)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env['PATH']}"
    env.setdefault("AMENT_PREFIX_PATH", str(VENV))
    build = subprocess.run(
        [colcon, "build", "--packages-select", "d3_perception", "--event-handlers", "console_cohesion+",
         "--cmake-args", f"-DCMAKE_PROJECT_INCLUDE={REPO / 'cmake' / 'fix_wheel_python_includes.cmake'}",
         f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
        cwd=ws, env=env, capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-2000:]

    install = ws / "install" / "d3_perception"
    site = next(install.glob("lib/python3*/site-packages"))
    pkg_dir = site / "d3_perception"
    assert (pkg_dir / "msg" / "__init__.py").is_file()
    assert (pkg_dir / "model").is_dir() and (site / "d3_training").is_dir()
    # Import from the install space only (not from this checkout), as a sourced workspace would.
    probe = (
        "import d3_perception, d3_perception.msg, sys;"
        "from d3_perception.msg import PredictionInfo;"
        "from ament_index_python.packages import get_package_share_directory as s;"
        "import os; assert os.path.isdir(os.path.join(s('d3_perception'), 'launch'));"
        "print(d3_perception.__file__)"
    )
    run_env = dict(env)
    run_env["PYTHONPATH"] = str(site)
    run_env["AMENT_PREFIX_PATH"] = f"{install}{os.pathsep}{VENV}"
    run_env["LD_LIBRARY_PATH"] = f"{install / 'lib'}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}"
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=run_env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(install) in result.stdout, f"imported d3_perception from {result.stdout!r}, not the install space"
    assert os.access(install / "lib" / "d3_perception" / "d3_perception_node", os.X_OK)
