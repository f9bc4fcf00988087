"""Turn pytest-benchmark JSON into tables of speedups and GFLOP/s, and check the targets.

    python bench/ops/report.py RESULTS.json [RESULTS.json ...]

Each file may come from any of the suites in bench/ops/ (or bench/gpu/): modular_rnn,
gated_paths or the ensemble training step; its groups say which report it gets.
"""
from __future__ import annotations

import json
import re
import sys
from collections import defaultdict


def contender(name: str) -> str:
    m = re.search(r"\[(.+?)[-\]]", name)
    return m.group(1) if m else name


def load(path):
    with open(path) as f:
        data = json.load(f)
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][contender(b["name"]) if b["group"] != "torch.mm" else b["name"]] = b
    return data, groups


def machine_line(data) -> str:
    """The CPU, and which build of the kernels ran on it (bench/conftest.py records it)."""
    info = data["machine_info"]
    return (f"machine: {info.get('cpu', {}).get('brand_raw', '?')}, {info.get('cpu', {}).get('count', '?')} cpus, "
            f"kernels built for {info.get('rnnofrnns_cpu_capability', '?')} "
            f"(ATen: {info.get('aten_cpu_capability', '?')})")


def main(path: str) -> int:
    data, groups = load(path)
    mm = {name: b["extra_info"]["flops"] / b["stats"]["median"] / 1e9 for name, b in groups.pop("torch.mm", {}).items()}
    mm_step = next((v for k, v in mm.items() if "64x512x512" in k), None)
    mm_big = next((v for k, v in mm.items() if "1024x1024x1024" in k), None)
    print(machine_line(data))
    for name, v in mm.items():
        print(f"torch.mm {name.split('[')[-1].rstrip(']')}: {v:.1f} GFLOP/s")
    print()
    print("| group | contender | median ms | GFLOP/s (non-zero blocks) | fused speedup |")
    print("|---|---|---:|---:|---:|")
    ratios = {}
    for group in sorted(groups, key=lambda g: (not g.startswith("forward "), g)):
        rows = groups[group]
        fused = next((f for f in ("cpu", "triton") if f in rows), None)
        if fused is None:
            continue
        t_cpu = rows[fused]["stats"]["median"]
        for name in [fused, "reference", "bmm_loop", "nn.RNN512"]:
            if name not in rows:
                continue
            b = rows[name]
            t = b["stats"]["median"]
            gf = b["extra_info"]["flops"] / t / 1e9 if name != "nn.RNN512" else float("nan")
            speed = t / t_cpu
            ratios[(group, name)] = speed
            gf_s = f"{gf:.1f}" if gf == gf else "-"
            print(f"| {group} | {name} | {t * 1e3:.1f} | {gf_s} | {speed:.2f}x |")
        ratios[(group, "cpu_gflops")] = rows[fused]["extra_info"]["flops"] / t_cpu / 1e9
    for group in sorted(groups):
        rows = groups[group]
        if not group.startswith("cayley ") or "cpu_cayley" not in rows:
            continue
        t_c = rows["cpu_cayley"]["stats"]["median"]
        for name in ("cpu_cayley", "cpu_euler", "cpu_cayley_dense", "reference_cayley"):
            if name in rows:
                t = rows[name]["stats"]["median"]
                ratios[(group, name)] = t / t_c
                print(f"| {group} | {name} | {t * 1e3:.1f} | - | {t / t_c:.2f}x |")

    rows = groups.get("input rates forward+backward star B=64 relu", {})
    if "constant_rates" in rows and "input_rates" in rows:
        t_c = rows["constant_rates"]["stats"]["median"]
        for name in ("constant_rates", "input_rates"):
            t = rows[name]["stats"]["median"]
            ratios[("input rates", name)] = t / t_c
            print(f"| input rates forward+backward star B=64 relu | {name} | {t * 1e3:.1f} | - | {t / t_c:.2f}x |")

    if any(g.startswith("gpu ") for g in groups):
        return 0  # the targets below are the CPU backend's
    print("\nTargets (GW star, T=784):")
    checks = [
        ("fwd+bwd B=64 relu vs reference >= 5x", ratios.get(("forward+backward star B=64 relu", "reference")), 5.0),
        ("fwd+bwd B=64 relu vs bmm loop >= 3x", ratios.get(("forward+backward star B=64 relu", "bmm_loop")), 3.0),
        ("fwd B=64 relu vs nn.RNN(512) >= 3x", ratios.get(("forward star B=64 relu", "nn.RNN512")), 3.0),
        ("fwd+bwd B=1 relu vs reference >= 10x", ratios.get(("forward+backward star B=1 relu", "reference")), 10.0),
        ("fwd+bwd B=1 relu vs bmm loop >= 5x", ratios.get(("forward+backward star B=1 relu", "bmm_loop")), 5.0),
    ]
    euler = ratios.get(("cayley forward+backward star B=64 relu", "cpu_euler"))
    checks += [
        ("cayley fwd+bwd B=64 relu: time vs the euler step <= 1.3x (as euler/cayley >= 1/1.3)",
         euler, 1 / 1.3),
        ("cayley fwd+bwd B=64 relu vs its reference >= 5x",
         ratios.get(("cayley forward+backward star B=64 relu", "reference_cayley")), 5.0),
    ]
    for topo in ("pairs15", "random0.2"):
        checks.append((f"cayley sparse fwd+bwd {topo} B=64 relu: time vs the euler step <= 1.5x "
                       "(as euler/cayley >= 1/1.5)",
                       ratios.get((f"cayley sparse forward+backward {topo} B=64 relu", "cpu_euler")), 1 / 1.5))
    checks.append(("cayley all-to-all fwd+bwd B=64 relu: no slower than the dense map (dense/auto >= 0.95)",
                   ratios.get(("cayley sparse forward+backward all B=64 relu", "cpu_cayley_dense")), 0.95))
    per_step = ratios.get(("input rates", "input_rates"))
    checks.append(("input rates fwd+bwd B=64 relu: time vs constant rates <= 1.25x (as constant/input >= 1/1.25)",
                   1 / per_step if per_step else None, 1 / 1.25))
    gf = ratios.get(("forward star B=64 relu", "cpu_gflops"))
    if gf and mm_step:
        checks.append((f"fwd B=64 relu GFLOP/s ({gf:.1f}) vs torch.mm 64x512x512 ({mm_step:.1f}) >= 60%", gf / mm_step, 0.6))
    if gf and mm_big:
        checks.append((f"fwd B=64 relu GFLOP/s ({gf:.1f}) vs torch.mm 1024^3 ({mm_big:.1f}) >= 60%", gf / mm_big, 0.6))
    for label, value, target in checks:
        if value is None:
            print(f"  [ -- ] {label}: not measured")
            continue
        print(f"  [{'PASS' if value >= target else 'MISS'}] {label}: {value:.2f}")
    return 0


