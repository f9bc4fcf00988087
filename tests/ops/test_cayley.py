"""The Cayley feedback step and per-area alpha of modular_rnn: every fused backend against the
dense reference (outputs and all gradients, alpha's included), and the map's M-orthogonality."""
from __future__ import annotations

from typing import List, Tuple

import pytest
import torch

from rnnofrnns.ops import modular_rnn
from rnnofrnns.ops.modular_rnn.cayley import kernel_operands
from rnnofrnns.ops.modular_rnn.plan import FeedbackPlan, StarFactor, feedback_plan, star_hub
from rnnofrnns.ops.modular_rnn.reference import cayley_map, cayley_product, dense_feedback
from problems import FUSED_BACKENDS, all_to_all, device_for, gradcheck_steps, make_problem, star

TOPOLOGIES = {
    "star": star(5),
    "all": all_to_all(5),
    "random": [(1, 0), (0, 1), (3, 2), (4, 1), (1, 4)],
    "none": [],
}


def rates(p: int, device="cpu", seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.1 + 0.8 * torch.rand(p, generator=g, dtype=torch.float64)).to(device).requires_grad_(True)


def outputs_and_grads(prob, alpha, backend, **kw):
    out = modular_rnn(*prob.args(), alpha=alpha, backend=backend, **kw)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out)
    inputs = prob.grad_inputs() + ([alpha] if isinstance(alpha, torch.Tensor) else [])
    return [out] + list(torch.autograd.grad(out, inputs, go))


def assert_agree(prob, alpha, backend, rtol=1e-10, atol=1e-12, **kw):
    got = outputs_and_grads(prob, alpha, backend, **kw)
    ref = outputs_and_grads(prob, alpha, "reference", **kw)
    names = ["states", "drive", "W", "L_blocks", "h0", "alpha"]
    for name, a, b in zip(names, got, ref):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("form,nonlinearity", [("rate", "tanh"), ("hopfield", "relu"), ("rate", "identity")])
@pytest.mark.parametrize("per_area", [False, True])
def test_cayley_matches_reference_float64(backend, topology, form, nonlinearity, per_area):
    dev = device_for(backend)
    prob = make_problem(5, 6, 5, 3, TOPOLOGIES[topology], device=dev, scale=2.0)
    alpha = rates(5, dev) if per_area else 0.45
    assert_agree(prob, alpha, backend, form=form, nonlinearity=nonlinearity, feedback_step="cayley")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("topology", ["star", "random"])
@pytest.mark.parametrize("form", ["rate", "hopfield"])
def test_per_area_alpha_euler_float64(backend, topology, form):
    dev = device_for(backend)
    prob = make_problem(5, 6, 5, 3, TOPOLOGIES[topology], device=dev)
    assert_agree(prob, rates(5, dev), backend, form=form, nonlinearity="tanh", feedback_step="euler")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize(
    "T,B,p,n,pairs",
    [
        (1, 1, 2, 5, [(0, 1), (1, 0)]),   # p = 2: both areas touch every block, the hub is area 0
        (3, 17, 4, 7, star(4)),           # batch not a multiple of any tile, n = 7
        (2, 3, 3, 20, [(2, 0), (0, 2), (2, 1)]),  # a star with one one-way link, n above a SIMD width
        (4, 2, 3, 1, all_to_all(3)),      # one unit per area, dense map
    ],
)
def test_cayley_odd_sizes(backend, T, B, p, n, pairs):
    dev = device_for(backend)
    prob = make_problem(T, B, p, n, pairs, device=dev, scale=1.5)
    assert_agree(prob, rates(p, dev), backend, form="rate", nonlinearity="tanh", feedback_step="cayley")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_cayley_gradcheck_float64(backend):
    dev = device_for(backend)
    prob = make_problem(*gradcheck_steps(backend), 3, 3, star(3), device=dev, scale=2.0)
    idx = prob.L_index

    def f(drive, W, L, h0, alpha):
        return modular_rnn(drive, W, L, idx, h0, alpha=alpha, nonlinearity="tanh", form="hopfield",
                           feedback_step="cayley", backend=backend)

    assert torch.autograd.gradcheck(f, (prob.drive, prob.W, prob.L_blocks, prob.h0, rates(3, dev)))


