"""Stacked certified layers (ModularRNNStack, num_layers on the classifiers): shapes as
torch.nn.RNN's, the backends agree, and the stack's certificate is checked against the Jacobian
of one step of the whole stack in the metric it states."""
from __future__ import annotations

import pytest
import torch

from rnnofrnns import GlobalWorkspaceNet, ModularRNN, SVDComboNet
from rnnofrnns.models import ModularRNNStack
from rnnofrnns.models.stack import coupling_gain, stack_bound


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def stack(num_layers=2, **kw):
    kw = {**dict(areas="svd", feedback="cayley", learn_timescales=True, alpha=0.3, generator=gen(),
                 dtype=torch.float64, topology="gw"), **kw}
    return ModularRNNStack(2, (3, 4), num_layers=num_layers, **kw)


@pytest.mark.parametrize("batch_first", [True, False])
def test_shapes_as_torch_nn_rnn(batch_first):
    s = stack(3, batch_first=batch_first)
    x = torch.randn(5, 7, 2, dtype=torch.float64)  # [B, T, F] or [T, B, F]
    out, h_n = s(x)
    B = 5 if batch_first else 7
    assert out.shape == (*x.shape[:2], 12) and h_n.shape == (3, B, 12)
    out2, h_n2 = s(x, h_n)
    assert h_n2.shape == h_n.shape and not torch.equal(out, out2)
    with pytest.raises(ValueError, match=r"h0 must be \[num_layers, B, hidden_size\] = \[3, B, 12\]"):
        s(x, h_n[:2])


def test_layers_read_the_layer_below():
    s = stack(2, between_layers="tanh")
    x = torch.randn(4, 6, 2, generator=gen(1), dtype=torch.float64)
    out, h_n = s(x)
    low, _ = s.layers[0](x)
    top, _ = s.layers[1](torch.tanh(low))
    torch.testing.assert_close(out, top, rtol=0, atol=0)
    assert s.layers[1].input_size == 12


