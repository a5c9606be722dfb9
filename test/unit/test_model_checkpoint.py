"""Checkpoint directories: exact round trip, strict loading, reproducible random checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from d3_perception.model import (
    CheckpointError,
    D3Predictor,
    ModelConfig,
    build_random_checkpoint,
    checkpoint_hash,
    load_pretrained,
    save_pretrained,
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset="tiny", seed=0)


def _frame(h=40, w=56):
    return (np.random.default_rng(1).random((h, w, 3)) * 255).astype(np.uint8)


def test_round_trip_preserves_config_weights_and_outputs(tmp_path):
    cfg = ModelConfig.preset("tiny", provenance={"note": "round trip"})
    model = D3Predictor.from_config(cfg, seed=3).eval()
    with torch.no_grad():
        model.timestep.fill_(250.125)
    save_pretrained(model, tmp_path / "a")
    back = load_pretrained(tmp_path / "a")
    assert back.config == cfg.replace(timestep=250.125)
    assert float(back.timestep) == 250.125
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    img = _frame()
    a = model.predict(img, processing_resolution=64)
    b = back.predict(img, processing_resolution=64)
    assert all(np.array_equal(a[t], b[t]) for t in a)
    # saving the loaded model again gives byte-identical files
    save_pretrained(back, tmp_path / "b")
    assert checkpoint_hash(tmp_path / "a") == checkpoint_hash(tmp_path / "b")


def test_random_checkpoints_are_reproducible_by_seed(tmp_path):
    a = build_random_checkpoint(tmp_path / "a", seed=5, tasks=("depth",))
    b = build_random_checkpoint(tmp_path / "b", seed=5, tasks=("depth",))
    c = build_random_checkpoint(tmp_path / "c", seed=6, tasks=("depth",))
    assert checkpoint_hash(a) == checkpoint_hash(b) != checkpoint_hash(c)
    assert ModelConfig.from_json(a).tasks == ("depth",)


def _tamper(ckpt, tmp_path, edit):
    out = tmp_path / "bad"
    out.mkdir()
    (out / "config.json").write_text((ckpt / "config.json").read_text())
    state = load_file(str(ckpt / "model.safetensors"))
    edit(state)
    save_file(state, str(out / "model.safetensors"))
    return out


def test_missing_key_is_an_error_naming_it(ckpt, tmp_path):
    bad = _tamper(ckpt, tmp_path, lambda s: s.pop("vae.decoder.conv_out.bias"))
    with pytest.raises(CheckpointError, match=r"missing 1 keys \['vae.decoder.conv_out.bias'\]"):
        load_pretrained(bad)


def test_unexpected_key_is_an_error_naming_it(ckpt, tmp_path):
    bad = _tamper(ckpt, tmp_path, lambda s: s.update({"adapters.0.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected 1 keys \['adapters.0.weight'\]"):
        load_pretrained(bad)


def test_wrong_shape_and_non_finite_tensors_are_errors(ckpt, tmp_path):
    bad = _tamper(ckpt, tmp_path, lambda s: s.update({"prompt_embeds.depth": torch.zeros(77, 16)}))
    with pytest.raises(CheckpointError, match="'prompt_embeds.depth' must have shape \\[77, 32\\]"):
        load_pretrained(bad)
    bad2 = tmp_path / "nan"
    bad2.mkdir()
    (bad2 / "config.json").write_text((ckpt / "config.json").read_text())
    state = load_file(str(ckpt / "model.safetensors"))
    state["timestep"] = torch.tensor(float("nan"))
    save_file(state, str(bad2 / "model.safetensors"))
    with pytest.raises(CheckpointError, match="'timestep' must be finite"):
        load_pretrained(bad2)


def test_missing_files_and_pickles_are_rejected(ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere")
    only_pickle = tmp_path / "pickle"
    only_pickle.mkdir()
    (only_pickle / "config.json").write_text((ckpt / "config.json").read_text())
    torch.save(load_file(str(ckpt / "model.safetensors")), only_pickle / "model.bin")
    with pytest.raises(CheckpointError, match="must contain model.safetensors"):
        load_pretrained(only_pickle)
    (only_pickle / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(CheckpointError, match="readable safetensors"):
        load_pretrained(only_pickle)


def test_config_records_tau_and_task_subset_loading(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["timestep"] == 261.0 and cfg["tasks"] == ["depth", "normals"]
    full = load_pretrained(ckpt)
    normals_only = load_pretrained(ckpt, tasks=("normals",))
    assert normals_only.config.tasks == ("normals",)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(normals_only(x)["normals"], full(x, ("normals",))["normals"], atol=1e-3, rtol=0)
