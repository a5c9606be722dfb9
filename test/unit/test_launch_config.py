"""launch_config: the mapping camera.launch.py and d3-demo share; and the documented params file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from d3_perception.ros.launch_config import (
    BACKEND_CHOICES,
    LAUNCH_ARGUMENTS,
    LaunchArgument,
    launch_plan,
    node_command,
    package_share_dir,
    parse_bool,
    rviz_missing_reason,
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


def _calls_and_imports(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text())
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    return called, imported


@pytest.mark.parametrize("launch_file, table, mapping", [
    ("camera.launch.py", "LAUNCH_ARGUMENTS", "node_command"),
    ("demo.launch.py", "DEMO_LAUNCH_ARGUMENTS", "demo_specs"),
])
def test_both_launch_files_go_through_the_one_fragment(launch_file, table, mapping):
    """Each launch file only maps its table's values to specs; declaring, rviz2 and Node actions are the shared
    fragment's (so the two cannot drift apart again, as they did over use_sim_time for rviz2)."""
    called, imported = _calls_and_imports(REPO / "launch" / launch_file)
    assert {mapping, "launch_description"} <= called and table in imported
    assert not {"Node", "DeclareLaunchArgument"} & (called | imported), f"{launch_file} builds actions itself"
    called, _ = _calls_and_imports(REPO / "d3_perception" / "ros" / "launch_actions.py")
    assert {"DeclareLaunchArgument", "Node", "launch_plan"} <= called


def test_demo_arguments_are_the_same_type():
    from d3_perception.ros.demo import DEMO_LAUNCH_ARGUMENTS

    assert all(type(a) is LaunchArgument for a in (*LAUNCH_ARGUMENTS, *DEMO_LAUNCH_ARGUMENTS))


def _plan(rviz, missing, use_sim_time=True, namespace="front", frame="cam_optical_frame"):
    node = node_command(namespace=namespace, use_sim_time=use_sim_time, base_env={})
    return node, launch_plan([node], rviz, node, frame, rviz_missing=lambda: missing)


def test_rviz_is_added_with_the_nodes_namespace_and_sim_time():
    node, plan = _plan("true", None)
    assert [s.name for s in plan.specs] == ["d3_perception_node", "rviz2"] and plan.messages == ()
    rviz = plan.specs[1]
    assert rviz.package == "rviz2" and rviz.namespace == "/front" and rviz.params == {"use_sim_time": True}
    assert rviz.program_arguments == ["-d", str(REPO / "launch" / "d3_perception.rviz"), "-f", "cam_optical_frame"]
    assert rviz.output == "log"
    assert _plan("true", None, use_sim_time=False, frame="")[1].specs[1].program_arguments[-1].endswith(".rviz")


def test_without_rviz2_the_node_starts_alone_and_the_message_says_why():
    node, plan = _plan("true", "the rviz2 package is not installed")
    assert plan.specs == (node,)
    assert len(plan.messages) == 1 and "rviz:=true but rviz2 cannot start" in plan.messages[0]
    assert "not installed" in plan.messages[0] and "__ns:=/front" in plan.messages[0]


def test_rviz_false_never_looks_for_rviz2():
    def fail():
        raise AssertionError("rviz2 looked up although rviz is false")

    node = node_command(base_env={})
    assert launch_plan([node], "false", node, rviz_missing=fail).specs == (node,)
    with pytest.raises(ValueError, match="`rviz` must be true or false"):
        launch_plan([node], "maybe", node, rviz_missing=fail)


def test_rviz2_lookup_here_reports_it_missing():
    """This environment has no rviz2 (PyPI ROS 2): the real lookup says so instead of raising."""
    reason = rviz_missing_reason()
    assert reason is not None and ("rviz2" in reason or "ament_index_python" in reason)


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


def test_cameras_become_the_node_parameter_and_single_camera_remaps_are_refused():
    spec = node_command(namespace="cams", cameras="front, left,right", base_env={})
    assert spec.params["cameras"] == ["front", "left", "right"]
    assert "cameras:=['front', 'left', 'right']" in spec.arguments and spec.remaps == []
    config_from_values({"cameras": spec.params["cameras"]})  # a valid node config
    assert "cameras" not in node_command(cameras="", base_env={}).params
    with pytest.raises(ValueError, match="`image` must stay at its default with `cameras`"):
        node_command(cameras="front", image="/cam/image_raw", base_env={})
    with pytest.raises(ValueError, match="`cameras` must be distinct ROS name tokens"):
        node_command(cameras="front,front", base_env={})
    with pytest.raises(ValueError, match="`cameras` must be distinct ROS name tokens"):
        node_command(cameras="1st", base_env={})
    with pytest.raises(ValueError, match="`cameras` must be distinct"):
        config_from_values({"cameras": ["a", "a"]})


def test_precision_argument_sets_the_node_parameter_and_is_checked():
    assert "precision" in {a.name for a in LAUNCH_ARGUMENTS}
    assert node_command(backend="openvino", precision="bf16", base_env={}).params["precision"] == "bf16"
    assert "precision" not in node_command(precision="", base_env={}).params  # "" = the params file's value
    with pytest.raises(ValueError, match="`precision` must be one of"):
        node_command(precision="fp8", base_env={})
    # the launch file passes it through (a full ROS 2 launch cannot run here: read the source)
    assert 'precision=value["precision"]' in (REPO / "launch" / "camera.launch.py").read_text()


def test_num_threads_zero_leaves_torch_one_spare_core_and_other_runtimes_their_default(monkeypatch):
    import os

    from d3_perception.ros import params

    defaults = {p.name: p.default for p in PARAMETERS}
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert config_from_values({**defaults, "backend": "torch"}).backend_options()["num_threads"] == 3
    for backend in ("onnxruntime", "openvino", "auto"):
        assert config_from_values({**defaults, "backend": backend}).backend_options()["num_threads"] is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert params.torch_default_threads() == 1  # never 0 threads on a one-core machine
    explicit = config_from_values({**defaults, "backend": "openvino", "num_threads": 2})
    assert explicit.backend_options()["num_threads"] == 2