def test_backends_agree_with_gradients():
    x = torch.randn(3, 5, 2, generator=gen(1), dtype=torch.float64)
    res = {}
    for backend in ("cpu", "reference"):
        s = stack(2, backend=backend, input_timescales=True, input_encoder=3)
        out, h_n = s(x)
        (out.square().sum() + h_n.sum()).backward()
        res[backend] = [out] + [p.grad for p in s.parameters()]
    for a, b in zip(res["cpu"], res["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # the input path options apply to the first layer only
    s = stack(2, input_timescales=True, input_encoder=3)
    assert s.layers[0].input_timescales and s.layers[0].input_encoder == 3
    assert not s.layers[1].input_timescales and s.layers[1].input_encoder == 0


def full_step_norm(s: ModularRNNStack, x: torch.Tensor, h: torch.Tensor, weights) -> float:
    """||D^{1/2} J D^{-1/2}||_2 of one step of the whole stack at (x, h), D = diag(w_l N_l)."""
    L, H = h.shape[0], h.shape[-1]
    J = torch.func.jacrev(lambda hh: s.step(x, hh.view(L, 1, H)).reshape(-1))(h.reshape(-1)).detach()
    d = torch.cat([w * N for w, N in zip(weights, s.unit_metric())])
    X = d.sqrt()[:, None] * J * d.rsqrt()[None, :]
    return float(torch.linalg.matrix_norm(X, ord=2))


@pytest.mark.parametrize("kw", [
    dict(),
    dict(alpha=[0.1, 0.5, 0.8], between_layers="tanh", drive_scale="rate"),
    dict(areas="sparse", feedback="euler", learn_timescales=False, alpha=0.5, form="rate", nonlinearity="tanh"),
])
def test_the_stack_certificate_bounds_the_jacobian_of_the_whole_step(kw):
    s = stack(3, **kw)
    with torch.no_grad():  # strong coupling between the layers and strong feedback
        for layer in s.layers[1:]:
            layer.input_weight.mul_(20.0)
        for layer in s.layers:
            layer.B.mul_(30.0 if layer.feedback_step == "cayley" else 1.0)
    cert = s.certify()
    assert cert.discrete_holds, cert
    assert len(cert.layers) == 3 and len(cert.coupling_gains) == 2 and cert.metric_weights[0] == 1.0
    assert max(c.step_factor for c in cert.layers) <= cert.step_factor < 1
    assert cert.coupling_gains[0] == pytest.approx(coupling_gain(s.layers[1], s.layers[0]))
    g = gen(3)
    for _ in range(4):
        x = 2 * torch.randn(1, 2, generator=g, dtype=torch.float64)
        h = torch.randn(3, 12, generator=g, dtype=torch.float64)
        assert full_step_norm(s, x, h, cert.metric_weights) <= cert.step_factor + 1e-9
    # the bound is the norm of the weighted bound matrix, and grows with the weights' ratio
    rhos = [c.step_factor for c in cert.layers]
    assert stack_bound(rhos, cert.coupling_gains, 0.0) == pytest.approx(max(rhos))
    assert stack_bound(rhos, cert.coupling_gains, 1.0) >= cert.step_factor


def test_a_failing_layer_fails_the_stack():
    s = stack(2, areas="sparse", feedback="euler", learn_timescales=False, alpha=0.5, guarantee=False)
    with torch.no_grad():
        s.layers[0].B.zero_()
        s.layers[1].B.mul_(1e3)
    cert = s.certify()
    assert cert.layers[0].discrete_holds and not cert.layers[1].discrete_holds and not cert.discrete_holds
    with torch.no_grad():
        s.layers[0].B.fill_(float("nan"))
    cert = s.certify()
    assert not cert.discrete_holds and "layer 0" in cert.reason and "B" in cert.reason


def test_the_classifiers_take_num_layers():
    model = GlobalWorkspaceNet(1, 10, num_areas=4, area_size=8, num_layers=2, readout="glu", areas="svd",
                               feedback="cayley", learn_timescales=True, generator=gen())
    assert isinstance(model.rnn, ModularRNNStack)
    assert model(torch.randn(3, 9, 1, generator=gen(2))).shape == (3, 10)
    cert = model.certify()
    assert cert.discrete_holds and len(cert.layers) == 2
    assert "2 layers" in str(cert)
    copy = GlobalWorkspaceNet(1, 10, num_areas=4, area_size=8, num_layers=2, readout="glu", areas="svd",
                              feedback="cayley", learn_timescales=True, generator=gen(5))
    copy.load_state_dict(model.state_dict())
    x = torch.randn(2, 5, 1, generator=gen(3))
    torch.testing.assert_close(copy(x), model(x), rtol=0, atol=0)
    with pytest.raises(TypeError, match="a stack of layers has no single set"):
        model.certify_inputs()
    assert isinstance(SVDComboNet(1, 3, 2, 4, generator=gen()).rnn, ModularRNN)  # one layer: the layer itself


def test_ablation_numbers_areas_layer_after_layer():
    s = stack(2)
    assert s.num_areas == 6
    x = torch.randn(2, 4, 2, generator=gen(1), dtype=torch.float64)
    with s.ablate(4):  # area 1 of layer 1
        out, _ = s(x)
        assert s.layers[1]._silenced == (1,) and s.layers[0]._silenced == ()
    assert float(out[..., 4:8].abs().max()) == 0.0
    with pytest.raises(ValueError, match=r"indices in \[0, 5\]"):
        with s.ablate(6):
            pass


@pytest.mark.parametrize("kw,match", [
    (dict(num_layers=0), r"num_layers must be a positive integer, got 0"),
    (dict(between_layers="relu"), r"between_layers must be one of \('none', 'tanh'\), got 'relu'"),
])
def test_bad_stack_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        stack(**kw)