@pytest.mark.parametrize("topology", ["star", "all", "pairs"])
def test_cayley_float32_realistic_cpu(topology):
    """p=16 areas of n=32 units, T=64, float32 against the float64 reference (pairs: 15 random
    pairs, a product of stars)."""
    pairs = {"star": star(16), "all": all_to_all(16), "pairs": random_pairs(16, 15, seed=0)}[topology]
    p32 = make_problem(64, 8, 16, 32, pairs, dtype=torch.float32, scale=3.0)
    p64 = make_problem(64, 8, 16, 32, pairs, dtype=torch.float64, scale=3.0)
    a32, a64 = rates(16).float().detach().requires_grad_(), rates(16)
    got = outputs_and_grads(p32, a32, "cpu", nonlinearity="relu", form="rate", feedback_step="cayley")
    ref = outputs_and_grads(p64, a64, "reference", nonlinearity="relu", form="rate", feedback_step="cayley")
    for name, a, b in zip(["states", "drive", "W", "L_blocks", "h0", "alpha"], got, ref):
        rel = ((a.detach().double() - b).abs().max() / b.abs().max()).item()
        assert rel < 2e-5, f"{name}: relative error {rel:.2e}"


def test_cayley_float32_triton():
    dev = device_for("triton")
    p32 = make_problem(3, 3, 16, 32, star(16), dtype=torch.float32, device=dev, scale=3.0)
    p64 = make_problem(3, 3, 16, 32, star(16), dtype=torch.float64, scale=3.0)
    got = outputs_and_grads(p32, 0.5, "triton", nonlinearity="tanh", form="hopfield", feedback_step="cayley")
    ref = outputs_and_grads(p64, 0.5, "reference", nonlinearity="tanh", form="hopfield", feedback_step="cayley")
    for name, a, b in zip(["states", "drive", "W", "L_blocks", "h0"], got, ref):
        rel = ((a.detach().cpu().double() - b).abs().max() / b.abs().max()).item()
        assert rel < 2e-5, f"{name}: relative error {rel:.2e}"


def test_operands_by_topology():
    a = torch.full((5,), 0.5, dtype=torch.float64)
    for topology, expected in [("star", "star"), ("all", "dense"), ("random", "star"), ("none", "euler")]:
        prob = make_problem(2, 2, 5, 3, TOPOLOGIES[topology])
        step, blocks, index, S_inv = kernel_operands(prob.L_blocks, prob.L_index, a, 5, "cayley")
        assert step == expected, topology
        if topology == "star":  # one star through area 4
            assert tuple(S_inv.shape) == (1, 3, 3) and blocks.shape == prob.L_blocks.shape
            assert index[:, 2:].tolist() == [[0, 4]] * 8
        if topology == "random":  # the star through area 1, then the link 3 -> 2 (hub 2)
            assert tuple(S_inv.shape) == (2, 3, 3)
            assert index[:, 2:].tolist() == [[0, 1], [0, 1], [1, 2], [0, 1], [0, 1]]
        if step == "dense":
            assert blocks.shape[0] == 25 and index.shape == (25, 2)
    assert star_hub(torch.tensor([[0, 1], [2, 3]]), 4) is None
    assert star_hub(torch.tensor([[2, 1], [0, 2], [2, 3]]), 4) == 2


