"""Nothing silent: double backward through the fused ops, loading weights across settings, and
non-finite weights in certify() and forward."""
from __future__ import annotations

import pytest
import torch

from rnnofrnns import GlobalWorkspaceNet, ModularRNN
from rnnofrnns.ops import (ensemble_drive, ensemble_loss, ensemble_readout_loss, gated_paths, gated_paths_reference,
                           modular_rnn, modular_rnn_reference)
from problems import FUSED_BACKENDS, device_for, make_problem, star


# -- double backward -------------------------------------------------------------------------

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


def test_model_second_derivative_raises_on_fused_and_works_on_reference():
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    for backend in ("cpu", "reference"):
        torch.manual_seed(0)
        net = GlobalWorkspaceNet(3, 4, num_areas=3, area_size=4, backend=backend, dtype=torch.float64)
        (gx,) = torch.autograd.grad(net(x).square().sum(), x, create_graph=True)
        if backend == "cpu":
            with pytest.raises(RuntimeError, match="double backward"):
                torch.autograd.grad(gx.square().sum(), x)
        else:
            (ggx,) = torch.autograd.grad(gx.square().sum(), x)
            assert ggx.norm() > 0


# -- state dicts that carry the certificate's settings ----------------------------------------

def test_load_across_alpha_keeps_the_guarantee():
    torch.manual_seed(0)
    src = ModularRNN(3, (4, 8), topology="gw", alpha=0.5)
    torch.manual_seed(0)
    same_areas_at_09 = ModularRNN(3, (4, 8), topology="gw", alpha=0.9)
    torch.manual_seed(1)
    dst = ModularRNN(3, (4, 8), topology="gw", alpha=0.9)
    budget_09 = float(same_areas_at_09.feedback_budget)
    assert float(src.feedback_budget) > budget_09  # a smaller step allows stronger feedback
    dst.load_state_dict(src.state_dict())
    assert float(dst.feedback_budget) == budget_09  # recomputed from the loaded areas at alpha 0.9
    assert torch.equal(dst.W, src.W) and torch.equal(dst.B, src.B)
    assert dst.certify().discrete_holds
    opt = torch.optim.Adam(dst.parameters(), lr=0.05)
    x = torch.randn(16, 6, 3)
    for _ in range(30):
        loss = dst(x)[0].square().mean() * -1.0  # push the feedback up
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert dst.certify().discrete_holds


def test_state_dict_round_trip_is_exact():
    torch.manual_seed(0)
    a = ModularRNN(3, (4, 8), topology="gw", alpha=0.5)
    torch.manual_seed(5)
    b = ModularRNN(3, (4, 8), topology="gw", alpha=0.5)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.feedback_budget, b.feedback_budget)
    x = torch.randn(2, 5, 3)
    assert torch.equal(a(x)[0], b(x)[0])


def test_load_that_voids_the_guarantee_is_refused():
    torch.manual_seed(0)
    src = ModularRNN(3, (2, 4), topology="gw", alpha=0.5, gamma=0.999, guarantee=False)
    torch.manual_seed(0)
    dst = ModularRNN(3, (2, 4), topology="gw", alpha=0.5, gamma=0.9, guarantee=True)
    with torch.no_grad():
        src.W.mul_(3.0)  # areas that no longer contract leave no budget
    with pytest.raises(ValueError, match="guarantee=True cannot hold"):
        dst.load_state_dict(src.state_dict())


# -- non-finite weights ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["W", "M", "B", "feedback_budget"])
def test_certify_answers_on_non_finite_weights(name):
    torch.manual_seed(0)
    net = ModularRNN(3, (3, 4), topology="all", alpha=0.5)
    with torch.no_grad():
        getattr(net, name).view(-1)[0] = float("nan")
    cert = net.certify()
    assert not cert.holds and not cert.discrete_holds
    assert "non-finite" in cert.reason and "FAILS" in str(cert)
    with pytest.raises(ValueError, match=f"weights .*{name}.* NaN or inf"):
        net(torch.randn(2, 5, 3))


def test_nan_in_the_input_stays_in_its_row():
    torch.manual_seed(0)
    net = ModularRNN(3, (3, 4), topology="all", alpha=0.5)
    x = torch.randn(3, 5, 3)
    x[1, 2, 0] = float("nan")
    out, _ = net(x)
    assert out[1, 2:].isnan().any() and out[[0, 2]].isfinite().all()


# -- ensembles of any size ---------------------------------------------------------------------

