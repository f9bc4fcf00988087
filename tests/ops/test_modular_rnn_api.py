"""Argument checking, backend dispatch, torch.library registration and torch.compile."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

import rnnofrnns
from rnnofrnns.ops import _backend
from rnnofrnns.ops import modular_rnn, modular_rnn_reference
from rnnofrnns.ops.modular_rnn.cayley import kernel_operands
from rnnofrnns.ops.modular_rnn.plan import feedback_plan
from problems import all_to_all, device_for, make_problem, star


def good_args(dtype=torch.float32):
    prob = make_problem(3, 2, 3, 4, [(0, 1), (1, 2)], dtype=dtype, requires_grad=False)
    return dict(drive=prob.drive, W=prob.W, L_blocks=prob.L_blocks, L_index=prob.L_index, h0=prob.h0)


def with_(**changes):
    a = good_args()
    a.update(changes)
    return a


BAD_INPUTS = [
    # (changes, exception, message fragment)
    (dict(drive=torch.zeros(3, 12)), ValueError, r"drive must be 3-D \[T, B, p\*n\]"),
    (dict(drive=torch.zeros(3, 2, 11)), ValueError, r"drive must be \[T, B, p\*n\] = \[3, 2, 12\].*got \(3, 2, 11\)|got \[3, 2, 11\]"),
    (dict(drive=torch.zeros(0, 2, 12)), ValueError, r"T >= 1"),
    (dict(W=torch.zeros(3, 4, 5)), ValueError, r"W must be \[p, n, n\]"),
    (dict(W=torch.zeros(3, 4)), ValueError, r"W must be"),
    (dict(L_blocks=torch.zeros(2, 4, 3)), ValueError, r"L_blocks must be \[k, 4, 4\]"),
    (dict(L_index=torch.tensor([[0, 1]])), ValueError, r"L_index must be \[k, 2\] = \[2, 2\]"),
    (dict(L_index=torch.tensor([[0, 1], [1, 2]], dtype=torch.int32)), TypeError, r"L_index must be int64"),
    (dict(L_index=torch.tensor([[0, 1], [1, 3]])), ValueError, r"L_index\[1\] = \(1, 3\) is out of range for p = 3"),
    (dict(L_index=torch.tensor([[0, 1], [-1, 2]])), ValueError, r"L_index\[1\] = \(-1, 2\) is out of range"),
    (dict(L_index=torch.tensor([[0, 1], [2, 2]])), ValueError, r"L_index\[1\] = \(2, 2\) lies on the diagonal"),
    (dict(L_index=torch.tensor([[0, 1], [0, 1]])), ValueError, r"L_index\[1\] = \(0, 1\) is a duplicate"),
    (dict(h0=torch.zeros(3, 12)), ValueError, r"h0 must be \[B, p\*n\] = \[2, 12\]"),
    (dict(W=torch.zeros(3, 4, 4, dtype=torch.float64)), TypeError, r"dtype"),
    (dict(drive=torch.zeros(3, 2, 12, dtype=torch.int64)), TypeError, r"float32 or float64"),
    (dict(drive=torch.zeros(3, 2, 12, dtype=torch.float16)), TypeError, r"float32 or float64"),
]


def op_tail(drive, W, alpha, nl, form, save):
    """The arguments of the fused op after h0 for the Euler step: alpha as p values, no S_inv."""
    p = W.shape[0] if W.dim() >= 1 else 1
    dtype = drive.dtype if drive.is_floating_point() else torch.float32
    return (torch.full((p,), alpha, dtype=dtype), torch.zeros(0, 0, 0, dtype=dtype), nl, form, "euler", save)


@pytest.mark.parametrize("changes,exc,match", BAD_INPUTS)
@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_functional_rejects_bad_input(changes, exc, match, backend):
    a = {k: v.to(device_for(backend)) for k, v in with_(**changes).items()}
    with pytest.raises(exc, match=match):
        modular_rnn(a["drive"], a["W"], a["L_blocks"], a["L_index"], a["h0"], backend=backend)


@pytest.mark.parametrize("changes,exc,match", BAD_INPUTS)
def test_cpp_op_rejects_bad_input(changes, exc, match):
    """The C++ op checks its own arguments: a direct call can raise, never crash."""
    a = with_(**changes)
    with pytest.raises(exc, match=match):
        torch.ops.rnnofrnns.modular_rnn_fwd(a["drive"], a["W"], a["L_blocks"], a["L_index"], a["h0"],
                                            *op_tail(a["drive"], a["W"], 0.5, "tanh", "rate", False))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(alpha=0.0), r"alpha.* must be .*\(0, 1\]"),
        (dict(alpha=1.5), r"alpha.* must be .*\(0, 1\]"),
        (dict(alpha=float("nan")), r"alpha.* must be"),
        (dict(nonlinearity="sigmoid"), r"nonlinearity must be one of .*'sigmoid'"),
        (dict(form="lstm"), r"form must be .*'lstm'"),
    ],
)
def test_bad_scalars(kw, match):
    a = good_args()
    with pytest.raises(ValueError, match=match):
        modular_rnn(*a.values(), **kw)
    op_kw = dict(alpha=0.5, nonlinearity="tanh", form="rate")
    op_kw.update(kw)
    with pytest.raises(ValueError, match=match):
        torch.ops.rnnofrnns.modular_rnn_fwd(*a.values(), *op_tail(a["drive"], a["W"], op_kw["alpha"],
                                                                  op_kw["nonlinearity"], op_kw["form"], False))


def test_cpp_backward_needs_saved_preactivations():
    a = good_args()
    alpha, S_inv, nl, fm, step, _ = op_tail(a["drive"], a["W"], 0.5, "tanh", "rate", False)
    states, pre, z, r = torch.ops.rnnofrnns.modular_rnn_fwd(*a.values(), alpha, S_inv, nl, fm, step, False)
    with pytest.raises(ValueError, match="save=True"):
        torch.ops.rnnofrnns.modular_rnn_bwd(torch.ones_like(states), a["W"], a["L_blocks"], a["L_index"], a["h0"],
                                            alpha, S_inv, states, pre, z, r, nl, fm, step, True, True, True)


def test_backend_dispatch(monkeypatch):
    cpu = torch.device("cpu")
    assert _backend.resolve_backend(None, cpu) == "cpu"
    monkeypatch.setenv("RNNOFRNNS_BACKEND", "reference")
    assert _backend.resolve_backend(None, cpu) == "reference"
    assert _backend.resolve_backend("cpu", cpu) == "cpu"  # the argument wins over the variable
    monkeypatch.setenv("RNNOFRNNS_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="backend must be one of"):
        _backend.resolve_backend(None, cpu)
    with pytest.raises(ValueError, match="backend must be one of"):
        modular_rnn(*good_args().values(), backend="fast")


def test_forced_backend_unavailable_says_how_to_get_it(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(_backend, "_ext_error", ImportError("no _C"))
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation"):
        _backend.resolve_backend("cpu", cpu)
    assert _backend.resolve_backend(None, cpu) == "reference"  # the default falls back
    monkeypatch.setattr(_backend, "_ext_error", None)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        _backend.resolve_backend("triton", cpu)
    monkeypatch.setattr(_backend, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="pip install triton"):
        _backend.resolve_backend("triton", cpu)


def test_env_var_forces_backend(monkeypatch):
    """RNNOFRNNS_BACKEND=triton makes the default call run the Triton kernels."""
    a = good_args(torch.float64)
    ref = modular_rnn_reference(*a.values(), alpha=0.5)
    calls = []
    import rnnofrnns.kernels.modular_rnn as tk

    real = tk.forward
    monkeypatch.setattr(tk, "forward", lambda *args: calls.append(1) or real(*args))
    monkeypatch.setenv("RNNOFRNNS_BACKEND", "triton")
    out = modular_rnn(*a.values(), alpha=0.5)
    assert calls == [1]
    torch.testing.assert_close(out, ref)


def opcheck_args(form, device="cpu"):
    prob = make_problem(3, 2, 3, 4, all_to_all(3), device=device)
    return (prob.drive, prob.W, prob.L_blocks, prob.L_index, prob.h0, *op_tail(prob.drive, prob.W, 0.7, "tanh", form, True))


@pytest.mark.parametrize("form", ["rate", "hopfield"])
@pytest.mark.parametrize("op_name", ["modular_rnn_fwd", "modular_rnn_fwd_triton"])
def test_opcheck_forward(op_name, form):
    op = getattr(torch.ops.rnnofrnns, op_name)
    device = device_for("triton") if op_name.endswith("triton") else "cpu"
    torch.library.opcheck(op, opcheck_args(form, device))


@pytest.mark.parametrize("form", ["rate", "hopfield"])
@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_opcheck_backward(suffix, form):
    device = device_for("triton") if suffix else "cpu"
    drive, W, L, idx, h0, alpha, S_inv, nl, fm, step, _ = opcheck_args(form, device)
    with torch.no_grad():
        states, pre, z, r = getattr(torch.ops.rnnofrnns, "modular_rnn_fwd" + suffix)(
            drive, W, L, idx, h0, alpha, S_inv, nl, fm, step, True)
    bwd = getattr(torch.ops.rnnofrnns, "modular_rnn_bwd" + suffix)
    args = (torch.randn_like(states), W.detach(), L.detach(), idx, h0.detach(), alpha, S_inv, states, pre, z, r,
            nl, fm, step, True, True, True)
    torch.library.opcheck(bwd, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_opcheck_with_rates_per_step(suffix):
    """alpha [T, B, p] (input-driven timescales) through both ops of the pair."""
    device = device_for("triton") if suffix else "cpu"
    drive, W, L, idx, h0, alpha, S_inv, nl, fm, step, _ = opcheck_args("hopfield", device)
    rates = (0.1 + 0.8 * torch.rand(3, 2, 3, dtype=drive.dtype, generator=torch.Generator().manual_seed(2))).to(device)
    rates.requires_grad_(True)
    fwd = getattr(torch.ops.rnnofrnns, "modular_rnn_fwd" + suffix)
    torch.library.opcheck(fwd, (drive, W, L, idx, h0, rates, S_inv, nl, fm, step, True))
    with torch.no_grad():
        states, pre, z, r = fwd(drive, W, L, idx, h0, rates, S_inv, nl, fm, step, True)
    bwd = getattr(torch.ops.rnnofrnns, "modular_rnn_bwd" + suffix)
    args = (torch.randn_like(states), W.detach(), L.detach(), idx, h0.detach(), rates.detach(), S_inv, states, pre, z,
            r, nl, fm, step, True, True, True)
    torch.library.opcheck(bwd, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    assert bwd(*args)[4].shape == (3, 2, 3)  # alpha's gradient has alpha's shape


@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_opcheck_with_a_product_of_stars(suffix):
    """The Cayley step as a product of 2 stars: the index [k, 4], S_inv [m, n, n] and the saved
    s and r [T, B, m*n] through both ops of the pair (schema, fake shapes, autograd)."""
    device = device_for("triton") if suffix else "cpu"
    prob = make_problem(3, 2, 4, 3, [(1, 0), (0, 1), (1, 2), (2, 1), (3, 2), (2, 3)], device=device)
    alpha = torch.full((4,), 0.6, dtype=prob.drive.dtype, device=device)
    plan = feedback_plan(prob.L_index, 4, "cayley", "stars")
    step, P, idx, S_inv = kernel_operands(prob.L_blocks.detach(), prob.L_index, alpha, 4, "cayley", plan)
    assert step == "star" and tuple(idx.shape) == (6, 4) and tuple(S_inv.shape) == (2, 3, 3)
    fwd = getattr(torch.ops.rnnofrnns, "modular_rnn_fwd" + suffix)
    args = (prob.drive, prob.W, P.requires_grad_(True), idx, prob.h0, alpha, S_inv.requires_grad_(True), "tanh",
            "rate", step, True)
    torch.library.opcheck(fwd, args)
    with torch.no_grad():
        states, pre, z, r = fwd(*args)
    assert tuple(z.shape) == tuple(r.shape) == (3, 2, 6)
    bwd = getattr(torch.ops.rnnofrnns, "modular_rnn_bwd" + suffix)
    bargs = (torch.randn_like(states), prob.W.detach(), P.detach(), idx, prob.h0.detach(), alpha, S_inv.detach(),
             states, pre, z, r, "tanh", "rate", step, True, True, True)
    torch.library.opcheck(bwd, bargs, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_the_cpp_op_checks_the_stars_index():
    prob = make_problem(2, 2, 4, 3, [(1, 0), (0, 1), (3, 2)])
    alpha = torch.full((4,), 0.5, dtype=torch.float64)
    S_inv = torch.eye(3, dtype=torch.float64).expand(2, 3, 3).contiguous()
    fwd = torch.ops.rnnofrnns.modular_rnn_fwd

    def run(idx, S=S_inv):
        return fwd(prob.drive, prob.W, prob.L_blocks, torch.tensor(idx), prob.h0, alpha, S, "tanh", "rate", "star",
                   False)

    run([[1, 0, 0, 1], [0, 1, 0, 1], [3, 2, 1, 2]])  # two stars: hubs 1 and 2
    with pytest.raises(ValueError, match=r"L_index must be \[k, 4\] = \[3, 4\] .*\(target, source, star, hub"):
        fwd(prob.drive, prob.W, prob.L_blocks, prob.L_index, prob.h0, alpha, S_inv, "tanh", "rate", "star", False)
    with pytest.raises(ValueError, match=r"L_index\[2\] names star 2, outside \[0, 2\)"):
        run([[1, 0, 0, 1], [0, 1, 0, 1], [3, 2, 2, 2]])
    with pytest.raises(ValueError, match=r"L_index\[2\] = \(3, 2\) does not touch the hub area 1 of its star 1"):
        run([[1, 0, 0, 1], [0, 1, 0, 1], [3, 2, 1, 1]])
    with pytest.raises(ValueError, match=r"L_index\[1\] gives star 0 the hub 0, another block gave it 1"):
        run([[1, 0, 0, 1], [0, 1, 0, 0], [3, 2, 1, 2]])
    with pytest.raises(ValueError, match=r"S_inv must be \[m, 3, 3\] \(m >= 1 stars\)"):
        run([[1, 0, 0, 1], [0, 1, 0, 1], [3, 2, 1, 2]], S=torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_torch_compile_traces_the_op(backend):
    """A model that calls modular_rnn compiles with fullgraph=True (fake impl + autograd)."""
    prob = make_problem(5, 3, 4, 4, star(4), device=device_for(backend))

    def loss_fn(drive, L):
        states = modular_rnn(drive, prob.W, L, prob.L_index, prob.h0, alpha=0.5, nonlinearity="relu",
                             form="hopfield", backend=backend)
        return (states[-1] ** 2).sum()

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    loss = compiled(prob.drive, prob.L_blocks)
    g = torch.autograd.grad(loss, (prob.drive, prob.L_blocks))
    ref = loss_fn(prob.drive, prob.L_blocks)
    gr = torch.autograd.grad(ref, (prob.drive, prob.L_blocks))
    torch.testing.assert_close(loss, ref)
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b)


def test_public_api():
    assert rnnofrnns.modular_rnn is modular_rnn
    assert set(rnnofrnns.BACKENDS) == {"reference", "cpu", "triton"}
    assert rnnofrnns.cpu_extension_available()


# --- hypothesis: random shapes and arguments thrown at the C++ op -----------------

dims = st.integers(min_value=0, max_value=5)


@st.composite
def random_call(draw):
    def shape(nd):
        return [draw(dims) for _ in range(nd)]

    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64]))
    drive = torch.randn(*shape(draw(st.sampled_from([3, 3, 3, 2, 4])))).to(dtype)
    W = torch.randn(*shape(draw(st.sampled_from([3, 3, 2])))).to(draw(st.sampled_from([dtype, torch.float32])))
    L = torch.randn(*shape(draw(st.sampled_from([3, 3, 1])))).to(dtype)
    k = draw(st.integers(0, 4))
    idx = torch.tensor(draw(st.lists(st.lists(st.integers(-2, 6), min_size=2, max_size=2), min_size=k, max_size=k)),
                       dtype=draw(st.sampled_from([torch.int64, torch.int64, torch.int32]))).reshape(-1, 2)
    h0 = torch.randn(*shape(draw(st.sampled_from([2, 2, 1])))).to(dtype)
    alpha = draw(st.sampled_from([0.5, 1.0, 0.0, -1.0, 2.0, float("inf")]))
    nl = draw(st.sampled_from(["relu", "tanh", "identity", "bogus"]))
    form = draw(st.sampled_from(["rate", "hopfield", "other"]))
    return drive, W, L, idx, h0, alpha, nl, form, draw(st.booleans())


@given(random_call())
def test_hypothesis_cpp_op_errors_never_crashes(call):
    drive, W, L, idx, h0, alpha, nl, form, save_pre = call
    try:
        states = torch.ops.rnnofrnns.modular_rnn_fwd(drive, W, L, idx, h0, *op_tail(drive, W, alpha, nl, form, save_pre))[0]
    except (ValueError, TypeError) as e:
        assert "modular_rnn" in str(e)
        return
    # accepted: then it must agree with the reference
    ref = modular_rnn_reference(drive, W, L, idx, h0, alpha=alpha, nonlinearity=nl, form=form)
    torch.testing.assert_close(states, ref)


@given(T=st.integers(1, 6), B=st.integers(1, 9), p=st.integers(1, 4), n=st.integers(1, 9),
       density=st.floats(0, 1), form=st.sampled_from(["rate", "hopfield"]),
       nl=st.sampled_from(["relu", "tanh", "identity"]), alpha=st.floats(0.05, 1.0))
def test_hypothesis_valid_shapes_match_reference(T, B, p, n, density, form, nl, alpha):
    g = torch.Generator().manual_seed(T * 1000 + B * 100 + p * 10 + n)
    pairs = [pr for pr in all_to_all(p) if torch.rand((), generator=g).item() < density]
    prob = make_problem(T, B, p, n, pairs)
    out, ref = (modular_rnn(*prob.args(), alpha=alpha, nonlinearity=nl, form=form, backend="cpu"),
                modular_rnn_reference(*prob.args(), alpha=alpha, nonlinearity=nl, form=form))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(out.sum(), prob.grad_inputs())
    ref_grads = torch.autograd.grad(ref.sum(), prob.grad_inputs())
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
