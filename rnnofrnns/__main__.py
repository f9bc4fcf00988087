"""Command line: `python -m rnnofrnns COMMAND`.

Commands:
  train       train gw / scn / gru / lstm on a task (progress bar, checkpoints, metrics, plots)
  evaluate    reload a run and recompute its test accuracy and ablation
  demo        train the GW net on row-digits (what `make demo` runs)
  superposition  train an ensemble of small RNNs over a sparsity grid and analyse its geometry
  task-switching the gated multi-path linear network on a blocked curriculum of teachers
                 (two-timescale gradient flow; flexible or forgetful regime)
  op-timing   a forward and backward pass of the fused modular recurrence on a
              global-workspace net, checked against the dense reference and timed
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import torch


def _op_timing(args: argparse.Namespace) -> int:
    from rnnofrnns import cpu_extension_available
    from rnnofrnns.ops import modular_rnn

    torch.set_flush_denormal(True)
    p, n, T, B = args.areas, args.area_size, args.steps, args.batch
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


TRAIN_HELP = {
    "epochs": "number of epochs", "batch_size": "global batch size", "lr": "Adam learning rate",
    "weight_decay": "Adam weight decay", "clip": "gradient-norm clipping (0: off)",
    "num_areas": "number of areas (scn/gw)", "area_size": "units per area (scn/gw)",
    "topology": "scn topology: all, gw, none, random:<density>", "workspace_size": "gw: size of the workspace area",
    "feedback_sparsity": "fraction of inter-area weights fixed at 0 (0/1 mask)", "form": "hopfield or rate",
    "nonlinearity": "relu, tanh or identity", "alpha": "Euler step dt/tau in (0, 1]",
    "gamma": "Perron root of |W| of every area (< 1)", "density": "density of the intra-area matrices",
    "hidden_size": "gru/lstm hidden size (default: the GW net's trainable-parameter count)",
    "seed": "random seed (data split, initialisation, batch order)", "device": "cpu or cuda",
    "backend": "reference, cpu or triton (default: by device)", "data_dir": "folder of MNIST/CIFAR-10 files",
    "dtype": "float32 or float64", "threads": "torch CPU threads", "stop_after": argparse.SUPPRESS,
}


def _add_train_args(parser: argparse.ArgumentParser, defaults) -> None:
    from dataclasses import fields

    from rnnofrnns.data import TASKS
    from rnnofrnns.training import MODELS

    parser.add_argument("--model", choices=MODELS, default=defaults.model, help="model to train")
    parser.add_argument("--task", choices=list(TASKS), default=defaults.task, help="data set")
    parser.add_argument("--out", default=defaults.out, help="output folder (checkpoints, metrics.json, plots)")
    for f in fields(defaults):
        if f.name in ("model", "task", "out", "guarantee", "progress"):
            continue
        default = getattr(defaults, f.name)
        kind = {int: int, float: float}.get(type(default), str)
        if f.name in ("workspace_size", "hidden_size", "threads", "stop_after"):
            kind = int
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default, help=TRAIN_HELP.get(f.name))
    parser.add_argument("--no-guarantee", action="store_true", help="do not keep the discrete certificate true")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")


def _config_from(args: argparse.Namespace, defaults):
    from dataclasses import fields, replace

    values = {f.name: getattr(args, f.name) for f in fields(defaults) if hasattr(args, f.name)}
    values["guarantee"] = not args.no_guarantee
    values["progress"] = not args.no_progress
    return replace(defaults, **values)


def _train(args: argparse.Namespace) -> int:
    import json
    import os

    from rnnofrnns.training import TrainConfig, train

    cfg = _config_from(args, TrainConfig())
    if args.resume:
        saved_path = os.path.join(cfg.out, "config.json")
        if not os.path.exists(saved_path):
            raise FileNotFoundError(f"nothing to resume: {saved_path} is missing")
        with open(saved_path) as f:
            saved = TrainConfig(**json.load(f))
        # the run's own settings, except how long it goes on and how it reports
        for name in ("epochs", "stop_after", "progress"):
            setattr(saved, name, getattr(cfg, name))
        if cfg.threads is not None:
            saved.threads = cfg.threads
        cfg = saved
    train(cfg, resume=args.resume)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from rnnofrnns.training import evaluate

    result = evaluate(args.dir)
    return 0 if result.get("matches_metrics_json", True) else 1


def _demo(args: argparse.Namespace) -> int:
    from rnnofrnns.training import TrainConfig, train

    cfg = TrainConfig(model="gw", task="row-digits", out=args.out, epochs=args.epochs, progress=not args.no_progress)
    metrics = train(cfg)
    print(f"\ndemo: GW net on row-digits, test accuracy {metrics['test_accuracy']:.4f} in {metrics['wall_time_s']:.0f} s;"
          f" plots and metrics.json in {args.out}/")
    return 0


def _superposition(args: argparse.Namespace) -> int:
    from rnnofrnns.superposition import SuperpositionConfig, run_superposition

    cfg = SuperpositionConfig(hidden=args.hidden, features=args.features, delays=args.delay,
                              sparsities=args.sparsities, seeds=args.seeds, steps=args.steps,
                              batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, variant=args.variant,
                              out=args.out, threads=args.threads, progress=not args.no_progress)
    run_superposition(cfg)
    return 0


def _task_switching(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from rnnofrnns.task_switching import TaskSwitchingConfig, run_task_switching

    kw = {f.name: getattr(args, f.name) for f in fields(TaskSwitchingConfig) if hasattr(args, f.name)}
    run_task_switching(TaskSwitchingConfig(**kw, progress=not args.no_progress))
    return 0


TASK_SWITCHING_HELP = {
    "regime": "flexible (fast bounded gates, tau_c 0.03, regularised) or forgetful (tau_c = tau_W, no regulariser)",
    "tau_c": "gate time constant (default: 0.03 flexible, tau_W forgetful)",
    "lambda_nonneg": "weight of sum max(0, -c) (default: 0.091 flexible, 0 forgetful)",
    "lambda_norm": "weight of 1/2 (||c||_k - 1)^2 (default: 0.91 flexible, 0 forgetful)",
    "norm_k": "k of the gate norm (1 or 2)",
    "block_length": "time per block of one task",
    "blocks": "number of blocks (A, B, A, B, ...)",
    "dt": "Euler step",
    "batch": "fresh Gaussian inputs per step",
    "threshold": "loss level for the time-to-threshold metric",
    "record_every": "steps between recorded gates and alignments",
    "compose": "after the blocked phase, solve the two composed tasks with the gates alone",
    "compose_length": "time given to each composed task",
    "backend": "gated_paths backend (reference, cpu, triton; default: the device's)",
}


def _add_task_switching_args(parser: argparse.ArgumentParser) -> None:
    from dataclasses import fields

    from rnnofrnns.task_switching import REGIMES, TaskSwitchingConfig

    for f in fields(TaskSwitchingConfig):
        if f.name == "progress":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if f.name == "regime":
            parser.add_argument(flag, choices=REGIMES, default=default, help=TASK_SWITCHING_HELP[f.name])
        elif f.name == "gate_shape":
            parser.add_argument(flag, choices=["path", "neuron"], default=default, help="one gate per path, or per path and output neuron")
        elif f.name == "backend":
            parser.add_argument(flag, choices=["reference", "cpu", "triton"], default=None, help=TASK_SWITCHING_HELP[f.name])
        elif f.name == "compose":
            parser.add_argument(flag, action="store_true", help=TASK_SWITCHING_HELP[f.name])
        else:
            kind = {"int": int, "float": float, "str": str}.get(
                type(default).__name__ if default is not None else ("str" if f.name == "backend" else "float"), str)
            parser.add_argument(flag, type=kind, default=default,
                                help=TASK_SWITCHING_HELP.get(f.name, f"default {default}"))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(argv: Optional[List[str]] = None) -> int:
    from rnnofrnns.data import DataError
    from rnnofrnns.training import TrainConfig

    parser = argparse.ArgumentParser(prog="python -m rnnofrnns", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train a model on a task (also under torchrun)")
    _add_train_args(tr, TrainConfig())
    tr.set_defaults(func=_train)
    ev = sub.add_parser("evaluate", help="reload a run and recompute its test accuracy and ablation")
    ev.add_argument("dir", help="the --out folder of a finished run")
    ev.set_defaults(func=_evaluate)
    demo = sub.add_parser("demo", help="train the GW net on row-digits (what `make demo` runs)")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=_demo)
    from rnnofrnns.superposition import SuperpositionConfig

    sd = SuperpositionConfig()
    sp = sub.add_parser("superposition", help="temporal superposition: train small RNNs over a sparsity grid")
    sp.add_argument("--hidden", type=int, default=sd.hidden, help="hidden size of every RNN")
    sp.add_argument("--features", type=int, default=sd.features, help="number of input features F")
    sp.add_argument("--delay", type=int, nargs="+", default=sd.delays, help="delay(s) k to recall")
    sp.add_argument("--sparsities", type=float, nargs="+", default=sd.sparsities, help="input sparsities 1 - p")
    sp.add_argument("--seeds", type=int, default=sd.seeds, help="instances per (delay, sparsity)")
    sp.add_argument("--steps", type=int, default=sd.steps, help="Adam steps")
    sp.add_argument("--batch-size", type=int, default=sd.batch_size)
    sp.add_argument("--seq-len", type=int, default=sd.seq_len)
    sp.add_argument("--lr", type=float, default=sd.lr)
    sp.add_argument("--variant", choices=["linear", "relu_readout", "relu"], default=sd.variant)
    sp.add_argument("--out", default=sd.out)
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=_superposition)
    ts = sub.add_parser("task-switching", help="gated multi-path linear network on a blocked curriculum")
    _add_task_switching_args(ts)
    ts.set_defaults(func=_task_switching)
    timing = sub.add_parser("op-timing", help="time the fused recurrence against the dense reference")
    timing.add_argument("--areas", type=int, default=16)
    timing.add_argument("--area-size", type=int, default=32)
    timing.add_argument("--steps", type=int, default=784)
    timing.add_argument("--batch", type=int, default=64)
    timing.set_defaults(func=_op_timing)
    args = parser.parse_args(argv)
    for name in ("areas", "area_size", "steps", "batch", "epochs", "hidden", "features", "seeds", "batch_size",
                 "seq_len"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    try:
        return args.func(args)
    except (ValueError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
