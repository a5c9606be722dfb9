"""Experts, student, τ gradients, and the one-pass formulation against the official three-pass one."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from d3_perception.model.config import ModelConfig
from d3_training.config import load_config
from d3_training.experts import Experts, FeatureTaps, aligned_layers, layer_channels, stratified_timesteps
from d3_training.model import D3Student, student_from_teacher
from d3_training.phases import teacher_scheduler


def _unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(**ModelConfig.preset("tiny").unet)


def test_sd21_taps_are_the_official_eleven_layers():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**ModelConfig.preset("sd21").unet)
    taps = aligned_layers(unet, drop_last=2)
    assert list(taps) == ["mid"] + [f"us{i}" for i in range(1, 11)]
    # us3 is the first up-block's last layer, read after its upsampler; us4 an attention output
    assert taps["us3"] is unet.up_blocks[0].upsamplers[0]
    assert taps["us4"] is unet.up_blocks[1].attentions[0]
    channels = layer_channels(unet, taps)  # reference §1.3 sizes
    assert list(channels.values()) == [1280] * 7 + [640] * 3 + [320]


def test_tiny_tap_channels_match_the_hooked_features():
    unet = _unet()
    taps = aligned_layers(unet)
    with FeatureTaps(taps) as hooks, torch.no_grad():
        unet(torch.zeros(1, 4, 8, 8), torch.tensor([1.0]), encoder_hidden_states=torch.zeros(1, 1, 32))
    assert {k: v.shape[1] for k, v in hooks.features.items()} == layer_channels(unet, taps)


def test_stratified_timesteps_one_per_bin():
    t = stratified_timesteps(64, 3, torch.Generator().manual_seed(0))
    assert t.shape == (64, 3)
    edges = [1 + k * 998 / 3 for k in range(4)]
    for k in range(3):
        assert ((t[:, k] >= int(edges[k])) & (t[:, k] < edges[k + 1] + 1)).all()


def _student(unet, with_adapters=True):
    ctx = torch.randn(1, 77, 32)
    return D3Student(student_from_teacher(unet), ("depth", "normals"), ctx, torch.randn(2, 77, 32),
                     with_adapters=with_adapters, adapter_depth=1, adapter_cond_dim=32)


def test_gradients_reach_tau_and_prompts():
    student = _student(_unet())
    z = torch.randn(2, 4, 8, 8)
    y, _ = student(z, torch.tensor([0, 1]))
    y.square().mean().backward()
    assert student.tau.dtype == torch.float32
    assert student.tau.grad is not None and student.tau.grad.abs() > 0
    assert student.task_prompts.grad is not None and student.task_prompts.grad.abs().sum() > 0


def test_one_pass_equals_three_passes():
    teacher = _unet()
    experts = Experts(teacher, teacher_scheduler())
    student = _student(teacher)
    # perturb the zero-initialised adapter outputs so the adapters are not the identity
    with torch.no_grad():
        for p in student.adapters.parameters():
            p.add_(0.05 * torch.randn_like(p))
    z = torch.randn(2, 4, 8, 8)
    t = stratified_timesteps(2, 3, torch.Generator().manual_seed(1))
    feats = experts(z, student.context.expand(2, -1, -1), t, torch.Generator().manual_seed(2))
    from d3_training.adapters import aggregation_loss

    losses = []
    for one_pass in (True, False):
        y, adapted = student(z, torch.tensor([-1, -1]), t, one_pass=one_pass)
        losses.append((aggregation_loss(adapted, feats) + y.mean()).item())
    assert losses[0] == losses[1]
    assert 0 < losses[0] < 2 * len(feats)


def test_student_starts_equal_to_teacher_features():
    teacher = _unet()
    student = _student(teacher)
    z = torch.randn(1, 4, 8, 8)
    ctx = student.context
    with torch.no_grad():
        a = teacher(z, student.tau.detach().expand(1), encoder_hidden_states=ctx).sample
        b, _ = student(z, torch.tensor([-1]))
    assert torch.allclose(a, b)


def test_official_configs_reproduce_the_published_hyper_parameters():
    for name in ("official_depth", "official_normals"):
        cfg = load_config(f"config/train/{name}.yaml")
        j = cfg.schedule.joint
        assert cfg.schedule.name == "joint" and cfg.run.mixed_precision == "bf16"
        assert (j.lr, j.weight_decay, j.warmup_steps, j.steps, j.decay) == (3e-5, 0.01, 2000, 30000, "linear")
        assert j.batch_size * j.grad_accum_for(1) == 32 and j.batch_size * j.grad_accum_for(2) * 2 == 32


def test_gradient_checkpointing_keeps_taps_and_gradients():
    from d3_training.adapters import aggregation_loss

    teacher = _unet()
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        student = _student(teacher)
        if ckpt:
            student.unet.enable_gradient_checkpointing()
        student.train()
        z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([[10, 500, 900], [20, 400, 800]])
        feats = {k: torch.ones(6, v.shape[1], *v.shape[2:]) for k, v in student(z, torch.tensor([0, 1]), t)[1].items()}
        y, adapted = student(z, torch.tensor([0, 1]), t)
        loss = aggregation_loss(adapted, feats) + y.square().mean()
        loss.backward()
        results.append((loss.item(), student.tau.grad.item()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-3)
