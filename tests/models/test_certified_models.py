"""The certified models' new parts: the cayley feedback step, SVD Combo Net areas and per-area
(learned) timescales. The certificate is checked against the Jacobian of the model's own step."""
from __future__ import annotations

import pytest
import torch

from rnnofrnns import GlobalWorkspaceNet, ModularRNN, SparseComboNet, SVDComboNet


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def step_norm_in_certificate_metric(rnn: ModularRNN, x: torch.Tensor, h: torch.Tensor) -> float:
    """||N^{1/2} J N^{-1/2}||_2 of the Jacobian J of one step at (x, h), by jacrev of rnn.step.
    N = M (one alpha) or M A^{-1} (per-area alphas), the metric the certificate is stated in."""
    J = torch.func.jacrev(lambda hh: rnn.step(x, hh[None])[0])(h)
    cert = rnn.certify()
    m = rnn.metric().detach().double()
    if cert.alphas is not None:
        m = m / rnn.area_alpha().detach().double().repeat_interleave(rnn.area_size)[rnn.unit_index]
    X = m.sqrt()[:, None] * J.detach().double() * m.rsqrt()[None, :]
    return float(torch.linalg.matrix_norm(X, ord=2))


CONFIGS = {
    "sparse-cayley": dict(feedback_step="cayley", areas="sparse", learn_timescales=False, input_timescales=False),
    "svd-cayley": dict(areas="svd", feedback_step="cayley", learn_timescales=False, input_timescales=False),
    "default": dict(),  # svd areas, cayley step, learned and input-driven timescales
    "svd-cayley-timescales": dict(areas="svd", feedback_step="cayley", learn_timescales=True,
                                  alpha=[0.1, 0.3, 0.6, 0.2, 0.05]),
    "svd-cayley-input-timescales": dict(areas="svd", feedback_step="cayley", learn_timescales=True,
                                        input_timescales=True, alpha=[0.1, 0.3, 0.6, 0.2, 0.05]),
    "sparse-cayley-input-timescales": dict(feedback_step="cayley", input_timescales=True, alpha_min=0.1),
    "svd-euler": dict(areas="svd", feedback_step="euler"),
    "sparse-euler-per-area-uncertified": dict(alpha=[0.2, 0.4, 0.6, 0.8, 0.3], guarantee=False),
}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("form,nonlinearity", [("hopfield", "relu"), ("rate", "tanh")])
def test_certificate_bounds_the_jacobian_of_the_step(name, form, nonlinearity):
    kw = dict(CONFIGS[name])
    kw.setdefault("alpha", 0.5)
    rnn = ModularRNN(3, (5, 4), topology="all", form=form, nonlinearity=nonlinearity, generator=gen(),
                     dtype=torch.float64, **kw)
    with torch.no_grad():  # strong feedback: the cayley step is certified whatever its strength
        rnn.B.mul_(30.0 if rnn.feedback_step == "cayley" else 1.0)
        if rnn.input_timescales:  # rates that move over their whole range with the input
            rnn.rate_gate_weight.copy_(3.0 * torch.randn(rnn.rate_gate_weight.shape, generator=gen(2),
                                                         dtype=torch.float64))
    cert = rnn.certify()
    assert cert.feedback_step == rnn.feedback_step
    if "uncertified" not in name:
        assert cert.holds and cert.discrete_holds, cert
    g = gen(1)
    for _ in range(5):
        x, h = 2 * torch.randn(1, 3, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
        norm = step_norm_in_certificate_metric(rnn, x, h)
        assert norm <= cert.step_factor + 1e-9, (norm, cert)


def test_cayley_certificate_does_not_depend_on_the_feedback_strength():
    rnn = ModularRNN(2, (4, 6), topology="gw", feedback_step="cayley", alpha=0.3, generator=gen(), dtype=torch.float64)
    before = rnn.certify()
    with torch.no_grad():
        rnn.B.mul_(1000.0)
    after = rnn.certify()
    assert after.discrete_holds and after.omega > 100 * before.omega
    assert after.step_factor == pytest.approx(before.step_factor, abs=1e-12)
    # no rescaling under the cayley step: the blocks in use are the raw ones
    torch.testing.assert_close(rnn.feedback_blocks(), rnn.raw_feedback_blocks())


def test_euler_guarantee_still_rescales():
    rnn = ModularRNN(2, (4, 6), topology="gw", alpha=0.5, feedback_step="euler", generator=gen(), dtype=torch.float64)
    with torch.no_grad():
        rnn.B.mul_(1000.0)
    assert rnn.certify().discrete_holds
    assert rnn.feedback_blocks().abs().max() < rnn.raw_feedback_blocks().abs().max()


def test_svd_areas_contract_by_construction():
    rnn = ModularRNN(2, (6, 5), areas="svd", sigma_max=0.9, generator=gen(), dtype=torch.float64)
    with torch.no_grad():  # whatever the parameters become
        for prm in (rnn.area_rotation_u, rnn.area_rotation_v, rnn.area_singular_logit, rnn.area_log_metric):
            prm.copy_(5 * torch.randn(prm.shape, generator=gen(2), dtype=torch.float64))
    W, m = rnn.area_weights(), rnn.area_metric()
    for i in range(6):
        Wt = m[i].sqrt()[:, None] * W[i] * m[i].rsqrt()[None, :]
        assert torch.linalg.matrix_norm(Wt, ord=2) <= 0.9 + 1e-9
    cert = rnn.certify()
    assert cert.kappa <= 0.9 + 1e-9 and cert.rate >= 0.1 - 1e-9 and cert.holds


def test_svd_metric_is_used_by_the_feedback():
    """L = B - M^{-1} B^T M with the current (trained) M: skew in it."""
    rnn = ModularRNN(2, (3, 4), areas="svd", generator=gen(), dtype=torch.float64)
    with torch.no_grad():
        rnn.area_log_metric.normal_(generator=gen(3))
    cert = rnn.certify()
    assert cert.holds and cert.worst_skew < 1e-12


def test_new_parameters_get_gradients_and_backends_agree():
    kw = dict(areas="svd", feedback_step="cayley", learn_timescales=True, alpha=0.2, generator=gen(),
              dtype=torch.float64)
    cpu = GlobalWorkspaceNet(3, 4, num_areas=4, area_size=5, backend="cpu", **kw)
    ref = GlobalWorkspaceNet(3, 4, num_areas=4, area_size=5, backend="reference", **kw)
    ref.load_state_dict(cpu.state_dict())
    x = torch.randn(2, 9, 3, generator=gen(4), dtype=torch.float64)
    outs = []
    for model in (cpu, ref):
        y = model(x)
        grads = torch.autograd.grad(y.square().sum(), list(model.parameters()))
        outs.append((y, grads))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-12)
    names = [n for n, _ in cpu.named_parameters()]
    for name, a, b in zip(names, outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")
        assert a.abs().sum() > 0, name
    assert {"rnn.timescale_logit", "rnn.area_rotation_u", "rnn.area_log_metric"} <= set(names)


def test_learned_timescales_stay_in_range_and_start_at_alpha():
    rnn = ModularRNN(2, (3, 4), feedback_step="cayley", learn_timescales=True, alpha=[0.1, 0.2, 0.4],
                     alpha_max=0.5, generator=gen())
    torch.testing.assert_close(rnn.area_alpha(), torch.tensor([0.1, 0.2, 0.4]))
    with torch.no_grad():
        rnn.timescale_logit.fill_(50.0)
    assert float(rnn.area_alpha().detach().max()) <= 0.5


def test_state_dict_round_trip_of_the_new_models():
    a = SVDComboNet(3, 5, num_areas=3, area_size=4, learn_timescales=True, alpha=0.3, generator=gen(0))
    b = SVDComboNet(3, 5, num_areas=3, area_size=4, learn_timescales=True, alpha=0.3, generator=gen(1))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 6, 3, generator=gen(5))
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert a.certify().step_factor == b.certify().step_factor


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(alpha=[0.2, 0.3, 0.4], feedback_step="euler"), r"needs feedback_step='cayley'"),
        (dict(learn_timescales=True, feedback_step="euler"), r"needs feedback_step='cayley'"),
        (dict(feedback_step="rk4"), r"feedback_step must be one of \('euler', 'cayley'\), got 'rk4'"),
        (dict(areas="dense"), r"areas must be one of \('sparse', 'svd'\), got 'dense'"),
        (dict(areas="svd", sigma_max=1.0), r"sigma_max must be in \(0, 1\)"),
        (dict(alpha=[0.2, 0.3], feedback_step="cayley"), r"alpha must be a number or p = 3 per-area values, got 2"),
        (dict(alpha=[0.2, 0.0, 0.3], feedback_step="cayley"), r"alpha must be in \(0, 1\]"),
        (dict(learn_timescales=True, feedback_step="cayley", alpha=1.0), r"needs alpha below alpha_max"),
    ],
)
def test_bad_configurations(kw, match):
    with pytest.raises(ValueError, match=match):
        ModularRNN(2, (3, 4), **kw)


