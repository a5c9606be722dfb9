"""The factory and the torch backend."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from d3_perception.backends import Backend, create_backend
from d3_perception.model import build_random_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "d3_model_shared"  # shared with the other backend test modules
    path = root / "tiny"
    if not (path / "model.safetensors").is_file():
        build_random_checkpoint(path, preset="tiny", seed=0)
    return path


def _frames(n=1, h=48, w=64):
    return (np.random.default_rng(0).random((n, h, w, 3)) * 255).astype(np.uint8)


def test_torch_backend_predicts_at_input_size_with_info(ckpt):
    backend = create_backend("torch", ckpt, processing_resolution=64)
    assert isinstance(backend, Backend)
    assert backend.info.name == "torch" and backend.info.device == "cpu" and backend.info.precision == "fp32"
    assert backend.info.tasks == ("depth", "normals") and backend.info.processing_resolution == 64
    out = backend.predict(_frames(3, 30, 50))
    assert out["depth"].shape == (3, 30, 50) and out["normals"].shape == (3, 3, 30, 50)
    only = backend.predict(_frames(1), tasks=("normals",))
    assert set(only) == {"normals"}


def test_bf16_runs_close_to_fp32(ckpt):
    img = _frames()
    ref = create_backend("torch", ckpt, processing_resolution=64).predict(img)
    bf16 = create_backend("torch", ckpt, precision="bf16", processing_resolution=64)
    assert bf16.info.precision == "bf16"
    # τ stays fp32: in bf16 261 would round to 260 (spacing 2 there)
    assert bf16.model.timestep.dtype.is_floating_point and str(bf16.model.timestep.dtype) == "torch.float32"
    assert float(bf16.model.timestep) == 261.0
    out = bf16.predict(img)
    assert out["depth"].dtype == np.float32
    assert np.isfinite(out["depth"]).all()
    assert np.abs(out["depth"] - ref["depth"]).max() < 0.1


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "tensorflow"}, "`name` must be one of"),
    ({"name": "torch", "precision": "fp16", "device": "cpu"}, "fp16"),
    ({"name": "torch", "precision": "int8"}, "`precision` must be one of"),
    ({"name": "torch", "processing_resolution": 100}, "multiple of 64"),
    ({"name": "torch", "tasks": ("albedo",)}, "`tasks` must be a non-empty subset"),
    ({"name": "torch", "num_threads": 0}, "`num_threads` must be an integer >= 1"),
])
def test_bad_settings_are_rejected(ckpt, kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        create_backend(name, ckpt, **kwargs)


def test_num_threads_sets_the_torch_intra_op_pool(ckpt):
    import torch

    before = torch.get_num_threads()
    try:
        backend = create_backend("torch", ckpt, processing_resolution=64, num_threads=1)
        assert torch.get_num_threads() == 1
        assert backend.predict(_frames())["depth"].shape == (1, 48, 64)
        create_backend("torch", ckpt, processing_resolution=64)  # None leaves the pool as it is
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        create_backend("torch", tmp_path / "nope")


def test_auto_falls_back_with_logged_reasons_when_settings_exclude_faster_backends(ckpt, caplog, monkeypatch):
    # bf16 without OpenVINO is a torch-only precision here: auto must skip TensorRT (absent), OpenVINO
    # (simulated absent) and ONNX Runtime (no bf16)
    monkeypatch.setitem(sys.modules, "openvino", None)
    with caplog.at_level(logging.INFO, logger="d3_perception.backends"):
        backend = create_backend("auto", ckpt, precision="bf16", processing_resolution=64)
    assert backend.info.name == "torch"
    text = caplog.text
    assert "skipping tensorrt" in text and "skipping openvino" in text and "skipping onnxruntime" in text


@pytest.mark.gpu
def test_cuda_fp16_matches_fp32(ckpt):
    img = _frames()
    ref = create_backend("torch", ckpt, device="cuda").predict(img)
    out = create_backend("torch", ckpt, device="cuda", precision="fp16").predict(img)
    assert np.abs(out["depth"] - ref["depth"]).max() < 0.05
