"""HQOD's per-positive loss terms (spec §1.2), elementwise on GT-class scores p and IoUs u, without reduction."""
import math

import torch

EPS = 2.220446049250313e-16  # float64 machine epsilon, as in the authors' code
_EXP_MINUS_ONE = math.exp(-1.0)


# Numerical guard (deviation: the authors' code has none, it ran in float32): ρ is computed in at least float32 and
# cast back, because in float16 ε underflows to 0 and 0^0 / 0·log(0) give NaN gradients. In float32 and float64,
# ε keeps every base > 0 (log(ε) ≈ −36), so values and gradients stay finite on all of [0, 1]², corners included.
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def harmony_quality(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """ρ = (p+ε)^u · (u+ε)^p − ε, the task harmony of score p and IoU u; gradients flow through bases and exponents."""
    out_dtype = torch.promote_types(p.dtype, u.dtype)
    p_, u_ = p.to(_compute_dtype(out_dtype)), u.to(_compute_dtype(out_dtype))
    rho = torch.pow(p_ + EPS, u_) * torch.pow(u_ + EPS, p_) - EPS
    return rho.to(out_dtype)


def tcorr_loss(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Task-Correlated loss (1 + sg|p − u|)·(exp(−ρ) − e⁻¹): largest for positives whose score and IoU disagree."""
    weight = 1.0 + (p - u).abs().detach()
    return weight * (torch.exp(-harmony_quality(p, u)) - _EXP_MINUS_ONE)


def harmonious_iou_loss(u: torch.Tensor, alpha: float = 1.5, gamma: float = 0.8) -> torch.Tensor:
    """Harmonious IoU loss α·(1 − u)·(1 + u)^γ (HarDet's form): up-weights the gradient of high-IoU positives."""
    return alpha * (1.0 - u) * torch.pow(1.0 + u, gamma)
