"""Benchmarks of gated_paths (part of `make bench`; bench/ops/report.py makes the table).

B=512, D_in=D_out=256, P in {2, 8, 32}, gates of every shape, forward and
forward+backward (gradients of x, W and c). Contenders: the fused backend of the
device ("cpu" here, "triton" on a GPU), the reference loop over paths, torch.einsum,
and one dense GEMM with the same FLOPs as the gate-folded product, torch.mm of
[B, P*D_in] by [P*D_in, D_out] (with the gradients of both operands for
forward+backward): the speed limit.
"""
from __future__ import annotations

import pytest
import torch

from rnnofrnns.ops import gated_paths, gated_paths_reference

B, D = 512, 256
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
EINSUM = {"path": "p,poi,bi->bo", "sample": "bp,poi,bi->bo", "neuron": "bpo,poi,bi->bo"}


def inputs(P, kind, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=g)
    W = torch.randn(P, D, D, generator=g) / D ** 0.5
    c = torch.rand(*{"path": (P,), "sample": (B, P), "neuron": (B, P, D)}[kind], generator=g)
    return [t.to(device) for t in (x, W, c)]


def contender_fn(name, device, kind):
    fused = "cpu" if device == "cpu" else "triton"
    if name == "fused":
        return lambda x, W, c: gated_paths(x, W, c, backend=fused)
    if name == "reference":
        return gated_paths_reference
    if name == "einsum":
        return lambda x, W, c: torch.einsum(EINSUM[kind], c, W, x)
    raise KeyError(name)


def timed(device, fn):
    if device == "cpu":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    return run


CASES = [(d, P, k) for d in DEVICES for P in (2, 8, 32) for k in ("path", "sample", "neuron")]
IDS = [f"{d}-P{P}-{k}" for d, P, k in CASES]


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwdbwd"])
@pytest.mark.parametrize("device,P,kind", CASES, ids=IDS)
@pytest.mark.parametrize("contender", ["fused", "reference", "einsum", "gemm"])
def test_gated_paths(benchmark, contender, device, P, kind, backward):
    benchmark.group = f"gated_paths {'fwd+bwd' if backward else 'fwd'} {device} P={P} {kind}"
    benchmark.extra_info.update(flops=2 * B * P * D * D * (3 if backward else 1), P=P, gate=kind, device=device)
    x, W, c = inputs(P, kind, device)
    if contender == "gemm":
        a = torch.randn(B, P * D, device=device)
        m = torch.randn(P * D, D, device=device)
        args = (a, m)

        def fn(a, m):
            return torch.mm(a, m)
    else:
        args = (x, W, c)
        fn = contender_fn(contender, device, kind)
    if backward:
        for t in args:
            t.requires_grad_(True)
        go = torch.randn(B, D, device=device)

        def step():
            torch.autograd.grad(fn(*args), args, go)
    else:
        def step():
            with torch.no_grad():
                return fn(*args)
    rounds = 20 if device == "cuda" or P < 32 else 8
    benchmark.pedantic(timed(device, step), rounds=rounds, iterations=1, warmup_rounds=2)
