"""The one Backend.predict (validation, processing size, chunks), the one backend factory (names, auto order,
python: plugins) and the runtime fallback chain."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from d3_perception.backends import (
    AUTO_ORDER,
    BACKENDS,
    Backend,
    BackendInfo,
    create_backend,
    fallback_names,
    normals_convention,
)
from d3_perception.backends.chain import BackendChain
from d3_perception.model.config import ModelConfig


class NetworkOnly(Backend):
    """A backend that supplies only its network run: depth = mean of the input channels, normals = +z."""

    def __init__(self, name="net", tasks=("depth", "normals"), fail=False, batch_size=2):
        self.config = ModelConfig.preset("tiny", tasks=tasks)
        self.info = BackendInfo(name=name, device="cpu", precision="fp32", model_id="net", tasks=tasks,
                                processing_resolution=64)
        self.batch_size, self.fail = batch_size, fail
        self.shapes: list[tuple[int, ...]] = []
        self.closed = False

    def run_network(self, x, tasks=None):
        if self.fail:
            raise RuntimeError(f"{self.info.name} failed")
        self.shapes.append(x.shape)
        n, _, h, w = x.shape
        normals = np.zeros((n, 3, h, w), np.float32)
        normals[:, 2] = 1.0
        return {"depth": x.mean(axis=1, keepdims=True).astype(np.float32), "normals": normals}

    def close(self):
        self.closed = True


def test_base_predict_resizes_pads_chunks_and_returns_input_size():
    backend = NetworkOnly(batch_size=2)
    images = np.random.default_rng(0).integers(0, 256, (3, 48, 96, 3), dtype=np.uint8)
    out = backend.predict(images)
    assert out["depth"].shape == (3, 48, 96) and out["normals"].shape == (3, 3, 48, 96)
    # long side 96 -> 64 (processing_resolution), short side 32 -> padded to 64; 3 frames in chunks of 2
    assert backend.shapes == [(2, 3, 64, 64), (1, 3, 64, 64)]
    np.testing.assert_allclose(np.linalg.norm(out["normals"], axis=1), 1.0, atol=1e-5)
    assert set(backend.predict(images[0], tasks="depth")) == {"depth"}


@pytest.mark.parametrize("images, tasks, match", [
    (np.zeros((4, 4, 3), np.uint8), None, "between 8 and"),
    (np.zeros((16, 16), np.uint8), None, "RGB"),
    (np.zeros((16, 16, 3), np.uint8), ("semantics",), "`tasks` must be a non-empty subset"),
    (np.zeros((16, 16, 3), np.uint8), (), "`tasks` must be a non-empty subset"),
])
def test_base_predict_validates_before_the_network_runs(images, tasks, match):
    backend = NetworkOnly()
    with pytest.raises(ValueError, match=match):
        backend.predict(images, tasks=tasks)
    assert backend.shapes == []


def test_a_backend_without_network_or_predict_says_so():
    class Empty(Backend):
        info = BackendInfo("empty", "cpu", "fp32", "m", ("depth",), 64)
        config = ModelConfig.preset("tiny", tasks=("depth",))

    with pytest.raises(NotImplementedError, match="run_network"):
        Empty().predict(np.zeros((16, 16, 3), np.uint8))


def test_backend_names_and_auto_order_have_one_owner():
    from d3_perception.ros.launch_config import BACKEND_CHOICES
    from d3_perception.ros.params import SPECS, check_value

    assert BACKENDS == ("auto", *AUTO_ORDER) and BACKEND_CHOICES == BACKENDS
    assert all(check_value(SPECS["backend"], name) is None for name in BACKENDS)
    assert AUTO_ORDER == ("tensorrt", "openvino", "onnxruntime", "torch")
    assert fallback_names("tensorrt") == ["openvino", "onnxruntime", "torch"]
    assert fallback_names("openvino") == ["onnxruntime", "torch"]
    assert fallback_names("torch") == []
    assert fallback_names("python:x:y") == list(AUTO_ORDER)
    assert fallback_names("torch", ["onnxruntime"]) == ["onnxruntime"]


def test_create_backend_loads_python_plugins_with_the_common_arguments(monkeypatch):
    seen = {}

    def factory(checkpoint, **kwargs):
        seen.update(checkpoint=checkpoint, **kwargs)
        return NetworkOnly(name="plugin")

    module = types.ModuleType("d3_test_plugin")
    module.make = factory
    monkeypatch.setitem(sys.modules, "d3_test_plugin", module)
    backend = create_backend("python:d3_test_plugin:make", "/ckpt", precision="fp16", cache_dir="/c")
    assert backend.info.name == "plugin"
    assert seen == {"checkpoint": "/ckpt", "device": None, "precision": "fp16", "processing_resolution": None,
                    "cache_dir": "/c"}
    with pytest.raises(ValueError, match="python:module:callable"):
        create_backend("python:d3_test_plugin", "/ckpt")
    with pytest.raises(ValueError, match="must name a callable"):
        create_backend("python:d3_test_plugin:missing", "/ckpt")


def test_normals_convention_from_backend_config_or_checkpoint(tmp_path):
    backend = NetworkOnly()
    assert normals_convention(backend) == backend.config.normals_convention
    (tmp_path / "config.json").write_text('{"normals_convention": "opengl"}')
    plain = types.SimpleNamespace()
    assert normals_convention(plain, tmp_path) == "opengl"
    assert normals_convention(plain, tmp_path / "missing") == "optical"


def test_chain_switches_after_max_failures_and_closes_the_failed_backend():
    failing, created, log, switched = NetworkOnly("bad", fail=True), [], [], []

    def create(name):
        if name == "broken":
            raise RuntimeError("cannot start")
        created.append(NetworkOnly(name))
        return created[-1]

    chain = BackendChain(failing, ["broken", "good"], create, log=log.append, on_switch=switched.append)
    image = np.zeros((1, 16, 16, 3), np.uint8)
    for attempt in range(3):
        with pytest.raises(RuntimeError, match="bad failed"):
            chain.predict(image, ("depth",), max_failures=3)
        assert chain.backend is (failing if attempt < 2 else created[0])
    assert failing.closed and chain.switches == 1 and chain.failures == 0
    assert [a.backend.info.name for a in switched] == ["bad", "good"]
    assert any("fallback backend broken could not start" in m for m in log)
    assert any("backend bad failed (3 consecutive failures" in m and "switched to good" in m for m in log)
    assert chain.predict(image, ("depth",), max_failures=3)["depth"].shape == (1, 16, 16)
    assert chain.current().renormalise  # NetworkOnly does not promise unit normals
    chain.close()
    assert created[0].closed and chain.current() is None
    with pytest.raises(RuntimeError, match="closed"):
        chain.predict(image, ("depth",), max_failures=3)


def test_chain_without_fallbacks_keeps_the_backend_and_says_none_is_left():
    log = []
    chain = BackendChain(NetworkOnly("bad", fail=True), [], lambda name: None, log=log.append)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            chain.predict(np.zeros((16, 16, 3), np.uint8), ("depth",), max_failures=2)
    assert chain.backend.info.name == "bad" and chain.switches == 0
    assert log == ["backend keeps failing (2 consecutive failures, last: bad failed) and no fallback backend is left"]


def test_frames_of_several_cameras_share_one_network_call_per_size_and_equal_separate_calls():
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in ((48, 64), (30, 40), (48, 64), (64, 32))]
    batched = NetworkOnly(batch_size=8)
    outs = batched.predict_many(frames)
    # (48,64) x2 and (30,40) pad to 64x64: one call; (64,32) pads to 64x64 as well (long side 64) -> one call
    assert batched.shapes == [(4, 3, 64, 64)]
    single = NetworkOnly()
    for frame, out in zip(frames, outs, strict=True):
        ref = single.predict(frame)
        assert set(out) == {"depth", "normals"}
        np.testing.assert_allclose(out["depth"], ref["depth"], atol=1e-6)
        np.testing.assert_allclose(out["normals"], ref["normals"], atol=1e-6)


def test_predict_many_on_the_real_torch_backend_equals_predict(tmp_path):
    pytest.importorskip("torch")
    from d3_perception.model.checkpoint import build_random_checkpoint

    ckpt = build_random_checkpoint(tmp_path / "ckpt", preset="tiny", seed=0)
    backend = create_backend("torch", ckpt, device="cpu", processing_resolution=64)
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in ((48, 64), (30, 40), (64, 48))]
    for frame, out in zip(frames, backend.predict_many(frames), strict=True):
        ref = backend.predict(frame)
        for task in ref:
            np.testing.assert_allclose(out[task], ref[task], atol=2e-4, err_msg=task)


def test_predict_many_with_a_plugin_that_only_overrides_predict():
    class Plugin(Backend):
        info = BackendInfo("plugin", "cpu", "fp32", "m", ("depth",), 64)
        calls = 0

        def predict(self, images, tasks=None):
            Plugin.calls += 1
            return {"depth": images[..., 0].astype(np.float32) / 255.0}

    frames = [np.full((16, 16, 3), v, np.uint8) for v in (0, 51, 102)] + [np.full((8, 16, 3), 255, np.uint8)]
    plugin = Plugin()
    plugin.config = ModelConfig.preset("tiny", tasks=("depth",))
    outs = plugin.predict_many(frames)
    assert Plugin.calls == 2  # one call per input size
    assert [float(o["depth"].max()) for o in outs] == pytest.approx([0.0, 0.2, 0.4, 1.0])
