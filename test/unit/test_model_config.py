"""ModelConfig: presets, validation at the boundary, config.json round trip."""

from __future__ import annotations

import json

import pytest

from d3_perception.model.config import ModelConfig, check_processing_resolution


def test_tiny_preset_is_one_to_five_million_parameters_on_the_sd_code_path():
    from d3_perception.model import D3Predictor

    cfg = ModelConfig.preset("tiny")
    model = D3Predictor.from_config(cfg, seed=0)
    n = model.num_parameters()
    assert 1_000_000 <= n <= 5_000_000, n
    assert type(model.unet).__name__ == "UNet2DConditionModel"
    assert type(model.vae).__name__ == "AutoencoderKL"
    assert cfg.network_multiple == 16 and cfg.vae_downsampling == 4


def test_sd21_preset_matches_the_published_parameter_count():
    import torch
    from diffusers import UNet2DConditionModel

    cfg = ModelConfig.preset("sd21")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg.unet)
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724
    assert cfg.network_multiple == 64 and cfg.prompt_embedding_shape == (77, 1024)


def test_json_round_trip_is_exact(tmp_path):
    cfg = ModelConfig.preset("tiny", tasks=("normals",), normals_convention="opengl",
                             prompts={"normals": "A surface normal estimation map."}, provenance={"run": 3})
    cfg.to_json(tmp_path / "config.json")
    back = ModelConfig.from_json(tmp_path)
    assert back == cfg
    assert json.loads((tmp_path / "config.json").read_text())["tasks"] == ["normals"]


@pytest.mark.parametrize(("changes", "match"), [
    ({"tasks": ("depth", "segmentation")}, "`tasks` must be a subset"),
    ({"tasks": ()}, "`tasks` must name at least one task"),
    ({"tasks": ("depth", "depth")}, "must not repeat"),
    ({"latent_scale": 0.0}, "`latent_scale` must be a finite number > 0"),
    ({"timestep": float("nan")}, "`timestep` must be a finite number"),
    ({"processing_resolution": 500}, "multiple of 64"),
    ({"normals_convention": "dx"}, "`normals_convention` must be one of"),
    ({"prompt_embedding_shape": (77, 64)}, "cross_attention_dim"),
    ({"input_range": (1.0, -1.0)}, "`input_range`"),
    ({"prompts": {"normals": "x"}, "tasks": ("depth",)}, "`prompts` must only name tasks"),
])
def test_invalid_configs_raise_value_error_naming_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.preset("tiny", **changes)


def test_unknown_keys_in_config_json_are_an_error(tmp_path):
    data = ModelConfig.preset("tiny").to_dict()
    data["surprise"] = 1
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_json(tmp_path / "config.json")


def test_config_is_frozen_and_does_not_alias_caller_dicts():
    unet = ModelConfig.preset("tiny").unet
    cfg = ModelConfig.preset("tiny", unet=unet)
    unet["block_out_channels"] = [1]
    assert cfg.unet["block_out_channels"] == [32, 64, 128]
    with pytest.raises(AttributeError):
        cfg.timestep = 3.0  # type: ignore[misc]


@pytest.mark.parametrize("bad", [0, 100, True, 64.0, 8192])
def test_processing_resolution_check(bad):
    with pytest.raises(ValueError, match="`processing_resolution`"):
        check_processing_resolution(bad)


def test_resize_policy_defaults_to_keep_aspect_for_configs_written_before_it(tmp_path):
    data = ModelConfig.preset("tiny").to_dict()
    del data["resize_policy"]  # a config.json from before the field existed (like the first bundled demo model's)
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert ModelConfig.from_json(tmp_path).resize_policy == "keep_aspect"
    squash = ModelConfig.preset("tiny", resize_policy="squash")
    squash.to_json(tmp_path / "config.json")
    assert ModelConfig.from_json(tmp_path).resize_policy == "squash"
    with pytest.raises(ValueError, match=r"`resize_policy` must be one of \('keep_aspect', 'squash'\); got 'crop'"):
        ModelConfig.preset("tiny", resize_policy="crop")


def test_squash_processing_resizes_any_frame_to_the_square_and_back():
    import numpy as np

    from d3_perception.model.processing import apply_heads, postprocess, preprocess

    frames = (np.random.default_rng(0).random((2, 40, 100, 3)) * 255).astype(np.uint8)
    x, geo = preprocess(frames, 64, resize_policy="squash")
    assert x.shape == (2, 3, 64, 64) and geo.resize_policy == "squash" and geo.padded_hw == (64, 64)
    keep, keep_geo = preprocess(frames, 64)
    assert keep.shape == (2, 3, 64, 64) and keep_geo.resized_hw == (26, 64)  # aspect kept, bottom padded
    raw = np.full((2, 3, 64, 64), 1.5, np.float32)  # unclamped decode above 1
    raw[:, 0] = -0.5
    out = postprocess({"depth": raw, "normals": raw}, geo)
    assert out["depth"].shape == (2, 40, 100) and out["normals"].shape == (2, 3, 40, 100)
    # clamp after the resize, then the channel mean: (-0.5 + 1 + 1) / 3 -> [0,1]
    np.testing.assert_allclose(out["depth"], ((-0.5 + 1 + 1) / 3 + 1) / 2, rtol=1e-6)  # 0.75
    np.testing.assert_allclose(np.linalg.norm(out["normals"], axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="raw decoded maps"):
        apply_heads("depth", raw[:, :1])
