"""TensorRT engine cache: keys, atomic writes, corrupt/mismatched plans rebuilt, FP16 validation.

TensorRT cannot run here, so ONNX Runtime stands in: the "plan" is the ONNX file's bytes and the "runner"
an ORT session built from them. The real build is the `gpu` test at the bottom.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from d3_perception.backends.engine_cache import (
    EngineCache,
    EngineKey,
    EngineRejected,
    ShapeProfile,
    probe_image,
    validate_outputs,
)

PROFILE = ShapeProfile.for_resolution(128, max_batch=2)


def _key(**changes) -> EngineKey:
    base = dict(onnx_sha256="ab" * 32, tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
                precision="fp16", profile=PROFILE)
    return EngineKey(**{**base, **changes})


class _Counter:
    def __init__(self, plan=b"PLAN-v1"):
        self.plan, self.calls = plan, 0

    def __call__(self):
        self.calls += 1
        return self.plan


def test_profile_covers_every_aspect_ratio_at_the_resolution():
    assert PROFILE.min == (1, 3, 64, 64) and PROFILE.opt == (1, 3, 128, 128) and PROFILE.max == (2, 3, 128, 128)
    p = ShapeProfile.for_resolution(768)
    assert p.opt == (1, 3, 576, 768) and p.contains((1, 3, 448, 768)) and not p.contains((1, 3, 832, 768))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ShapeProfile((1, 3, 64, 64), (1, 3, 32, 32), (1, 3, 128, 128))


@pytest.mark.parametrize("field", ["onnx_sha256", "tensorrt_version", "gpu_name", "compute_capability",
                                   "precision", "profile"])
def test_every_key_field_changes_the_cache_entry(field):
    other = {"onnx_sha256": "cd" * 32, "tensorrt_version": "10.4.0", "gpu_name": "RTX 4090",
             "compute_capability": "8.9", "precision": "fp32",
             "profile": ShapeProfile.for_resolution(256)}[field]
    assert _key().digest() != _key(**{field: other}).digest()
    assert EngineKey.from_dict(json.loads(json.dumps(_key().to_dict()))) == _key()


def test_build_once_then_load_from_cache(tmp_path):
    cache, build = EngineCache(tmp_path), _Counter()
    engine, status = cache.get_or_build(_key(), build, deserialize=lambda b: b.decode())
    assert (engine, status, build.calls) == ("PLAN-v1", "built", 1)
    engine_path, key_path = cache.paths(_key())
    meta = json.loads(key_path.read_text())
    assert meta["key"] == _key().to_dict() and meta["engine_bytes"] == 7
    engine, status = cache.get_or_build(_key(), build, deserialize=lambda b: b.decode())
    assert (engine, status, build.calls) == ("PLAN-v1", "cached", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([engine_path.name, key_path.name])


def test_a_different_gpu_or_tensorrt_version_never_loads_the_old_plan(tmp_path):
    cache, build = EngineCache(tmp_path), _Counter()
    cache.get_or_build(_key(), build, deserialize=bytes)
    _, status = cache.get_or_build(_key(tensorrt_version="10.4.0"), build, deserialize=bytes)
    assert status == "built" and build.calls == 2


def test_corrupt_plan_is_rebuilt_not_loaded(tmp_path):
    cache, build = EngineCache(tmp_path), _Counter()
    cache.get_or_build(_key(), build, deserialize=bytes)
    engine_path, _ = cache.paths(_key())
    engine_path.write_bytes(b"PLAN-v1-truncated-garbage")  # hash no longer matches the key file
    loaded = []
    _, status = cache.get_or_build(_key(), build, deserialize=lambda b: loaded.append(b) or b)
    assert status == "built" and build.calls == 2 and loaded == [b"PLAN-v1"]
    assert engine_path.read_bytes() == b"PLAN-v1"


def test_key_file_describing_another_key_is_rebuilt(tmp_path):
    cache, build = EngineCache(tmp_path), _Counter()
    cache.get_or_build(_key(), build, deserialize=bytes)
    _, key_path = cache.paths(_key())
    meta = json.loads(key_path.read_text())
    meta["key"]["gpu_name"] = "Someone else's GPU"
    key_path.write_text(json.dumps(meta))
    _, status = cache.get_or_build(_key(), build, deserialize=bytes)
    assert status == "built"


def test_plan_that_fails_to_deserialize_is_rebuilt(tmp_path):
    cache, build = EngineCache(tmp_path), _Counter()
    cache.get_or_build(_key(), build, deserialize=bytes)
    calls = {"n": 0}

    def flaky(plan: bytes):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("engine incompatible")
        return plan

    _, status = cache.get_or_build(_key(), build, deserialize=flaky)
    assert status == "built" and build.calls == 2


def test_rejected_engine_is_not_cached(tmp_path):
    cache = EngineCache(tmp_path)
    nan_report = validate_outputs({"depth": np.full((1, 1, 4, 4), np.nan, np.float32)},
                                  {"depth": np.zeros((1, 1, 4, 4), np.float32)}, 0.05)
    with pytest.raises(EngineRejected, match="NaN/Inf"):
        cache.get_or_build(_key(), _Counter(), deserialize=bytes, validate=lambda e: nan_report)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_no_usable_half_entry(tmp_path, monkeypatch):
    cache = EngineCache(tmp_path)
    real_replace = os.replace

    def crash_on_key(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_key)
    with pytest.raises(OSError, match="disk full"):
        cache.store(_key(), b"PLAN")
    monkeypatch.setattr(os, "replace", real_replace)
    assert cache.load(_key()) is None  # plan without key file = miss
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_validation_reports_error_and_enforces_tolerance():
    ref = {"depth": np.zeros((1, 1, 8, 8), np.float32), "normals": np.zeros((1, 3, 8, 8), np.float32)}
    close = {"depth": ref["depth"] + 0.01, "normals": ref["normals"] - 0.02}
    report = validate_outputs(close, ref, tolerance=0.05)
    assert report.passed and report.max_abs_error == pytest.approx({"depth": 0.01, "normals": 0.02})
    far = validate_outputs({"depth": ref["depth"] + 0.2, "normals": ref["normals"]}, ref, tolerance=0.05)
    assert not far.passed and "above tolerance" in far.reason
    inf = validate_outputs({"depth": ref["depth"] + np.inf, "normals": ref["normals"]}, ref, 0.05)
    assert not inf.passed and not inf.finite
    assert json.dumps(inf.to_dict())  # JSON-safe even with inf errors
    probe = probe_image((64, 96))
    assert probe.shape == (1, 3, 64, 96) and probe.min() >= -1 and probe.max() <= 1 and probe.std() > 0.1


# ---------------------------------------------------------------- TensorRTBackend with ORT standing in
@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    from d3_perception.backends.onnx_io import export_onnx
    from d3_perception.model import build_random_checkpoint

    root = tmp_path_factory.mktemp("trt")
    ckpt = build_random_checkpoint(root / "tiny", seed=0)
    return ckpt, export_onnx(ckpt, root / "tiny.onnx", exporter="legacy")


class _OrtRunner:
    def __init__(self, plan: bytes, corrupt_output: bool = False):
        self.session = _session_from_bytes(plan)
        self.names = [o.name for o in self.session.get_outputs()]
        self.corrupt = corrupt_output

    def run(self, x):
        out = dict(zip(self.names, self.session.run(self.names, {"image": x}), strict=True))
        if self.corrupt:
            out["depth"] = out["depth"] * np.nan
        return out


def _session_from_bytes(plan: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(plan, sess_options=opts, providers=["CPUExecutionProvider"])


def _trt(onnx_file, tmp_path, **kw):
    from d3_perception.backends.tensorrt_backend import TensorRTBackend

    ckpt, onnx_path = onnx_file
    builds = kw.pop("builds", [])

    def builder(path, precision, profile):
        builds.append((precision, profile))
        return path.read_bytes()

    return TensorRTBackend(ckpt, onnx_path=onnx_path, cache_dir=tmp_path, processing_resolution=64,
                           builder=builder, runner_factory=kw.pop("runner", _OrtRunner),
                           identity=("FakeGPU", "8.7"), tensorrt_version="10.0.0-fake", **kw)


def test_tensorrt_backend_builds_validates_caches_and_predicts(onnx_file, tmp_path):
    builds: list = []
    backend = _trt(onnx_file, tmp_path, builds=builds)
    assert backend.cache_status == "built" and len(builds) == 1
    assert builds[0][0] == "fp16" and builds[0][1] == ShapeProfile.for_resolution(64)
    meta = json.loads(backend.cache.paths(backend.key)[1].read_text())
    assert meta["validation"]["passed"] is True and meta["validation"]["max_abs_error"]["depth"] < 1e-4
    out = backend.predict((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8))
    assert out["depth"].shape == (1, 40, 56) and out["normals"].shape == (1, 3, 40, 56)
    again = _trt(onnx_file, tmp_path, builds=builds)
    assert again.cache_status == "cached" and len(builds) == 1
    assert backend.info.name == "tensorrt" and "FakeGPU" in backend.info.device


def test_tensorrt_backend_refuses_an_engine_with_nan_output(onnx_file, tmp_path):
    with pytest.raises(EngineRejected, match="NaN/Inf"):
        _trt(onnx_file, tmp_path, runner=lambda plan: _OrtRunner(plan, corrupt_output=True))
    assert not list(tmp_path.rglob("*.engine"))


def test_tensorrt_unavailable_here_is_a_backend_unavailable_error(onnx_file):
    from d3_perception.backends import BackendUnavailable, create_backend
    from d3_perception.backends.tensorrt_backend import tensorrt_unavailable_reason

    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT is usable here")
    with pytest.raises(BackendUnavailable):
        create_backend("tensorrt", onnx_file[0])


@pytest.mark.gpu
def test_real_tensorrt_fp16_engine_matches_onnxruntime(onnx_file, tmp_path):
    from d3_perception.backends import create_backend

    ckpt, onnx_path = onnx_file
    trt_backend = create_backend("tensorrt", ckpt, onnx_path=onnx_path, cache_dir=tmp_path, precision="fp16",
                                 processing_resolution=64)
    ort_backend = create_backend("onnxruntime", ckpt, onnx_path=onnx_path, device="cpu", processing_resolution=64)
    img = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    assert np.abs(trt_backend.predict(img)["depth"] - ort_backend.predict(img)["depth"]).max() < 0.05
    assert create_backend("tensorrt", ckpt, onnx_path=onnx_path, cache_dir=tmp_path,
                          processing_resolution=64).cache_status == "cached"