@pytest.mark.parametrize("hidden,features", [(65, 3), (3, 65), (65, 65)])
def test_ensemble_of_any_size_trains(hidden, features):
    from rnnofrnns import RNNEnsemble

    ens = RNNEnsemble(2, num_features=features, hidden_size=hidden, variant="relu_readout", seed=0,
                      dtype=torch.float64)
    x, y = ens.sample_batch(3, 4)
    loss = ens.training_loss(x, y)
    grads = torch.autograd.grad(loss, list(ens.parameters()))
    ref = ens.loss(ens(x), y)
    ref_grads = torch.autograd.grad(ref, list(ens.parameters()))
    torch.testing.assert_close(loss, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


# -- data --------------------------------------------------------------------------------------

def test_bad_labels_images_and_pixels_are_rejected_naming_the_file(tmp_path):
    import numpy as np

    from rnnofrnns.experiments.training import data as rdata
    from test_training import fake_mnist, write_idx

    fake_mnist(str(tmp_path))
    labels = np.arange(30) % 10
    labels[7] = 200
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), labels, 2049)
    with pytest.raises(rdata.DataError, match=r"train-labels-idx1-ubyte: label 200 of example 7 is outside \[0, 10\)"):
        rdata.load_task("smnist", str(tmp_path))
    fake_mnist(str(tmp_path))
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte"), np.zeros((12, 27, 29)), 2051)
    with pytest.raises(rdata.DataError, match=r"t10k-images-idx3-ubyte holds images of \[27, 29\] pixels"):
        rdata.load_task("smnist", str(tmp_path))
    with pytest.raises(rdata.DataError, match="f.csv: label 2.5 of example 1 is not an integer"):
        rdata.check_labels(np.array([1.0, 2.5]), "f.csv")
    x = np.zeros((3, 4), dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(rdata.DataError, match="f.csv: example 2 holds NaN"):
        rdata.check_inputs(x, "f.csv")


# -- what a torch.nn user expects --------------------------------------------------------------

@pytest.mark.parametrize("batch_first", [True, False])
def test_unbatched_input_and_empty_batch(batch_first):
    torch.manual_seed(0)
    net = ModularRNN(3, (2, 4), topology="gw", batch_first=batch_first, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)  # unbatched [T, input_size]
    out, h_n = net(x)
    assert out.shape == (5, 8) and h_n.shape == (1, 8)
    batched = x.unsqueeze(0 if batch_first else 1)
    ref_out, ref_h = net(batched)
    torch.testing.assert_close(out, ref_out.squeeze(0 if batch_first else 1), rtol=0, atol=0)
    torch.testing.assert_close(h_n, ref_h[:, 0], rtol=0, atol=0)
    h0 = torch.randn(8, dtype=torch.float64)
    torch.testing.assert_close(net(x, h0)[0], net(batched, h0.view(1, 1, 8))[0].squeeze(0 if batch_first else 1))
    empty = torch.randn(0, 5, 3, dtype=torch.float64) if batch_first else torch.randn(5, 0, 3, dtype=torch.float64)
    out, h_n = net(empty)
    assert out.shape == ((0, 5, 8) if batch_first else (5, 0, 8)) and h_n.shape == (1, 0, 8)
    out.sum().backward()  # an empty batch still trains: zero gradients
    assert net.input_weight.grad is not None and not net.input_weight.grad.any()


def test_wrong_h0_is_reported_as_given():
    net = ModularRNN(3, (2, 4), topology="gw")
    with pytest.raises(ValueError, match=r"h0 must be .*got \(1, 4, 32\)"):
        net(torch.randn(2, 5, 3), torch.randn(1, 4, 32))


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


# -- OpenMP's wait policy on a busy machine ---------------------------------------------------

def test_the_cli_sleeps_instead_of_spinning_on_a_busy_machine(monkeypatch):
    import sys

    from rnnofrnns import _openmp

    assert _openmp.busy_cores(0.01) is None or _openmp.busy_cores(0.01) >= 0
    monkeypatch.setattr(sys, "argv", ["-m"])
    monkeypatch.delitem(sys.modules, "torch")  # as before `python -m rnnofrnns` imports it
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(_openmp, "busy_cores", lambda window=0.1: 0.0)
    _openmp.choose_wait_policy_for_the_cli()
    assert "OMP_WAIT_POLICY" not in __import__("os").environ  # a quiet machine keeps spinning threads
    monkeypatch.setattr(_openmp, "busy_cores", lambda window=0.1: 1.0)
    _openmp.choose_wait_policy_for_the_cli()
    assert __import__("os").environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice is kept
    _openmp.choose_wait_policy_for_the_cli()
    assert __import__("os").environ["OMP_WAIT_POLICY"] == "ACTIVE"


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
