"""How the time and peak memory of a training step grow with p, n, T and B: every contender on
a one-factor grid around the GW size (p=16 areas of n=32 units, T=784, B=64), each measurement
in its own process. Writes a JSON of the measurements, the table of docs/performance.md
("Scaling") and two figures.

    python bench/ops/scaling.py --out bench/results/scaling          # all (about 20 min here)
    python bench/ops/scaling.py --out bench/results/scaling --report # the table and plots again

A training step is the forward and the backward of the recurrence alone (hopfield, relu, the
drive given as [T, B, p*n], loss = <states, fixed random weights>), with the gradients of the
drive, W, the feedback blocks and the per-area rates (the GRUs: their input and every weight).
Contenders: the fused CPU op with the Euler step on the GW star, the Cayley step on the GW star,
on random pairs (p - 1 pairs: the star's block count; a product of stars) and on the same pairs
with the dense Cayley map; the dense reference (Euler step, GW star); nn.GRU with the same
hidden size p*n (input size 1) and with the fused op's trainable-parameter count on the star.
Peak memory is the process's peak resident set during the timed steps minus its resident set
after torch was imported (inputs and weights included). A measurement whose memory estimate
exceeds --max-gb, or that runs past --timeout, is reported as such, never run to an OOM kill.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

BASE = dict(p=16, n=32, T=784, B=64)
GRID = dict(p=(8, 16, 32, 64), n=(16, 32, 64), T=(64, 784, 4096), B=(1, 64, 512))
CONTENDERS = ("euler_star", "cayley_star", "cayley_pairs", "cayley_pairs_dense", "reference", "gru_hidden",
              "gru_params")


def configs():
    """The one-factor grid: the base and each factor's values with the others at the base."""
    seen = []
    for factor, values in GRID.items():
        for v in values:
            cfg = dict(BASE, **{factor: v})
            if cfg not in seen:
                seen.append(cfg)
    return seen


def star_params(p: int, n: int) -> int:
    """Trainable parameters of the fused op on the star: W and the 2 (p - 1) feedback blocks."""
    return (p + 2 * (p - 1)) * n * n


def gru_hidden_for(params: int) -> int:
    """The largest GRU (input size 1) with at most `params` parameters."""
    h = 1
    while 3 * ((h + 1) * 1 + (h + 1) ** 2 + 2 * (h + 1)) <= params:
        h += 1
    return h


def memory_estimate_gb(contender: str, p: int, n: int, T: int, B: int) -> float:
    """A generous estimate of a step's memory (float32): a handful of [T, B, H] tensors."""
    H = p * n if contender != "gru_params" else gru_hidden_for(star_params(p, n))
    tensors = {"reference": 12, "gru_hidden": 14, "gru_params": 14}.get(contender, 6)
    return tensors * T * B * H * 4 / 1e9


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(contender: str, p: int, n: int, T: int, B: int, rounds: int) -> dict:
    """Time (median of `rounds` steps after one warm-up) and peak memory of one training step."""
    import torch

    from rnnofrnns import topology as topo
    from rnnofrnns.ops import feedback_plan, modular_rnn, modular_rnn_reference

    base_rss = rss_bytes()
    torch.manual_seed(0)
    H = p * n
    if contender.startswith("gru"):
        hidden = H if contender == "gru_hidden" else gru_hidden_for(star_params(p, n))
        rnn = torch.nn.GRU(1, hidden)
        x = torch.randn(T, B, 1, requires_grad=True)
        weights = torch.randn(T, B, hidden)
        params = [x, *rnn.parameters()]

        def step():
            out, _ = rnn(x)
            torch.autograd.grad((out * weights).sum(), params)
    else:
        star = contender in ("euler_star", "cayley_star", "reference")
        pairs = topo.resolve("gw" if star else f"random-pairs:{p - 1}", p, torch.Generator().manual_seed(0))
        idx = topo.feedback_index(pairs)
        step_kind = "euler" if contender in ("euler_star", "reference") else "cayley"
        form = "dense" if contender == "cayley_pairs_dense" else "auto"
        plan = feedback_plan(idx, p, step_kind, form)
        drive = (0.5 * torch.randn(T, B, H)).requires_grad_(True)
        W = (0.9 / n ** 0.5 * torch.randn(p, n, n)).requires_grad_(True)
        L = (0.3 / (n * len(idx) / p) ** 0.5 * torch.randn(len(idx), n, n)).requires_grad_(True)
        alpha = (0.05 + 0.9 * torch.rand(p)).requires_grad_(True)
        weights = torch.randn(T, B, H)
        params = [drive, W, L, alpha]

        def step():
            if contender == "reference":
                out = modular_rnn_reference(drive, W, L, idx, alpha=alpha, nonlinearity="relu", form="hopfield")
            else:
                out = modular_rnn(drive, W, L, idx, alpha=alpha, nonlinearity="relu", form="hopfield",
                                  feedback_step=step_kind, feedback_plan=plan, backend="cpu")
            torch.autograd.grad((out * weights).sum(), params)

    return time_and_peak(step, rounds, base_rss)


