"""Contraction certificates: they hold for correct constructions and fail for broken ones."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from rnnofrnns import ModularRNN, stability, topology
from rnnofrnns.ops.modular_rnn.reference import dense_feedback
from rnnofrnns.stability import (
    certify,
    diagonal_metric,
    negative_feedback,
    perron_root,
    sparse_contracting_block,
)


def small_model(**kw):
    args = dict(input_size=3, area_sizes=(4, 8), topology="all", feedback_step="euler",
                generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    args.update(kw)
    return ModularRNN(**args)


# --- areas and metrics ------------------------------------------------------------------

@pytest.mark.parametrize("n,density", [(32, 0.1), (32, 0.5), (7, 1.0), (2, 1.0)])
def test_sparse_contracting_block(n, density):
    g = torch.Generator().manual_seed(1)
    W = sparse_contracting_block(n, density, scale=2.0, gamma=0.8, generator=g, dtype=torch.float64)
    assert W.shape == (n, n)
    assert torch.all(W.diagonal() == 0)
    assert W.abs().max() > 0
    assert perron_root(W.abs()) == pytest.approx(0.8, rel=1e-9)
    W2 = sparse_contracting_block(n, density, scale=2.0, gamma=0.8, generator=torch.Generator().manual_seed(1),
                                  dtype=torch.float64)
    assert torch.equal(W, W2)


def test_sparse_contracting_block_single_unit_has_no_cycle():
    W = sparse_contracting_block(1, 1.0)
    assert torch.equal(W, torch.zeros(1, 1))


@pytest.mark.parametrize("kw,match", [
    (dict(gamma=1.0), "gamma"), (dict(gamma=1.5), "gamma"), (dict(gamma=0.0), "gamma"),
    (dict(density=0.0), "density"), (dict(density=1.5), "density"), (dict(n=0), "n must"),
    (dict(scale=-1.0), "scale"),
])
def test_sparse_contracting_block_errors(kw, match):
    args = dict(n=8, density=0.5, scale=1.0, gamma=0.9)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        sparse_contracting_block(**args)


@pytest.mark.parametrize("method", ["closed_form", "perron"])
def test_diagonal_metric_is_checked_and_contracts(method):
    W = sparse_contracting_block(32, 0.2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    p, rate = diagonal_metric(W, method)
    assert (p > 0).all() and p.min() == pytest.approx(1.0)
    A = W.abs() - torch.eye(32, dtype=torch.float64)
    P = torch.diag(p)
    assert torch.linalg.eigvalsh(P @ A + A.T @ P).max() < 0
    assert 0 < rate <= 1 - 0.9 + 1e-9  # the best possible rate is 1 - rho(|W|)
    # every Jacobian -I + W D (D in [0, 1]) contracts in P at that rate
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        D = torch.diag(torch.rand(32, generator=g, dtype=torch.float64))
        J = -torch.eye(32, dtype=torch.float64) + W @ D
        s = p.rsqrt()
        sym = s[:, None] * (0.5 * (P @ J + J.T @ P)) * s[None, :]
        assert torch.linalg.eigvalsh(sym).max() <= -rate + 1e-9


def test_diagonal_metric_refuses_non_hurwitz():
    W = sparse_contracting_block(16, 0.3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with pytest.raises(ValueError, match="not Hurwitz"):
        diagonal_metric(W * 1.2)  # rho(|W|) = 1.08


# --- negative feedback --------------------------------------------------------------------

@given(seed=st.integers(0, 10_000), p=st.integers(2, 5), n=st.integers(1, 6), big=st.floats(1e-3, 1e3))
def test_negative_feedback_is_skew_in_M(seed, p, n, big):
    g = torch.Generator().manual_seed(seed)
    pairs = topology.all_to_all(p)
    B = big * torch.randn(len(pairs), n, n, generator=g, dtype=torch.float64)
    metric = torch.exp(2 * torch.randn(p, n, generator=g, dtype=torch.float64))  # far from scalar
    L = negative_feedback(B, pairs, metric)
    Ld = dense_feedback(L, topology.feedback_index(pairs), p)
    m = metric.reshape(-1)
    skew = m[:, None] * Ld + (m[:, None] * Ld).T
    assert skew.abs().max() <= 1e-12 * (m[:, None] * Ld).abs().max()


def wrong_way_feedback(B, pairs, metric):
    """The 2023 code's B - M B^T M^{-1}: skew in M^{-1}, not in M."""
    m_tgt, m_src = metric[pairs[:, 0]], metric[pairs[:, 1]]
    return torch.cat([B, -B.transpose(1, 2) * (m_src[:, :, None] / m_tgt[:, None, :])])


