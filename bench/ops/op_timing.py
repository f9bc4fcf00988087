"""One forward and backward pass of the fused modular recurrence on a global-workspace net,
checked against the dense reference and timed (a quick look; `make bench` is the benchmark).

    python bench/ops/op_timing.py [--areas 16] [--area-size 32] [--steps 784] [--batch 64]

Exits 1 when the fused result differs from the reference by more than 1e-4 (relative).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from rnnofrnns import cpu_extension_available
from rnnofrnns.ops import modular_rnn


def op_timing(p: int, n: int, T: int, B: int) -> int:
    torch.set_flush_denormal(True)
    hub = p - 1
    pairs = [(hub, j) for j in range(p - 1)] + [(j, hub) for j in range(p - 1)]
    g = torch.Generator().manual_seed(0)
    drive = (0.5 * torch.randn(T, B, p * n, generator=g)).requires_grad_()
    W = 0.9 / n ** 0.5 * torch.randn(p, n, n, generator=g)
    L = (0.3 / (2 * n) ** 0.5 * torch.randn(len(pairs), n, n, generator=g)).requires_grad_()
    idx = torch.tensor(pairs)
    backend = "cpu" if cpu_extension_available() else "reference"
    print(f"global-workspace net: {p} areas x {n} units, {len(pairs)} feedback blocks, T={T}, B={B}, "
          f"{torch.get_num_threads()} threads")

    def run(name: str):
        t0 = time.perf_counter()
        out = modular_rnn(drive, W, L, idx, alpha=0.5, nonlinearity="relu", form="hopfield", backend=name)
        t1 = time.perf_counter()
        grads = torch.autograd.grad(out.square().mean(), (drive, L))
        t2 = time.perf_counter()
        return out, grads, t1 - t0, t2 - t1

    run(backend)  # warm-up
    out, grads, tf, tb = run(backend)
    ref, ref_grads, rf, rb = run("reference")
    err = max((a - b).abs().max().item() / b.abs().max().item() for a, b in zip((out,) + grads, (ref,) + ref_grads))
    print(f"{backend:>9}: forward {tf * 1e3:8.1f} ms   backward {tb * 1e3:8.1f} ms")
    print(f"reference: forward {rf * 1e3:8.1f} ms   backward {rb * 1e3:8.1f} ms")
    print(f"speedup forward+backward: {(rf + rb) / (tf + tb):.1f}x; largest relative difference "
          f"from the reference (states and gradients): {err:.1e}")
    return 0 if err < 1e-4 else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--areas", type=int, default=16)
    parser.add_argument("--area-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=784)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    for name in ("areas", "area_size", "steps", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    return op_timing(args.areas, args.area_size, args.steps, args.batch)


if __name__ == "__main__":
    sys.exit(main())
