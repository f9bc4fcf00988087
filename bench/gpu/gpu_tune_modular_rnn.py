"""Launch configurations of the Triton modular_rnn kernels on a GPU (rows per program,
warps per program): correctness of each against the float64 reference, then the median
time of the forward and of forward+backward with triton.testing.do_bench.

    python bench/gpu/gpu_tune_modular_rnn.py
"""
from __future__ import annotations

import itertools
import os
import sys

import torch
import triton.testing

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "ops")]

import rnnofrnns.kernels.modular_rnn as tk  # noqa: E402
from rnnofrnns.ops import modular_rnn, modular_rnn_reference  # noqa: E402
from test_bench_modular_rnn_gpu import ALPHA, FORM, problem

CONFIGS = [(16, 1), (16, 2), (16, 4), (32, 4), (64, 4), (64, 8)]


def check(nl: str) -> float:
    g = torch.Generator().manual_seed(1)
    T, B, p, n = 6, 37, 16, 32
    pairs = [(15, j) for j in range(15)] + [(j, 15) for j in range(15)]
    drive = torch.randn(T, B, p * n, generator=g, dtype=torch.float64)
    W = 0.9 / n ** 0.5 * torch.randn(p, n, n, generator=g, dtype=torch.float64)
    L = 0.1 * torch.randn(len(pairs), n, n, generator=g, dtype=torch.float64)
    idx = torch.tensor(pairs)
    ins = [t.cuda().float().requires_grad_(True) for t in (drive, W, L)]
    ref_ins = [t.requires_grad_(True) for t in (drive, W, L)]
    out = modular_rnn(ins[0], ins[1], ins[2], idx.cuda(), alpha=ALPHA, nonlinearity=nl, form=FORM, backend="triton")
    ref = modular_rnn_reference(*ref_ins, idx, alpha=ALPHA, nonlinearity=nl, form=FORM)
    go = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(out, ins, go.cuda().float())
    ref_grads = torch.autograd.grad(ref, ref_ins, go)
    return max(((a.double().cpu() - b).abs().max() / b.abs().max()).item()
               for a, b in zip((out,) + grads, (ref,) + ref_grads))


def main() -> None:
    for (bb, nw), (topo, B) in itertools.product(CONFIGS, [("star", 64), ("star", 2048), ("all", 2048)]):
        tk.LAUNCH.update(BLOCK_B=bb, num_warps=nw)
        err = check("tanh")
        drive, W, L, idx = problem(topo, B)
        fwd = triton.testing.do_bench(
            lambda: modular_rnn(drive, W, L, idx, alpha=ALPHA, nonlinearity="relu", form=FORM, backend="triton"),
            warmup=50, rep=300, return_mode="median")
        d, Lg = drive.clone().requires_grad_(True), L.clone().requires_grad_(True)

        def step():
            out = modular_rnn(d, W, Lg, idx, alpha=ALPHA, nonlinearity="relu", form=FORM, backend="triton")
            torch.autograd.grad(out, (d, Lg), torch.ones_like(out))

        fb = triton.testing.do_bench(step, warmup=50, rep=300, return_mode="median")
        print(f"BLOCK_B={bb:3d} warps={nw} {topo:4s} B={B:5d}: rel err {err:.1e}  fwd {fwd:7.1f} ms  fwd+bwd {fb:7.1f} ms",
              flush=True)
    tk.LAUNCH.update(BLOCK_B=tk.BLOCK_B, num_warps=2)


if __name__ == "__main__":
    main()