def time_and_peak(step, rounds: int, base_rss: int) -> dict:
    """The median time of `rounds` calls of step after one warm-up, and the process's peak
    resident set over them minus base_rss, in GB."""
    step()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times.sort()
    return dict(time_s=times[len(times) // 2], peak_gb=(peak - base_rss) / 1e9)


def run_all(out: str, rounds: int, timeout: float, max_gb: float) -> None:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "scaling.json")
    results = json.load(open(path)) if os.path.exists(path) else []
    done = {(r["contender"], r["p"], r["n"], r["T"], r["B"]) for r in results}
    for cfg in configs():
        for c in CONTENDERS:
            key = (c, cfg["p"], cfg["n"], cfg["T"], cfg["B"])
            if key in done:
                continue
            row = dict(contender=c, **cfg)
            est = memory_estimate_gb(c, **cfg)
            if est > max_gb:
                row["skipped"] = f"estimated {est:.0f} GB > {max_gb:g} GB"
            else:
                cmd = [sys.executable, __file__, "--one", c, *(str(cfg[k]) for k in ("p", "n", "T", "B")),
                       "--rounds", str(rounds)]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                    if proc.returncode == 0:
                        row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                    else:
                        row["skipped"] = "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
                except subprocess.TimeoutExpired:
                    row["skipped"] = f"over {timeout:g} s"
            print(json.dumps(row), flush=True)
            results.append(row)
            with open(path + ".tmp", "w") as f:
                json.dump(results, f, indent=1)
            os.replace(path + ".tmp", path)


def slope(points):
    """Least-squares exponent of time against the factor (log-log)."""
    pts = [(math.log(x), math.log(y)) for x, y in points if y and y > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den


IDEAL = {  # the exponent of the arithmetic per step, for each contender and factor
    "p": dict(euler_star=1, cayley_star=1, cayley_pairs=1, cayley_pairs_dense=2, reference=2, gru_hidden=2,
              gru_params=1),
    "n": dict(euler_star=2, cayley_star=2, cayley_pairs=2, cayley_pairs_dense=2, reference=2, gru_hidden=2,
              gru_params=2),
    "T": {c: 1 for c in CONTENDERS},
    "B": {c: 1 for c in CONTENDERS},
}


def report(out: str, max_gb: float = 24.0) -> None:
    with open(os.path.join(out, "scaling.json")) as f:
        results = json.load(f)
    by = {(r["contender"], r["p"], r["n"], r["T"], r["B"]): r for r in results}
    print("| contender | " + " | ".join(f"{k}={v}" for k in GRID for v in GRID[k]) + " |")
    print("|---|" + "---:|" * sum(len(v) for v in GRID.values()))
    for what, key, fmt in (("time of a training step, ms", "time_s", lambda v: f"{v * 1e3:,.0f}"),
                           ("peak memory, GB", "peak_gb", lambda v: f"{v:.2f}")):
        print(f"| **{what}** |" + " |" * sum(len(v) for v in GRID.values()))
        for c in CONTENDERS:
            cells = []
            for factor, values in GRID.items():
                for v in values:
                    r = by.get((c, *(dict(BASE, **{factor: v})[k] for k in ("p", "n", "T", "B"))))
                    cells.append("-" if r is None else ("n/a" if key not in r else fmt(r[key])))
            print(f"| {c} | " + " | ".join(cells) + " |")
    print()
    print("| contender | exponent of time in p / n / T / B (ideal) | memory per state element, bytes | "
          "T that fills 24 GB at B=64 |")
    print("|---|---|---:|---:|")
    for c in CONTENDERS:
        parts = []
        for factor, values in GRID.items():
            pts = []
            for v in values:
                r = by.get((c, *(dict(BASE, **{factor: v})[k] for k in ("p", "n", "T", "B"))))
                if r and "time_s" in r:
                    pts.append((v, r["time_s"]))
            parts.append(f"{slope(pts):.2f} ({IDEAL[factor][c]})")
        # memory against T at the base: bytes per [T, B, H] element, and where it reaches max_gb
        pts = [(t, by.get((c, BASE["p"], BASE["n"], t, BASE["B"]), {}).get("peak_gb")) for t in GRID["T"]]
        pts = [(t, m) for t, m in pts if m is not None]
        H = BASE["p"] * BASE["n"] if c != "gru_params" else gru_hidden_for(star_params(BASE["p"], BASE["n"]))
        if len(pts) >= 2:
            (t0, m0), (t1, m1) = pts[0], pts[-1]
            per = (m1 - m0) * 1e9 / ((t1 - t0) * BASE["B"] * H)
            fill = t0 + (max_gb - m0) * 1e9 / (per * BASE["B"] * H) if per > 0 else float("inf")
            mem = f"{per:.1f} | {fill:,.0f}"
        else:
            mem = "- | -"
        print(f"| {c} | {' / '.join(parts)} | {mem} |")
    plot(results, out)


def plot(results, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["contender"], r["p"], r["n"], r["T"], r["B"]): r for r in results}
    for key, label, name in (("time_s", "time of a training step (s)", "scaling_time.png"),
                             ("peak_gb", "peak memory (GB)", "scaling_memory.png")):
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
        for ax, (factor, values) in zip(axes, GRID.items()):
            for c in CONTENDERS:
                pts = []
                for v in values:
                    r = by.get((c, *(dict(BASE, **{factor: v})[k] for k in ("p", "n", "T", "B"))))
                    if r and key in r:
                        pts.append((v, max(r[key], 1e-4)))
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=c)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(factor + " (others at p=16, n=32, T=784, B=64)")
            ax.set_ylabel(label)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=110)
        plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/results/scaling")
    ap.add_argument("--report", action="store_true", help="only print the table and draw the plots")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement")
    ap.add_argument("--max-gb", type=float, default=20.0, help="skip measurements estimated above this")
    ap.add_argument("--one", nargs=5, metavar=("CONTENDER", "P", "N", "T", "B"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        import torch

        torch.set_flush_denormal(True)  # as the benchmarks run every contender (bench/conftest.py)
        c, *sizes = args.one
        p, n, T, B = (int(v) for v in sizes)
        print(json.dumps(measure(c, p, n, T, B, args.rounds)))
        return 0
    if not args.report:
        run_all(args.out, args.rounds, args.timeout, args.max_gb)
    report(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