def test_svd_areas_need_equal_sizes():
    with pytest.raises(ValueError, match=r"areas='svd' needs areas of equal size, got area_sizes \[4, 4, 6\]"):
        GlobalWorkspaceNet(2, 3, num_areas=3, area_size=4, workspace_size=6, areas="svd")
    with pytest.raises(ValueError, match="SVDComboNet has areas='svd'"):
        SVDComboNet(2, 3, areas="sparse")
    assert isinstance(SparseComboNet(2, 3, num_areas=3, area_size=4, areas="svd"), SparseComboNet)


MODEL_KINDS = {
    **{f"scn-{k}": (lambda kw: SparseComboNet(3, 4, num_areas=5, area_size=4, generator=gen(), **kw), v)
       for k, v in CONFIGS.items()},
    "scn-sparse-euler": (lambda kw: SparseComboNet(3, 4, num_areas=5, area_size=4, generator=gen(), **kw), {}),
    "scn-euler-feedback-sparsity": (lambda kw: SparseComboNet(3, 4, num_areas=5, area_size=4, generator=gen(),
                                                              feedback_sparsity=0.5, **kw), {}),
    "gw-default": (lambda kw: GlobalWorkspaceNet(3, 4, num_areas=4, area_size=4, generator=gen(), **kw),
                   dict(areas="svd", feedback_step="cayley", learn_timescales=True, alpha=0.3)),
    "gw-euler-wide-workspace": (lambda kw: GlobalWorkspaceNet(3, 4, num_areas=4, area_size=4, workspace_size=6,
                                                              feedback_step="euler", generator=gen(), **kw), {}),
}


