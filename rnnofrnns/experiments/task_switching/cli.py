"""`python -m rnnofrnns task-switching`: its arguments and the command."""
from __future__ import annotations

import argparse
from dataclasses import fields

from .experiment import REGIMES, TaskSwitchingConfig, run_task_switching


def _task_switching(args: argparse.Namespace) -> int:
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
    "threads": "torch CPU threads",
}


def _add_task_switching_args(parser: argparse.ArgumentParser) -> None:
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
        elif f.name == "threads":
            parser.add_argument(flag, type=int, default=None, help=TASK_SWITCHING_HELP[f.name])
        elif f.name == "compose":
            parser.add_argument(flag, action="store_true", help=TASK_SWITCHING_HELP[f.name])
        else:
            kind = {"int": int, "float": float, "str": str}.get(
                type(default).__name__ if default is not None else ("str" if f.name == "backend" else "float"), str)
            parser.add_argument(flag, type=kind, default=default,
                                help=TASK_SWITCHING_HELP.get(f.name, f"default {default}"))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the task-switching command to the CLI."""
    ts = sub.add_parser("task-switching", help="gated multi-path linear network on a blocked curriculum")
    _add_task_switching_args(ts)
    ts.set_defaults(func=_task_switching)
