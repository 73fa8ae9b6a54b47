"""LSQ, TQT and DSQ quantizers and the observers, against float64 reference formulas from the papers."""
import math

import hqod  # noqa: F401  (before any detectron2 import)
import pytest
import torch

from hqod.errors import HQODInputError
from hqod.quantization import DSQQuantizer, LSQQuantizer, TQTQuantizer, build_observer
from hqod.quantization.base import quant_range
from hqod.quantization.fake_quant import EPS



def channel(t, x):
    return t.reshape(-1, *([1] * (x.dim() - 1))) if t.numel() > 1 else t


def grid_inputs(step, qmin, qmax, shape, seed=0):
    """x = s·(k + f), k an integer in [Qn-3, Qp+3], 0.05 <= |f| <= 0.45: x/s is never near a rounding boundary."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(qmin - 3, qmax + 4, shape, generator=g).double()
    sign = torch.randint(0, 2, shape, generator=g) * 2 - 1
    f = (torch.rand(shape, generator=g, dtype=torch.float64) * 0.4 + 0.05) * sign
    return ((k + f) * channel(step, k)).float()


def sum_per_step(t, step):
    return t.sum(dim=tuple(range(1, t.dim()))) if step.numel() > 1 else t.sum().reshape(1)


def run(quantizer, x, seed=1):
    """Output and gradients of ``quantizer`` for upstream gradient dy; returns (out, dx, dy)."""
    x = x.clone().requires_grad_()
    out = quantizer(x)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    out.backward(dy)
    return out.detach().double(), x.grad.double(), dy.double()


def random_step(channels, seed=2):
    return torch.rand(channels or 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1


CASES = [(bits, signed, channels) for bits in (2, 4, 8) for signed in (True, False) for channels in (None, 4)]


@pytest.mark.parametrize("bits,signed,channels", CASES)
def test_lsq_matches_paper(bits, signed, channels):
    qmin, qmax = quant_range(bits, signed)
    step = random_step(channels)
    quantizer = LSQQuantizer(bits, signed, channels)
    quantizer.scale.data.copy_(step)
    quantizer.initialized.fill_(True)
    x = grid_inputs(step, qmin, qmax, (4, 3, 5, 5))
    out, dx, dy = run(quantizer, x)

    s, x64 = channel(step, x), x.double()
    v = x64 / s
    inside = (v >= qmin) & (v <= qmax)
    q = v.round().clamp(qmin, qmax)
    g = 1 / math.sqrt(x.numel() * qmax)
    assert torch.allclose(out, q * s, rtol=1e-6, atol=1e-7)
    assert torch.equal(dx, dy * inside)
    ref_ds = g * sum_per_step(dy * torch.where(inside, v.round() - v, q), step)
    assert torch.allclose(quantizer.scale.grad.double(), ref_ds, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("bits,signed,channels", CASES)
def test_tqt_matches_paper(bits, signed, channels):
    qmin, qmax = quant_range(bits, signed)
    log2_t = torch.log2(random_step(channels) * 4)
    step = torch.exp2(torch.ceil(log2_t)) / 2 ** (bits - 1 if signed else bits)
    quantizer = TQTQuantizer(bits, signed, channels)
    quantizer.log2_threshold.data.copy_(log2_t)
    quantizer.initialized.fill_(True)
    x = grid_inputs(step, qmin, qmax, (4, 3, 5, 5))
    out, dx, dy = run(quantizer, x)

    s, x64 = channel(step, x), x.double()
    v = x64 / s
    inside = (v.round() >= qmin) & (v.round() <= qmax)  # TQT clips on the rounded value
    q = v.round().clamp(qmin, qmax)
    assert torch.equal(out, q * s)  # power-of-two steps: exact
    assert torch.equal(dx, dy * inside)
    ref = math.log(2) * channel(step, x).reshape(-1) * sum_per_step(dy * torch.where(inside, v.round() - v, q), step)
    assert torch.allclose(quantizer.log2_threshold.grad.double(), ref, rtol=1e-4, atol=1e-7)


def test_tqt_frozen_threshold_gets_no_gradient_and_calibrates_to_power_of_two():
    quantizer = TQTQuantizer(4, True, freeze=True)
    x = torch.randn(1000)
    quantizer.observe_enabled, quantizer.fake_quant_enabled = True, False
    quantizer(x)
    assert quantizer.finish_calibration()
    quantizer.observe_enabled, quantizer.fake_quant_enabled = False, True
    minmax_step = x.abs().max() / 7.5
    assert quantizer.step_size.item() == 2 ** math.ceil(math.log2(minmax_step))
    x.requires_grad_()
    quantizer(x).sum().backward()
    assert quantizer.log2_threshold.grad is None and x.grad is not None


@pytest.mark.parametrize("bits,signed,channels", [(2, True, None), (4, False, None), (3, True, 4), (8, True, None)])
def test_dsq_matches_paper(bits, signed, channels):
    qmin, qmax = quant_range(bits, signed)
    step, alpha = random_step(channels), 0.3
    quantizer = DSQQuantizer(bits, signed, channels, alpha=alpha)
    quantizer.scale.data.copy_(step)
    quantizer.initialized.fill_(True)
    x = grid_inputs(step, qmin, qmax, (4, 3, 5, 5))
    out, dx, dy = run(quantizer, x)

    s, x64 = channel(step, x), x.double()
    v_raw = x64 / s
    inside = (v_raw >= qmin) & (v_raw <= qmax)
    v = v_raw.clamp(qmin, qmax)
    u = v - v.floor() - 0.5
    k_s, k = 1 / (1 - alpha), math.log(2 / alpha - 1)
    t = torch.tanh(k * u)
    d_phi = 0.5 * k_s * k * (1 - t ** 2)
    q = v.round()
    g = 1 / math.sqrt(x.numel() * qmax)
    assert torch.allclose(out, q * s, rtol=1e-6, atol=1e-7)  # hard rounding forward
    assert torch.allclose(dx, dy * d_phi * inside, rtol=1e-4, atol=1e-6)
    ref_ds = g * sum_per_step(dy * torch.where(inside, q - v * d_phi, q), step)
    assert torch.allclose(quantizer.scale.grad.double(), ref_ds, rtol=1e-4, atol=1e-6)
    d_phi_d_alpha = 0.5 * (t / (1 - alpha) ** 2 + k_s * (1 - t ** 2) * u * (-2 / (alpha * (2 - alpha))))
    ref_dalpha = (dy * s * d_phi_d_alpha * inside).sum()
    assert torch.allclose(quantizer.alpha.grad.double(), ref_dalpha, rtol=1e-4, atol=1e-5)


def test_dsq_alpha_can_be_set_from_outside():
    quantizer = DSQQuantizer(4, True, learn_alpha=False)
    assert not quantizer.alpha.requires_grad
    quantizer.set_alpha(0.1)
    assert quantizer.alpha.item() == pytest.approx(0.1)
    for bad in (0.0, 0.6):
        with pytest.raises(HQODInputError, match="alpha"):
            quantizer.set_alpha(bad)


@pytest.mark.parametrize("cls", [LSQQuantizer, TQTQuantizer, DSQQuantizer])
@pytest.mark.parametrize("bits", range(2, 9))
def test_b_bit_output_has_at_most_2_to_the_b_values(cls, bits):
    quantizer = cls(bits, None)
    x = torch.randn(20000) * 3
    quantizer.observe_enabled, quantizer.fake_quant_enabled = True, False
    quantizer(x)
    quantizer.finish_calibration()
    quantizer.observe_enabled, quantizer.fake_quant_enabled = False, True
    values = quantizer(x).unique().numel()
    assert 2 ** (bits - 1) < values <= 2 ** bits


def calibrated(quantizer, *batches):
    quantizer.observe_enabled, quantizer.fake_quant_enabled = True, False
    for batch in batches:
        quantizer(batch)
    assert quantizer.finish_calibration()
    quantizer.observe_enabled, quantizer.fake_quant_enabled = False, True
    return quantizer


def test_minmax_observer_steps_and_automatic_signedness():
    x = torch.randn(2, 8, 6, 6)
    signed = calibrated(LSQQuantizer(4, None, observer=build_observer("MINMAX")), x)
    unsigned = calibrated(LSQQuantizer(4, None, observer=build_observer("minmax")), x.relu())
    assert bool(signed.signed) and not bool(unsigned.signed)
    assert signed.step_size.item() == pytest.approx(x.abs().max().item() / 7.5)
    assert unsigned.step_size.item() == pytest.approx(x.max().item() / 15)
    assert unsigned(-x.abs()).eq(0).all()  # unsigned grid [0, 15]
    weight = torch.randn(4, 3, 3, 3)
    per_channel = calibrated(LSQQuantizer(4, True, channels=4, observer=build_observer("MINMAX", 4)), weight)
    assert torch.allclose(per_channel.step_size, weight.abs().amax(dim=(1, 2, 3)) / 7.5)


def mse_search_reference(x, qmin, qmax):
    lo, hi = x.min().double(), x.max().double()
    best = (math.inf, None)
    for i in range(95):
        f = 1 - 0.01 * i
        step = max(-lo * f, hi * f) / ((qmax - qmin) / 2) if qmin < 0 else hi * f / qmax
        err = ((x.double() / step).round().clamp(qmin, qmax) * step - x.double()).square().mean().item()
        if err < best[0] - 1e-12:
            best = (err, (lo * f, hi * f))
    return best[1]


def test_ema_mse_observer_searches_95_factors_and_averages_batches():
    g = torch.Generator().manual_seed(0)
    first, second = torch.randn(4000, generator=g), torch.randn(4000, generator=g) * 2
    quantizer = calibrated(LSQQuantizer(4, None, observer=build_observer("EMA_MSE")), first, second)
    (lo1, hi1), (lo2, hi2) = mse_search_reference(first, -8, 7), mse_search_reference(second, -8, 7)
    lo, hi = 0.9 * lo1 + 0.1 * lo2, 0.9 * hi1 + 0.1 * hi2
    assert quantizer.step_size.item() == pytest.approx(max(-lo, hi).item() / 7.5, rel=1e-5)
    assert hi1 < first.max()  # the search shrank the range


def test_lsq_and_pot_mode_observers():
    x = torch.randn(3000)
    lsq = calibrated(LSQQuantizer(2, True, observer=build_observer("LSQ")), x[:1000], x[1000:])
    assert lsq.step_size.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(1), rel=1e-5)
    pot = calibrated(TQTQuantizer(4, True, observer=build_observer("POT_MODE")), x, x, x * 100)
    step = pot.step_size.item()
    assert step == 2 ** round(math.log2(step))
    errors = {e: ((x / 2 ** e).round().clamp(-8, 7) * 2 ** e - x).square().sum().item() for e in range(-8, 4)}
    assert step == 2 ** min(errors, key=errors.get)  # the mode: two of three batches voted for x's best step


def test_uninitialised_quantizer_raises_and_state_round_trips():
    x = torch.randn(2, 3, 4, 4)
    fresh = LSQQuantizer(4, None)
    with pytest.raises(HQODInputError, match="calibrate"):
        fresh(x)
    done = calibrated(LSQQuantizer(4, None), x.relu())
    assert set(done.state_dict()) == {"num_bits", "signed", "initialized", "scale"}
    fresh.load_state_dict(done.state_dict())
    assert torch.equal(fresh(x), done(x)) and not bool(fresh.signed)


def test_set_bits_keeps_the_clipping_threshold_and_is_saved():
    x = torch.randn(1000)
    lsq = calibrated(LSQQuantizer(8, True), x)
    tqt = calibrated(TQTQuantizer(8, True), x)
    before = lsq.step_size.item(), tqt.step_size.item(), tqt.log2_threshold.item()
    lsq.set_bits(4)
    tqt.set_bits(4)
    assert lsq.step_size.item() == pytest.approx(16 * before[0]) and lsq(x).unique().numel() <= 16
    assert tqt.step_size.item() == 16 * before[1] and tqt.log2_threshold.item() == before[2]
    resumed = LSQQuantizer(8, True)
    resumed.load_state_dict(lsq.state_dict())
    assert resumed.bits == 4 and torch.equal(resumed(x), lsq(x))
    with pytest.raises(HQODInputError, match="2 to 8"):
        lsq.set_bits(1)


def test_lsq_step_stays_positive():
    x = torch.randn(100)
    positive, negative = LSQQuantizer(4, True), LSQQuantizer(4, True)
    for quantizer, value in ((positive, 0.25), (negative, -0.25)):
        quantizer.scale.data.fill_(value)
        quantizer.initialized.fill_(True)
        quantizer(x).sum().backward()
    assert torch.equal(positive(x), negative(x))
    assert negative.scale.grad.item() == pytest.approx(-positive.scale.grad.item())
    positive.scale.data.zero_()
    assert positive.step_size.item() == EPS


@pytest.mark.parametrize("bits", [1, 9, 4.0, True, "4"])
def test_bad_bits(bits):
    with pytest.raises(HQODInputError, match="2 to 8"):
        LSQQuantizer(bits, True)


def test_bad_observer_and_alpha():
    with pytest.raises(HQODInputError, match="observer 'PERCENTILE'"):
        build_observer("PERCENTILE")
    with pytest.raises(HQODInputError, match="alpha"):
        DSQQuantizer(4, True, alpha=0.7)


@pytest.mark.parametrize("make", [lambda **kw: LSQQuantizer(4, False, **kw), lambda **kw: TQTQuantizer(4, False, **kw),
                                  lambda **kw: DSQQuantizer(4, False, **kw)])
def test_spec_declares_the_step_the_forward_pass_uses(make):
    quantizer = make(channels=3, role="weight")
    with torch.no_grad():
        quantizer._set_step(torch.tensor([0.3, 0.1, 0.7]), 0, 15)  # TQT rounds these up to powers of two
    quantizer.initialized.fill_(True)
    spec = quantizer.spec()
    assert (spec.role, spec.bits, spec.signed, spec.axis, spec.qmin, spec.qmax) == ("weight", 4, False, 0, 0, 15)
    x = torch.rand(3, 5) * 4
    expected = torch.round(x / spec.scale[:, None]).clamp(0, 15) * spec.scale[:, None]
    assert torch.allclose(quantizer(x), expected) and spec.zero_point.tolist() == [0, 0, 0]


def test_spec_needs_an_initialised_quantizer_and_a_known_role():
    with pytest.raises(HQODInputError, match="calibrate"):
        LSQQuantizer(4, True).spec()
    with pytest.raises(HQODInputError, match="role"):
        LSQQuantizer(4, True, role="activation")
    quantizer = LSQQuantizer(8, True)
    quantizer.initialized.fill_(True)
    assert (quantizer.spec().role, quantizer.spec().axis, quantizer.spec().scale.shape) == ("input", None, (1,))


def test_quantizer_keys_follow_the_declared_attributes():
    from hqod.engine.checkpoint import is_qat_state
    from hqod.quantization import QUANTIZER_ATTRIBUTES, is_quantizer_key

    assert QUANTIZER_ATTRIBUTES == {"weight": "weight_quant", "input": "input_quant", "output": "output_quant"}
    assert is_quantizer_key("backbone.bottom_up.stage2.0.project.output_quant.scale")
    assert is_quantizer_key("backbone.bottom_up.stem.input_quant.scale")
    assert is_quantizer_key("head.cls_subnet.0.input_quant.2.initialized")
    assert is_quantizer_key("head.cls_score.weight_quant.num_bits")
    assert not is_quantizer_key("head.cls_score.weight") and not is_quantizer_key("my_input_quantity.scale")
    assert is_qat_state({"a.weight": 0, "a.weight_quant.scale": 0}) and not is_qat_state({"a.weight": 0})
