"""hqod.losses: the spec's reference values, gradients (gradcheck, stop-gradient) and finiteness at the corners."""
import itertools

import hqod  # noqa: F401  (before any detectron2 import)
import pytest
import torch

from hqod.losses import harmonious_iou_loss, harmony_quality, tcorr_loss

# (p, u, rho, TCorr, HIoU) from HQOD_SPEC.md §1.2
REFERENCE = [
    (0.9, 0.9, 0.827, 0.069, 0.251),
    (0.5, 0.5, 0.500, 0.239, 1.037),
    (0.2, 0.8, 0.264, 0.640, 0.480),
    (0.8, 0.2, 0.264, 0.640, 1.388),
    (0.0, 0.5, 0.000, 0.948, 1.037),
]
CORNERS = list(itertools.product([0.0, 1.0], repeat=2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_table(dtype):
    p, u, rho, tcorr, hiou = (torch.tensor(col, dtype=dtype) for col in zip(*REFERENCE))
    torch.testing.assert_close(harmony_quality(p, u), rho, atol=1e-3, rtol=0)
    torch.testing.assert_close(tcorr_loss(p, u), tcorr, atol=1e-3, rtol=0)
    torch.testing.assert_close(harmonious_iou_loss(u), hiou, atol=1e-3, rtol=0)


def _interior(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(0.05 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64)).requires_grad_() for _ in range(2)]


def test_gradcheck_harmony_and_hiou():
    p, u = _interior()
    assert torch.autograd.gradcheck(harmony_quality, (p, u))
    assert torch.autograd.gradcheck(lambda x: harmonious_iou_loss(x, alpha=1.5, gamma=0.8), (u,))
    assert torch.autograd.gradcheck(lambda x: harmonious_iou_loss(x, alpha=0.7, gamma=1.3), (u,))


def test_gradcheck_tcorr_with_stopgrad_weight():
    # Dividing by the detached weight leaves exp(-rho) - 1/e, whose numeric gradient matches only if the
    # weight inside tcorr_loss is detached and the rest is differentiated through bases and exponents.
    p, u = _interior(seed=1)
    assert torch.autograd.gradcheck(lambda a, b: tcorr_loss(a, b) / (1 + (a - b).abs().detach()), (p, u))


def test_exponents_carry_gradient():
    p = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    u = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
    harmony_quality(p, u).backward()
    rho = 0.5**0.25 * 0.25**0.5
    # d/du (p^u u^p) = rho (ln p + p/u): the ln p part exists only if the exponent u is differentiated.
    torch.testing.assert_close(u.grad, torch.tensor(rho * (torch.log(p).item() + 0.5 / 0.25), dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("p0,u0", CORNERS)
def test_finite_values_and_gradients_at_corners(dtype, p0, u0):
    p = torch.tensor(p0, dtype=dtype, requires_grad=True)
    u = torch.tensor(u0, dtype=dtype, requires_grad=True)
    for fn in (lambda: harmony_quality(p, u), lambda: tcorr_loss(p, u), lambda: harmonious_iou_loss(u)):
        p.grad = u.grad = None
        value = fn()
        assert value.dtype == dtype and torch.isfinite(value)
        value.backward()
        for g in (p.grad, u.grad):
            assert g is None or torch.isfinite(g)


def test_bounds_and_symmetry():
    p, u = (x.detach() for x in _interior(n=256, seed=2))
    torch.testing.assert_close(harmony_quality(p, u), harmony_quality(u, p))
    t = tcorr_loss(p, u)
    assert (t >= 0).all() and (t <= 2 * (1 - torch.exp(torch.tensor(-1.0)))).all()
    h = harmonious_iou_loss(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(h, torch.tensor([1.5, 0.0]))