def _tensors(model):
    return [(name, t) for name, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.is_floating_point() and t.numel()]


def own_name(name):
    return __import__("re").escape(name.removeprefix("rnn."))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_certify_never_raises_and_names_any_non_finite_tensor(kind):
    """A NaN or an infinity in any parameter or buffer (feedback_mask included) gives
    holds=False naming that tensor, and forward the one-line error naming it (never a
    LinAlgError or NaN outputs); certify() itself never raises."""
    build, kw = MODEL_KINDS[kind]
    names = [name for name, _ in _tensors(build(kw)) if name.startswith("rnn.")]  # the readout is not in the recurrence
    assert any("feedback_mask" in n for n in names) or "feedback_sparsity" not in kind
    for name in names:
        for bad in (float("nan"), float("inf"), float("-inf")):
            if name.endswith("feedback_budget") and bad == float("inf"):
                continue  # an infinite budget is a value: no budget needed
            model = build(kw)
            with torch.no_grad():
                dict(_tensors(model))[name].view(-1)[0] = bad
            cert = model.certify()
            assert not cert.holds and not cert.discrete_holds, (name, bad)
            with pytest.raises(ValueError, match=f"the weights .*{own_name(name)}.* hold NaN or inf values"):
                model(torch.zeros(2, 3, model.rnn.input_size if hasattr(model, "rnn") else model.input_size))
            own = name.removeprefix("rnn.")  # the classifiers' certificate is their rnn's
            assert own in cert.reason.split(" hold")[0].split(", ") and "non-finite" in cert.reason, (name, cert.reason)
            assert "FAILS" in str(cert)
    assert build(kw).certify().reason == ""  # the untouched model is not failed by the check
