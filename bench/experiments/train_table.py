"""Train every model on every task and print the comparison table of the README.

    python bench/experiments/train_table.py --out runs/table        # all runs (about half an hour here)
    python bench/experiments/train_table.py --out runs/table --report   # only print the table from metrics.json

Each run is `python -m rnnofrnns train --model M --task T --epochs E --seed 0 --threads 2`;
"gw-free" adds `--gamma 0.99 --alpha 0.2 --no-guarantee`.
Also times one epoch of the GW net with backend="reference" on each task, for the ratio
of epoch times (fused cpu backend / dense reference).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

MODELS = ["gw", "scn", "gru", "lstm"]
TASKS = {"row-digits": 100, "seq-digits": 60, "mnist1d": 60, "psmnist-5k": 5}
# A GW net with long memory (slow areas, small step) and without the discrete-time guarantee:
# how much the guarantee costs on the pixel-level tasks. Its continuous certificate still holds.
VARIANTS = {"gw-free": ("gw", ["--gamma", "0.99", "--alpha", "0.2", "--no-guarantee"])}


def done(path):
    """A finished run: a metrics.json with a test accuracy (not one that says why a run stopped)."""
    try:
        return "test_accuracy" in load(path)
    except (OSError, ValueError):
        return False


def run(out, model, task, epochs, extra=()):
    """One run into out; a folder left by an unfinished run is replaced (--overwrite)."""
    cmd = [sys.executable, "-m", "rnnofrnns", "train", "--model", model, "--task", task, "--epochs", str(epochs),
           "--seed", "0", "--threads", "2", "--no-progress", "--out", out, *extra]
    if os.path.isdir(out):
        cmd.append("--overwrite")
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def load(path):
    with open(os.path.join(path, "metrics.json")) as f:
        return json.load(f)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/table")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    args = ap.parse_args()
    if not args.report:
        for task in args.tasks:
            for model in MODELS:
                path = os.path.join(args.out, f"{task}-{model}")
                if not done(path):
                    run(path, model, task, TASKS[task])
            for name, (model, extra) in VARIANTS.items():
                path = os.path.join(args.out, f"{task}-{name}")
                if task != "row-digits" and not done(path):
                    run(path, model, task, TASKS[task], extra)
            ref = os.path.join(args.out, f"{task}-gw-reference")
            if not done(ref):
                run(ref, "gw", task, 1, ["--backend", "reference"])
    print("| task | model | test accuracy | trainable parameters | s / epoch | epochs | certificates |")
    print("|---|---|---:|---:|---:|---:|---|")
    for task in args.tasks:
        for model in MODELS + list(VARIANTS):
            path = os.path.join(args.out, f"{task}-{model}")
            if not done(path):
                continue
            m = load(path)
            cert = m.get("certificate")
            cert_s = "-" if not cert else ("both" if cert["discrete_holds"] else "continuous only")
            print(f"| {task} | {model} | {m['test_accuracy']:.4f} | {m['trainable_parameters']:,} | "
                  f"{m['seconds_per_epoch']:.2f} | {m['epochs']} | {cert_s} |")
    print("\nGW epoch time, fused cpu backend vs backend='reference' (first epoch of each run):")
    for task in args.tasks:
        a, b = os.path.join(args.out, f"{task}-gw"), os.path.join(args.out, f"{task}-gw-reference")
        if done(a) and done(b):
            fused = load(a)["history"][0]["seconds"]
            ref = load(b)["history"][0]["seconds"]
            print(f"  {task}: cpu {fused:.2f} s, reference {ref:.2f} s, ratio {ref / fused:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