@pytest.mark.parametrize("backend", list(FUSED_BACKENDS) + ["reference"])
@pytest.mark.parametrize("topology", list(TOPOLOGIES))
def test_a_feedback_plan_gives_the_same_states_and_gradients(topology, backend):
    """The plan made once from the index (what a model passes, so that compile never reads the
    index) runs the same map as the op's own reading of the index: bitwise."""
    prob = make_problem(4, 3, 5, 3, TOPOLOGIES[topology], device=device_for(backend))
    kw = dict(nonlinearity="tanh", form="hopfield", feedback_step="cayley")
    plan = feedback_plan(prob.L_index, 5, "cayley")
    with_plan = outputs_and_grads(prob, rates(5, prob.drive.device), backend, feedback_plan=plan, **kw)
    without = outputs_and_grads(prob, rates(5, prob.drive.device), backend, **kw)
    for a, b in zip(with_plan, without):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_plans_of_each_topology():
    assert feedback_plan(torch.tensor(star(5)), 5, "cayley") == FeedbackPlan(
        "star", 5, 8, "auto", (StarFactor(4, (0, 4, 1, 5, 2, 6, 3, 7), (0, 1, 2, 3), (4, 5, 6, 7)),))
    assert feedback_plan(torch.tensor(all_to_all(3)), 3, "cayley").step == "dense"
    assert feedback_plan(torch.tensor(star(5)), 5, "euler") == FeedbackPlan("euler", 5, 8)
    assert feedback_plan(torch.zeros(0, 2, dtype=torch.int64), 5, "cayley") == FeedbackPlan("euler", 5, 0)
    # a one-way star: no area is linked to the hub both ways, S = I
    assert feedback_plan(torch.tensor([[4, 0], [4, 1]]), 5, "cayley").stars == (StarFactor(4, (0, 1), (), ()),)
    with pytest.raises(ValueError, match=r"L_index\[1\] = \(4, 4\) lies on the diagonal"):
        feedback_plan(torch.tensor([[4, 0], [4, 4]]), 5, "cayley")


def test_the_cover_and_the_choice_of_form():
    """The greedy cover puts both blocks of a pair in one star, the busiest area first; "auto"
    picks the stars while k + 3m < p*p, "exact" never splits, "stars" and "dense" are forced."""
    ring = torch.tensor([(i, (i + 1) % 6) for i in range(6)] + [((i + 1) % 6, i) for i in range(6)])
    plan = feedback_plan(ring, 6, "cayley")
    assert plan.step == "star" and not plan.exact
    assert [s.hub for s in plan.stars] == [0, 2, 4]  # hubs 0, 2, 4 cover the ring's 6 links
    for s in plan.stars:  # every block touches its hub; a pair's two blocks in the same star
        pairs = [tuple(ring[r].tolist()) for r in s.blocks]
        assert all(s.hub in pair for pair in pairs)
        assert sorted(pairs) == sorted({(a, b) for a, b in pairs} | {(b, a) for a, b in pairs})
    assert sorted(r for s in plan.stars for r in s.blocks) == list(range(12))
    assert feedback_plan(ring, 6, "cayley", "exact").step == "dense"
    assert feedback_plan(ring, 6, "cayley", "dense").step == "dense"
    everyone = torch.tensor(all_to_all(6))
    assert feedback_plan(everyone, 6, "cayley").step == "dense"  # 30 + 3 * 5 > 36
    assert feedback_plan(everyone, 6, "cayley", "stars").step == "star"
    assert feedback_plan(torch.tensor(star(6)), 6, "cayley", "exact").step == "star"
    assert feedback_plan(torch.tensor(star(6)), 6, "cayley", "dense").step == "dense"
    with pytest.raises(ValueError, match=r"cayley_form must be one of \('auto', 'exact', 'stars', 'dense'\), "
                                         r"got 'pairs'"):
        feedback_plan(ring, 6, "cayley", "pairs")


def random_pairs(p: int, count: int, seed: int) -> List[Tuple[int, int]]:
    g = torch.Generator().manual_seed(seed)
    links = [(i, j) for i in range(p) for j in range(i + 1, p)]
    chosen = [links[int(i)] for i in torch.randperm(len(links), generator=g)[:count]]
    return [(i, j) for i, j in chosen] + [(j, i) for i, j in chosen]


@pytest.mark.parametrize("backend", list(FUSED_BACKENDS))
@pytest.mark.parametrize("form,nonlinearity", [("rate", "tanh"), ("hopfield", "relu")])
def test_a_product_of_many_stars_matches_its_dense_map_float64(backend, form, nonlinearity):
    """7 random pairs of 6 areas: several stars, some sharing a stage, against the dense
    reference of the same product (states and every gradient at 1e-10), odd n."""
    dev = device_for(backend)
    pairs = random_pairs(6, 7, seed=2)
    prob = make_problem(4, 5, 6, 3, pairs, device=dev, scale=2.0)
    plan = feedback_plan(prob.L_index, 6, "cayley", "stars")
    assert len(plan.stars) >= 3
    assert_agree(prob, rates(6, dev), backend, form=form, nonlinearity=nonlinearity, feedback_step="cayley",
                 feedback_plan=plan)


