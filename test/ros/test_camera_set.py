"""CameraSet without a node: frames of several cameras share one batched network call and give the same
messages as separate calls; a frame that makes the model fail costs only its own camera."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fake_backends import GtBackend
from node_harness import Client, make_rgb

from d3_perception.backends import Backend, BackendInfo
from d3_perception.backends.chain import BackendChain
from d3_perception.model.config import ModelConfig
from d3_perception.ros.camera_set import CameraSet
from d3_perception.ros.params import config_from_values
from d3_perception.ros.pipeline import OUTPUTS, wanted_outputs

pytestmark = pytest.mark.ros

SIZES = {"a": (48, 64), "b": (30, 40), "c": (64, 48)}  # all three pad to the same 64x64 network input


class Counting(Backend):
    """Supplies only run_network (depth = a smooth function of the input, normals +z): the base class batches."""

    unit_normals = True

    def __init__(self):
        self.config = ModelConfig.preset("tiny")
        self.info = BackendInfo("counting", "cpu", "fp32", "m", self.config.tasks, 64)
        self.calls: list[int] = []

    def run_network(self, x, tasks=None):
        self.calls.append(x.shape[0])
        n, _, h, w = x.shape
        normals = np.zeros((n, 3, h, w), np.float32)
        normals[:, 2] = 1.0
        return {"depth": (x.mean(axis=1, keepdims=True) + 1.0) / 2.0, "normals": normals}


def _payloads(results):
    return {cam: {k: bytes(m.data) for k, m in r.messages.items() if hasattr(m, "data")} for cam, r in results}


def _frames(cams, client, stamp=5.0):
    from d3_perception.ros.pipeline import Frame

    return {cam: Frame(client.image_msg(make_rgb(*SIZES[cam], seed=list(SIZES).index(cam)), "rgb8", stamp), False,
                       0.0) for cam in cams}


def test_one_network_call_for_all_cameras_equals_separate_calls():
    cfg = config_from_values({"cameras": ["a", "b", "c"], "lazy_outputs": False, "metric.mode": "fixed"})
    client = Client.__new__(Client)
    wants = {cam: wanted_outputs(cfg, dict.fromkeys(OUTPUTS, 1)) for cam in SIZES}
    batched_backend = Counting()
    batched = CameraSet(("a", "b", "c"), cfg, lambda cam, text: None)
    results = batched.process(_frames(SIZES, client), wants, BackendChain(batched_backend, [], lambda n: None))
    assert batched_backend.calls == [3]  # three cameras, one network call
    single_backend = Counting()
    separate = []
    for cam in SIZES:
        one = CameraSet((cam,), cfg, lambda c, text: None)
        separate += one.process(_frames((cam,), client), wants, BackendChain(single_backend, [], lambda n: None))
        one.close()
    assert single_backend.calls == [1, 1, 1]
    assert _payloads(results) == _payloads(separate)
    for cam, result in results:
        assert (result.messages["relative"].height, result.messages["relative"].width) == SIZES[cam]
    batched.close()


def test_a_failing_frame_costs_only_its_camera():
    cfg = config_from_values({"cameras": ["a", "b"], "lazy_outputs": False, "publish_points": False,
                              "publish_camera_info": False})
    cams = CameraSet(("a", "b"), cfg, lambda cam, text: None)
    client = Client.__new__(Client)
    frames = _frames(("a", "b"), client)
    bad = make_rgb(*SIZES["b"])
    bad[0, 0, 1] = 1  # the fake model raises on this image
    frames["b"].msg = client.image_msg(bad, "rgb8", 5.0)
    wants = {cam: wanted_outputs(cfg, dict.fromkeys(OUTPUTS, 1)) for cam in ("a", "b")}
    results = cams.process(frames, wants, BackendChain(GtBackend(), [], lambda n: None))
    assert [cam for cam, _ in results] == ["a"]
    assert cams.pipelines["b"].stats.snapshot().bad_input == {"model_error": 1}
    assert cams.pipelines["a"].stats.snapshot().bad_input == {}
    cams.close()


def test_gather_waits_only_for_cameras_whose_frame_is_due():
    cfg = config_from_values({"cameras": ["a", "b"], "camera_sync_wait_s": 0.5})
    cams = CameraSet(("a", "b"), cfg, lambda cam, text: None)
    client = Client.__new__(Client)
    a, b = cams.pipelines["a"], cams.pipelines["b"]
    rgb = make_rgb(*SIZES["a"])
    stop = threading.Event()
    # b has never sent a frame: a's frame is taken without waiting for b
    a.offer(client.image_msg(rgb, "rgb8", 1.0), False, 1.0)
    assert list(cams.gather(stop)) == ["a"]
    # both stream at 20 Hz: b's frame is due, so the worker waits for it and takes both together
    for i in range(4):
        a.offer(client.image_msg(rgb, "rgb8", 2.0 + i), False, 10.0)
        b.offer(client.image_msg(rgb, "rgb8", 2.0 + i), False, 10.0)
        threading.Event().wait(0.05)
    cams.gather(stop)
    a.offer(client.image_msg(rgb, "rgb8", 9.0), False, 10.0)
    threading.Timer(0.1, lambda: b.offer(client.image_msg(rgb, "rgb8", 9.0), False, 10.0)).start()
    assert sorted(cams.gather(stop)) == ["a", "b"]
    cams.close()
