"""Benchmarks of modular_rnn (run with `make bench`; `bench/ops/report.py` makes the table).

p=16 areas of n=32 units, T=784 (sequential MNIST length), hopfield form, alpha=0.5.
Topologies: global-workspace star (k=30 blocks) and all-to-all (k=240).
Contenders: the fused cpu backend, the dense reference, a per-step bmm loop over the
blocks and (forward only) torch.nn.RNN with hidden size 512.
"""
from __future__ import annotations

import pytest
import torch

from contenders import modular_rnn_bmm_loop
from rnnofrnns.ops import modular_rnn, modular_rnn_reference

P, N, T, ALPHA, FORM = 16, 32, 784, 0.5, "hopfield"


def topology(name):
    if name == "star":
        hub = P - 1
        return [(hub, j) for j in range(P - 1)] + [(j, hub) for j in range(P - 1)]
    return [(i, j) for i in range(P) for j in range(P) if i != j]


def problem(topo, B):
    g = torch.Generator().manual_seed(0)
    pairs = topology(topo)
    drive = 0.5 * torch.randn(T, B, P * N, generator=g)
    W = 0.9 / N ** 0.5 * torch.randn(P, N, N, generator=g)
    L = 0.3 / (N * len(pairs) / P) ** 0.5 * torch.randn(len(pairs), N, N, generator=g)
    return drive, W, L, torch.tensor(pairs)


def flops(topo, B, with_backward):
    """Multiply-adds x 2 of the non-zero blocks only: forward (p + k blocks per step);
    backward: the same products transposed plus the k feedback-gradient updates."""
    k = len(topology(topo))
    per_block = 2 * N * N * B * T
    return per_block * ((P + k) + ((P + k) + k if with_backward else 0))


CONTENDERS = {
    "cpu": lambda *a, **kw: modular_rnn(*a, backend="cpu", **kw),
    "reference": modular_rnn_reference,
    "bmm_loop": modular_rnn_bmm_loop,
}
CASES = [(topo, B, nl) for topo in ("star", "all") for B in (1, 64) for nl in ("relu", "tanh")]


def rounds(B, contender, backward):
    slow = contender != "cpu" and (B == 64 or backward)
    return 3 if slow else 10