def test_the_product_of_stars_is_the_product_of_their_cayley_maps():
    """The reference's map, formed densely, is C_{m-1} ... C_0 of the stars' own Cayley maps; it
    is the Cayley map of the whole feedback when there is one star, and only close to it (second
    order in A L) when there are several."""
    g = torch.Generator().manual_seed(4)
    p, n = 6, 2
    for pairs, exact in [(star(6), True), (random_pairs(6, 7, seed=2), False)]:
        idx = torch.tensor(pairs)
        plan = feedback_plan(idx, p, "cayley", "stars")
        a = (0.1 + 0.8 * torch.rand(p, generator=g, dtype=torch.float64)).repeat_interleave(n)
        for scale in (1e-3, 1.0):
            L = scale * torch.randn(len(pairs), n, n, generator=g, dtype=torch.float64)
            C = cayley_product(L, idx, p, a, plan)
            expected = torch.eye(p * n, dtype=torch.float64)
            for star_q in plan.stars:
                rows = list(star_q.blocks)
                expected = cayley_map(dense_feedback(L[rows], idx[rows], p), a) @ expected
            torch.testing.assert_close(C, expected, rtol=1e-12, atol=1e-12)
            whole = cayley_map(dense_feedback(L, idx, p), a)
            gap = (C - whole).abs().max().item()
            if exact:
                assert gap < 1e-12
            elif scale < 1:
                assert gap < 10 * scale ** 2  # second order in the feedback's strength
            else:
                assert gap > 1e-3  # a different map at full strength


def test_a_product_of_stars_is_M_orthogonal_for_M_skew_feedback():
    """Each star's blocks are M-skew on their own (a pair's two blocks are always together), so
    every factor, and the product, has norm 1 in the metric M A^{-1}, at any strength."""
    g = torch.Generator().manual_seed(1)
    p, n = 6, 3
    pairs = random_pairs(6, 9, seed=5)
    idx = torch.tensor(pairs)
    plan = feedback_plan(idx, p, "cayley", "stars")
    assert len(plan.stars) >= 3
    m = torch.rand(p * n, generator=g, dtype=torch.float64) + 0.5
    for strength in (0.1, 10.0, 1000.0):
        half = len(pairs) // 2
        B = strength * torch.randn(half, n, n, generator=g, dtype=torch.float64)
        mb = m.view(p, n)
        back = torch.stack([-(1 / mb[j])[:, None] * B[r].T * mb[i][None, :] for r, (i, j) in enumerate(pairs[:half])])
        L = torch.cat([B, back])
        assert (dense_feedback(L, idx, p).T @ torch.diag(m) + torch.diag(m) @ dense_feedback(L, idx, p)).abs().max() < 1e-9 * strength
        a = (0.05 + 0.95 * torch.rand(p, generator=g, dtype=torch.float64)).repeat_interleave(n)
        C = cayley_product(L, idx, p, a, plan)
        Mh = torch.diag((m / a).sqrt())
        norm = torch.linalg.matrix_norm(Mh @ C @ torch.linalg.inv(Mh), ord=2)
        assert abs(norm.item() - 1.0) < 1e-9, (strength, norm)


