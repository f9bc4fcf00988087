"""Every fused backend of modular_rnn against the dense reference: outputs and all gradients."""
from __future__ import annotations

import pytest
import torch

from rnnofrnns.ops import modular_rnn, modular_rnn_reference
from problems import FUSED_BACKENDS, all_to_all, device_for, gradcheck_steps, make_problem, star

FORMS = ("rate", "hopfield")
NONLINEARITIES = ("relu", "tanh", "identity")


def run_both(prob, backend, grad_out=None, **kw):
    """Outputs and gradients of all inputs that require grad, fused backend vs reference."""
    out = modular_rnn(*prob.args(), backend=backend, **kw)
    ref = modular_rnn_reference(*prob.args(), **kw)
    if grad_out is None:
        grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        grad_out = grad_out.to(ref)
    inputs = prob.grad_inputs()
    grads = torch.autograd.grad(out, inputs, grad_out)
    ref_grads = torch.autograd.grad(ref, inputs, grad_out)
    return out, ref, grads, ref_grads


def assert_close_all(out, ref, grads, ref_grads, rtol, atol):
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol, msg=lambda m: f"gradient {i}: {m}")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("with_h0", [True, False])
def test_matches_reference_float64(backend, form, nonlinearity, with_h0):
    prob = make_problem(6, 5, 3, 5, [(0, 1), (2, 0), (1, 2), (2, 1)], device=device_for(backend), h0=with_h0)
    res = run_both(prob, backend, alpha=0.7, nonlinearity=nonlinearity, form=form)
    assert_close_all(*res, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize(
    "T,B,p,n,pairs",
    [
        (1, 1, 3, 5, []),                 # k = 0, one step, one row
        (3, 1, 1, 1, []),                 # a single unit
        (4, 17, 3, 7, all_to_all(3)),     # batch not a multiple of any tile, n = 7
        (5, 2, 4, 5, [(3, 0)]),           # a single block
        (2, 3, 2, 20, [(0, 1), (1, 0)]),  # n above one SIMD/tile width
    ],
)
@pytest.mark.parametrize("form", FORMS)
def test_odd_sizes(backend, T, B, p, n, pairs, form):
    prob = make_problem(T, B, p, n, pairs, device=device_for(backend))
    res = run_both(prob, backend, alpha=0.5, nonlinearity="tanh", form=form)
    assert_close_all(*res, rtol=1e-10, atol=1e-12)


def assert_float32_accurate(backend, T, B, p, n, pairs, **kw):
    """float32 fused result and gradients against the float64 reference on the same
    problem: max error at most 1e-5 of each tensor's largest magnitude (~80 ulp)."""
    p32 = make_problem(T, B, p, n, pairs, dtype=torch.float32, device=device_for(backend))
    p64 = make_problem(T, B, p, n, pairs, dtype=torch.float64)
    out = modular_rnn(*p32.args(), backend=backend, **kw)
    ref = modular_rnn_reference(*p64.args(), **kw)
    go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(out, p32.grad_inputs(), go.to(out))
    ref_grads = torch.autograd.grad(ref, p64.grad_inputs(), go)
    names = ["states", "drive", "W", "L_blocks", "h0"]
    for name, a, b in zip(names, (out,) + grads, (ref,) + ref_grads):
        rel = ((a.detach().cpu().double() - b).abs().max() / b.abs().max()).item()
        assert rel < 1e-5, f"{name}: relative error {rel:.2e}"


@pytest.mark.parametrize("topology", ["star", "all"])
@pytest.mark.parametrize("form,nonlinearity", [("rate", "tanh"), ("hopfield", "relu")])
def test_float32_realistic_cpu(topology, form, nonlinearity):
    """p=16 areas of n=32 units, T=64: the headline size, in float32."""
    pairs = star(16) if topology == "star" else all_to_all(16)
    assert_float32_accurate("cpu", 64, 8, 16, 32, pairs, alpha=0.5, nonlinearity=nonlinearity, form=form)


@pytest.mark.parametrize("form,nonlinearity", [("rate", "tanh"), ("hopfield", "relu")])
def test_float32_triton(form, nonlinearity):
    """Triton at the headline width (p=16, n=32, star) for a few steps."""
    assert_float32_accurate("triton", 4, 3, 16, 32, star(16), alpha=0.5, nonlinearity=nonlinearity, form=form)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_gradcheck_float64(backend, form, nonlinearity):
    prob = make_problem(*gradcheck_steps(backend), 3, 3, [(0, 2), (2, 0), (1, 0)], device=device_for(backend))
    idx = prob.L_index

    def f(drive, W, L, h0):
        return modular_rnn(drive, W, L, idx, h0, alpha=0.6, nonlinearity=nonlinearity, form=form, backend=backend)

    assert torch.autograd.gradcheck(f, (prob.drive, prob.W, prob.L_blocks, prob.h0))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("wanted", [("drive",), ("L_blocks",), ("W",), ("h0",), ()])
def test_gradient_subsets(backend, wanted):
    """Only the inputs that require grad get one; the others are left alone."""
    prob = make_problem(4, 3, 3, 4, all_to_all(3), device=device_for(backend), requires_grad=False)
    for name in wanted:
        getattr(prob, name).requires_grad_(True)
    kw = dict(alpha=0.8, nonlinearity="tanh", form="rate")
    out = modular_rnn(*prob.args(), backend=backend, **kw)
    ref = modular_rnn_reference(*prob.args(), **kw)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    if wanted:
        go = torch.ones_like(out)
        inputs = prob.grad_inputs()
        for g, r in zip(torch.autograd.grad(out, inputs, go), torch.autograd.grad(ref, inputs, go)):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    else:
        assert not out.requires_grad


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_no_grad_rate_form(backend):
    prob = make_problem(5, 2, 3, 4, star(3), device=device_for(backend))
    with torch.no_grad():
        out = modular_rnn(*prob.args(), alpha=0.5, nonlinearity="relu", form="rate", backend=backend)
        ref = modular_rnn_reference(*prob.args(), alpha=0.5, nonlinearity="relu", form="rate")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", FUSED_BACKENDS + ("reference",))
@pytest.mark.parametrize("form", FORMS)
def test_padded_units_stay_exactly_zero(backend, form):
    """Areas of sizes 5, 3, 2 padded to n=5: padded rows/columns of W and L are zero,
    the drive is zero there, and the padded units stay exactly zero (float32, long run)."""
    sizes, n, p = [5, 3, 2], 5, 3
    pad = torch.zeros(p, n, dtype=torch.bool)
    for i, s in enumerate(sizes):
        pad[i, s:] = True
    prob = make_problem(30, 4, p, n, all_to_all(p), dtype=torch.float32, device=device_for(backend),
                        requires_grad=False, scale=3.0)
    padf = pad.reshape(-1).to(prob.drive.device)
    live = (~pad).to(prob.W)
    prob.W.mul_(live[:, :, None] * live[:, None, :])
    prob.L_blocks.mul_(live[prob.L_index[:, 0]][:, :, None] * live[prob.L_index[:, 1]][:, None, :])
    prob.drive[..., padf] = 0
    prob.h0[..., padf] = 0
    out = modular_rnn(*prob.args(), alpha=1.0, nonlinearity="tanh", form=form, backend=backend)
    assert out[..., ~padf].abs().max() > 0.1
    assert torch.equal(out[..., padf], torch.zeros_like(out[..., padf]))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_non_contiguous_inputs(backend):
    dev = device_for(backend)
    prob = make_problem(5, 3, 3, 4, all_to_all(3), device=dev, requires_grad=False)
    drive_nc = prob.drive.transpose(0, 1).contiguous().transpose(0, 1)  # [T, B, H] with batch-major storage
    W_nc = prob.W.transpose(1, 2).contiguous().transpose(1, 2)
    L_nc = prob.L_blocks.transpose(1, 2).contiguous().transpose(1, 2)
    idx_nc = prob.L_index.t().contiguous().t()
    h0_nc = prob.h0.t().contiguous().t()
    for t in (drive_nc, W_nc, L_nc, idx_nc, h0_nc):
        assert not t.is_contiguous()
    kw = dict(alpha=0.9, nonlinearity="tanh", form="hopfield")
    out = modular_rnn(drive_nc, W_nc, L_nc, idx_nc, h0_nc, backend=backend, **kw)
    ref = modular_rnn_reference(*prob.args(), **kw)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_flush_to_zero_cpu():
    """States decaying through the subnormal range come out as exact zeros, not subnormals."""
    T, p, n = 40, 2, 8
    W = (0.5 * torch.eye(n)).expand(p, n, n).contiguous()
    drive = torch.zeros(T, 3, p * n)
    h0 = torch.full((3, p * n), 1e-30)
    L = torch.zeros(0, n, n)
    idx = torch.zeros(0, 2, dtype=torch.int64)
    out = modular_rnn(drive, W, L, idx, h0, alpha=1.0, nonlinearity="identity", form="rate", backend="cpu")
    tiny = torch.finfo(torch.float32).tiny
    subnormal = (out != 0) & (out.abs() < tiny)
    assert not subnormal.any()
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))
    # the reference, without flush-to-zero, does produce subnormals here: the test can fail
    ref = modular_rnn_reference(drive, W, L, idx, h0, alpha=1.0, nonlinearity="identity", form="rate")
    assert ((ref != 0) & (ref.abs() < tiny)).any()


RING5 = [(i, (i + 1) % 5) for i in range(5)] + [((i + 1) % 5, i) for i in range(5)]  # a product of 3 stars


@pytest.mark.parametrize("feedback_step,pairs", [("euler", all_to_all(5)), ("cayley", star(5)), ("cayley", RING5)])
def test_cpu_backend_is_bitwise_deterministic_across_thread_counts(feedback_step, pairs):
    """The backward's weight-gradient (and alpha-gradient) reduction is split by batch size,
    not by threads; the cayley case has per-area alphas that require grad."""
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            prob = make_problem(6, 37, 5, 8, pairs, dtype=torch.float32)
            alpha = torch.linspace(0.2, 0.9, 5).requires_grad_() if feedback_step == "cayley" else 0.5
            inputs = prob.grad_inputs() + ([alpha] if feedback_step == "cayley" else [])
            out = modular_rnn(*prob.args(), alpha=alpha, nonlinearity="relu", form="rate",
                              feedback_step=feedback_step, backend="cpu")
            results.append((out,) + torch.autograd.grad(out.square().sum(), inputs))
    finally:
        torch.set_num_threads(old)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
