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


def _module_imports(rel: str) -> set[str]:
    """Absolute d3_perception imports of one module, its lazy (function-level) imports included."""
    return {n for n in _imports(PKG / rel) if n == "d3_perception" or n.startswith("d3_perception.")}


def _package_sources(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


# (package or module, d3_perception modules it must not import): the layers, bottom up
LAYERS = [
    ("io_utils.py", ("d3_perception",)),  # the bottom: no package imports at all
    ("parallel.py", ("d3_perception",)),
    ("share_dir.py", ("d3_perception",)),
    ("cli_args.py", ("d3_perception.ros", "d3_perception.model", "d3_perception.backends")),  # every CLI's parser
    ("image_codec.py", ("d3_perception.model", "d3_perception.backends", "d3_perception.evaluation",
                        "d3_perception.synthetic", "d3_perception.ros")),
    ("geometry", ("d3_perception.model", "d3_perception.backends", "d3_perception.evaluation",
                  "d3_perception.synthetic", "d3_perception.ros", "d3_perception.image_codec")),
    ("synthetic", ("d3_perception.evaluation", "d3_perception.backends", "d3_perception.ros")),
    ("model", ("d3_perception.backends", "d3_perception.evaluation", "d3_perception.synthetic",
               "d3_perception.ros")),
    ("backends", ("d3_perception.evaluation", "d3_perception.synthetic", "d3_perception.ros")),
    ("evaluation", ("d3_perception.ros",)),
]


@pytest.mark.parametrize("target, forbidden", LAYERS, ids=[t for t, _ in LAYERS])
def test_layers_import_only_downwards(target, forbidden):
    paths = [PKG / target] if target.endswith(".py") else _package_sources(target)
    bad = {str(p.relative_to(PKG.parent)): sorted(n for n in _imports(p)
                                                  if any(n == f or n.startswith(f + ".") for f in forbidden))
           for p in paths}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"imports against the layering (see docs/architecture.md): {bad}"


def test_only_the_backends_package_creates_backends():
    """One place creates backends (create_backend: names, auto order, plugins): nobody else imports a backend
    implementation or loads a plugin."""
    for path in PKG.rglob("*.py"):
        if path.parent.name == "backends":
            continue
        bad = sorted(a.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
                     and (node.module or "").startswith("d3_perception.backends.")
                     and (node.module or "").endswith("_backend")  # torch/onnxruntime/tensorrt/... implementations
                     for a in node.names if a.name.endswith("Backend"))
        assert not bad, f"{path.relative_to(PKG.parent)} imports {bad}; use d3_perception.backends.create_backend"
        assert "import_module" not in path.read_text() or path.name in ("cli.py", "__init__.py"), path


# ROS-side modules that hold no ROS entities: unit-testable without a ROS graph
ROS_FREE = ("ros/params.py", "ros/launch_config.py", "ros/frame_slot.py", "ros/pipeline_stats.py",
            "ros/sparse_reference.py", "ros/entry.py")
NO_RCLPY = (*ROS_FREE, "ros/pipeline.py", "ros/camera_set.py", "ros/frame_outputs.py", "ros/conversions.py",
            "ros/diagnostics.py")


@pytest.mark.parametrize("rel", ROS_FREE)
def test_ros_free_modules_import_no_ros(rel):
    # ament_index_python is only a package-path lookup, imported lazily with a fallback (launch_config)
    ros = [m for m in ROS_MODULES if m != "ament_index_python"]
    bad = sorted(n for n in _imports(PKG / rel) if any(n == m or n.startswith(m + ".") for m in ros))
    assert not bad, f"{rel} imports {bad}"


def test_pipeline_runs_without_rclpy():
    """The per-camera pipeline, post-processing and status messages import with rclpy and launch blocked."""
    modules = ", ".join("d3_perception." + r[:-3].replace("/", ".") for r in NO_RCLPY)
    probe = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('rclpy', 'launch', 'launch_ros'):\n"
        "            raise ImportError('blocked for the test: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"import {modules}\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            cwd=PKG.parent)
    if "No module named 'sensor_msgs'" in result.stderr or "d3_perception.msg" in result.stderr:
        pytest.skip("ROS messages are not built here")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_node_is_a_thin_shell():
    """No per-frame work in the node: decoding, geometry and arrays live in the pipeline."""
    heavy = ("numpy", "cv2", "d3_perception.geometry", "d3_perception.image_codec", "d3_perception.ros.conversions",
             "d3_perception.ros.frame_outputs", "d3_perception.model")
    bad = sorted(n for n in _imports(PKG / "ros" / "node.py") if n.startswith(heavy))
    assert not bad, f"ros/node.py imports {bad}: that work belongs in ros/pipeline.py"
