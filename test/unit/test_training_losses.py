"""Task losses against hand-computed values on tiny tensors; adapters, τ gradients, L_agg, one- vs three-pass."""

from __future__ import annotations

import math

import pytest
import torch

from d3_training.adapters import AdapterBank, FFNStack, aggregation_loss
from d3_training.losses import (
    depth_log_gradient,
    depth_loss,
    depth_mse,
    depth_ssi_l1,
    fit_scale_shift,
    normals_loss,
)


def test_depth_mse_uses_channel_mean_and_mask():
    pred = torch.zeros(1, 3, 2, 2)
    pred[0, :, 0, 0] = torch.tensor([0.0, 0.5, 1.0])  # channel mean 0.5
    target01 = torch.tensor([[[0.5, 1.0], [0.0, 0.25]]])  # -> [-1,1]: 0, 1, -1, -0.5
    valid = torch.tensor([[[True, True], [False, True]]])
    # squared errors on valid pixels: (0.5-0)^2, (0-1)^2, (0+0.5)^2 -> mean = (0.25 + 1 + 0.25) / 3
    assert depth_mse(pred, target01, valid).item() == pytest.approx(0.5)


def test_ssi_l1_is_zero_for_affine_prediction_and_in_metres():
    depth_m = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    p01 = (depth_m - 1) / 3  # affine in depth
    pred = (p01 * 2 - 1)[:, None].expand(1, 3, 2, 2)
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    assert depth_ssi_l1(pred, depth_m, valid).item() == pytest.approx(0.0, abs=1e-5)
    a, b = fit_scale_shift(p01, depth_m, valid)
    assert (a.item(), b.item()) == pytest.approx((3.0, 1.0), abs=1e-5)
    # constant prediction: best fit is the mean (2.5 m); mean |d - 2.5| = 1.0 m
    assert depth_ssi_l1(torch.zeros(1, 3, 2, 2), depth_m, valid).item() == pytest.approx(1.0, abs=1e-5)


def test_ssi_gradients_flow_through_the_solve():
    depth_m = torch.tensor([[[1.0, 2.0], [3.0, 5.0]]])
    pred = torch.tensor([[[[0.1, -0.3], [0.2, 0.4]]]]).repeat(1, 3, 1, 1).requires_grad_(True)
    depth_ssi_l1(pred, depth_m, torch.ones(1, 2, 2, dtype=torch.bool)).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_log_gradient_stride_two_pairs_hand_computed():
    # one row of 3 pixels: only pair (0,2) exists at stride 2 horizontally, no vertical pairs (H=1)
    p = torch.tensor([[[0.0, 0.5, 1.0]]])  # in [0,1]
    pred = (p * 2 - 1)[:, None].expand(1, 3, 1, 3)
    target01 = torch.zeros(1, 1, 3)
    valid = torch.ones(1, 1, 3, dtype=torch.bool)
    expected = abs(math.log(1 + 0.0) - math.log(1 + 1.0))
    assert depth_log_gradient(pred, target01, valid).item() == pytest.approx(expected, rel=1e-5)
    valid[0, 0, 2] = False  # the only pair loses a pixel -> no pairs -> 0
    assert depth_log_gradient(pred, target01, valid).item() == 0.0


def test_depth_loss_weights_combine_terms():
    torch.manual_seed(0)
    pred = torch.rand(2, 3, 4, 4) * 2 - 1
    depth = torch.rand(2, 4, 4) * 5 + 1
    valid = torch.rand(2, 4, 4) > 0.2
    total, parts = depth_loss(pred, depth, valid, w_mse=8, w_ssi=2, w_grad=100)
    expected = 8 * parts["depth_mse"] + 2 * parts["depth_ssi"] + 100 * parts["depth_grad"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_normals_loss_hand_computed():
    target = torch.tensor([0.0, 0.0, -1.0]).view(1, 3, 1, 1).repeat(1, 1, 1, 2)
    pred = target.clone()
    pred[0, :, 0, 1] = torch.tensor([1.0, 0.0, 0.0])  # 90 degrees off, squared error (1 + 0 + 1) / 3
    valid = torch.ones(1, 1, 2, dtype=torch.bool)
    total, parts = normals_loss(pred, target, valid, w_mse=8, w_angular=3)
    mse = (0 + 2 / 3) / 2
    ang = (math.acos(1 - 1e-4) + math.pi / 2) / 2
    assert parts["normals_mse"].item() == pytest.approx(mse, rel=1e-5)
    assert parts["normals_angular"].item() == pytest.approx(ang, rel=1e-5)
    assert total.item() == pytest.approx(8 * mse + 3 * ang, rel=1e-5)


def test_zero_target_normals_are_masked_out():
    target = torch.zeros(1, 3, 1, 2)
    target[0, 2, 0, 0] = -1
    pred = torch.tensor([0.0, 0.0, -1.0]).view(1, 3, 1, 1).repeat(1, 1, 1, 2)
    _, parts = normals_loss(pred, target, torch.ones(1, 1, 2, dtype=torch.bool))
    assert parts["normals_mse"].item() == pytest.approx(0.0, abs=1e-7)


def test_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="`valid_mask` must be"):
        depth_loss(torch.zeros(1, 3, 4, 4), torch.ones(1, 4, 4), torch.ones(1, 4, 5, dtype=torch.bool))


def test_adapters_start_as_identity_and_train():
    x = torch.randn(2, 8, 3, 3)
    stack = FFNStack(8, dim_cond=16, depth=2)
    assert torch.equal(stack(x, torch.randn(2, 16)), x)
    bank = AdapterBank({"mid": 8}, dim_cond=16, depth=2)
    out = bank({"mid": x.requires_grad_(True)}, torch.tensor([10.0, 900.0]))
    assert torch.equal(out["mid"], x)
    aggregation_loss(out, {"mid": torch.randn_like(x)}).backward()
    downs = [p.grad for n, p in bank.named_parameters() if "downs" in n]
    assert all(g is not None and g.abs().sum() > 0 for g in downs)  # zero-init outputs still learn


def test_aggregation_loss_sums_one_minus_cosine_over_layers():
    a = torch.randn(2, 4, 3, 3)
    assert aggregation_loss({"x": a, "y": a}, {"x": a, "y": -a}).item() == pytest.approx(0.0 + 2.0, abs=1e-5)
