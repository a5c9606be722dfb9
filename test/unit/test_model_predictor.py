"""D3Predictor: determinism, latent mean, batched tasks, input sizes and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from d3_perception.model import D3Predictor, ModelConfig
from d3_perception.model.processing import plan_geometry

RES = 64  # smallest network input: keeps these tests cheap on 2 shared cores


@pytest.fixture(scope="module")
def model() -> D3Predictor:
    torch.manual_seed(0)
    return D3Predictor.from_config(ModelConfig.preset("tiny"), seed=0).eval()


def _frames(n=1, h=48, w=64, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, h, w, 3)) * 255).astype(np.uint8)


def test_same_input_gives_bit_identical_output(model):
    img = _frames(2)
    a = model.predict(img, processing_resolution=RES)
    b = model.predict(img, processing_resolution=RES)
    for task in ("depth", "normals"):
        assert np.array_equal(a[task], b[task])


def test_outputs_have_the_documented_layout_and_ranges(model):
    out = model.predict(_frames(2, 40, 70), processing_resolution=RES)
    assert out["depth"].shape == (2, 40, 70) and out["depth"].dtype == np.float32
    assert out["normals"].shape == (2, 3, 40, 70) and out["normals"].dtype == np.float32
    assert out["depth"].min() >= 0.0 and out["depth"].max() <= 1.0
    np.testing.assert_allclose(np.linalg.norm(out["normals"], axis=1), 1.0, atol=1e-4)


def test_encoding_uses_the_latent_mean_not_a_sample(model):
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ours = model.encode(x)
        dist = model.vae.encode(x).latent_dist
        mean = dist.mean * model.config.latent_scale
        sample = dist.sample(generator=torch.Generator().manual_seed(0)) * model.config.latent_scale
    torch.testing.assert_close(ours, mean, rtol=0, atol=1e-6)
    assert (ours - sample).abs().max() > 1e-3


def test_multi_task_batched_call_equals_separate_calls(model):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        both = model(x)
        depth = model(x, ("depth",))["depth"]
        normals = model(x, ("normals",))["normals"]
    torch.testing.assert_close(both["depth"], depth, rtol=0, atol=2e-5)
    # normalisation amplifies float noise where the random model's vectors are short
    torch.testing.assert_close(both["normals"], normals, rtol=0, atol=1e-3)
    assert not torch.allclose(both["depth"], both["normals"].mean(1, keepdim=True))  # tasks really differ


def test_task_prompts_change_the_output(model):
    img = _frames(1)
    out = model.predict(img, processing_resolution=RES)
    depth_from_normals_head = (np.moveaxis(out["normals"], 1, -1).mean(-1))
    assert not np.allclose(out["depth"], depth_from_normals_head)


def test_aspect_ratio_is_kept_and_padding_is_to_64():
    geo = plan_geometry((479, 641), 128)
    assert geo.resized_hw == (96, 128) and geo.padded_hw == (128, 128)
    geo = plan_geometry((3000, 4000), 768)
    assert geo.resized_hw == (576, 768) and geo.padded_hw == (576, 768)
    geo = plan_geometry((100, 1000), 512)
    assert geo.resized_hw == (51, 512) and geo.padded_hw == (64, 512)


@pytest.mark.parametrize(("h", "w"), [(479, 641), (3000, 4000), (8, 8)])
def test_odd_and_large_sizes_come_back_at_input_size(model, h, w):
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = 200
    out = model.predict(img, processing_resolution=RES)
    assert out["depth"].shape == (1, h, w)
    assert out["normals"].shape == (1, 3, h, w)
    assert np.isfinite(out["depth"]).all() and np.isfinite(out["normals"]).all()


def test_float_input_in_unit_range_matches_uint8(model):
    img = _frames(1)
    a = model.predict(img, processing_resolution=RES)
    b = model.predict(img.astype(np.float32) / 255.0, processing_resolution=RES)
    np.testing.assert_allclose(a["depth"], b["depth"], atol=1e-5)


@pytest.mark.parametrize(("images", "match"), [
    (np.zeros((1, 1, 3), np.uint8), "between 8 and"),
    (np.zeros((48, 64, 3), np.int16), "must be uint8 or float32"),
    (np.zeros((48, 64, 4), np.uint8), "RGB with shape"),
    (np.zeros((48, 64), np.uint8), "RGB with shape"),
    (np.full((48, 64, 3), np.nan, np.float32), "must be finite"),
    (np.full((48, 64, 3), 2.0, np.float32), r"must lie in \[0, 1\]"),
    ([[1, 2, 3]], "must be a numpy array"),
])
def test_bad_inputs_raise_a_clear_value_error(model, images, match):
    with pytest.raises(ValueError, match=match):
        model.predict(images)


def test_unknown_task_and_resolution_are_rejected(model):
    with pytest.raises(ValueError, match="`tasks` must be a non-empty subset"):
        model.predict(_frames(1), tasks=("albedo",))
    with pytest.raises(ValueError, match="multiple of 64"):
        model.predict(_frames(1), processing_resolution=100)


def test_processing_resolution_override_changes_the_network_size(model):
    seen = []
    handle = model.vae.encoder.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        model.predict(_frames(1, 60, 80), processing_resolution=64)
        model.predict(_frames(1, 60, 80))
        model.predict(_frames(1, 60, 80), processing_resolution=192)
    finally:
        handle.remove()
    assert seen == [(1, 3, 64, 64), (1, 3, 128, 128), (1, 3, 192, 192)]
