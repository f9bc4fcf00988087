"""gated_paths: every fused backend against the loop-over-paths reference, outputs and
all gradients, for the three gate shapes; argument checks; torch.library registration."""
from __future__ import annotations

import pytest
import torch

from rnnofrnns.ops import gated_paths, gated_paths_reference
from problems import FUSED_BACKENDS, device_for

GATES = ("path", "sample", "neuron")


def gate_shape(kind, B, P, D_out):
    return {"path": (P,), "sample": (B, P), "neuron": (B, P, D_out)}[kind]


def make(B, P, D_out, D_in, kind, *, dtype=torch.float64, device="cpu", seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D_in, generator=g, dtype=torch.float64)
    W = torch.randn(P, D_out, D_in, generator=g, dtype=torch.float64) / D_in ** 0.5
    c = torch.rand(*gate_shape(kind, B, P, D_out), generator=g, dtype=torch.float64) * 2 - 0.5
    return [t.to(dtype=dtype, device=device).requires_grad_(requires_grad) for t in (x, W, c)]


def compare(backend, B, P, D_out, D_in, kind, rtol=1e-10, atol=1e-12):
    x, W, c = make(B, P, D_out, D_in, kind, device=device_for(backend))
    y = gated_paths(x, W, c, backend=backend)
    ref = gated_paths_reference(x, W, c)
    go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3), dtype=ref.dtype).to(ref.device)
    grads = torch.autograd.grad(y, (x, W, c), go)
    ref_grads = torch.autograd.grad(ref, (x, W, c), go)
    torch.testing.assert_close(y, ref, rtol=rtol, atol=atol)
    for name, a, b in zip(("x", "W", "c"), grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("kind", GATES)
@pytest.mark.parametrize(
    "B,P,D_out,D_in",
    [
        (1, 1, 1, 1),      # everything size one
        (5, 3, 7, 9),      # odd sizes below one tile
        (37, 2, 33, 65),   # sizes just above tile multiples (32, 64)
        (16, 4, 16, 16),   # exact tiles
    ],
)
def test_matches_reference_float64(backend, kind, B, P, D_out, D_in):
    compare(backend, B, P, D_out, D_in, kind)


@pytest.mark.parametrize("kind", GATES)
def test_cpu_realistic_size_float64(kind):
    """The benchmark's shape family (B=512, D=256) at P=8, against the reference."""
    compare("cpu", 512, 8, 256, 256, kind, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("kind", GATES)
def test_gradcheck_float64(backend, kind):
    x, W, c = make(3, 2, 4, 5, kind, device=device_for(backend))
    assert torch.autograd.gradcheck(lambda x, W, c: gated_paths(x, W, c, backend=backend), (x, W, c))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("kind", GATES)
def test_float32_against_float64_reference(backend, kind):
    """float32 results and gradients within 1e-5 of each tensor's largest magnitude
    (float64 reference). Realistic width for cpu; a smaller one for the interpreter."""
    on_cpu = backend == "cpu" or not torch.cuda.is_available()
    B, P, D = (512, 8, 256) if backend == "cpu" else ((24, 3, 40) if on_cpu else (512, 8, 256))
    x64, W64, c64 = make(B, P, D, D, kind)
    x, W, c = make(B, P, D, D, kind, dtype=torch.float32, device=device_for(backend))
    y = gated_paths(x, W, c, backend=backend)
    ref = gated_paths_reference(x64, W64, c64)
    go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = torch.autograd.grad(y, (x, W, c), go.to(y))
    ref_grads = torch.autograd.grad(ref, (x64, W64, c64), go)
    for name, a, b in zip(("y", "x", "W", "c"), (y,) + grads, (ref,) + ref_grads):
        rel = ((a.detach().cpu().double() - b).abs().max() / b.abs().max()).item()
        assert rel < 1e-5, f"{name}: relative error {rel:.2e}"


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("kind", GATES)
@pytest.mark.parametrize("wanted", [("x",), ("W",), ("c",), ("x", "c")])
def test_gradient_subsets(backend, kind, wanted):
    x, W, c = make(6, 3, 5, 7, kind, device=device_for(backend), requires_grad=False)
    named = {"x": x, "W": W, "c": c}
    for n in wanted:
        named[n].requires_grad_(True)
    inputs = [named[n] for n in wanted]
    go = torch.ones(6, 5, dtype=x.dtype, device=x.device)
    got = torch.autograd.grad(gated_paths(x, W, c, backend=backend), inputs, go)
    ref = torch.autograd.grad(gated_paths_reference(x, W, c), inputs, go)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", FUSED_BACKENDS + ("reference",))
def test_no_grad_and_default_backend(backend):
    x, W, c = make(4, 2, 3, 5, "sample", device=device_for(backend), requires_grad=False)
    with torch.no_grad():
        y = gated_paths(x, W, c, backend=backend)
    assert not y.requires_grad and y.shape == (4, 3)
    torch.testing.assert_close(gated_paths(x, W, c), gated_paths_reference(x, W, c))


def good():
    return dict(x=torch.randn(4, 5), W=torch.randn(3, 6, 5), c=torch.randn(4, 3))


BAD = [
    (dict(x=torch.randn(4, 5, 1)), ValueError, r"x must be 2-D \[B, D_in\]"),
    (dict(W=torch.randn(3, 6)), ValueError, r"W must be 3-D \[P, D_out, D_in\]"),
    (dict(W=torch.randn(3, 6, 4)), ValueError, r"W must be \[P, D_out, D_in\] = \[P, D_out, 5\].*got shape \(3, 6, 4\)"),
    (dict(c=torch.randn(4)), ValueError, r"c must be \[P\] = \[3\], \[B, P\] = \[4, 3\] or \[B, P, D_out\] = \[4, 3, 6\], got shape \(4,\)"),
    (dict(c=torch.randn(4, 3, 5)), ValueError, r"c must be .*got shape \(4, 3, 5\)"),
    (dict(c=torch.randn(4, 3, dtype=torch.float64)), TypeError, r"c must have the dtype of x"),
    (dict(x=torch.zeros(4, 5, dtype=torch.int64)), TypeError, r"x must be float32 or float64"),
    (dict(x=torch.zeros(0, 5)), ValueError, r"B, D_in >= 1"),
]


@pytest.mark.parametrize("changes,exc,match", BAD)
@pytest.mark.parametrize("backend", FUSED_BACKENDS + ("reference",))
def test_rejects_bad_input(changes, exc, match, backend):
    a = {k: v.to(device_for(backend)) for k, v in {**good(), **changes}.items()}
    with pytest.raises(exc, match=match):
        gated_paths(a["x"], a["W"], a["c"], backend=backend)


@pytest.mark.parametrize("changes,exc,match", [b for b in BAD if "x must be float32" not in b[2]][:5])
def test_cpp_op_rejects_bad_input(changes, exc, match):
    """The C++ op checks its own arguments: a direct call raises, never crashes."""
    a = {**good(), **changes}
    with pytest.raises(exc):
        torch.ops.rnnofrnns.gated_paths_fwd(a["x"], a["W"], a["c"])


def test_cpp_backward_rejects_wrong_aux():
    x, W, c = make(4, 3, 6, 5, "sample", requires_grad=False)
    with pytest.raises(ValueError, match=r"aux must be Wcat \[6, 15\]"):
        torch.ops.rnnofrnns.gated_paths_bwd(torch.randn(4, 6, dtype=x.dtype), x, W, c, torch.zeros(3, 3,
                                            dtype=x.dtype), True, True, True)


def test_rejects_mixed_devices_and_bad_backend():
    a = good()
    with pytest.raises(ValueError, match="backend must be one of"):
        gated_paths(a["x"], a["W"], a["c"], backend="cuda")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="W must be on the device of x"):
            gated_paths(a["x"], a["W"].cuda(), a["c"])


@pytest.mark.parametrize("kind", GATES)
@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_opcheck(suffix, kind):
    device = device_for("triton") if suffix else "cpu"
    x, W, c = make(5, 3, 4, 6, kind, device=device)
    fwd = getattr(torch.ops.rnnofrnns, "gated_paths_fwd" + suffix)
    torch.library.opcheck(fwd, (x, W, c))
    with torch.no_grad():
        _, aux = fwd(x, W, c)
    bwd = getattr(torch.ops.rnnofrnns, "gated_paths_bwd" + suffix)
    torch.library.opcheck(bwd, (torch.randn(5, 4, dtype=x.dtype, device=device), x.detach(), W.detach(),
                                c.detach(), aux, True, True, True),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_torch_compile(backend):
    x, W, c = make(6, 3, 4, 5, "sample", device=device_for(backend))

    def loss_fn(x, W, c):
        return (gated_paths(x, W, c, backend=backend) ** 2).sum()

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(x, W, c), (x, W, c))
    ref = torch.autograd.grad(loss_fn(x, W, c), (x, W, c))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", GATES)
@pytest.mark.parametrize("B,P,D_out,D_in", [(512, 8, 256, 256), (67, 3, 301, 259), (6, 2, 35, 19)])
def test_cpu_results_do_not_depend_on_the_thread_count(kind, B, P, D_out, D_in):
    """Bitwise the same y and gradients on 1 and 2 threads, at sizes where a BLAS splits its
    reductions across threads (MKL does on AMD CPUs) and past one 256-wide block of columns."""
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            x, W, c = make(B, P, D_out, D_in, kind, dtype=torch.float32, seed=5)
            y = gated_paths(x, W, c, backend="cpu")
            go = torch.randn(y.shape, generator=torch.Generator().manual_seed(6))
            runs.append([y.detach(), *torch.autograd.grad(y, (x, W, c), go)])
    finally:
        torch.set_num_threads(before)
    for name, a, b in zip(("y", "grad x", "grad W", "grad c"), *runs):
        assert torch.equal(a, b), name
