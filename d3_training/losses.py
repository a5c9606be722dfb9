"""Task losses exactly as the reference (§1.4) states them; every loss takes ``(pred, target, valid_mask)``.

Depth: 8·MSE + 2·scale-shift-invariant L1 (metres) + 100·log-gradient (stride 2).
Normals: 8·MSE + 3·angular (arccos, float64). Weights come from the config (`LossWeights`).
Written by hand: these exact formulations (LSQ fit with gradients through the solve, stride-2 log-gradient
pairs) are not in any library.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _check(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, target_rank: int, name: str) -> None:
    if pred.ndim != 4 or pred.shape[1] not in (1, 3):
        raise ValueError(f"`pred` must be [N,1|3,H,W]; got {tuple(pred.shape)}")
    if target.ndim != target_rank or target.shape[0] != pred.shape[0] or target.shape[-2:] != pred.shape[-2:]:
        raise ValueError(f"`{name}` must match `pred` {tuple(pred.shape)} in N,H,W; got {tuple(target.shape)}")
    if valid.shape != (pred.shape[0], *pred.shape[-2:]):
        raise ValueError(f"`valid_mask` must be [N,H,W] = {(pred.shape[0], *pred.shape[-2:])}; got {tuple(valid.shape)}")


def normalize_depth(depth_m: torch.Tensor, valid: torch.Tensor, low_q: float = 0.02, high_q: float = 0.98) -> torch.Tensor:
    """Per-image affine map of metric depth to [0,1] by its 2%/98% valid quantiles (near = 0), clipped. [N,H,W]."""
    out = torch.zeros_like(depth_m, dtype=torch.float32)
    for i in range(depth_m.shape[0]):
        d = depth_m[i][valid[i]].float()
        if d.numel() < 2:
            continue
        lo, hi = torch.quantile(d, torch.tensor([low_q, high_q], device=d.device))
        out[i] = ((depth_m[i].float() - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    return out


def depth_mse(pred: torch.Tensor, target01: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """mean_valid (mean_c pred - (2·target01 - 1))², both in [-1,1]."""
    diff = pred.float().mean(1) - (target01 * 2 - 1)
    return _masked_mean(diff.square(), valid)


def fit_scale_shift(p: torch.Tensor, depth_m: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form least squares a·p + b ≈ depth_m per image over valid pixels (fp32, differentiable). -> a,b [N]."""
    m = valid.float()
    n = m.sum((1, 2)).clamp_min(1)
    p = p.float()
    d = torch.where(valid, depth_m.float(), torch.zeros_like(p))
    sp, sd = (p * m).sum((1, 2)), (d * m).sum((1, 2))
    spp, spd = (p * p * m).sum((1, 2)), (p * d * m).sum((1, 2))
    det = n * spp - sp * sp
    a = (n * spd - sp * sd) / det.clamp_min(1e-8)
    b = (sd - a * sp) / n
    return a, b


def depth_ssi_l1(pred: torch.Tensor, depth_m: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """p = clamp(mean_c pred/2 + 0.5, 0, 1); per-image LSQ (a,b) to metric depth; mean_valid |a·p + b - d| (m)."""
    p = (pred.float().mean(1) / 2 + 0.5).clamp(0, 1)
    a, b = fit_scale_shift(p, depth_m, valid)
    err = (a[:, None, None] * p + b[:, None, None] - torch.where(valid, depth_m.float(), torch.zeros_like(p))).abs()
    return _masked_mean(err, valid)


def depth_log_gradient(pred: torch.Tensor, target01: torch.Tensor, valid: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """r = log(1+p) - log(1+target01); sum |r(i,j) - r(i,j+s)| + |r(i,j) - r(i+s,j)| over both-valid pairs / pairs."""
    p = (pred.float().mean(1) / 2 + 0.5).clamp(0, 1)
    r = torch.log1p(p) - torch.log1p(target01.float().clamp(0, 1))
    vx = valid[:, :, stride:] & valid[:, :, :-stride]
    vy = valid[:, stride:, :] & valid[:, :-stride, :]
    gx = (r[:, :, stride:] - r[:, :, :-stride]).abs() * vx
    gy = (r[:, stride:, :] - r[:, :-stride, :]).abs() * vy
    count = vx.sum() + vy.sum()
    return (gx.sum() + gy.sum()) / count.clamp_min(1)


def depth_loss(pred: torch.Tensor, depth_m: torch.Tensor, valid_mask: torch.Tensor, *, w_mse: float = 8.0,
               w_ssi: float = 2.0, w_grad: float = 100.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Depth task loss. pred [N,3,H,W] decoded (~[-1,1]); depth_m [N,H,W] metres; valid_mask [N,H,W] bool.

    The [0,1] target (near = 0) is the per-image 2/98 % quantile normalisation of `depth_m`.
    Returns (total, {"depth_mse", "depth_ssi", "depth_grad"}).
    """
    _check(pred, depth_m, valid_mask, 3, "target")
    valid = valid_mask.bool() & torch.isfinite(depth_m)
    target01 = normalize_depth(torch.nan_to_num(depth_m), valid)
    parts = {"depth_mse": depth_mse(pred, target01, valid), "depth_ssi": depth_ssi_l1(pred, torch.nan_to_num(depth_m), valid),
             "depth_grad": depth_log_gradient(pred, target01, valid)}
    total = w_mse * parts["depth_mse"] + w_ssi * parts["depth_ssi"] + w_grad * parts["depth_grad"]
    return total, parts


def normals_loss(pred: torch.Tensor, normals: torch.Tensor, valid_mask: torch.Tensor, *, w_mse: float = 8.0,
                 w_angular: float = 3.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Normals task loss. pred [N,3,H,W] decoded; normals [N,3,H,W] unit; valid_mask [N,H,W] (and |n| > 1e-4).

    MSE over valid pixels and channels; angular = mean_valid arccos(clamp(cos, -1+1e-4, 1-1e-4)) in rad (float64).
    """
    _check(pred, normals, valid_mask, 4, "target")
    valid = valid_mask.bool() & (normals.float().norm(dim=1) > 1e-4)
    mse = _masked_mean((pred.float() - normals.float()).square().mean(1), valid)
    cos = F.cosine_similarity(pred.double(), normals.double(), dim=1).clamp(-1 + 1e-4, 1 - 1e-4)
    ang = _masked_mean(torch.arccos(cos), valid).float()
    return w_mse * mse + w_angular * ang, {"normals_mse": mse, "normals_angular": ang}


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    m = valid.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1)
