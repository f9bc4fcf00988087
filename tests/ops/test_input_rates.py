"""Input-driven timescales in modular_rnn: the areas' rates given per step, row and area
([T, B, p]) and the Cayley map's own constant rates (feedback_alpha). Every fused backend
against the dense reference (outputs and every gradient, both rates' included), gradcheck,
float32 at a realistic size, and the argument errors."""
from __future__ import annotations

import pytest
import torch

from rnnofrnns.ops import modular_rnn
from problems import FUSED_BACKENDS, all_to_all, device_for, gradcheck_steps, make_problem, star

TOPOLOGIES = {
    "star": star(5),
    "all": all_to_all(5),
    "random": [(1, 0), (0, 1), (3, 2), (4, 1), (1, 4)],
    "none": [],
}


def step_rates(T: int, B: int, p: int, device="cpu", dtype=torch.float64, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = 0.05 + 0.9 * torch.rand(T, B, p, generator=g, dtype=torch.float64)
    return a.to(device=device, dtype=dtype).requires_grad_(True)


def feedback_rates(p: int, device="cpu", dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return (0.2 + 0.7 * torch.rand(p, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype).requires_grad_(True)


def outputs_and_grads(prob, backend, alpha, feedback_alpha=None, **kw):
    out = modular_rnn(*prob.args(), alpha=alpha, feedback_alpha=feedback_alpha, backend=backend, **kw)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out)
    inputs = prob.grad_inputs() + [alpha] + ([feedback_alpha] if feedback_alpha is not None else [])
    # without feedback blocks the fused backends never read feedback_alpha: its gradient is zero
    grads = torch.autograd.grad(out, inputs, go, allow_unused=True)
    return [out] + [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def assert_agree(prob, backend, alpha, feedback_alpha=None, rtol=1e-10, atol=1e-12, **kw):
    got = outputs_and_grads(prob, backend, alpha, feedback_alpha, **kw)
    ref = outputs_and_grads(prob, "reference", alpha, feedback_alpha, **kw)
    names = ["states", "drive", "W", "L_blocks", "h0", "alpha", "feedback_alpha"]
    assert len(got) == len(ref) == 6 + (feedback_alpha is not None)
    for name, a, b in zip(names, got, ref):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("form,nonlinearity", [("rate", "tanh"), ("hopfield", "relu"), ("hopfield", "tanh")])
@pytest.mark.parametrize("feedback_step", ["euler", "cayley"])
def test_rates_per_step_match_reference_float64(backend, topology, form, nonlinearity, feedback_step):
    dev = device_for(backend)
    prob = make_problem(5, 6, 5, 3, TOPOLOGIES[topology], device=dev, scale=2.0 if feedback_step == "cayley" else 0.9)
    fa = feedback_rates(5, dev) if feedback_step == "cayley" else None
    assert_agree(prob, backend, step_rates(5, 6, 5, dev), fa, form=form, nonlinearity=nonlinearity,
                 feedback_step=feedback_step)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize(
    "T,B,p,n,pairs",
    [
        (1, 1, 2, 5, [(0, 1), (1, 0)]),
        (3, 17, 4, 7, star(4)),           # batch not a multiple of any tile, n = 7
        (2, 3, 3, 20, [(2, 0), (0, 2), (2, 1)]),
        (4, 2, 3, 1, all_to_all(3)),      # one unit per area, dense map
    ],
)
def test_rates_per_step_odd_sizes(backend, T, B, p, n, pairs):
    dev = device_for(backend)
    prob = make_problem(T, B, p, n, pairs, device=dev, scale=1.5)
    assert_agree(prob, backend, step_rates(T, B, p, dev), feedback_rates(p, dev), form="rate", nonlinearity="tanh",
                 feedback_step="cayley")
    assert_agree(prob, backend, step_rates(T, B, p, dev), None, form="hopfield", nonlinearity="relu",
                 feedback_step="euler")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("feedback_step", ["euler", "cayley"])
def test_rates_per_step_gradcheck_float64(backend, feedback_step):
    dev = device_for(backend)
    T, B = gradcheck_steps(backend)
    prob = make_problem(T, B, 3, 3, star(3), device=dev, scale=1.5)
    a = step_rates(T, B, 3, dev)
    fa = feedback_rates(3, dev) if feedback_step == "cayley" else None

    def f(drive, W, L, h0, a, *rest):
        return modular_rnn(drive, W, L, prob.L_index, h0, alpha=a, feedback_alpha=rest[0] if rest else None,
                           form="hopfield", nonlinearity="tanh", feedback_step=feedback_step, backend=backend)

    inputs = (prob.drive, prob.W, prob.L_blocks, prob.h0, a) + ((fa,) if fa is not None else ())
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("feedback_step", ["euler", "cayley"])
def test_constant_rates_per_step_are_the_per_area_rates(backend, feedback_step):
    """[T, B, p] rates that repeat one [p] vector run the map of the [p] rates."""
    dev = device_for(backend)
    prob = make_problem(4, 3, 5, 4, star(5), device=dev, requires_grad=False)
    a = torch.tensor([0.2, 0.5, 0.9, 0.35, 0.6], dtype=torch.float64, device=dev)
    per_step = a.expand(4, 3, 5).contiguous()
    fa = a if feedback_step == "cayley" else None
    kw = dict(form="rate", nonlinearity="tanh", feedback_step=feedback_step, backend=backend)
    torch.testing.assert_close(modular_rnn(*prob.args(), alpha=per_step, feedback_alpha=fa, **kw),
                               modular_rnn(*prob.args(), alpha=a, **kw), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("topology", ["star", "all"])
@pytest.mark.parametrize("form,nonlinearity", [("rate", "tanh"), ("hopfield", "relu")])
def test_rates_per_step_float32_realistic_cpu(topology, form, nonlinearity):
    pairs = star(8) if topology == "star" else all_to_all(8)
    prob64 = make_problem(60, 37, 8, 20, pairs, scale=1.5)
    a64, fa64 = step_rates(60, 37, 8), feedback_rates(8)
    ref = outputs_and_grads(prob64, "reference", a64, fa64, form=form, nonlinearity=nonlinearity, feedback_step="cayley")
    prob32 = make_problem(60, 37, 8, 20, pairs, dtype=torch.float32, scale=1.5)
    got = outputs_and_grads(prob32, "cpu", step_rates(60, 37, 8, dtype=torch.float32),
                            feedback_rates(8, dtype=torch.float32), form=form, nonlinearity=nonlinearity,
                            feedback_step="cayley")
    for name, g, r in zip(["states", "drive", "W", "L_blocks", "h0", "alpha", "feedback_alpha"], got, ref):
        scale = float(r.detach().abs().max())
        torch.testing.assert_close(g.double(), r, rtol=2e-3, atol=2e-4 * max(scale, 1.0), msg=lambda m: f"{name}: {m}")


def test_rates_per_step_float32_triton():
    dev = device_for("triton")
    prob = make_problem(6, 5, 4, 10, star(4), dtype=torch.float32, device=dev, scale=1.2)
    got = outputs_and_grads(prob, "triton", step_rates(6, 5, 4, dev, torch.float32), feedback_rates(4, dev, torch.float32),
                            form="rate", nonlinearity="tanh", feedback_step="cayley")
    ref = outputs_and_grads(prob, "reference", step_rates(6, 5, 4, dev, torch.float32),
                            feedback_rates(4, dev, torch.float32), form="rate", nonlinearity="tanh",
                            feedback_step="cayley")
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_rates_per_step_cpu_is_bitwise_deterministic_across_thread_counts():
    prob = make_problem(20, 70, 6, 16, star(6), dtype=torch.float32, scale=1.5)
    a, fa = step_rates(20, 70, 6, dtype=torch.float32), feedback_rates(6, dtype=torch.float32)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(outputs_and_grads(prob, "cpu", a, fa, form="rate", nonlinearity="tanh",
                                             feedback_step="cayley"))
    finally:
        torch.set_num_threads(before)
    for x, y in zip(*results):
        assert torch.equal(x, y)


@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
@pytest.mark.parametrize(
    "alpha,feedback_alpha,step,match",
    [
        ("per_step", None, "cayley", r"alpha per step \[T, B, p\] with the cayley step needs feedback_alpha"),
        (0.5, 0.5, "euler", r"feedback_alpha sets the rates of the cayley step's map"),
        ("per_step_fa", "per_step", "cayley", r"feedback_alpha must be a number or p per-area values"),
        ("wrong_shape", None, "euler", r"alpha must be .* or \[T, B, p\] = \[3, 2, 3\] values per step, got a tensor "
                                       r"of shape \(3, 3, 3\)"),
        ("zero", None, "euler", r"alpha must lie in \(0, 1\], got 1 values outside"),
        (0.5, "above_one", "cayley", r"feedback_alpha must lie in \(0, 1\]"),
    ],
)
def test_bad_rates(backend, alpha, feedback_alpha, step, match):
    prob = make_problem(3, 2, 3, 3, star(3), requires_grad=False)
    good = torch.full((3, 2, 3), 0.5, dtype=torch.float64)
    zero = good.clone()
    zero[1, 0, 2] = 0.0
    values = {
        "per_step": good, "per_step_fa": good, "wrong_shape": torch.full((3, 3, 3), 0.5, dtype=torch.float64),
        "zero": zero,
        "above_one": torch.tensor([0.5, 1.5, 0.5], dtype=torch.float64),
    }
    with pytest.raises(ValueError, match=match):
        modular_rnn(*prob.args(), alpha=values.get(alpha, alpha), feedback_alpha=values.get(feedback_alpha, feedback_alpha),
                    feedback_step=step, backend=backend)