def ensemble_report(path: str) -> None:
    """The ensemble benchmark: one training step of 256 small RNNs."""
    data, groups = load(path)
    print(machine_line(data))
    print("\n| group | ensemble ms | via modular_rnn ms | loop ms | vmap ms | vs loop | vs vmap |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    checks = []
    for group in sorted(groups):
        rows = groups[group]
        if "ensemble" not in rows:
            continue
        t = {k: rows[k]["stats"]["median"] for k in ("ensemble", "modular_rnn", "loop", "vmap") if k in rows}
        nan = float("nan")
        loop, vm = t.get("loop", nan) / t["ensemble"], t.get("vmap", nan) / t["ensemble"]
        print(f"| {group} | {t['ensemble'] * 1e3:.1f} | {t.get('modular_rnn', nan) * 1e3:.1f} | "
              f"{t.get('loop', nan) * 1e3:.1f} | {t.get('vmap', nan) * 1e3:.1f} | {loop:.1f}x | {vm:.1f}x |")
        checks += [(f"{group}: vs loop >= 20x", loop, 20.0), (f"{group}: vs vmap >= 3x", vm, 3.0)]
    print("\nTargets (ensemble):")
    for label, value, target in checks:
        print(f"  [{'PASS' if value >= target else 'MISS'}] {label}: {value:.1f}")


def gated_report(path: str) -> None:
    """The gated_paths benchmark: the fused backend against the loop, einsum and one GEMM."""
    data, groups = load(path)
    print(machine_line(data))
    print("\n| group | fused ms | loop ms | einsum ms | GEMM ms | vs loop | vs einsum | GEMM speed reached |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    checks = []
    for group in sorted(groups, key=lambda g: (g.split()[2], g.split()[1], int(g.split()[3][2:]), g.split()[4])):
        rows = groups[group]
        if "fused" not in rows:
            continue
        t = {k: rows[k]["stats"]["median"] for k in ("fused", "reference", "einsum", "gemm") if k in rows}
        nan = float("nan")
        loop, ein = t.get("reference", nan) / t["fused"], t.get("einsum", nan) / t["fused"]
        gemm = t.get("gemm", nan) / t["fused"]
        print(f"| {group} | {t['fused'] * 1e3:.2f} | {t.get('reference', nan) * 1e3:.2f} | "
              f"{t.get('einsum', nan) * 1e3:.2f} | {t.get('gemm', nan) * 1e3:.2f} | {loop:.2f}x | {ein:.2f}x | "
              f"{100 * gemm:.0f}% |")
        if not group.endswith("neuron"):
            checks += [(f"{group}: vs loop >= 2x", loop, 2.0), (f"{group}: GEMM speed >= 70%", gemm, 0.7)]
    print("\nTargets (gated_paths, path and sample gates):")
    for label, value, target in checks:
        print(f"  [{'PASS' if value >= target else 'MISS'}] {label}: {value:.2f}")


def report(path: str) -> int:
    """Print the report of one results file, chosen by its groups (targets are printed as PASS /
    MISS, not turned into an exit code)."""
    _, groups = load(path)
    if any(g.startswith("ensemble") for g in groups):
        ensemble_report(path)
        return 0
    if any(g.startswith("gated_paths") for g in groups):
        gated_report(path)
        return 0
    return main(path)


if __name__ == "__main__":
    paths = sys.argv[1:] or ["bench/results/modular_rnn.json"]
    sys.exit(max(report(p) for p in paths))
