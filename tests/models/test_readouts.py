"""Readouts (outside the recurrence): the last state, the mean state and a pooled gated linear
unit, on every classifier model; each against its formula with float64 gradients, their
parameter counts, and the certificate untouched."""
from __future__ import annotations

import pytest
import torch

from rnnofrnns import GlobalWorkspaceNet, SparseComboNet, SVDComboNet
from rnnofrnns.models import RNNClassifier
from rnnofrnns.models.readouts import (GLUPoolReadout, LastStateReadout, MeanStateReadout, READOUTS,
                                       RecentGLUReadout, make_readout, readout_parameters)


def formula(name, r, out):
    """The readouts written out densely."""
    if name == "last":
        return out[:, -1] @ r.weight.T + r.bias
    if name == "mean":
        return out.mean(1) @ r.weight.T + r.bias
    W, b = r.unit.weight, r.unit.bias
    A, G = W[:r.width], W[r.width:]
    units = (out @ A.T + b[:r.width]) * torch.sigmoid(out @ G.T + b[r.width:])
    if name == "glu":
        return units.mean(1) @ r.out.weight.T + r.out.bias
    T = out.shape[1]  # "recent": unit j pooled with weights exp(-(T-1-t)/window_j), normalised
    window = torch.exp(r.log_window)
    weights = torch.stack([torch.exp(-(T - 1 - t) / window) for t in range(T)])
    weights = weights / weights.sum(0)
    return (units * weights).sum(1) @ r.out.weight.T + r.out.bias


@pytest.mark.parametrize("name", list(READOUTS))
def test_each_readout_is_its_formula_with_float64_gradients(name):
    g = torch.Generator().manual_seed(0)
    r = make_readout(name, 7, 3, generator=g, dtype=torch.float64)
    out = torch.randn(4, 5, 7, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(r(out), formula(name, r, out), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda o: r(o), (out,))
    params = [p for p in r.parameters()]
    assert torch.autograd.gradcheck(lambda *ps: torch.func.functional_call(r, dict(zip(
        [n for n, _ in r.named_parameters()], ps)), (out.detach(),)), tuple(p.detach().requires_grad_() for p in params))
    assert sum(p.numel() for p in r.parameters()) == readout_parameters(name, 7, 3)


def test_the_last_state_readout_is_the_classifier_of_before():
    """Same draws from the generator as the nn.Linear readout of earlier releases: same keys, same values."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    r = LastStateReadout(6, 2, generator=g)
    g2 = torch.Generator().manual_seed(5)
    w = (2 * torch.rand((2, 6), generator=g2) - 1) * (1.0 / 6 ** 0.5)
    b = (2 * torch.rand(2, generator=g2) - 1) * (1.0 / 6 ** 0.5)
    assert list(r.state_dict()) == ["weight", "bias"] and torch.equal(r.weight, w) and torch.equal(r.bias, b)


@pytest.mark.parametrize("name", list(READOUTS))
@pytest.mark.parametrize("build", [
    lambda r: SparseComboNet(2, 3, num_areas=3, area_size=4, readout=r, generator=torch.Generator().manual_seed(1)),
    lambda r: GlobalWorkspaceNet(2, 3, num_areas=3, area_size=4, readout=r, generator=torch.Generator().manual_seed(1)),
    lambda r: SVDComboNet(2, 3, num_areas=3, area_size=4, readout=r, generator=torch.Generator().manual_seed(1)),
], ids=["scn", "gw", "svd"])
def test_every_classifier_takes_every_readout_and_keeps_its_certificate(build, name):
    net, plain = build(name), build("last")
    x = torch.randn(5, 6, 2)
    out, h_n = net.rnn(x)
    torch.testing.assert_close(net(x), formula(name, net.readout, out))
    assert str(net.certify()) == str(plain.certify())  # the recurrence is the same network
    copy = build(name)
    copy.load_state_dict(net.state_dict())
    torch.testing.assert_close(copy(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(READOUTS))
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_the_baselines_take_every_readout(kind, name):
    torch.manual_seed(0)
    net = RNNClassifier(kind, 2, 8, 3, readout=name)
    x = torch.randn(4, 5, 2)
    out, _ = net.rnn(x)
    torch.testing.assert_close(net(x), formula(name, net.readout, out))


def test_a_module_as_readout_and_a_bad_name():
    custom = MeanStateReadout(12, 3)
    assert SparseComboNet(2, 3, num_areas=3, area_size=4, readout=custom).readout is custom
    with pytest.raises(ValueError, match=r"readout must be one of \('last', 'mean', 'glu', 'recent'\) or an nn.Module, got 'max'"):
        SparseComboNet(2, 3, num_areas=3, area_size=4, readout="max")
    with pytest.raises(ValueError, match="width must be a positive integer"):
        GLUPoolReadout(4, 2, width=0)


def test_the_recent_windows_start_spread_and_reach_the_last_state_and_the_mean():
    r = RecentGLUReadout(6, 2, width=5, min_window=4.0, max_window=512.0, dtype=torch.float64)
    torch.testing.assert_close(torch.exp(r.log_window), torch.tensor([4.0, 13.4543, 45.2548, 152.2185, 512.0],
                                                                     dtype=torch.float64), rtol=1e-5, atol=0)
    with torch.no_grad():
        r.log_window.copy_(torch.tensor([-30.0, 0.0, 0.0, 0.0, 30.0]))
    w = r.pooling_weights(7)
    torch.testing.assert_close(w.sum(0), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(w[:, 0], torch.eye(7, dtype=torch.float64)[-1])  # a tiny window: the last step
    torch.testing.assert_close(w[:, -1], torch.full((7,), 1 / 7, dtype=torch.float64))  # a huge one: the mean
    out = torch.randn(3, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(r(out), formula("recent", r, out), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="min_window and max_window must satisfy 0 < min_window <= max_window, got 8"):
        RecentGLUReadout(6, 2, min_window=8.0, max_window=4.0)