# --- certify ------------------------------------------------------------------------------

def test_certificate_holds_for_the_model():
    cert = small_model().certify()
    assert cert.holds and cert.discrete_holds
    assert cert.rate > 0 and cert.step_factor < 1 and cert.worst_skew < 1e-12


def test_certificate_refuses_a_scaled_up_area():
    model = small_model()
    with torch.no_grad():
        model.W[1] *= 1.5  # rho(|W_1|) = 1.35: no longer contracting in its metric
    cert = model.certify()
    assert not cert.holds and cert.rate < 0
    assert cert.area_rates[1] < 0 and (cert.area_rates[[0, 2, 3]] > 0).all()


def test_certificate_refuses_feedback_formed_the_wrong_way_round():
    model = small_model()
    with torch.no_grad():
        model.B.normal_(0, 0.3, generator=torch.Generator().manual_seed(5))
    inputs = model.certify_inputs()
    assert certify(inputs).holds
    bad = dict(inputs, L_blocks=wrong_way_feedback(model.B * model.feedback_mask, model.pairs, model.M))
    cert = certify(bad)
    assert not cert.holds
    assert cert.worst_skew > 1e-3


def test_certificate_refuses_the_elementwise_metric_bug():
    """The published metric helper always returned M = 0.5 I; many areas with rho(|W|) < 1
    do not contract in that metric, and the certificate says so."""
    model = small_model(area_sizes=(4, 32), density=0.1)
    assert model.certify().holds
    with torch.no_grad():
        model.M.fill_(0.5)
        model.B.zero_()
    cert = model.certify()
    assert not cert.holds and cert.rate < 0


def test_discrete_check_refuses_alpha_one_with_large_feedback():
    model = small_model(alpha=1.0, guarantee=False)
    with torch.no_grad():
        model.B.mul_(100.0)
    cert = model.certify()
    assert cert.holds  # the continuous-time certificate does not care about the size of B
    assert not cert.discrete_holds and cert.step_factor > 1
    assert cert.max_alpha < 1.0


def test_discrete_bound_is_exact_for_pure_skew_feedback():
    """W = 0: the Euler map is (1-a) I + a S with S skew: ||G|| = sqrt((1-a)^2 + a^2 omega^2)."""
    for a, omega in [(0.1, 4.0), (0.5, 1.2), (1.0, 0.5)]:
        bound = stability.discrete_step_bound(a, 1.0, 0.0, omega)
        assert bound == pytest.approx(math.sqrt((1 - a) ** 2 + a ** 2 * omega ** 2))


