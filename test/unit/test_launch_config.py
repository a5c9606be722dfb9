"""launch_config: the mapping camera.launch.py and d3-demo share; and the documented params file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from d3_perception.ros.launch_config import (
    BACKEND_CHOICES,
    LAUNCH_ARGUMENTS,
    node_command,
    package_share_dir,
    parse_bool,
)
from d3_perception.ros.params import PARAMETERS, config_from_values

REPO = Path(__file__).resolve().parents[2]
PARAMS_YAML = REPO / "config" / "d3_perception.yaml"


def test_defaults_use_the_package_params_file_and_shm_profile():
    spec = node_command(base_env={})
    assert spec.params_file == str(PARAMS_YAML)
    assert spec.params == {"use_sim_time": False} and spec.remaps == [] and spec.namespace == ""
    assert spec.env == {"FASTDDS_DEFAULT_PROFILES_FILE": str(REPO / "config" / "fastdds_shm.xml")}
    assert Path(spec.env["FASTDDS_DEFAULT_PROFILES_FILE"]).is_file()
    assert spec.cmd[1:4] == ["-m", "d3_perception.ros.node", "--ros-args"]
    assert ["--params-file", str(PARAMS_YAML)] == spec.cmd[spec.cmd.index("--params-file"):][:2]


def test_every_launch_argument_is_mapped():
    spec = node_command(namespace="/front/", params_file=PARAMS_YAML, checkpoint="/models/d3", backend="tensorrt",
                        image="/cam/color/image_raw", camera_info="/cam/color/camera_info", use_sim_time="true",
                        base_env={})
    assert spec.namespace == "/front"
    assert spec.params == {"checkpoint": "/models/d3", "backend": "tensorrt", "use_sim_time": True}
    assert spec.remaps == [("image", "/cam/color/image_raw"), ("image/compressed", "/cam/color/image_raw/compressed"),
                           ("camera_info", "/cam/color/camera_info")]
    args = spec.arguments
    assert "__ns:=/front" in args and "image:=/cam/color/image_raw" in args
    assert "checkpoint:='/models/d3'" in args and "use_sim_time:=true" in args


def test_extra_params_are_typed_on_the_command_line():
    spec = node_command(extra_params={"metric.mode": "fixed", "metric.fixed_scale": 2.5, "cloud_stride": 2,
                                      "lazy_outputs": False, "fallback_backends": ("torch",), "tricky": "true"},
                        base_env={})
    args = spec.arguments
    for expected in ("metric.mode:='fixed'", "metric.fixed_scale:=2.5", "cloud_stride:=2", "lazy_outputs:=false",
                     "fallback_backends:=['torch']", "tricky:='true'"):
        assert expected in args
    assert spec.params["fallback_backends"] == ["torch"]


def test_sparse_depth_input_can_be_remapped():
    spec = node_command(sparse_depth="/lidar/depth_projected", base_env={})
    assert spec.remaps == [("sparse_depth", "/lidar/depth_projected")]


def test_an_existing_fastdds_profile_is_respected():
    assert node_command(base_env={"FASTDDS_DEFAULT_PROFILES_FILE": "/etc/my.xml"}).env == {}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(namespace="1bad"), "namespace"),
        (dict(namespace="a b"), "namespace"),
        (dict(backend="cuda"), "backend"),
        (dict(image="/cam/ima ge"), "image"),
        (dict(camera_info=""), None),
        (dict(params_file="/nope.yaml"), "params_file"),
        (dict(use_sim_time="maybe"), "use_sim_time"),
        (dict(extra_params={"x": {"a": 1}}), "extra_params"),
    ],
)
def test_bad_arguments_are_rejected_with_the_argument_name(kwargs, match):
    if match is None:  # empty means "default", not an error
        assert node_command(base_env={}, **kwargs).remaps == []
        return
    with pytest.raises(ValueError, match=match):
        node_command(base_env={}, **kwargs)


def test_plugin_backend_is_accepted():
    assert node_command(backend="python:my_pkg.mod:factory", base_env={}).params["backend"] == "python:my_pkg.mod:factory"


def test_parse_bool():
    assert parse_bool("True") and parse_bool("1") and not parse_bool("false") and not parse_bool("")
    with pytest.raises(ValueError, match="rviz"):
        parse_bool("perhaps", "rviz")


def test_launch_arguments_are_the_documented_set():
    names = [a.name for a in LAUNCH_ARGUMENTS]
    assert {"namespace", "params_file", "checkpoint", "backend", "image", "camera_info", "use_sim_time",
            "rviz"} <= set(names)
    assert len(names) == len(set(names))
    assert all(a.description for a in LAUNCH_ARGUMENTS)
    backend = next(a for a in LAUNCH_ARGUMENTS if a.name == "backend")
    assert set(BACKEND_CHOICES) <= set(backend.choices)


def test_launch_file_declares_from_the_table_and_calls_node_command():
    tree = ast.parse((REPO / "launch" / "camera.launch.py").read_text())
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"node_command", "DeclareLaunchArgument", "Node"} <= called
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "LAUNCH_ARGUMENTS" in imported


def test_params_file_documents_every_parameter_with_its_default():
    doc = yaml.safe_load(PARAMS_YAML.read_text())
    assert list(doc) == ["/**/d3_perception_node"]
    values = doc["/**/d3_perception_node"]["ros__parameters"]
    declared = {p.name: p.default for p in PARAMETERS}
    assert set(values) == set(declared), set(values) ^ set(declared)
    for name, default in declared.items():
        assert values[name] == default, name
    text = PARAMS_YAML.read_text()
    for name in declared:
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(name + ":"))
        assert "#" in line, f"{name} has no comment in the params file"
    config_from_values(values)  # and the defaults are a valid config


def test_rviz_config_shows_depth_normals_and_cloud_on_relative_topics():
    rviz = yaml.safe_load((REPO / "launch" / "d3_perception.rviz").read_text())
    topics = {d["Topic"]["Value"]: d["Class"] for d in rviz["Visualization Manager"]["Displays"] if "Topic" in d}
    assert topics["points"] == "rviz_default_plugins/PointCloud2"
    assert topics["depth/colored"] == "rviz_default_plugins/Image"
    assert topics["normals/colored"] == "rviz_default_plugins/Image"
    assert not any(t.startswith("/") for t in topics)  # resolved in the launch namespace


def test_share_dir_is_the_checkout_here():
    assert package_share_dir() == REPO