def test_a_plan_that_does_not_fit_the_index_is_refused():
    prob = make_problem(3, 2, 5, 3, TOPOLOGIES["star"])
    kw = dict(alpha=0.5, nonlinearity="tanh", form="rate", feedback_step="cayley")
    with pytest.raises(TypeError, match="feedback_plan must be a FeedbackPlan .* or None, got str"):
        modular_rnn(*prob.args(), feedback_plan="star", **kw)
    wrong_size = feedback_plan(torch.tensor(all_to_all(3)), 3, "cayley")
    with pytest.raises(ValueError, match="feedback_plan was made for 6 blocks of 3 areas and the dense form, got "
                                         "L_index of 8 blocks, p = 5 and feedback_step='cayley'"):
        modular_rnn(*prob.args(), feedback_plan=wrong_size, **kw)
    euler = feedback_plan(prob.L_index, 5, "euler")
    with pytest.raises(ValueError, match="and the euler form, got L_index of 8 blocks"):
        modular_rnn(*prob.args(), feedback_plan=euler, **kw)
    other = prob.L_index.clone()
    other[:, :] = torch.tensor(star(5))[:, [1, 0]].flip(0)  # the same pairs, listed in another order
    stale = feedback_plan(other, 5, "cayley")
    with pytest.raises(ValueError, match="feedback_plan was made for another L_index"):
        modular_rnn(*prob.args(), feedback_plan=stale, **kw)


def test_cayley_without_feedback_is_the_euler_step():
    prob = make_problem(4, 3, 3, 4, [])
    kw = dict(alpha=0.3, nonlinearity="tanh", form="rate")
    torch.testing.assert_close(modular_rnn(*prob.args(), feedback_step="cayley", **kw),
                               modular_rnn(*prob.args(), feedback_step="euler", **kw), rtol=0, atol=0)


def test_cayley_map_is_M_orthogonal_for_M_skew_feedback():
    """L = B - M^{-1} B^T M is M-skew, so A L is skew in the metric M A^{-1} (M tau, as
    alpha_i = dt / tau_i) and ||C||_{M A^{-1}} = 1 for any strength and any per-area rates."""
    g = torch.Generator().manual_seed(0)
    p, n = 4, 3
    m = torch.rand(p * n, generator=g, dtype=torch.float64) + 0.5
    for strength in (0.1, 10.0, 1000.0):
        Bm = strength * torch.randn(p * n, p * n, generator=g, dtype=torch.float64)
        L = Bm - torch.diag(1 / m) @ Bm.T @ torch.diag(m)
        a = (0.05 + 0.95 * torch.rand(p, generator=g, dtype=torch.float64)).repeat_interleave(n)
        C = cayley_map(L, a)
        Mh = torch.diag((m / a).sqrt())
        norm = torch.linalg.matrix_norm(Mh @ C @ torch.linalg.inv(Mh), ord=2)
        assert abs(norm.item() - 1.0) < 1e-9, (strength, norm)


def test_torch_compile_runs_the_cayley_step():
    prob = make_problem(4, 3, 4, 4, star(4))
    a = rates(4)

    def loss_fn(drive, L, alpha):
        states = modular_rnn(drive, prob.W, L, prob.L_index, prob.h0, alpha=alpha, nonlinearity="relu",
                             form="rate", feedback_step="cayley")
        return (states[-1] ** 2).sum()

    compiled = torch.compile(loss_fn, backend="aot_eager")
    loss = compiled(prob.drive, prob.L_blocks, a)
    g = torch.autograd.grad(loss, (prob.drive, prob.L_blocks, a))
    ref = loss_fn(prob.drive, prob.L_blocks, a)
    gr = torch.autograd.grad(ref, (prob.drive, prob.L_blocks, a))
    torch.testing.assert_close(loss, ref)
    for x, y in zip(g, gr):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize(
    "alpha,match",
    [
        (torch.tensor([0.5, 0.5]), r"alpha must be a number, a one-element tensor or a tensor of p = 3"),
        (torch.tensor([0.5, 0.0, 0.5]), r"alpha must lie in \(0, 1\]"),
        (torch.tensor([0.5, 1.5, 0.5]), r"alpha must lie in \(0, 1\]"),
        (torch.tensor([1, 1, 1]), r"alpha must be a floating-point tensor"),
    ],
)
def test_bad_per_area_alpha(alpha, match):
    prob = make_problem(2, 2, 3, 2, star(3))
    with pytest.raises((ValueError, TypeError), match=match):
        modular_rnn(*prob.args(), alpha=alpha)


def test_bad_feedback_step():
    prob = make_problem(2, 2, 3, 2, star(3))
    with pytest.raises(ValueError, match=r"feedback_step must be one of \('euler', 'cayley'\), got 'rk4'"):
        modular_rnn(*prob.args(), feedback_step="rk4")
