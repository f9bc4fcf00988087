"""Nothing silent in the ops: double backward through a fused op is an error (the references
have second derivatives), a NaN in the input stays in its row, argument errors name both sides."""
from __future__ import annotations
import pytest
import torch
from rnnofrnns import ModularRNN
from rnnofrnns.ops import (ensemble_drive, ensemble_loss, ensemble_readout_loss, gated_paths, gated_paths_reference,
                           modular_rnn, modular_rnn_reference)
from problems import FUSED_BACKENDS, device_for, make_problem, star


def modular_args(backend):
    pr = make_problem(T=4, B=2, p=3, n=3, pairs=star(3), dtype=torch.float64, device=device_for(backend))
    return pr


def test_modular_rnn_reference_has_second_derivatives():
    pr = modular_args("reference")
    f = lambda drive, L: modular_rnn_reference(drive, pr.W, L, pr.L_index, pr.h0, alpha=0.5,  # noqa: E731
                                               nonlinearity="tanh", form="rate")
    assert torch.autograd.gradgradcheck(f, (pr.drive, pr.L_blocks))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_modular_rnn_double_backward_is_refused(backend):
    pr = modular_args(backend)
    out = modular_rnn(*pr.args(), alpha=0.5, nonlinearity="tanh", form="rate", backend=backend)
    ref = modular_rnn_reference(*pr.args(), alpha=0.5, nonlinearity="tanh", form="rate")
    (g,) = torch.autograd.grad(out.square().sum(), pr.drive, create_graph=True)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), pr.drive, create_graph=True)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)  # first derivatives stay right
    with pytest.raises(RuntimeError, match="modular_rnn: double backward .* backend='reference'"):
        torch.autograd.grad(g.square().sum(), pr.L_blocks)
    # without create_graph nothing changes
    (g2,) = torch.autograd.grad(
        modular_rnn(*pr.args(), alpha=0.5, nonlinearity="tanh", form="rate", backend=backend).square().sum(), pr.drive)
    assert not g2.requires_grad


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("gate_shape", [(2,), (4, 2), (4, 2, 3)])
def test_gated_paths_double_backward_is_refused(backend, gate_shape):
    dev = device_for(backend)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64).to(dev).requires_grad_()
    W = torch.randn(2, 3, 5, generator=g, dtype=torch.float64).to(dev).requires_grad_()
    c = torch.rand(gate_shape, generator=g, dtype=torch.float64).to(dev).requires_grad_()
    (dx,) = torch.autograd.grad(gated_paths(x, W, c, backend=backend).square().sum(), x, create_graph=True)
    (dx_ref,) = torch.autograd.grad(gated_paths_reference(x, W, c).square().sum(), x, create_graph=True)
    torch.testing.assert_close(dx, dx_ref)
    with pytest.raises(RuntimeError, match="gated_paths: double backward"):
        torch.autograd.grad(dx.square().sum(), c)
    assert torch.autograd.gradgradcheck(lambda x, c: gated_paths_reference(x, W.detach(), c), (x, c))


def test_ensemble_ops_double_backward_is_refused():
    g = torch.Generator().manual_seed(0)
    I, B, T, F, n = 2, 3, 4, 5, 3
    x = torch.randn(I, B, T, F, generator=g, dtype=torch.float64)
    y = torch.randn(I, B, T, F, generator=g, dtype=torch.float64)
    Wx = torch.randn(I, n, F, generator=g, dtype=torch.float64, requires_grad=True)
    Wh = (0.3 * torch.randn(I, n, n, generator=g, dtype=torch.float64)).requires_grad_()
    Wy = torch.randn(I, n, F, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(I, F, dtype=torch.float64, requires_grad=True)
    (gWx,) = torch.autograd.grad(ensemble_loss(x, Wx, Wh, Wy, b, y, False, True, backend="cpu").sum(), Wx,
                                 create_graph=True)
    with pytest.raises(RuntimeError, match="ensemble_loss: double backward"):
        torch.autograd.grad(gWx.square().sum(), Wh)
    xd = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(ensemble_drive(xd, Wx, backend="cpu").square().sum(), xd, create_graph=True)
    with pytest.raises(RuntimeError, match="ensemble_drive: double backward"):
        torch.autograd.grad(gx.square().sum(), Wx)
    h = torch.randn(T, B, I * n, generator=g, dtype=torch.float64, requires_grad=True)
    (gh,) = torch.autograd.grad(ensemble_readout_loss(h, Wy, b, y, True, backend="cpu").sum(), h, create_graph=True)
    with pytest.raises(RuntimeError, match="ensemble_readout_loss: double backward"):
        torch.autograd.grad(gh.square().sum(), Wy)


def test_nan_in_the_input_stays_in_its_row():
    torch.manual_seed(0)
    net = ModularRNN(3, (3, 4), topology="all", alpha=0.5)
    x = torch.randn(3, 5, 3)
    x[1, 2, 0] = float("nan")
    out, _ = net(x)
    assert out[1, 2:].isnan().any() and out[[0, 2]].isfinite().all()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_alpha_as_a_zero_d_tensor(backend):
    pr = make_problem(T=3, B=2, p=2, n=3, pairs=[(0, 1), (1, 0)], requires_grad=False)
    a = modular_rnn(*pr.args(), alpha=torch.tensor(0.5), backend=backend)
    b = modular_rnn(*pr.args(), alpha=0.5, backend=backend)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="alpha must be .*one-element tensor or a tensor of p = 2"):
        modular_rnn(*pr.args(), alpha=torch.tensor([0.5, 0.5, 0.5]), backend=backend)
    torch.testing.assert_close(modular_rnn(*pr.args(), alpha=torch.tensor([0.5, 0.5]), backend=backend), b)
    empty = modular_rnn(pr.drive[:, :0], pr.W, pr.L_blocks, pr.L_index, alpha=0.5, backend=backend)
    assert empty.shape == (3, 0, 6)


def test_gated_paths_names_both_sides_of_a_d_in_mismatch():
    with pytest.raises(ValueError, match=r"x and W disagree on D_in: x of shape \(4, 7\) has D_in = 7"):
        gated_paths(torch.randn(4, 7), torch.randn(3, 6, 5), torch.rand(3), backend="reference")


def test_ensemble_reference_has_second_derivatives():
    from rnnofrnns.ops.ensemble import ensemble_loss_reference

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 2, 3, 2, generator=g, dtype=torch.float64), torch.randn(2, 2, 3, 2, generator=g,
                                                                                   dtype=torch.float64)
    Wx = torch.randn(2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    Wh = (0.3 * torch.randn(2, 2, 2, generator=g, dtype=torch.float64)).requires_grad_()
    Wy = torch.randn(2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, 2, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(
        lambda Wx, Wh, Wy: ensemble_loss_reference(x, Wx, Wh, Wy, b, y, False, False), (Wx, Wh, Wy))
