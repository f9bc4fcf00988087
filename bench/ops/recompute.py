"""Memory that does not grow with the sequence: the time and peak memory of a training step of
the certified default (GlobalWorkspaceNet as `train` builds it: 16 areas of 32, svd areas,
Cayley step, learned and input-driven timescales, input encoder, recent readout; input size 1,
10 classes) at T=4096, B=64, keeping every state against recompute_every=K, each measurement in
its own process. Writes recompute.json and the table of docs/performance.md ("Recomputation").

    python bench/ops/recompute.py --out bench/results/recompute            # about 8 min here
    python bench/ops/recompute.py --out bench/results/recompute --report   # the table again

A training step is the forward, the cross-entropy loss and the backward (every parameter's
gradient; no optimizer step). Peak memory: the process's peak resident set over the steps
minus its resident set after the model and the batch were built (bench/ops/scaling.py's
measure), under glibc's default allocator and with its mmap threshold fixed (ALLOCATORS below). Time: the median of --rounds steps after one warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Optional

# glibc serves a freed block's size from its heap from then on (its dynamic mmap threshold, up
# to 32 MB), and its heap does not give back what fragments: the resident set then keeps blocks
# that were freed. With a fixed threshold every block of 4 MB or more is mapped on its own and
# unmapped when freed (the resident set follows the live tensors) at the price of a page fault
# per fresh page. Every contender runs in both: "default" and "mapped".
MMAP_THRESHOLD = 4 * 2**20
ALLOCATORS = {"default": {}, "mapped": {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}}
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scaling import rss_bytes, time_and_peak  # noqa: E402  (the same measurement as the scaling table)

CONTENDERS = ("keep", "32", "64", "128", "256", "auto:1")


def measure(contender: str, T: int, B: int, rounds: int) -> dict:
    import torch

    from rnnofrnns.experiments.training.build import build_model
    from rnnofrnns.experiments.training.config import TrainConfig

    torch.manual_seed(0)
    net = build_model(TrainConfig(model="gw", task="seq-digits"), 1, 10)
    if contender.startswith("auto:"):
        net.recompute_every, net.memory_budget_gb = "auto", float(contender.split(":")[1])
    elif contender != "keep":
        net.recompute_every = int(contender)
    x = torch.randn(B, T, 1)
    y = torch.randint(0, 10, (B,))
    segment: Optional[int] = net.segment_length(T, B)
    base_rss = rss_bytes()

    def step():
        net.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()

    return dict(time_and_peak(step, rounds, base_rss), segment=segment)


def report(results: list) -> str:
    by = {(r["contender"], r["allocator"]): r for r in results}
    lines = ["| recompute_every | K | time, s (vs keep): default / mapped | peak memory, GB (vs keep): default / "
             "mapped |", "|---|---|---|---|"]
    for c in dict.fromkeys(r["contender"] for r in results):
        name = "None (keep every state)" if c == "keep" else (
            f"'auto', memory_budget_gb={c.split(':')[1]}" if c.startswith("auto") else c)
        cells = []
        for key, fmt in (("time_s", lambda v, k: f"{v:.2f} ({v / k:.2f}x)"),
                         ("peak_gb", lambda v, k: f"{v:.2f} (1/{k / v:.1f})")):
            parts = []
            for alloc in ALLOCATORS:
                r, k = by.get((c, alloc)), by.get(("keep", alloc))
                parts.append(fmt(r[key], k[key]) if r and k else "-")
            cells.append(" / ".join(parts))
        segment = next((r["segment"] for r in results if r["contender"] == c), None)
        lines.append(f"| {name} | {segment or '-'} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/recompute")
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--contenders", nargs="+", default=list(CONTENDERS))
    ap.add_argument("--report", action="store_true", help="only print the table of the saved results")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one contender, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.T, args.B, args.rounds)))
        return
    path = os.path.join(args.out, "recompute.json")
    if not args.report:
        os.makedirs(args.out, exist_ok=True)
        results = []
        for c in args.contenders:
            for alloc, env in ALLOCATORS.items():
                proc = subprocess.run([sys.executable, __file__, "--one", c, "--T", str(args.T), "--B", str(args.B),
                                       "--rounds", str(args.rounds)], capture_output=True, text=True,
                                      env=dict(os.environ, **env))
                if proc.returncode != 0:
                    sys.exit(f"{c}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
                results.append(dict(contender=c, allocator=alloc, T=args.T, B=args.B,
                                    **json.loads(proc.stdout.strip().splitlines()[-1])))
                print(results[-1], flush=True)
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(path + ".tmp", path)
    print(report(json.load(open(path))))


if __name__ == "__main__":
    main()
