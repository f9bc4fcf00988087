"""`python -m rnnofrnns train | evaluate | demo`: the arguments and the commands of the training job."""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields, replace

from .data import TASKS
from .loop import MODELS, TrainConfig, evaluate, train


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
    values = {f.name: getattr(args, f.name) for f in fields(defaults) if hasattr(args, f.name)}
    values["guarantee"] = not args.no_guarantee
    values["progress"] = not args.no_progress
    return replace(defaults, **values)


def _train(args: argparse.Namespace) -> int:
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
    result = evaluate(args.dir)
    return 0 if result.get("matches_metrics_json", True) else 1


def _demo(args: argparse.Namespace) -> int:
    cfg = TrainConfig(model="gw", task="row-digits", out=args.out, epochs=args.epochs, progress=not args.no_progress)
    metrics = train(cfg)
    print(f"\ndemo: GW net on row-digits, test accuracy {metrics['test_accuracy']:.4f} in {metrics['wall_time_s']:.0f} s;"
          f" plots and metrics.json in {args.out}/")
    return 0


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the train, evaluate and demo commands to the CLI."""
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
