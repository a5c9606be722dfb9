"""d3-convert-official on an official-layout state dict built from the tiny config and a fabricated
SD-like directory (tiny UNet/VAE, tiny CLIPTextModel, an offline-built CLIP BPE tokenizer)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from d3_perception.model import OFFICIAL_PROMPTS, ModelConfig, load_pretrained
from d3_perception.model.convert_official import main

TAU = 258.0  # exactly representable in bf16 (spacing 2 near 261), as the official τ is stored


def _byte_alphabet() -> list[str]:
    # The 256 printable stand-ins of GPT-2/CLIP byte-level BPE: lets us build a tokenizer with no download.
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("sd_tiny")
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    UNet2DConditionModel(**cfg.unet).save_pretrained(root / "unet")
    AutoencoderKL(**cfg.vae).save_pretrained(root / "vae")
    chars = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77).save_pretrained(root / "tokenizer")
    text_cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                              num_attention_heads=2, max_position_embeddings=77, projection_dim=32)
    CLIPTextModel(text_cfg).save_pretrained(root / "text_encoder")
    return root


@pytest.fixture(scope="module")
def student() -> dict[str, torch.Tensor]:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)  # differs from the base UNet: the converter must take the student's weights
    return UNet2DConditionModel(**ModelConfig.preset("tiny").unet).state_dict()


def _official(student, *, prefix="d3_predictor.", tau=True, drop=None) -> dict[str, torch.Tensor]:
    sd = {prefix + k: v.clone() for k, v in student.items() if k != drop}
    if tau:
        sd["timestep"] = torch.tensor(TAU, dtype=torch.bfloat16)  # the official τ is a bf16 parameter
    sd.update({f"adapters.mid.blocks.{i}.w_down.weight": torch.zeros(4, 4) for i in range(3)})
    sd.update({"time_emb.freqs": torch.zeros(128), "time_in_proj.weight": torch.zeros(8, 8),
               "mapping.0.weight": torch.zeros(8, 8), "ae.vae.decoder.conv_out.bias": torch.zeros(3)})
    sd.update({"visual_experts." + k: v for k, v in list(student.items())[:5]})
    return sd


def _run(tmp_path, base, sd, *extra, name="official.pth"):
    path = tmp_path / name
    torch.save(sd, path)
    out = tmp_path / "out"
    return main([str(path), str(out), "--task", "depth", "--base", str(base), "--processing-resolution", "128",
                 *extra]), out


def test_correct_checkpoint_converts_with_student_tau_and_embedded_prompt(tmp_path, base, student, capsys):
    rc, out = _run(tmp_path, base, _official(student))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["dropped_keys"] == {"adapters": 3, "time_emb": 1, "time_in_proj": 1, "mapping": 1,
                                       "visual_experts": 5, "ae": 1}
    assert "dropped 12 training-only tensors" in captured.err
    model = load_pretrained(out)
    assert model.config.tasks == ("depth",) and model.config.timestep == TAU
    assert float(model.timestep) == TAU and model.config.prompts["depth"] == OFFICIAL_PROMPTS["depth"]
    for k, v in student.items():
        assert torch.equal(model.unet.state_dict()[k], v), k
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(base / "tokenizer"))
    enc = CLIPTextModel.from_pretrained(str(base / "text_encoder")).eval()
    ids = tok(OFFICIAL_PROMPTS["depth"], padding="max_length", max_length=77, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        expected = enc(ids)[0][0]
    torch.testing.assert_close(model.prompt_embeds[0], expected)
    assert model.config.prompt_embedding_shape == (77, 32)


def test_deepspeed_module_prefix_and_wrapper_are_accepted(tmp_path, base, student):
    sd = {"module." + k: v for k, v in _official(student).items()}
    rc, out = _run(tmp_path, base, {"module": sd})
    assert rc == 0 and float(load_pretrained(out).timestep) == TAU


def test_renamed_keys_are_an_error_naming_them(tmp_path, base, student, capsys):
    rc, out = _run(tmp_path, base, _official(student, prefix="student_unet."))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "unknown keys" in err and "student_unet.conv_in.bias" in err
    assert not out.exists()


def test_missing_student_key_is_an_error_naming_it(tmp_path, base, student, capsys):
    rc, _ = _run(tmp_path, base, _official(student, drop="conv_out.weight"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "missing 1 keys ['conv_out.weight']" in err


def test_missing_timestep_is_an_error(tmp_path, base, student, capsys):
    rc, _ = _run(tmp_path, base, _official(student, tau=False))
    assert rc == 2 and "learned `timestep`" in capsys.readouterr().err


def test_shape_mismatch_is_an_error(tmp_path, base, student, capsys):
    sd = _official(student)
    sd["d3_predictor.conv_in.weight"] = torch.zeros(8, 4, 3, 3)
    rc, _ = _run(tmp_path, base, sd)
    assert rc == 2 and "conv_in.weight" in capsys.readouterr().err


class _Payload:
    """Anything a pickle could construct: weights_only loading must refuse it."""


def test_pickled_objects_are_never_unpickled(tmp_path, base, capsys):
    rc, _ = _run(tmp_path, base, {"x": _Payload()})
    err = capsys.readouterr().err
    assert rc == 2 and "weights_only=True" in err and "Traceback" not in err


def test_precomputed_prompt_embedding_replaces_the_text_encoder(tmp_path, base, student):
    import shutil

    no_text = tmp_path / "sd_without_text"
    shutil.copytree(base / "unet", no_text / "unet")
    shutil.copytree(base / "vae", no_text / "vae")
    emb = torch.randn(1, 77, 32)
    save_file({"prompt_embeds": emb}, str(tmp_path / "emb.safetensors"))
    rc, out = _run(tmp_path, no_text, _official(student), "--prompt-embedding", str(tmp_path / "emb.safetensors"))
    assert rc == 0
    torch.testing.assert_close(load_pretrained(out).prompt_embeds[0], emb[0])


def test_normals_need_an_explicit_axis_convention(tmp_path, base, student, capsys):
    path = tmp_path / "n.pth"
    torch.save(_official(student), path)
    rc = main([str(path), str(tmp_path / "o"), "--task", "normals", "--base", str(base)])
    assert rc == 2 and "--normals-convention" in capsys.readouterr().err
    rc = main([str(path), str(tmp_path / "o"), "--task", "normals", "--base", str(base),
               "--normals-convention", "opengl", "--processing-resolution", "128"])
    assert rc == 0 and load_pretrained(tmp_path / "o").config.normals_convention == "opengl"