@pytest.mark.parametrize("form", ["hopfield", "rate"])
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_certificate_matches_the_jacobian_of_the_models_own_step(form, nonlinearity):
    """For random states, sym(M J) (J the Jacobian of the continuous vector field, from
    torch.func.jacrev of the model's step) has eigenvalues below -rate, and the Jacobian of
    the step itself has M-norm below step_factor."""
    model = small_model(form=form, nonlinearity=nonlinearity)
    with torch.no_grad():
        model.B.normal_(0, 0.5, generator=torch.Generator().manual_seed(6))
    cert = model.certify()
    assert cert.holds and cert.discrete_holds
    H = model.hidden_size
    m = model.metric()
    g = torch.Generator().manual_seed(7)
    for _ in range(10):
        x = torch.randn(1, 3, generator=g, dtype=torch.float64)
        h = 2 * torch.randn(1, H, generator=g, dtype=torch.float64)
        G = torch.func.jacrev(lambda hh: model.step(x, hh[None])[0])(h[0])
        J = (G - torch.eye(H, dtype=torch.float64)) / model.alpha
        MJ = m[:, None] * J
        sym = 0.5 * (MJ + MJ.T)
        assert torch.linalg.eigvalsh(sym).max() < -cert.rate + 1e-9
        s = m.rsqrt()
        assert torch.linalg.eigvalsh(s[:, None] * sym * s[None, :]).max() < -cert.rate + 1e-9
        Gm = m.sqrt()[:, None] * G * s[None, :]
        assert torch.linalg.matrix_norm(Gm, ord=2) <= cert.step_factor + 1e-9


# --- training keeps the certificates ------------------------------------------------------

def train(model, steps, lr, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 20, model.input_size, generator=g, dtype=torch.float64)
        y = 3 * torch.randn(16, model.hidden_size, generator=g, dtype=torch.float64)
        out, h_n = model(x)
        loss = (h_n[0] - y).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_certificates_hold_after_training_with_a_large_learning_rate():
    model = small_model()
    c0 = model.certify()
    assert c0.holds and c0.discrete_holds
    B0 = model.B.detach().clone()
    losses = train(model, 200, lr=0.1)
    assert all(math.isfinite(v) for v in losses)
    assert (model.B - B0).abs().max() > 1.0  # the feedback parameters did move a lot
    c1 = model.certify()
    assert c1.holds and c1.discrete_holds


def test_guarantee_mode_keeps_alpha_one_contracting_and_without_it_it_is_uncertified():
    guarded = small_model(alpha=1.0, guarantee=True)
    losses = train(guarded, 300, lr=0.05)
    assert all(math.isfinite(v) and v < 1e3 for v in losses)
    cert = guarded.certify()
    assert cert.holds and cert.discrete_holds and cert.step_factor < 1

    free = small_model(alpha=1.0, guarantee=False)
    train(free, 300, lr=0.05)
    cert = free.certify()
    assert cert.holds  # still skew in M: the continuous-time certificate cannot see the problem
    assert not cert.discrete_holds and cert.step_factor > 1


@given(seed=st.integers(0, 10_000), big=st.floats(1e-2, 1e4), alpha=st.sampled_from([0.1, 0.5, 1.0]))
def test_guarantee_holds_for_any_feedback_parameters(seed, big, alpha):
    model = small_model(alpha=alpha, topology="gw")
    with torch.no_grad():
        model.B.normal_(0, big, generator=torch.Generator().manual_seed(seed))
    cert = model.certify()
    assert cert.holds and cert.discrete_holds


def test_states_stay_bounded_and_trajectories_converge_at_the_certified_rate():
    model = small_model(form="hopfield", nonlinearity="relu", alpha=0.5, backend="cpu")
    with torch.no_grad():
        model.B.normal_(0, 1.0, generator=torch.Generator().manual_seed(8))
    cert = model.certify()
    assert cert.discrete_holds
    g = torch.Generator().manual_seed(9)
    T = 20_000
    x = torch.randn(1, T, 3, generator=g, dtype=torch.float64).expand(2, T, 3)
    h0 = 10 * torch.randn(2, model.hidden_size, generator=g, dtype=torch.float64)
    with torch.no_grad():
        out, _ = model(x, h0)
    assert torch.isfinite(out).all()
    m = model.metric()
    dist = ((out[0] - out[1]).square() * m).sum(-1).sqrt()          # ||h_t - h'_t||_M, t = 1..T
    d0 = ((h0[0] - h0[1]).square() * m).sum().sqrt()
    t = torch.arange(1, T + 1, dtype=torch.float64)
    bound = d0 * cert.step_factor ** t
    assert torch.all(dist <= bound * (1 + 1e-9) + 1e-12)
    assert dist[-1] < 1e-6 * d0
