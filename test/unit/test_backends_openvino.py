"""OpenVINO backend: parity with torch, the compiled-model cache, auto order and fallback, quality of bf16 and
INT8 on the bundled model's held-out frames, the INT8 export's quality gate, and life without nncf."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'd3_perception[openvino]')")

from d3_perception.backends import create_backend  # noqa: E402
from d3_perception.backends.openvino_backend import OpenVinoKey, auto_skip_reason, int8_model_path  # noqa: E402
from d3_perception.model import build_random_checkpoint  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "d3_demo_tiny"
THREADS = 2  # explicit: the CPU plugin would otherwise take every core of a shared machine
QUALITY_FRAMES = 48


def _frames(n=1, h=48, w=64, seed=0):
    return (np.random.default_rng(seed).random((n, h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "d3_model_shared" / "tiny"  # shared with other backend modules
    if not (path / "model.safetensors").is_file():
        build_random_checkpoint(path, preset="tiny", seed=0)
    return path


@pytest.fixture(scope="module")
def ov_backend(ckpt):
    return create_backend("openvino", ckpt, processing_resolution=64, exporter="legacy", num_threads=THREADS)


@pytest.fixture(scope="module")
def torch_backend(ckpt):
    return create_backend("torch", ckpt, device="cpu", processing_resolution=64)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    """A copy of the bundled model (its caches must not land in the repository) and its ONNX export."""
    path = tmp_path_factory.mktemp("bundled") / "d3_demo_tiny"
    shutil.copytree(BUNDLED, path, ignore=shutil.ignore_patterns(".cache"))
    return path


@pytest.fixture(scope="module")
def bundled_torch_quality(bundled):
    from d3_perception.evaluation.heldout import heldout_quality

    return heldout_quality(create_backend("torch", bundled, device="cpu"), QUALITY_FRAMES)


# ----------------------------------------------------------------------------- parity and shapes
def test_openvino_fp32_matches_torch_on_the_tiny_model(ov_backend, torch_backend):
    img = _frames(2, 45, 77)
    got, ref = ov_backend.predict(img), torch_backend.predict(img)
    assert np.abs(got["depth"] - ref["depth"]).max() <= 1e-4
    assert np.abs(got["normals"] - ref["normals"]).max() <= 1e-4
    assert ov_backend.info.name == "openvino" and ov_backend.info.device.startswith("CPU")


def test_each_new_input_shape_gets_its_own_compiled_model(ckpt, ov_backend, tmp_path):
    backend = create_backend("openvino", ckpt, onnx_path=ov_backend.model_path, processing_resolution=128,
                             cache_dir=tmp_path, num_threads=THREADS)
    reference = create_backend("torch", ckpt, device="cpu", processing_resolution=128)
    assert list(backend.cache_status) == [(1, 3, 128, 128)]  # the start shape, compiled at construction
    portrait = _frames(1, 80, 40, seed=3)  # network input 128x64
    got, ref = backend.predict(portrait), reference.predict(portrait)
    assert np.abs(got["depth"] - ref["depth"]).max() <= 1e-4
    assert list(backend.cache_status) == [(1, 3, 128, 128), (1, 3, 128, 64)]


def test_dynamic_shape_model_matches_torch(ckpt, ov_backend, torch_backend, tmp_path):
    dyn = create_backend("openvino", ckpt, onnx_path=ov_backend.model_path, processing_resolution=64,
                         dynamic_shapes=True, cache_dir=tmp_path, num_threads=THREADS)
    for img in (_frames(1, 48, 64), _frames(3, 64, 40, seed=1)):
        got, ref = dyn.predict(img), torch_backend.predict(img)
        assert np.abs(got["depth"] - ref["depth"]).max() <= 1e-4
    assert len(dyn.cache_status) == 1  # one compiled model serves every shape


def test_task_subset_returns_only_that_task(ov_backend, torch_backend):
    out = ov_backend.predict(_frames(), tasks=("depth",))
    assert list(out) == ["depth"]


# ----------------------------------------------------------------------------- settings it refuses
@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(precision="fp16"), "fp32, bf16 or int8 on the OpenVINO CPU"),
    (dict(device="cuda"), "`device` must be 'cpu', 'gpu'"),
    (dict(precision="int4"), "`precision` must be one of"),
    (dict(batch_size=0), "`batch_size` must be an integer >= 1"),
])
def test_bad_settings_are_named(ckpt, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_backend("openvino", ckpt, **kwargs)


def test_onnx_file_of_another_checkpoint_is_refused(ov_backend, tmp_path):
    other = build_random_checkpoint(tmp_path / "other", preset="tiny", seed=1)
    with pytest.raises(ValueError, match="must be exported from checkpoint"):
        create_backend("openvino", other, onnx_path=ov_backend.model_path, cache_dir=tmp_path)


def test_int8_without_a_quantised_model_says_how_to_make_one(ckpt, ov_backend, tmp_path):
    with pytest.raises(ValueError, match="d3-export .* --openvino --precision int8"):
        create_backend("openvino", ckpt, onnx_path=ov_backend.model_path, precision="int8", cache_dir=tmp_path)


# ----------------------------------------------------------------------------- compiled-model cache
def test_cache_key_changes_with_each_field():
    base = OpenVinoKey("a" * 64, "2026.4.1", "CPU: x", "fp32", (1, 3, 64, 64))
    changed = [replace(base, model_sha256="b" * 64), replace(base, openvino_version="2026.5.0"),
               replace(base, device_name="CPU: y"), replace(base, precision="bf16"),
               replace(base, input_shape=(1, 3, 64, 128)), replace(base, dynamic=True)]
    digests = {k.digest() for k in changed}
    assert len(digests) == len(changed) and base.digest() not in digests
    assert OpenVinoKey.from_dict(json.loads(json.dumps(base.to_dict()))) == base


def test_second_start_loads_the_cached_model_with_identical_outputs(ckpt, ov_backend, tmp_path):
    kwargs = dict(onnx_path=ov_backend.model_path, processing_resolution=64, cache_dir=tmp_path,
                  num_threads=THREADS)
    first = create_backend("openvino", ckpt, **kwargs)
    second = create_backend("openvino", ckpt, **kwargs)
    assert set(first.cache_status.values()) == {"built"} and set(second.cache_status.values()) == {"cached"}
    img = _frames(1)
    assert np.array_equal(first.predict(img)["depth"], second.predict(img)["depth"])


def test_corrupt_cached_model_is_rebuilt_not_loaded(ckpt, ov_backend, torch_backend, tmp_path, caplog):
    kwargs = dict(onnx_path=ov_backend.model_path, processing_resolution=64, cache_dir=tmp_path,
                  num_threads=THREADS)
    create_backend("openvino", ckpt, **kwargs)
    (blob,) = (tmp_path / "openvino").glob("*.blob")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="d3_perception.backends"):
        rebuilt = create_backend("openvino", ckpt, **kwargs)
    assert "corrupt" in caplog.text and set(rebuilt.cache_status.values()) == {"built"}
    img = _frames(1)
    assert np.abs(rebuilt.predict(img)["depth"] - torch_backend.predict(img)["depth"]).max() <= 1e-4


def test_cached_blob_that_cannot_be_imported_is_rebuilt(ckpt, ov_backend, tmp_path, caplog):
    import hashlib

    kwargs = dict(onnx_path=ov_backend.model_path, processing_resolution=64, cache_dir=tmp_path,
                  num_threads=THREADS)
    create_backend("openvino", ckpt, **kwargs)
    (blob,) = (tmp_path / "openvino").glob("*.blob")
    garbage = b"not an OpenVINO blob" * 10
    blob.write_bytes(garbage)  # with a matching hash: only the import itself can tell
    meta_path = blob.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["engine_sha256"] = hashlib.sha256(garbage).hexdigest()
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="d3_perception.backends"):
        rebuilt = create_backend("openvino", ckpt, **kwargs)
    assert "failed to deserialize" in caplog.text and set(rebuilt.cache_status.values()) == {"built"}
    assert blob.read_bytes() != garbage


# ----------------------------------------------------------------------------- auto order and fallback
@pytest.fixture
def openvino_usable_by_auto():
    reason = auto_skip_reason(None)
    if reason is not None:
        pytest.skip(f"auto does not try OpenVINO here: {reason}")


def test_auto_picks_openvino_on_an_x86_cpu_without_cuda(ckpt, ov_backend, openvino_usable_by_auto, caplog):
    with caplog.at_level(logging.INFO, logger="d3_perception.backends"):
        backend = create_backend("auto", ckpt, onnx_path=ov_backend.model_path, processing_resolution=64)
    assert backend.info.name == "openvino"
    assert "skipping tensorrt" in caplog.text


def test_auto_falls_back_with_the_reason_when_openvino_fails_to_compile(ckpt, ov_backend, openvino_usable_by_auto,
                                                                        tmp_path, monkeypatch, caplog):
    from d3_perception.backends.openvino_backend import OpenVinoBackend

    def broken_compile(self, shape, precision):
        raise RuntimeError("simulated CPU plugin compile failure")

    monkeypatch.setattr(OpenVinoBackend, "_compile", broken_compile)
    with caplog.at_level(logging.INFO, logger="d3_perception.backends"):
        backend = create_backend("auto", ckpt, onnx_path=ov_backend.model_path, processing_resolution=64,
                                 cache_dir=tmp_path)  # empty cache: the compile really runs
    assert backend.info.name == "onnxruntime"
    assert "skipping openvino" in caplog.text and "simulated CPU plugin compile failure" in caplog.text


def test_auto_skips_openvino_on_a_cuda_device_request():
    assert "CUDA" in (auto_skip_reason("cuda:0") or "")


# ----------------------------------------------------------------------------- quality on the trained model
def test_bf16_keeps_held_out_quality_of_the_bundled_model_within_1_percent(bundled, bundled_torch_quality,
                                                                          tmp_path):
    from d3_perception.evaluation.heldout import heldout_quality, quality_change

    bf16 = create_backend("openvino", bundled, precision="bf16", exporter="legacy", cache_dir=tmp_path,
                          num_threads=THREADS)
    change = quality_change(heldout_quality(bf16, QUALITY_FRAMES), bundled_torch_quality)
    assert set(change) == {"abs_rel", "delta1", "normals_mean_deg"}
    assert max(change.values()) <= 0.01, change


@pytest.fixture(scope="module")
def int8_export(bundled, tmp_path_factory):
    """``d3-export --openvino --precision int8`` on the bundled model: (exit code, summary JSON, cache, onnx)."""
    pytest.importorskip("nncf", reason="INT8 export needs nncf")
    import contextlib
    import io

    from d3_perception.export import main

    cache = tmp_path_factory.mktemp("int8_cache")
    onnx_out = cache / "model.onnx"
    argv = [str(bundled), "--output", str(onnx_out), "--exporter", "legacy", "--no-parity", "--openvino",
            "--precision", "int8", "--calibration-frames", "32", "--quality-frames", str(QUALITY_FRAMES),
            "--quality-tolerance", "0.02", "--engine-cache", str(cache), "--threads", str(THREADS)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(argv)
    return rc, json.loads(stdout.getvalue() or "{}"), cache, onnx_out


@pytest.mark.slow  # NNCF calibration + two held-out evaluations: ~90 s on 2 shared cores
def test_int8_export_passes_the_gate_and_the_backend_finds_its_model(bundled, int8_export, bundled_torch_quality):
    from d3_perception.evaluation.heldout import quality_change

    rc, summary, cache, onnx_out = int8_export
    assert rc == 0
    report = summary["openvino"]["quality"]
    assert report["passed"] and report["frames"] == QUALITY_FRAMES
    # judged against torch fp32 too (the gate's own reference is OpenVINO fp32): within the 2 %
    change = quality_change(report["candidate"], bundled_torch_quality)
    assert max(change.values()) <= 0.02, change
    assert any(v != 0 for v in change.values())  # it really is a different (quantised) model
    int8 = create_backend("openvino", bundled, onnx_path=onnx_out, precision="int8", cache_dir=cache,
                          num_threads=THREADS)
    assert int8.model_path == Path(summary["openvino"]["model"]) and int8.model_path.parent == cache / "openvino"
    assert set(int8.cache_status.values()) == {"cached"}  # compiled and cached by the export


@pytest.mark.slow  # one NNCF quantisation: ~50 s on 2 shared cores
def test_int8_export_refuses_a_model_beyond_a_zero_tolerance_and_writes_nothing(bundled, tmp_path, capsys,
                                                                                 monkeypatch):
    pytest.importorskip("nncf", reason="INT8 export needs nncf")
    from d3_perception.evaluation import heldout
    from d3_perception.export import main

    # On 8 frames the real INT8 model of the bundled checkpoint may score no worse than fp32 (it did after the
    # wide-world retrain: all three metrics 0.6-2.3 % *better*), which a zero tolerance accepts. Its measured
    # AbsRel is made 5 % worse so the refusal path runs for certain; quantisation and evaluation stay real.
    real = heldout.heldout_quality

    def int8_slightly_worse(backend, *args, **kwargs):
        q = real(backend, *args, **kwargs)
        return {**q, "abs_rel": q["abs_rel"] * 1.05} if backend.info.precision == "int8" else q

    monkeypatch.setattr(heldout, "heldout_quality", int8_slightly_worse)

    argv = [str(bundled), "--output", str(tmp_path / "m.onnx"), "--exporter", "legacy", "--no-parity",
            "--openvino", "--precision", "int8", "--calibration-frames", "8", "--quality-frames", "8",
            "--quality-tolerance", "0", "--engine-cache", str(tmp_path), "--threads", str(THREADS)]
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("d3-export: error: int8 model refused: abs_rel degrades by") and \
        "nothing written" in err[-1]
    assert not list(tmp_path.rglob("*int8*.xml")) and not list(tmp_path.rglob("*int8*.bin"))


def test_int8_calibration_at_another_resolution_gives_a_model_for_any_input_size(ckpt, ov_backend, torch_backend,
                                                                                tmp_path, monkeypatch):
    # What lets an SD2.1-size model be quantised on a 23 GiB machine: calibrate small, run at full size.
    pytest.importorskip("nncf", reason="INT8 export needs nncf")
    from d3_perception import openvino_export

    seen = []
    real = openvino_export.calibration_inputs

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.extend(x.shape for x in out)
        return out

    monkeypatch.setattr(openvino_export, "calibration_inputs", recording)
    with pytest.raises(ValueError, match="`calibration_resolution` must be a multiple of 64"):
        openvino_export.quantize_int8(ov_backend.model_path, tmp_path / "bad.xml", calibration_resolution=100)
    xml = openvino_export.quantize_int8(ov_backend.model_path, tmp_path / "int8.xml", calibration_frames=2,
                                        calibration_resolution=128)
    assert seen == [(1, 3, 128, 128)] * 2  # 96x128 frames padded to 128x128 (the model works at 64)
    int8 = create_backend("openvino", ckpt, onnx_path=xml, precision="int8", processing_resolution=64,
                          cache_dir=tmp_path, num_threads=THREADS)
    img = _frames(1)
    out = int8.predict(img)["depth"]
    assert out.shape == (1, 48, 64) and np.isfinite(out).all()
    assert np.abs(out - torch_backend.predict(img)["depth"]).mean() < 0.1


# ----------------------------------------------------------------------------- without nncf
def test_everything_but_int8_export_runs_without_nncf(ckpt, ov_backend, torch_backend, tmp_path, monkeypatch,
                                                     capsys):
    monkeypatch.setitem(sys.modules, "nncf", None)  # `import nncf` now raises ImportError
    bf16 = create_backend("openvino", ckpt, onnx_path=ov_backend.model_path, precision="bf16",
                          processing_resolution=64, cache_dir=tmp_path, num_threads=THREADS)
    img = _frames(1)
    assert np.abs(bf16.predict(img)["depth"] - torch_backend.predict(img)["depth"]).max() < 0.05
    from d3_perception.export import main

    rc = main([str(ckpt), "--output", str(tmp_path / "m.onnx"), "--openvino", "--precision", "int8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "needs NNCF" in err[0] and "pip install" in err[0]
    assert not (tmp_path / "m.onnx").exists()  # refused before any work


def test_int8_model_path_is_keyed_by_checkpoint_and_tasks(tmp_path):
    a = int8_model_path(tmp_path, "abc", ("depth", "normals"))
    assert a != int8_model_path(tmp_path, "abd", ("depth", "normals"))
    assert a != int8_model_path(tmp_path, "abc", ("depth",))
    with pytest.raises(ValueError, match="checkpoint_hash"):
        int8_model_path(tmp_path, "", ("depth",))


def test_int8_keeps_the_first_and_last_convolution_of_each_network_in_fp32(ov_backend):
    """Both exporters' graphs: the legacy one names Conv nodes by module path, the dynamo one records it in the
    node's name scopes; either way the same eight convolutions stay fp32 (quantising them cost the bundled
    model 5-8 % AbsRel on its own world)."""
    import onnx
    from onnx import helper

    from d3_perception.openvino_export import fp32_scope

    legacy = fp32_scope(ov_backend.model_path)
    modules = sorted(name.rsplit("/", 2)[-2] for name in legacy)
    assert modules == sorted(["conv_in", "conv_out"] * 3 + ["quant_conv", "post_quant_conv"]), legacy
    assert {name.split("/")[2] for name in legacy} == {"encoder", "quant_conv", "unet", "post_quant_conv", "decoder"}

    def conv(name, scopes):
        node = helper.make_node("Conv", ["x", "w"], [name + "_out"], name=name)
        onnx.helper.set_metadata_props(node, {"pkg.torch.onnx.name_scopes": repr(scopes)})
        return node

    graph = helper.make_graph(
        [conv("node_conv2d", ["", "predictor", "predictor.vae.encoder", "predictor.vae.encoder.conv_in", "conv2d"]),
         conv("node_conv2d_1", ["", "predictor", "predictor.vae.encoder.down_blocks.0.resnets.0.conv1", "conv2d_1"]),
         conv("node_conv2d_9", ["", "predictor", "predictor.unet.conv_out", "conv2d_9"])],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("node_conv2d_9_out", onnx.TensorProto.FLOAT, None)])
    path = ov_backend.model_path.parent / "dynamo_names.onnx"
    onnx.save(helper.make_model(graph), path)
    assert fp32_scope(path) == ["node_conv2d", "node_conv2d_9"]


def test_int8_calibrates_on_image_files_spread_over_a_recording(ckpt, ov_backend, torch_backend, tmp_path):
    """--calibration-images: the frames of a folder (a recording, in name order) are read, pre-processed as the
    backends do and spread over the recording when there are more than the calibration frames; the INT8 model
    made from them runs."""
    pytest.importorskip("nncf", reason="INT8 export needs nncf")
    import cv2

    from d3_perception.backends.onnx_io import config_from_onnx
    from d3_perception.model.processing import preprocess
    from d3_perception.openvino_export import CalibrationFrames, calibration_inputs, quantize_int8

    rec = tmp_path / "recording" / "cam0"
    rec.mkdir(parents=True)
    frames = _frames(6, 48, 64, seed=3)
    for i, rgb in enumerate(frames):
        cv2.imwrite(str(rec / f"frame_{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (rec / "info.txt").write_text("not an image")
    source = CalibrationFrames(images=[tmp_path / "recording"])
    assert source.indices(3) == [0, 2, 4]  # spread over the recording, in name order
    picked = source.rgb(source.indices(3))
    assert len(picked) == 3 and all(np.array_equal(a, frames[i]) for a, i in zip(picked, (0, 2, 4), strict=True))
    assert source.indices(10) == list(range(6)) and source.count() == 6  # fewer than asked: all of them
    config = config_from_onnx(ov_backend.model_path)
    inputs = calibration_inputs(config, 3, source=source)
    for x, i in zip(inputs, (0, 2, 4), strict=True):  # exactly the backends' pre-processing of those files
        np.testing.assert_array_equal(x, preprocess(frames[i][None], config.processing_resolution,
                                                    config.input_range)[0])
    xml = quantize_int8(ov_backend.model_path, tmp_path / "int8.xml", calibration_frames=3,
                        calibration=CalibrationFrames(images=[str(rec / "*.png")]))
    int8 = create_backend("openvino", xml, precision="int8", num_threads=THREADS)
    out = int8.predict(frames[:1])
    ref = torch_backend.predict(frames[:1])
    assert out["depth"].shape == ref["depth"].shape and np.isfinite(out["depth"]).all()


def test_image_agreement_measures_how_far_a_model_moves_on_unlabelled_images(ckpt, torch_backend, tmp_path):
    """The label-free check on the user's images: an affine change of the depth costs nothing (relative depth),
    normals turned by 90 degrees cost 90; it scores the images not used for calibration."""
    import cv2

    from d3_perception.openvino_export import CalibrationFrames, image_agreement

    for i, rgb in enumerate(_frames(5, 48, 64, seed=4)):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    class Moved:  # the reference's outputs, depth stretched and shifted, normals turned 90 degrees about z
        def predict(self, images):
            out = torch_backend.predict(images)
            n = out["normals"]
            return {"depth": out["depth"] * 0.5 + 0.25, "normals": np.stack([-n[:, 1], n[:, 0], n[:, 2]], 1)}

    folder = CalibrationFrames(images=[tmp_path])
    same = image_agreement(torch_backend, torch_backend, folder, calibration_frames=2)
    assert same["images"] == 2 and not same["calibration_images_among_them"]  # 5 images: 0, 2 calibrated; 1, 3 scored
    assert same["depth_mean_abs_diff_of_range"] < 1e-6 and same["normals_mean_angle_deg"] < 0.5
    moved = image_agreement(Moved(), torch_backend, folder, calibration_frames=2)
    assert moved["depth_mean_abs_diff_of_range"] < 1e-5  # affine in relative depth: no change after the fit
    normals = torch_backend.predict(_frames(1, 48, 64, seed=4))["normals"][0]
    expected = np.degrees(np.arccos(np.clip(normals[2] ** 2, -1, 1))).mean()  # cos = n_z^2 for a 90-degree z turn
    assert moved["normals_mean_angle_deg"] > 0.5 * expected > 1.0
    only = image_agreement(torch_backend, torch_backend, CalibrationFrames(images=[tmp_path / "f0.png"]),
                           calibration_frames=2)
    assert only["images"] == 1 and only["calibration_images_among_them"]


@pytest.mark.slow  # export + NNCF on 2 images + a small gate: ~40 s on 2 cores
def test_int8_export_on_images_reports_the_agreement_on_the_other_images(ckpt, tmp_path):
    pytest.importorskip("nncf", reason="INT8 export needs nncf")
    import cv2

    from d3_perception.backends.onnx_io import export_onnx
    from d3_perception.openvino_export import CalibrationFrames, export_openvino

    for i, rgb in enumerate(_frames(4, 48, 64, seed=5)):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    onnx_path = export_onnx(ckpt, tmp_path / "m.onnx", exporter="legacy")
    summary = export_openvino(ckpt, onnx_path, precision="int8", cache_dir=tmp_path / "cache", calibration_frames=2,
                              quality_frames=4, tolerance=1.0, num_threads=THREADS,
                              calibration=CalibrationFrames(images=[tmp_path]))
    assert summary["calibration_source"] == "images" and summary["calibration_frames"] == 2
    agreement = summary["agreement_on_images"]
    assert agreement["images"] == 2 and not agreement["calibration_images_among_them"]
    assert 0 <= agreement["depth_mean_abs_diff_of_range"] < 1 and 0 <= agreement["normals_mean_angle_deg"] < 90


def test_calibration_frames_come_from_the_camera_topic_of_a_bag(tmp_path):
    """--calibration-bag: the bag's one camera topic is found (raw and compressed alike), its frames are spread
    over the recording, and a bag without a camera or with an unknown topic is refused in one line."""
    from d3_perception.evaluation.bag_source import BagError
    from d3_perception.openvino_export import CalibrationFrames
    from d3_perception.rosbag_io import BagWriter

    frames = _frames(8, 48, 64, seed=6)
    with BagWriter(tmp_path / "run") as bag:
        for i, rgb in enumerate(frames):
            bag.write_image("/cam/image_raw", rgb, "rgb8", (i + 1) * 10**8, "cam_optical_frame")
            bag.write_image("/cam/depth", np.full((48, 64), 2.0, np.float32), "32FC1", (i + 1) * 10**8,
                            "cam_optical_frame")
    source = CalibrationFrames(bag=str(tmp_path / "run"))
    source.check()
    assert source.count() == 8
    assert source.indices(4) == [0, 2, 4, 6]
    got = source.rgb(source.indices(4))
    assert len(got) == 4 and all(np.array_equal(a, frames[i]) for a, i in zip(got, (0, 2, 4, 6), strict=True))
    assert source.indices(4, offset=0.5) == [1, 3, 5, 7]  # the frames the agreement check scores
    between = source.rgb(source.indices(4, offset=0.5))
    assert len(between) == 4 and all(np.array_equal(a, frames[i]) for a, i in zip(between, (1, 3, 5, 7), strict=True))
    with pytest.raises(BagError, match="image topic `/nope` is not in the bag"):
        CalibrationFrames(bag=str(tmp_path / "run"), topic="/nope").check()
    with BagWriter(tmp_path / "depth_only") as bag:
        bag.write_image("/cam/depth", np.full((48, 64), 2.0, np.float32), "32FC1", 10**8, "cam_optical_frame")
    with pytest.raises(BagError, match="no camera image topic found"):
        CalibrationFrames(bag=str(tmp_path / "depth_only")).check()
    with pytest.raises(ValueError, match="must not be given together"):
        CalibrationFrames(images=[tmp_path], bag=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="must come with --calibration-bag"):
        CalibrationFrames(topic="/cam/image_raw")
