"""The fused ensemble_loss op alone (no autograd, no optimiser) on the ensemble benchmark's
data, with 1 and 2 threads: how the one-pass kernel scales with the hidden size and the
thread count. Usage: python bench/ops/ensemble_op_threads.py [--relu-hidden] [HIDDEN ...] (default
2 5 10; relu readout, and a linear hidden layer as in the benchmark unless --relu-hidden).
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_bench_ensemble import F, I, data

import rnnofrnns  # noqa: F401  (registers the ops)

VECTOR_LANES = 8  # float32 rows per AVX2 vector


def vector_fmas(n: int, B: int, T: int, relu_hidden: bool) -> int:
    """Vector FMAs of one forward+backward: per (8-row tile, time step) n*F each for the drive,
    the readout, W_y go, and the W_y and W_x gradients; n*n each for the forward recurrence,
    the backward carry and the W_h gradient (700 at n = 10, F = 8). A linear hidden layer of
    size 5 or 10 runs in a Hessenberg basis: both recurrences use n(n+1)/2 + n-1 entries of
    W_h instead of n*n, and the readout and W_y go n-1 fewer (610 at n = 10)."""
    per_tile_step = 5 * n * F + 3 * n * n
    if not relu_hidden and n in (5, 10) and F == 8:
        per_tile_step -= 2 * (n * n - (n * (n + 1) // 2 + n - 1)) + 2 * (n - 1)
    return per_tile_step * I * (B // VECTOR_LANES) * T


def main() -> None:
    args = sys.argv[1:]
    relu_hidden = "--relu-hidden" in args
    sizes = [a for a in args if a != "--relu-hidden"]
    if not all(a.isdigit() and 1 <= int(a) <= 64 for a in sizes):
        sys.exit(f"usage: python bench/ops/ensemble_op_threads.py [--relu-hidden] [HIDDEN ...] (hidden sizes 1 to 64), "
                 f"got {' '.join(args)}")
    sizes = [int(a) for a in sizes] or [2, 5, 10]
    torch.set_flush_denormal(True)
    x, y = data()
    B, T = x.shape[1], x.shape[2]
    for n in sizes:
        g = torch.Generator().manual_seed(1)
        Wx = torch.randn(I, n, F, generator=g) * 0.3
        Wh = torch.randn(I, n, n, generator=g) * 0.2
        Wy = torch.randn(I, n, F, generator=g) * 0.3
        b = torch.zeros(I, F)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                torch.ops.rnnofrnns.ensemble_loss(x, Wx, Wh, Wy, b, y, relu_hidden, True, True)
                times.append(time.perf_counter() - t0)
            times.sort()
            rate = vector_fmas(n, B, T, relu_hidden) / times[3] / 1e9
            print(f"hidden {n:2d}{' relu' if relu_hidden else ''}, {threads} thread(s): min {times[0] * 1e3:6.1f} ms, median {times[3] * 1e3:6.1f} ms,"
                  f" {rate:.1f} G vector FMA/s")


if __name__ == "__main__":
    main()
