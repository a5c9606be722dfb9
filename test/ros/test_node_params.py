"""Parameter declaration (descriptors, ranges, read-only), params-file matching in a namespace, validation."""

from __future__ import annotations

import pytest

from d3_perception.ros.params import PARAMETERS

pytestmark = pytest.mark.ros


@pytest.fixture
def node_factory(rclpy_context):
    from d3_perception.ros.node import D3PerceptionNode

    made = []

    def make(*cli_args):
        node = D3PerceptionNode(context=rclpy_context, cli_args=["--ros-args", *cli_args])
        made.append(node)
        return node

    yield make
    for node in made:
        node._stop_pipeline()
        node._release()
        node.destroy_node()


def test_every_parameter_is_declared_with_description_and_range(node_factory):
    node = node_factory()
    for spec in PARAMETERS:
        d = node.describe_parameter(spec.name)
        assert d.description == spec.description
        assert d.read_only == spec.read_only, spec.name
        if isinstance(spec.default, float) and spec.min is not None:
            assert d.floating_point_range[0].from_value == spec.min
        if spec.choices:
            assert all(c in d.additional_constraints for c in spec.choices)
    for name in ("checkpoint", "backend", "device"):
        assert node.describe_parameter(name).read_only


def test_params_file_key_matches_the_node_in_a_namespace(node_factory, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("/**/d3_perception_node:\n  ros__parameters:\n    cloud_stride: 3\n    metric.mode: fixed\n")
    node = node_factory("--params-file", str(f), "-r", "__ns:=/robot/front")
    assert node.get_fully_qualified_name() == "/robot/front/d3_perception_node"
    assert node.get_parameter("cloud_stride").value == 3 and node._cfg.cloud_stride == 3
    assert node._cfg.metric.mode == "fixed"


def test_runtime_set_is_validated_and_applied(node_factory):
    from rclpy.parameter import Parameter

    node = node_factory()
    ok = node.set_parameters([Parameter("output_scale", value=0.5)])[0]
    assert ok.successful and node._cfg.output_scale == 0.5
    bad = node.set_parameters([Parameter("colormap", value="rainbow")])[0]
    assert not bad.successful and "colormap" in bad.reason and "rainbow" in bad.reason
    assert node._cfg.colormap == "turbo"
    out_of_range = node.set_parameters([Parameter("cloud_stride", value=1000)])[0]
    assert not out_of_range.successful
    assert node._pipeline.stats.bad_input["parameter"] >= 1


def test_a_bad_params_file_value_does_not_kill_the_node(node_factory, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("/**/d3_perception_node:\n  ros__parameters:\n    cloud_min_range_m: 50.0\n    cloud_max_range_m: 5.0\n")
    node = node_factory("--params-file", str(f))
    assert node._cfg.cloud_min_range_m < node._cfg.cloud_max_range_m  # fell back to valid values


def test_configure_failure_leaves_the_node_alive_and_reports_why(node_factory, tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn

    node = node_factory("-p", f"checkpoint:={tmp_path / 'missing'}")
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    status = node._diagnostics().status[0]
    assert status.level == b"\x02" and "checkpoint" in status.message and "not found" in status.message


def test_warnings_are_throttled_per_kind_and_count_what_was_suppressed():
    from d3_perception.ros.pipeline_stats import WarnThrottle

    t = WarnThrottle(5.0)
    assert t.should_log("a", now=0.0) == (True, 0)
    assert t.should_log("a", now=1.0) == (False, 0)
    assert t.should_log("b", now=1.0) == (True, 0)  # another kind is not silenced
    assert t.should_log("a", now=2.0) == (False, 0)
    assert t.should_log("a", now=5.5) == (True, 2)


def test_stats_report_recent_bad_input_once_and_exact_counters():
    from d3_perception.ros.pipeline_stats import PipelineStats

    s = PipelineStats()
    for i in range(10):
        s.input(5.0, now=float(i) * 0.1)
    assert s.snapshot(now=0.9).input_rate_hz == pytest.approx(10.0)
    s.dropped(4)
    for i in range(6):
        s.output(latency_ms=100.0 + i, inference_ms=50.0, now=1.0 + i * 0.1)
    s.bad("image_decode", "x")
    snap = s.snapshot(now=2.0)
    assert (snap.frames_received, snap.frames_processed, snap.frames_dropped) == (10, 6, 4)
    assert snap.bad_input_recent == {"image_decode": 1} and snap.last_problem == "image_decode: x"
    assert s.snapshot(now=2.1).bad_input_recent == {}  # reported once, total kept
    assert snap.latency_p50_ms == pytest.approx(102.5)
    assert snap.input_rate_hz < 5.0  # input stopped 1.1 s ago: the rate decays instead of freezing at 10 Hz


def test_cameras_set_their_own_metric_mode_and_outputs_and_follow_the_node_otherwise(node_factory, tmp_path):
    from rclpy.parameter import Parameter

    f = tmp_path / "p.yaml"
    f.write_text("/**/d3_perception_node:\n  ros__parameters:\n    cameras: [front, left]\n"
                 "    left.metric.mode: fixed\n    left.metric.fixed_scale: 3.0\n")
    node = node_factory("--params-file", str(f))
    cfg = {cam: p.cfg for cam, p in node._cameras.pipelines.items()}
    assert cfg["left"].metric.mode == "fixed" and cfg["left"].metric.fixed_scale == 3.0
    assert cfg["front"].metric.mode == "none"
    assert node.describe_parameter("left.metric.mode").additional_constraints.startswith("one of:")
    # the node's value reaches every camera without its own
    assert node.set_parameters([Parameter("metric.mode", value="depth_range")])[0].successful
    assert node._cameras.pipelines["front"].cfg.metric.mode == "depth_range"
    assert node._cameras.pipelines["left"].cfg.metric.mode == "fixed"
    # a camera's own value at runtime, validated against the rules of the whole config
    assert node.set_parameters([Parameter("front.publish_points", value=False)])[0].successful
    assert not node._cameras.pipelines["front"].cfg.publish_points
    assert node._cameras.pipelines["left"].cfg.publish_points
    bad = node.set_parameters([Parameter("front.metric.mode", value="magic")])[0]
    assert not bad.successful and "front" in bad.reason and "metric.mode" in bad.reason
    assert node._cameras.pipelines["front"].cfg.metric.mode == "depth_range"
    status = {s.name.split(": ")[-1]: {kv.key: kv.value for kv in s.values} for s in node._diagnostics().status}
    assert status["front"]["metric_mode"] == "depth_range" and status["left"]["metric_mode"] == "fixed"
