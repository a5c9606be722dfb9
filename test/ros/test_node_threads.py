"""postprocess_threads: the node's outputs are byte-identical with one thread and with helper threads, for
each way the work is split (sparse fit overlapped with the model normals; fixed metric mode, where the
normals rows are shared; normals from depth). The node runs in-process, configured but not activated, and
its worker step `_process` is called directly with publishers that record instead of sending."""

from __future__ import annotations

import json

import numpy as np
import pytest
from node_harness import Client, make_rgb

pytestmark = pytest.mark.ros

H, W = 300, 200  # several row blocks


@pytest.fixture
def make_node(rclpy_context, tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn

    from d3_perception.ros.node import D3PerceptionNode

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_id": "fake"}))
    made = []

    def make(**params):
        params = {"backend": "python:fake_backends:gt", "checkpoint": str(ckpt), "lazy_outputs": False,
                  "cloud_max_range_m": 100.0, **params}
        args = [a for k, v in params.items() for a in ("-p", f"{k}:={json.dumps(v) if isinstance(v, str) else v}")]
        node = D3PerceptionNode(context=rclpy_context, cli_args=["--ros-args", *args])
        made.append(node)
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        sent = {}
        for name, pub in node._pubs[""].items():
            pub.publish = lambda msg, name=name: sent.setdefault(name, []).append(msg)
        return node, sent

    yield make
    for node in made:
        node._stop_pipeline()
        node._release()
        node.destroy_node()


def _payloads(sent) -> dict[str, bytes]:
    out = {}
    for name, msgs in sent.items():
        msg = msgs[-1]
        if name == "info":
            out[name] = repr((msg.scale, msg.shift, msg.alignment_points, msg.alignment_residual_m))
        elif hasattr(msg, "data"):
            out[name] = bytes(msg.data) + repr((msg.height, msg.width, getattr(msg, "is_dense", None))).encode()
        else:
            out[name] = repr(list(msg.k)).encode()
    return out


def _run(node, sent, with_sparse: bool) -> dict[str, bytes]:
    from d3_perception.ros.pipeline import Frame

    client = Client.__new__(Client)  # only its message helpers
    stamp = 50.0
    rgb = make_rgb(H, W)
    rgb[H // 3, W // 4, 0] = 0  # relative 0 at one pixel: a cloud point closer than cloud_min_range_m
    node._pipeline.on_camera_info(client.camera_info(H, W, stamp))
    if with_sparse:
        rel = rgb[..., 0].astype(np.float32) / 255.0
        sparse = np.full((H, W), np.nan, np.float32)
        sparse[::7, ::5] = 3.0 * rel[::7, ::5] + 0.4
        node._pipeline.on_sparse(client.image_msg(sparse, "32FC1", stamp))
    node._process(Frame(client.image_msg(rgb, "rgb8", stamp), False, 0.0))
    return _payloads(sent)


@pytest.mark.parametrize("params", [
    {"metric.mode": "sparse_depth", "metric.min_points": 20},  # fit on the worker, normals on a helper
    {"metric.mode": "fixed", "metric.fixed_scale": 4.0, "metric.fixed_shift": 0.05},  # normals rows shared
    {"metric.mode": "none", "normals_source": "depth"},  # normals from depth, images on a helper
], ids=["sparse_fit", "fixed", "normals_from_depth"])
def test_outputs_are_identical_with_and_without_helper_threads(make_node, params):
    results = []
    for threads in (1, 2, 3):
        node, sent = make_node(postprocess_threads=threads, **params)
        results.append(_run(node, sent, params["metric.mode"] == "sparse_depth"))
        assert node._pipeline.stats.snapshot().bad_input == {}, node._pipeline.stats.snapshot().last_problem
    expected = {"relative", "camera_info", "colored", "normals", "normals_colored", "points", "info", "confidence"}
    if params["metric.mode"] != "none":
        expected.add("depth")
    assert set(results[0]) == expected
    for name in expected:
        assert results[1][name] == results[0][name], f"{name}: 2 threads differ from 1"
        assert results[2][name] == results[0][name], f"{name}: 3 threads differ from 1"


def test_thread_count_changes_at_runtime(make_node):
    from rclpy.parameter import Parameter

    node, sent = make_node(postprocess_threads=2)
    one = _run(node, sent, False)
    assert node._pipeline.workers.threads == 2
    assert node.set_parameters([Parameter("postprocess_threads", value=1)])[0].successful
    assert _run(node, sent, False) == one
    assert node._pipeline.workers.threads == 1


def test_configure_takes_the_loaded_model_out_of_garbage_collection_and_release_gives_it_back(make_node):
    # Full collections walking the model's objects stalled the worker for 90-180 ms (README, P5).
    import gc

    node, _ = make_node()
    assert gc.get_freeze_count() > 0
    node._release()
    assert gc.get_freeze_count() == 0
