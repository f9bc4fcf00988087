"""GPU benchmarks of modular_rnn: the Triton kernels against the same contenders on CUDA.

Same problem as bench/ops/test_bench_modular_rnn.py (p=16 areas of n=32 units, T=784,
hopfield form, alpha=0.5), at B=64 and at B=2048 (128 programs of 16 rows: one per SM).
Contenders: the triton backend, the dense reference and the per-step bmm loop on the
GPU, and cuDNN's nn.RNN with hidden size 512 (forward only). Every timed call ends
with torch.cuda.synchronize(). Skipped on machines without a CUDA device.
"""
from __future__ import annotations

import pytest
import torch

from contenders import modular_rnn_bmm_loop
from rnnofrnns.ops import modular_rnn, modular_rnn_reference
from test_bench_modular_rnn import ALPHA, FORM, N, P, T, flops
from test_bench_modular_rnn import problem as cpu_problem

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONTENDERS = {
    "triton": lambda *a, **kw: modular_rnn(*a, backend="triton", **kw),
    "reference": modular_rnn_reference,
    "bmm_loop": modular_rnn_bmm_loop,
}
CASES = [(topo, B, nl) for topo in ("star", "all") for B in (64, 2048) for nl in ("relu", "tanh")]


def problem(topo, B):
    """The CPU benchmark's problem, moved to the GPU."""
    return [t.cuda() for t in cpu_problem(topo, B)]


def synced(fn):
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    return run


@pytest.mark.parametrize("topo,B,nl", CASES, ids=[f"{t}-B{b}-{nl}" for t, b, nl in CASES])
@pytest.mark.parametrize("contender", list(CONTENDERS) + ["nn.RNN512"])
def test_forward_gpu(benchmark, contender, topo, B, nl):
    drive, W, L, idx = problem(topo, B)
    benchmark.group = f"gpu forward {topo} B={B} {nl}"
    benchmark.extra_info.update(flops=flops(topo, B, False), topology=topo, B=B, T=T, nonlinearity=nl)
    if contender == "nn.RNN512":
        rnn = torch.nn.RNN(1, P * N, nonlinearity=nl).cuda()
        x = torch.randn(T, B, 1, device="cuda")
        with torch.no_grad():
            benchmark.pedantic(synced(lambda: rnn(x)), rounds=5, iterations=1, warmup_rounds=1)
        return
    fn = CONTENDERS[contender]
    with torch.no_grad():
        benchmark.pedantic(synced(lambda: fn(drive, W, L, idx, alpha=ALPHA, nonlinearity=nl, form=FORM)),
                           rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("topo,B,nl", CASES, ids=[f"{t}-B{b}-{nl}" for t, b, nl in CASES])
@pytest.mark.parametrize("contender", list(CONTENDERS))
def test_forward_backward_gpu(benchmark, contender, topo, B, nl):
    drive, W, L, idx = problem(topo, B)
    drive.requires_grad_(True)
    L.requires_grad_(True)
    benchmark.group = f"gpu forward+backward {topo} B={B} {nl}"
    benchmark.extra_info.update(flops=flops(topo, B, True), topology=topo, B=B, T=T, nonlinearity=nl)
    fn = CONTENDERS[contender]

    def step():
        out = fn(drive, W, L, idx, alpha=ALPHA, nonlinearity=nl, form=FORM)
        torch.autograd.grad(out, (drive, L), torch.ones_like(out))

    try:
        benchmark.pedantic(synced(step), rounds=5, iterations=1, warmup_rounds=1)
    except torch.cuda.OutOfMemoryError as e:  # the bmm loop's autograd graph at B=2048, all-to-all
        pytest.skip(f"{contender} ran out of GPU memory: {str(e).splitlines()[0]}")
