"""Layering rules a Jetson deployment relies on: the runtime never needs d3_training, and only
d3_perception/ros/ needs ROS (so `pip install .` gives a working library without ROS)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "d3_perception"
ROS_MODULES = ("rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "geometry_msgs", "lifecycle_msgs",
               "builtin_interfaces", "rcl_interfaces", "ament_index_python", "launch", "launch_ros", "d3_perception.msg")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _sources(exclude_ros: bool) -> list[Path]:
    return [p for p in PKG.rglob("*.py") if not (exclude_ros and "ros" in p.relative_to(PKG).parts[:1])]


@pytest.mark.parametrize("path", _sources(exclude_ros=False), ids=lambda p: str(p.relative_to(PKG.parent)))
def test_runtime_never_imports_training(path):
    bad = sorted(n for n in _imports(path) if n == "d3_training" or n.startswith("d3_training."))
    assert not bad, f"{path} imports {bad}: d3_perception must run without d3_training"


@pytest.mark.parametrize("path", _sources(exclude_ros=True), ids=lambda p: str(p.relative_to(PKG.parent)))
def test_ros_imports_only_inside_ros_package(path):
    bad = sorted(n for n in _imports(path) if any(n == m or n.startswith(m + ".") for m in ROS_MODULES))
    assert not bad, f"{path} imports ROS modules {bad}; only d3_perception/ros/ may"


def test_core_packages_import_with_ros_blocked():
    """Importing the core with every ROS module made unimportable still works."""
    probe = (
        "import sys\n"
        f"blocked = {ROS_MODULES!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if any(name == b or name.startswith(b + '.') for b in blocked):\n"
        "            raise ImportError('blocked for the test: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import d3_perception.model, d3_perception.backends, d3_perception.geometry, d3_perception.synthetic\n"
        "import d3_perception.evaluation, d3_perception.image_codec, d3_perception.rosbag_io, d3_perception.export\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            cwd=PKG.parent)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
