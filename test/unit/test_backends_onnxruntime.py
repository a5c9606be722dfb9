"""ONNX Runtime backend: parity with torch, dynamic batch and shape, the ONNX cache, deployment from .onnx."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from d3_perception.backends import create_backend
from d3_perception.model import build_random_checkpoint


def _shared_checkpoint(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "d3_model_shared" / "tiny"  # shared with other backend modules
    if not (path / "model.safetensors").is_file():
        build_random_checkpoint(path, preset="tiny", seed=0)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _shared_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def ort_backend(ckpt):
    # First use exports into <checkpoint>/.cache/onnx. The TorchScript exporter takes ~2 s on the tiny model;
    # the default dynamo exporter ~40 s, so it has its own `slow` test below.
    return create_backend("onnxruntime", ckpt, processing_resolution=64, exporter="legacy")


@pytest.fixture(scope="module")
def torch_backend(ckpt):
    return create_backend("torch", ckpt, processing_resolution=64)


def _frames(n=1, h=48, w=64, seed=0):
    return (np.random.default_rng(seed).random((n, h, w, 3)) * 255).astype(np.uint8)


def test_onnxruntime_matches_torch_on_the_tiny_model(ort_backend, torch_backend):
    img = _frames(2, 45, 77)
    got, ref = ort_backend.predict(img), torch_backend.predict(img)
    assert np.abs(got["depth"] - ref["depth"]).max() <= 1e-4
    assert np.abs(got["normals"] - ref["normals"]).max() <= 1e-3
    assert ort_backend.info.name == "onnxruntime" and ort_backend.info.device == "CPUExecutionProvider"


def test_onnxruntime_is_deterministic(ort_backend):
    img = _frames(1)
    a, b = ort_backend.predict(img), ort_backend.predict(img)
    assert np.array_equal(a["depth"], b["depth"]) and np.array_equal(a["normals"], b["normals"])


@pytest.mark.parametrize(("n", "h", "w"), [(1, 64, 64), (3, 64, 128), (1, 128, 64)])
def test_graph_has_dynamic_batch_and_spatial_size(ort_backend, torch_backend, n, h, w):
    import torch

    x = (np.random.default_rng(n).random((n, 3, h, w), dtype=np.float32) * 2 - 1).astype(np.float32)
    got = ort_backend.run_network(x)
    with torch.inference_mode():
        ref = torch_backend.model(torch.from_numpy(x))
    assert got["depth"].shape == (n, 1, h, w) and got["normals"].shape == (n, 3, h, w)
    assert np.abs(got["depth"] - ref["depth"].numpy()).max() <= 1e-4


def test_export_is_cached_next_to_the_checkpoint_and_reused(ckpt, ort_backend, monkeypatch):
    from d3_perception.backends import onnx_io
    from d3_perception.model.config import checkpoint_hash

    path = ort_backend.onnx_path
    assert path.parent == ckpt / ".cache" / "onnx" and checkpoint_hash(ckpt) in path.name
    monkeypatch.setattr(onnx_io, "export_onnx", lambda *a, **k: pytest.fail("re-exported despite the cache"))
    again = create_backend("onnxruntime", ckpt, processing_resolution=64, exporter="legacy")
    assert again.onnx_path == path


def test_deploy_from_the_onnx_file_alone(ort_backend, tmp_path):
    import shutil

    lonely = tmp_path / "model.onnx"
    shutil.copy(ort_backend.onnx_path, lonely)  # no checkpoint weights beside it: config comes from metadata
    backend = create_backend("onnxruntime", lonely, processing_resolution=64)
    img = _frames(1)
    assert np.array_equal(backend.predict(img)["depth"], ort_backend.predict(img)["depth"])
    assert backend.config.tasks == ("depth", "normals")


def test_onnx_file_of_another_checkpoint_is_refused(ort_backend, tmp_path):
    other = build_random_checkpoint(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="must be exported from checkpoint"):
        create_backend("onnxruntime", other, onnx_path=ort_backend.onnx_path)


def test_auto_picks_onnxruntime_when_tensorrt_and_openvino_are_absent(ckpt, ort_backend, caplog, monkeypatch):
    from d3_perception.backends.tensorrt_backend import tensorrt_unavailable_reason

    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT is usable here: auto picks it")
    monkeypatch.setitem(sys.modules, "openvino", None)  # OpenVINO would come first on an x86 CPU
    with caplog.at_level(logging.INFO, logger="d3_perception.backends"):
        backend = create_backend("auto", ckpt, processing_resolution=64, exporter="legacy")
    assert backend.info.name == "onnxruntime"
    assert "skipping tensorrt" in caplog.text and "skipping openvino" in caplog.text


def test_cpu_provider_refuses_half_precision(ckpt):
    with pytest.raises(ValueError, match="`precision` must be 'fp32'"):
        create_backend("onnxruntime", ckpt, device="cpu", precision="fp16")


def test_parity_report_passes_on_the_exported_file(ckpt, ort_backend):
    from d3_perception.export import parity_report

    report = parity_report(ckpt, ort_backend.onnx_path, sizes=[(64, 64), (64, 128)], batch=2)
    assert report["passed"] is True
    assert set(report["max_abs_error"]) == {"depth", "normals"}
    assert report["max_abs_error"]["depth"] <= 1e-4


@pytest.mark.slow
def test_default_dynamo_export_matches_torch(ckpt, torch_backend, capsys):
    import json

    from d3_perception.backends.onnx_io import read_onnx_metadata

    backend = create_backend("onnxruntime", ckpt, processing_resolution=64, exporter="dynamo")
    assert read_onnx_metadata(backend.onnx_path)["d3_exporter"] == "dynamo"
    assert capsys.readouterr().out == ""  # the exporter's stdout chatter is swallowed (tools print JSON)
    img = _frames(2, 45, 77)
    got, ref = backend.predict(img), torch_backend.predict(img)
    assert np.abs(got["depth"] - ref["depth"]).max() <= 1e-4
    x = np.zeros((3, 3, 64, 128), np.float32)  # batch 3 and a non-square size: both dims stayed dynamic
    assert backend.run_network(x)["normals"].shape == (3, 3, 64, 128)
    assert json.loads(read_onnx_metadata(backend.onnx_path)["d3_config"])["tasks"] == ["depth", "normals"]


def test_auto_exporter_traces_small_models_and_uses_dynamo_for_large(ckpt, monkeypatch):
    from d3_perception.backends import onnxruntime_backend as ortb
    from d3_perception.backends.onnx_io import read_onnx_metadata

    backend = create_backend("onnxruntime", ckpt, processing_resolution=64)  # default: exporter="auto"
    assert read_onnx_metadata(backend.onnx_path)["d3_exporter"] == "legacy"  # a tiny model: fast tracing
    monkeypatch.setattr(ortb, "LEGACY_EXPORT_MAX_BYTES", 1)
    assert ortb._auto_exporter(ckpt) == "dynamo"  # SD2.1-size weights: dynamo (one .data file, 4 GiB peak)
