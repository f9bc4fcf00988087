"""Nothing silent in the models: second derivatives, state dicts that carry the certificate's
settings, non-finite weights, ensembles of any size, unbatched input and wrong h0."""
from __future__ import annotations
import pytest
import torch
from rnnofrnns import GlobalWorkspaceNet, ModularRNN


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


def test_load_across_alpha_keeps_the_guarantee():
    torch.manual_seed(0)
    src = ModularRNN(3, (4, 8), topology="gw", alpha=0.5, feedback_step="euler")
    torch.manual_seed(0)
    same_areas_at_09 = ModularRNN(3, (4, 8), topology="gw", alpha=0.9, feedback_step="euler")
    torch.manual_seed(1)
    dst = ModularRNN(3, (4, 8), topology="gw", alpha=0.9, feedback_step="euler")
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
    a = ModularRNN(3, (4, 8), topology="gw", alpha=0.5, feedback_step="euler")
    torch.manual_seed(5)
    b = ModularRNN(3, (4, 8), topology="gw", alpha=0.5, feedback_step="euler")
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


@pytest.mark.parametrize("name", ["W", "M", "B", "feedback_budget"])
def test_certify_answers_on_non_finite_weights(name):  # (the sparse areas' W and M; svd's in test_certified_models)
    torch.manual_seed(0)
    net = ModularRNN(3, (3, 4), topology="all", alpha=0.5, feedback_step="euler")
    with torch.no_grad():
        getattr(net, name).view(-1)[0] = float("nan")
    cert = net.certify()
    assert not cert.holds and not cert.discrete_holds
    assert "non-finite" in cert.reason and "FAILS" in str(cert)
    with pytest.raises(ValueError, match=f"weights .*{name}.* NaN or inf"):
        net(torch.randn(2, 5, 3))


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
