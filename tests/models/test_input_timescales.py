"""Input-driven timescales (ModularRNN(input_timescales=True)): the areas' rates follow the
input through a gate that never reads the state, the Cayley map keeps constant rates, and the
certificate holds for any rate in [alpha_min, alpha_max] (its Jacobian check is in
test_certified_models.py)."""
from __future__ import annotations

import pytest
import torch

from rnnofrnns import GlobalWorkspaceNet, ModularRNN


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def net(**kw):
    kw = {**dict(areas="svd", feedback="cayley", learn_timescales=True, input_timescales=True, alpha=0.3,
                 generator=gen(), dtype=torch.float64), **kw}
    return ModularRNN(3, (4, 5), topology="gw", **kw)


def test_rates_start_at_alpha_and_follow_the_input():
    rnn = net(alpha=[0.1, 0.3, 0.6, 0.2])
    x = torch.randn(7, 2, 3, generator=gen(1), dtype=torch.float64)
    rates = rnn.input_rates(x)
    assert rates.shape == (7, 2, 4)
    torch.testing.assert_close(rates, torch.tensor([0.1, 0.3, 0.6, 0.2], dtype=torch.float64).expand(7, 2, 4))
    with torch.no_grad():
        rnn.rate_gate_weight.normal_(0, 10, generator=gen(2))
    rates = rnn.input_rates(x).detach()
    assert float(rates.std()) > 0.1
    assert bool((rates >= rnn.alpha_min).all() and (rates <= rnn.alpha_max).all())


def test_fused_and_reference_backends_agree_with_gradients():
    x = torch.randn(2, 6, 3, generator=gen(1), dtype=torch.float64)
    outs = {}
    for backend in ("cpu", "reference"):
        rnn = net(backend=backend)
        with torch.no_grad():
            rnn.rate_gate_weight.normal_(0, 2, generator=gen(2))
            rnn.B.normal_(0, 1, generator=gen(3))
        out, h_n = rnn(x)
        (out.square().sum() + h_n.sum()).backward()
        outs[backend] = [out] + [p.grad for p in rnn.parameters()]
    names = [name for name, _ in net().named_parameters()]
    assert "rate_gate_weight" in names and "rate_gate_bias" in names and "timescale_logit" in names
    for name, a, b in zip(["output"] + names, outs["cpu"], outs["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")
        assert name == "output" or float(a.abs().max()) > 0, name


def test_state_dict_round_trip_and_certificate():
    a, b = net(), net(alpha=0.5, generator=gen(9))
    with torch.no_grad():
        a.rate_gate_weight.normal_(0, 1, generator=gen(2))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 5, 3, generator=gen(1), dtype=torch.float64)
    torch.testing.assert_close(a(x)[0], b(x)[0], rtol=0, atol=0)
    cert = a.certify()
    assert cert.discrete_holds and cert.area_rate_range == (0.02, 1.0)
    # the slowest rate bounds it: 1 - alpha_min (1 - kappa), kappa the largest of the areas
    assert cert.step_factor == pytest.approx(1 - 0.02 * (1 - cert.kappa), abs=1e-12)
    assert "input-driven area rates in [0.02, 1]" in str(cert)


def test_a_larger_alpha_min_certifies_a_faster_contraction():
    slow, fast = net(alpha_min=0.02).certify(), net(alpha_min=0.2).certify()
    assert fast.step_factor < slow.step_factor < 1


def test_the_classifiers_take_it():
    model = GlobalWorkspaceNet(1, 10, num_areas=4, area_size=8, areas="svd", feedback="cayley",
                               learn_timescales=True, input_timescales=True, readout="glu", generator=gen())
    logits = model(torch.randn(3, 11, 1, generator=gen(1)))
    assert logits.shape == (3, 10)
    assert model.certify().discrete_holds


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(feedback="euler", learn_timescales=False), r"input_timescales=True needs the cayley feedback step"),
        (dict(alpha_min=0.0), r"alpha_min must be in \(0, alpha_max = 1.0\), got 0.0"),
        (dict(alpha_min=0.5), r"starts every area's rate at alpha, which must lie in \(alpha_min, alpha_max\)"),
        (dict(alpha=0.01), r"which must lie in \(alpha_min, alpha_max\) = \(0.02, 1.0\)"),
    ],
)
def test_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        net(**kw)


def test_constant_rate_networks_have_no_input_rates():
    rnn = net(input_timescales=False)
    assert not any("rate_gate" in name for name, _ in rnn.named_parameters())
    with pytest.raises(ValueError, match="constant rates"):
        rnn.input_rates(torch.zeros(1, 1, 3, dtype=torch.float64))