@pytest.mark.parametrize("topo,B,nl", CASES, ids=[f"{t}-B{b}-{nl}" for t, b, nl in CASES])
@pytest.mark.parametrize("contender", list(CONTENDERS) + ["nn.RNN512"])
def test_forward(benchmark, contender, topo, B, nl):
    drive, W, L, idx = problem(topo, B)
    benchmark.group = f"forward {topo} B={B} {nl}"
    benchmark.extra_info.update(flops=flops(topo, B, False), topology=topo, B=B, T=T, nonlinearity=nl)
    if contender == "nn.RNN512":
        rnn = torch.nn.RNN(1, P * N, nonlinearity=nl)
        x = torch.randn(T, B, 1)
        with torch.no_grad():
            benchmark.pedantic(rnn, (x,), rounds=rounds(B, contender, False), iterations=1, warmup_rounds=1)
        return
    fn = CONTENDERS[contender]
    with torch.no_grad():
        benchmark.pedantic(lambda: fn(drive, W, L, idx, alpha=ALPHA, nonlinearity=nl, form=FORM),
                           rounds=rounds(B, contender, False), iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("topo,B,nl", CASES, ids=[f"{t}-B{b}-{nl}" for t, b, nl in CASES])
@pytest.mark.parametrize("contender", list(CONTENDERS))
def test_forward_backward(benchmark, contender, topo, B, nl):
    """Training step: gradients for the drive and the feedback blocks (W is a fixed buffer)."""
    drive, W, L, idx = problem(topo, B)
    drive.requires_grad_(True)
    L.requires_grad_(True)
    benchmark.group = f"forward+backward {topo} B={B} {nl}"
    benchmark.extra_info.update(flops=flops(topo, B, True), topology=topo, B=B, T=T, nonlinearity=nl)
    fn = CONTENDERS[contender]

    def step():
        out = fn(drive, W, L, idx, alpha=ALPHA, nonlinearity=nl, form=FORM)
        torch.autograd.grad(out, (drive, L), torch.ones_like(out))

    benchmark.pedantic(step, rounds=rounds(B, contender, True), iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("shape", [(64, 512, 512), (1024, 1024, 1024)], ids=["64x512x512", "1024x1024x1024"])
def test_mm(benchmark, shape):
    """torch.mm's GFLOP/s on this machine, measured in the same run (the speed limit)."""
    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    reps = max(1, int(2e9 // (2 * m * k * n)))
    benchmark.group = "torch.mm"
    benchmark.extra_info.update(flops=2 * m * k * n * reps)
    benchmark.pedantic(lambda: [torch.mm(a, b) for _ in range(reps)], rounds=10, iterations=1, warmup_rounds=2)


CAYLEY_CONTENDERS = {
    "cpu_euler": lambda *a, **kw: modular_rnn(*a, backend="cpu", feedback_step="euler", **kw),
    "cpu_cayley": lambda *a, **kw: modular_rnn(*a, backend="cpu", feedback_step="cayley", **kw),
    "reference_cayley": lambda *a, **kw: modular_rnn_reference(*a, feedback_step="cayley", **kw),
}


@pytest.mark.parametrize("topo", ["star", "all"])
@pytest.mark.parametrize("contender", list(CAYLEY_CONTENDERS))
def test_cayley_forward_backward(benchmark, contender, topo):
    """The Cayley feedback step (star: Schur complement of the hub; all-to-all: dense C) against
    the Euler step and against its dense reference; B=64, relu, a training step."""
    drive, W, L, idx = problem(topo, 64)
    drive.requires_grad_(True)
    L.requires_grad_(True)
    benchmark.group = f"cayley forward+backward {topo} B=64 relu"
    benchmark.extra_info.update(flops=flops(topo, 64, True), topology=topo, B=64, T=T, nonlinearity="relu")
    fn = CAYLEY_CONTENDERS[contender]

    def step():
        out = fn(drive, W, L, idx, alpha=ALPHA, nonlinearity="relu", form=FORM)
        torch.autograd.grad(out, (drive, L), torch.ones_like(out))

    benchmark.pedantic(step, rounds=3 if contender.startswith("reference") else 10, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("contender", ["constant_rates", "input_rates"])
def test_input_rates_forward_backward(benchmark, contender):
    """Input-driven timescales: the areas' rates per step, row and area ([T, B, p]) against one
    rate per area ([p]); the Cayley star as the certified default runs it (hopfield, relu, B=64),
    a training step with the gradients of the drive, W, the feedback blocks and both rates."""
    drive, W, L, idx = problem("star", 64)
    for t in (drive, W, L):
        t.requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    if contender == "input_rates":
        alpha = (0.05 + 0.9 * torch.rand(T, 64, P, generator=g)).requires_grad_(True)
    else:
        alpha = (0.05 + 0.9 * torch.rand(P, generator=g)).requires_grad_(True)
    feedback_alpha = (0.05 + 0.9 * torch.rand(P, generator=g)).requires_grad_(True)
    benchmark.group = "input rates forward+backward star B=64 relu"
    benchmark.extra_info.update(flops=flops("star", 64, True), topology="star", B=64, T=T, nonlinearity="relu")

    def step():
        out = modular_rnn(drive, W, L, idx, alpha=alpha, feedback_alpha=feedback_alpha, nonlinearity="relu", form=FORM,
                          feedback_step="cayley", backend="cpu")
        torch.autograd.grad(out, (drive, W, L, alpha, feedback_alpha), torch.ones_like(out))

    benchmark.pedantic(step, rounds=10, iterations=1, warmup_rounds=1)


def sparse_problem(topo, B):
    """GW-sized problem on a sparse topology: 15 random pairs (the star's parameter count) or
    random:0.2 (each pair kept with probability 0.2), both blocks of every pair; or all-to-all."""
    from rnnofrnns import topology as topo_lib

    name = {"pairs15": "random-pairs:15", "random0.2": "random:0.2", "all": "all"}[topo]
    pairs = topo_lib.resolve(name, P, torch.Generator().manual_seed(0))
    idx = topo_lib.feedback_index(pairs)
    g = torch.Generator().manual_seed(0)
    drive = 0.5 * torch.randn(T, B, P * N, generator=g)
    W = 0.9 / N ** 0.5 * torch.randn(P, N, N, generator=g)
    L = 0.3 / (N * len(idx) / P) ** 0.5 * torch.randn(len(idx), N, N, generator=g)
    return drive, W, L, idx


SPARSE_CAYLEY_CONTENDERS = {
    "cpu_euler": dict(feedback_step="euler"),
    "cpu_cayley": dict(feedback_step="cayley"),  # cayley_form "auto": stars on sparse topologies
    "cpu_cayley_dense": dict(feedback_step="cayley", cayley_form="dense"),
}


@pytest.mark.parametrize("topo", ["pairs15", "random0.2", "all"])
@pytest.mark.parametrize("contender", list(SPARSE_CAYLEY_CONTENDERS))
def test_cayley_sparse_forward_backward(benchmark, contender, topo):
    """The Cayley step on sparse topologies (a product of stars, chosen by cost) against the
    Euler step and the dense Cayley map on the same topology: a training step (gradients of the
    drive, the feedback blocks and the areas' rates), B=64, relu."""
    from rnnofrnns.ops import feedback_plan

    drive, W, L, idx = sparse_problem(topo, 64)
    drive.requires_grad_(True)
    L.requires_grad_(True)
    alpha = (0.05 + 0.9 * torch.rand(P, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    kw = dict(SPARSE_CAYLEY_CONTENDERS[contender])
    plan = feedback_plan(idx, P, kw["feedback_step"], kw.pop("cayley_form", "auto"))
    benchmark.group = f"cayley sparse forward+backward {topo} B=64 relu"
    benchmark.extra_info.update(flops=2 * N * N * 64 * T * (P + len(idx)) * 3, topology=topo, B=64, T=T,
                                nonlinearity="relu", blocks=len(idx), stars=len(plan.stars), step=plan.step)

    def step():
        out = modular_rnn(drive, W, L, idx, alpha=alpha, nonlinearity="relu", form=FORM, backend="cpu",
                          feedback_plan=plan, **kw)
        torch.autograd.grad(out, (drive, L, alpha), torch.ones_like(out))

    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
