"""The input path of ModularRNN (outside the recurrence): an input encoder, the drive scaled to
each area's rate, and timescales started spread over a range. The certificate does not depend
on any of them; the backends agree with them."""
from __future__ import annotations

import math

import pytest
import torch

from rnnofrnns import GlobalWorkspaceNet, ModularRNN


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def net(**kw):
    kw = {**dict(areas="svd", feedback="cayley", learn_timescales=True, input_timescales=False, input_encoder=0, alpha=0.3,
                 generator=gen(), dtype=torch.float64), **kw}
    return ModularRNN(1, (4, 5), topology="gw", **kw)


def test_the_encoder_drives_the_areas_along_more_than_one_direction():
    x = torch.linspace(-2, 2, 50, dtype=torch.float64).reshape(50, 1, 1)
    plain, encoded = net().drive(x)[:, 0], net(input_encoder=8).drive(x)[:, 0]
    # one input feature: U x + b spans one direction (plus the bias); the encoder's drive more
    rank = lambda u: int(torch.linalg.matrix_rank(u - u.mean(0), rtol=1e-8))  # noqa: E731
    assert rank(plain) == 1 and rank(encoded) >= 4
    names = dict(net(input_encoder=8).named_parameters())
    assert names["encoder_weight"].shape == (8, 1) and names["input_weight"].shape == (20, 8)


def test_the_drive_scaled_to_the_rate():
    a = [0.05, 0.2, 0.5, 0.9]
    plain, scaled = net(alpha=a), net(alpha=a, drive_scale="rate")
    x = torch.randn(3, 2, 1, generator=gen(1), dtype=torch.float64)
    gain = torch.tensor([math.sqrt((2 - v) / v) for v in a], dtype=torch.float64).repeat_interleave(5)
    torch.testing.assert_close(scaled.drive(x), plain.drive(x) * gain)
    # so that a u enters with LRU's gain sqrt(1 - (1 - a)^2)
    torch.testing.assert_close(torch.tensor(a).double().repeat_interleave(5) * gain,
                               torch.tensor([math.sqrt(1 - (1 - v) ** 2) for v in a]).double().repeat_interleave(5))


def test_the_drive_scaled_to_input_driven_rates():
    rnn = net(drive_scale="rate", input_timescales=True, input_encoder=4)
    with torch.no_grad():
        rnn.rate_gate_weight.normal_(0, 2, generator=gen(3))
    x = torch.randn(6, 2, 1, generator=gen(1), dtype=torch.float64)
    a = rnn.input_rates(x)
    plain = net(input_timescales=True, input_encoder=4)
    plain.load_state_dict(rnn.state_dict())
    torch.testing.assert_close(rnn.drive(x), plain.drive(x) * torch.sqrt((2 - a) / a).repeat_interleave(5, -1))


def test_timescales_spread_geometrically():
    rnn = net(alpha_log_spread=(0.01, 0.64))
    torch.testing.assert_close(rnn.area_alpha().detach(), torch.tensor([0.01, 0.04, 0.16, 0.64], dtype=torch.float64))


@pytest.mark.parametrize("kw", [dict(input_encoder=6), dict(drive_scale="rate"),
                                dict(input_encoder=3, drive_scale="rate", input_timescales=True,
                                     alpha_log_spread=(0.05, 0.5))])
def test_backends_agree_and_the_certificate_is_the_same(kw):
    x = torch.randn(2, 7, 1, generator=gen(1), dtype=torch.float64)
    grads = {}
    for backend in ("cpu", "reference"):
        rnn = net(backend=backend, **kw)
        out, _ = rnn(x)
        out.square().sum().backward()
        grads[backend] = [out] + [p.grad for p in rnn.parameters()]
    for a, b in zip(grads["cpu"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # the input path is outside the recurrence: the certificate is that of the same net without it
    cert, bare = net(**kw).certify(), net(**{k: v for k, v in kw.items() if k in ("input_timescales",
                                                                               "alpha_log_spread")}).certify()
    assert cert.discrete_holds and cert.step_factor == bare.step_factor


def test_the_step_is_the_forward():
    rnn = net(input_encoder=3, drive_scale="rate", input_timescales=True)
    with torch.no_grad():
        rnn.rate_gate_weight.normal_(0, 2, generator=gen(3))
    x = torch.randn(2, 4, 1, generator=gen(1), dtype=torch.float64)
    out, _ = rnn(x)
    h = torch.zeros(2, 20, dtype=torch.float64)
    for t in range(4):
        h = rnn.step(x[:, t], h)
        torch.testing.assert_close(h, out[:, t])


@pytest.mark.parametrize("kw,match", [
    (dict(input_encoder=-1), r"input_encoder must be a width >= 0 \(0: none\), got -1"),
    (dict(drive_scale="lru"), r"drive_scale must be one of \('none', 'rate'\), got 'lru'"),
    (dict(alpha_log_spread=(0.5, 0.1)), r"alpha_log_spread must be \(lo, hi\) with 0 < lo <= hi <= 1"),
    (dict(alpha_log_spread=0.1), r"alpha_log_spread must be \(lo, hi\), got 0.1"),
])
def test_bad_input_path_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        net(**kw)


def test_combine_refuses_parts_with_another_input_path():
    with pytest.raises(ValueError, match="combine: either every part has an input encoder or none has"):
        ModularRNN.combine([net(), net(input_encoder=2)])


def test_the_gw_net_takes_them():
    model = GlobalWorkspaceNet(1, 10, num_areas=4, area_size=8, areas="svd", feedback="cayley", learn_timescales=True,
                               input_encoder=8, drive_scale="rate", alpha_log_spread=(0.02, 0.5), input_timescales=False,
                               generator=gen())
    assert model(torch.randn(3, 9, 1, generator=gen(2))).shape == (3, 10)
    assert model.certify().discrete_holds
