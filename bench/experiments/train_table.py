"""Train every model on every task and print the comparison table of the README and of
docs/training.md ("The certified nets on long sequences").

    python bench/experiments/train_table.py --out runs/table             # every run (hours here)
    python bench/experiments/train_table.py --out runs/table --tasks seq-digits --seeds 0 1 2
    python bench/experiments/train_table.py --out runs/table --report    # only print the table

Each run is `python -m rnnofrnns train --model M --task T --epochs E --seed S --threads 2
--overwrite`, plus the row's flags (ROWS). Every model of a task gets the same epoch budget;
the GRU and LSTM are sized to the trainable-parameter count of the default GW net. Finished
runs (a metrics.json with a test accuracy) are kept, so the script can be stopped and rerun.
With --lrs the baseline rows (GRU, LSTM) are trained at each of those learning rates (folders
TASK-ROW-lrLR-sSEED) and reported at the one with the best mean validation accuracy over the
seeds (the test accuracy never chooses); the certified rows keep train's default lr.
The table gives the mean test accuracy over the seeds run and, for more than one seed,
the range (min-max); the certificate column is computed from the trained weights
(both: continuous and discrete certificates hold).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# row name -> (model, extra flags). Every row names the settings it differs in from the FIRST
# default below (the certified default of the first study: svd areas, cayley step, learned
# timescales, alpha 0.3), so that a row means the same whatever train's defaults are; "gw" is
# train's default (since issue 30: FIRST with --readout glu --input-timescales --input-encoder 16).
FIRST = ["--readout", "last", "--no-input-timescales", "--input-encoder", "0"]
EARLIEST = ["--feedback-step", "euler", "--areas", "sparse", "--alpha", "0.5", "--gamma", "0.9",
            "--no-learn-timescales", "--no-input-timescales", "--input-encoder", "0", "--readout", "last"]
ROWS = {
    "gw": ("gw", []),  # train's default
    "gw-first": ("gw", FIRST),  # the default of the first study
    "gw-euler": ("gw", EARLIEST),  # the certified default before the first study
    "gw-sparse-cayley": ("gw", FIRST + ["--areas", "sparse", "--gamma", "0.99", "--alpha", "0.1",
                                        "--no-learn-timescales"]),
    "gw-svd-cayley": ("gw", FIRST + ["--no-learn-timescales"]),
    "gw-free": ("gw", EARLIEST + ["--gamma", "0.99", "--alpha", "0.2", "--no-guarantee"]),  # uncertified in discrete time
    # the same without the skew tie: both blocks of a pair trained freely (the papers' control)
    "gw-untied": ("gw", EARLIEST + ["--gamma", "0.99", "--alpha", "0.2", "--no-guarantee", "--no-skew-feedback"]),
    "gw-mean": ("gw", FIRST + ["--readout", "mean"]),  # a readout of the mean state
    "gw-glu": ("gw", FIRST + ["--readout", "glu"]),    # a pooled gated-linear-unit readout
    "gw-in": ("gw", FIRST + ["--input-timescales"]),   # input-driven timescales
    "gw-glu-in": ("gw", FIRST + ["--readout", "glu", "--input-timescales"]),  # both
    # the input path and depth on top of both (items 4 and 3 of issue 30)
    "gw-glu-in-enc": ("gw", FIRST + ["--readout", "glu", "--input-timescales", "--input-encoder", "16"]),  # = gw
    "gw-glu-in-scaled": ("gw", FIRST + ["--readout", "glu", "--input-timescales", "--drive-scale", "rate"]),
    "gw-glu-in-spread": ("gw", FIRST + ["--readout", "glu", "--input-timescales", "--alpha-log-spread", "0.05,0.5"]),
    "gw-glu-in-enc-spread": ("gw", FIRST + ["--readout", "glu", "--input-timescales", "--input-encoder", "16",
                                            "--alpha-log-spread", "0.05,0.5"]),
    "gw-glu-in-2l": ("gw", FIRST + ["--readout", "glu", "--input-timescales", "--num-layers", "2", "--num-areas",
                                    "12", "--area-size", "16"]),  # two layers of 12 x 16: 62,330 parameters
    # readouts for short and long sequences alike (issue 30: the mean-pooled GLU fails on psmnist-5k)
    "gw-recent": ("gw", ["--readout", "recent"]),  # train's default with GLU units pooled over learned windows
    "gw-last": ("gw", ["--readout", "last"]),  # train's default with the last-state readout
    "gw-recent-spread": ("gw", ["--readout", "recent", "--alpha-log-spread", "0.05,0.5"]),  # and rates spread
    "scn-pairs15": ("scn", ["--topology", "random-pairs:15"]),  # train's default settings, 15 random pairs
    # the same with the Cayley map formed densely (before 2026-12-03 the only form of this topology;
    # the default since runs it as a product of stars)
    "scn-pairs15-dense": ("scn", ["--topology", "random-pairs:15", "--cayley-form", "dense"]),
    # the baselines, sized to the GW net of their flags (the last two keep the first study's readout)
    "gru": ("gru", []),
    "lstm": ("lstm", []),
    "gru-last": ("gru", FIRST),
    "lstm-last": ("lstm", FIRST),
    "gru-glu": ("gru", FIRST + ["--readout", "glu"]),  # sized to gw-glu
    "gru-recent": ("gru", ["--readout", "recent"]),  # sized to gw-recent, with its readout
    "lstm-recent": ("lstm", ["--readout", "recent"]),
}
TASKS = {"row-digits": 100, "seq-digits": 60, "mnist1d": 60, "psmnist-5k": 20}


def done(path):
    """A finished run: a metrics.json with a test accuracy (not one that says why a run stopped)."""
    try:
        return "test_accuracy" in load(path)
    except (OSError, ValueError):
        return False


BASELINES = ("gru", "lstm")


def run_dirs(out, task, name, seed, lrs):
    """(folder, extra flags) of every run of a row and seed: one per learning rate of the sweep
    for a baseline row when lrs are given, else one."""
    if lrs and ROWS[name][0] in BASELINES:
        return [(os.path.join(out, f"{task}-{name}-lr{lr:g}-s{seed}"), ["--lr", f"{lr:g}"]) for lr in lrs]
    return [(os.path.join(out, f"{task}-{name}-s{seed}"), [])]


def finished_runs(out, task, name, lrs):
    """The finished runs of a row, and the learning rate they were picked at (None: no sweep):
    with a sweep, those of the lr with the best mean validation accuracy over the seeds."""
    by_lr = {}
    for seed in range(100):
        for path, flags in run_dirs(out, task, name, seed, lrs):
            if done(path):
                by_lr.setdefault(float(flags[1]) if flags else None, []).append(load(path))
    if not by_lr:
        return [], None
    lr = max(by_lr, key=lambda k: sum(m["best_val_accuracy"] for m in by_lr[k]) / len(by_lr[k]))
    return by_lr[lr], lr


def run(out, model, task, epochs, seed, extra=()):
    """One run into out; a folder left by an unfinished run is replaced (--overwrite)."""
    cmd = [sys.executable, "-m", "rnnofrnns", "train", "--model", model, "--task", task, "--epochs", str(epochs),
           "--seed", str(seed), "--threads", "2", "--no-progress", "--out", out, *extra]
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
    ap.add_argument("--rows", nargs="*", default=list(ROWS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--epochs", type=int, default=None, help="override the task's epoch budget")
    ap.add_argument("--lrs", nargs="*", type=float, default=[],
                    help="learning rates of the baselines' sweep (e.g. 0.003 0.01 0.03)")
    args = ap.parse_args()
    if not args.report:
        for task in args.tasks:
            for seed in args.seeds:
                for name in args.rows:
                    model, extra = ROWS[name]
                    for path, flags in run_dirs(args.out, task, name, seed, args.lrs):
                        if not done(path):
                            run(path, model, task, args.epochs or TASKS[task], seed, [*extra, *flags])
    print("| task | model | test accuracy | seeds | trainable parameters | s / epoch | epochs | certificates |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for task in args.tasks:
        for name in args.rows:
            runs, lr = finished_runs(args.out, task, name, args.lrs)
            if not runs:
                continue
            accs = [m["test_accuracy"] for m in runs]
            acc = f"{sum(accs) / len(accs):.4f}" + (f" ({min(accs):.3f}-{max(accs):.3f})" if len(accs) > 1 else "")
            certs = [m.get("certificate") for m in runs]
            if not any(certs):
                cert_s = "-"
            elif all(c and c["holds"] and c["discrete_holds"] for c in certs):
                cert_s = "both"
            elif all(c and c["holds"] for c in certs):
                cert_s = "continuous only"
            else:
                cert_s = "FAILS"
            m = runs[0]
            spe = sum(r["seconds_per_epoch"] for r in runs) / len(runs)
            label = name if lr is None else f"{name} (lr {lr:g})"
            print(f"| {task} | {label} | {acc} | {len(runs)} | {m['trainable_parameters']:,} | {spe:.2f} | "
                  f"{m['epochs']} | {cert_s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
