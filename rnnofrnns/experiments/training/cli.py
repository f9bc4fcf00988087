"""`python -m rnnofrnns train | evaluate | demo`: the arguments and the commands of the training job."""
from __future__ import annotations

import argparse
import os
from dataclasses import fields, replace

from ..errors import RunError, UsageError
from .data import TASKS
from ...models.areas import AREA_KINDS
from ...models.feedback import FEEDBACK_STEP_KINDS
from ...models.readouts import READOUTS
from ...ops._common import FORMS, NONLINEARITIES
from .._limits import check_threads, run_threads_here
from .config import LEGACY_SETTINGS, MODELS, RESUMABLE, TrainConfig, read_run_config
from .evaluation import evaluate
from .loop import train
from .run_folder import is_run_folder


TRAIN_HELP = {
    "epochs": "number of epochs", "batch_size": "global batch size", "lr": "Adam learning rate",
    "weight_decay": "Adam weight decay",
    "lr_schedule": "none, cosine (lr (1 + cos(pi e / E)) / 2 at epoch e of E) or step (/10 after each third)", "clip": "gradient-norm clipping (0: off)",
    "num_areas": "number of areas (scn/gw)", "area_size": "units per area (scn/gw)",
    "topology": "scn topology: all, gw, none, random:<density>", "workspace_size": "gw: size of the workspace area",
    "feedback_sparsity": "fraction of inter-area weights fixed at 0 (0/1 mask)", "form": " or ".join(sorted(FORMS)),
    "nonlinearity": ", ".join(NONLINEARITIES[:-1]) + " or " + NONLINEARITIES[-1],
    "alpha": "step dt/tau in (0, 1]: one value, or --num-areas comma-separated values (one per area; "
             "the last is the gw workspace)",
    "num_layers": "gw/scn: stacked certified layers, each read by the next (the certificate is the stack's)",
    "between_layers": "gw/scn: none or tanh between stacked layers",
    "input_encoder": "gw/scn: a tanh layer of this many features in front of the input projection (0: none)",
    "drive_scale": "gw/scn: none, or rate (each area's drive times sqrt((2 - a) / a), LRU's normalisation)",
    "alpha_log_spread": "gw/scn: LO,HI: the areas' rates start spread geometrically from LO to HI (instead of --alpha)",
    "alpha_min": "with --input-timescales: the slowest rate an area may take (the certificate's step factor is "
                 "1 - alpha_min (1 - kappa))",
    "feedback_step": " or ".join(f"{name} ({kind.summary})" for name, kind in FEEDBACK_STEP_KINDS.items()),
    "areas": " or ".join(f"{name} ({kind.summary})" for name, kind in AREA_KINDS.items()),
    "sigma_max": "svd areas: largest singular value (< 1)",
    "cayley_form": "gw/scn, cayley step: auto (the cheaper per step of the dense map and a product of stars "
                   "covering the topology), exact (never split: dense unless the topology is a star), stars or dense",
    "recompute_every": "gw/scn: run each sequence in segments of K steps and keep only their starting states; the "
                       "backward recomputes one segment at a time (memory T/K + c K instead of c T, about one more "
                       "forward in time; gradients equal to rounding); auto: K from --memory-budget-gb",
    "memory_budget_gb": "with --recompute-every auto: the GB a training step's states may take",
    "readout": "every model: " + " or ".join(f"{name} ({kind.summary})" for name, kind in READOUTS.items()),
    "gamma": "Perron root of |W| of every area (< 1)", "density": "density of the intra-area matrices",
    "hidden_size": "gru/lstm hidden size (default: the GW net's trainable-parameter count)",
    "seed": "random seed (data split, initialisation, batch order)", "device": "cpu or cuda",
    "backend": "reference, cpu or triton (default: by device)", "data_dir": "folder of MNIST/CIFAR-10 files",
    "dtype": "float32 or float64", "threads": "torch CPU threads", "stop_after": argparse.SUPPRESS,
}


# The settings a sweep sets per run (or takes as its own arguments): every other setting of
# train is a sweep argument too, the same for all its runs.
SWEEP_OWN = ("model", "task", "out", "topology", "feedback_sparsity", "seed", "epochs", "hidden_size", "stop_after")


def _add_train_args(parser: argparse.ArgumentParser, defaults, suppress: bool = False,
                    for_sweep: bool = False) -> None:
    """The train command's arguments; with suppress=True none has a default (to see which were
    given); with for_sweep=True the model settings only (the sweep sets the rest per run)."""
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    if not for_sweep:
        parser.add_argument("--model", choices=MODELS, default=d(defaults.model), help="model to train")
        parser.add_argument("--task", choices=list(TASKS), default=d(defaults.task), help="data set")
        parser.add_argument("--out", default=d(defaults.out),
                            help="run folder: checkpoints, config.json, metrics.json, plots (default: runs/MODEL-TASK)")
    for f in fields(defaults):
        if f.name in ("model", "task", "out", "guarantee", "progress", "learn_timescales", "input_timescales",
                      "skew_feedback"):
            continue
        if for_sweep and f.name in SWEEP_OWN:
            continue
        default = getattr(defaults, f.name)
        kind = {int: int, float: float}.get(type(default), str)
        if f.name in ("workspace_size", "hidden_size", "threads", "stop_after"):
            kind = int
        if f.name == "alpha":
            kind = _alpha_arg
        if f.name == "alpha_log_spread":
            kind = _spread_arg
        if f.name == "recompute_every":
            kind = _recompute_arg
        if f.name == "memory_budget_gb":
            kind = float
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=d(default),
                            help=TRAIN_HELP.get(f.name, ""))
    flag = dict(action="store_true") if not suppress else dict(action="store_true", default=argparse.SUPPRESS)
    parser.add_argument("--no-guarantee", help="do not keep the discrete certificate true", **flag)
    parser.add_argument("--learn-timescales", action=argparse.BooleanOptionalAction,
                        default=d(defaults.learn_timescales),
                        help="train alpha_i = sigmoid(theta_i) per area, starting at --alpha (needs --feedback-step cayley)")
    parser.add_argument("--input-timescales", action=argparse.BooleanOptionalAction,
                        default=d(defaults.input_timescales),
                        help="gw/scn: every area's rate follows the input, a_t = alpha_min + (alpha_max - alpha_min) "
                             "sigmoid(g . x_t + c), starting at --alpha; the map keeps the (learned) per-area rates "
                             "(needs --feedback-step cayley; certified for rates down to --alpha-min)")
    parser.add_argument("--skew-feedback", action=argparse.BooleanOptionalAction,
                        default=d(defaults.skew_feedback),
                        help="gw/scn: tie every pair's two feedback blocks, L = B - M^-1 B^T M (what the "
                             "certificates rest on); --no-skew-feedback trains both freely, a control whose "
                             "certificates are computed from the weights and fail (with the euler step it needs "
                             "--no-guarantee)")
    parser.add_argument("--no-progress", help="no progress bar", **flag)
    if for_sweep:
        return
    parser.add_argument("--resume", help="continue the run in --out from its last checkpoint; only "
                        f"{', '.join('--' + n.replace('_', '-') for n in RESUMABLE if n != 'progress')} and "
                        "--no-progress may differ from the run's settings", **flag)
    parser.add_argument("--overwrite", help="replace the run in --out (its files are removed first)", **flag)


def _recompute_arg(text: str):
    """--recompute-every: a positive number of steps or auto."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of steps or auto, got {text!r}")
    return value


def _spread_arg(text: str):
    """--alpha-log-spread: LO,HI."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"must be LO,HI (two numbers), got {text!r}")
    return values


def _alpha_arg(text: str):
    """--alpha: a number, or comma-separated per-area numbers."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or comma-separated numbers, got {text!r}") from None
    return values[0] if len(values) == 1 else values


def _config_from(args: argparse.Namespace, defaults):
    values = {f.name: getattr(args, f.name) for f in fields(defaults) if hasattr(args, f.name)}
    values["guarantee"] = not args.no_guarantee
    values["learn_timescales"] = bool(args.learn_timescales)
    values["skew_feedback"] = bool(args.skew_feedback)
    values["input_timescales"] = bool(args.input_timescales)
    values["progress"] = not args.no_progress
    return replace(defaults, **values)


def _given(args: argparse.Namespace) -> dict:
    """The settings given on the command line (not defaulted), under their TrainConfig names."""
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_train_args(probe, TrainConfig(), suppress=True)
    given = vars(probe.parse_known_args(getattr(args, "argv", []))[0])
    if given.pop("no_guarantee", False):
        given["guarantee"] = False
    if given.pop("no_progress", False):
        given["progress"] = False
    for name in ("resume", "overwrite", "out"):
        given.pop(name, None)
    return given


def _as_flag(name: str, value) -> str:
    """How a TrainConfig setting is written on the command line."""
    if name == "guarantee":
        return "--no-guarantee"
    if name in ("learn_timescales", "input_timescales", "skew_feedback"):
        flag = name.replace("_", "-")
        return f"--{flag}" if value else f"--no-{flag}"
    if isinstance(value, tuple):
        value = ",".join(str(v) for v in value)
    return f"--{name.replace('_', '-')} {value}"


def _train(args: argparse.Namespace) -> int:
    cfg = _config_from(args, TrainConfig())
    if args.resume:
        if cfg.out is None:
            raise UsageError("--resume needs --out, the folder of the run to continue")
        if not os.path.exists(os.path.join(cfg.out, "config.json")):
            raise UsageError(f"nothing to resume: {os.path.join(cfg.out, 'config.json')} is missing")
        saved = read_run_config(cfg.out)
        given = _given(args)
        clash = {k: v for k, v in given.items() if k not in RESUMABLE and getattr(saved, k) != v}
        if clash:
            raise UsageError("--resume continues the run in " + cfg.out + ", whose settings differ: " + ", ".join(
                f"{_as_flag(k, v)} (the run has {getattr(saved, k)})" for k, v in clash.items())
                + "; drop them, or train a new run into another folder")
        # --stop-after and the progress bar belong to one invocation; the others keep the run's
        # values unless given
        cfg = replace(saved, stop_after=given.get("stop_after"), progress=cfg.progress,
                      threads=run_threads_here(saved.threads),
                      **{k: given[k] for k in ("epochs", "threads", "data_dir") if k in given})
    train(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {args.threads}")
    check_threads(args.threads)
    result = evaluate(args.dir, threads=args.threads)
    return 0 if result.get("matches_metrics_json", True) else 1


# The model's settings, whose defaults (the demo's model) changed between releases: a demo run of
# an earlier release has other values there and is still the demo's own run.
DEMO_MODEL_SETTINGS = frozenset(LEGACY_SETTINGS) | {"alpha"}


def _holds_a_demo_run(cfg: TrainConfig) -> bool:
    """Whether cfg.out holds an earlier demo's run (its settings are the demo's but for the
    ones a resume may change and the model's defaults of earlier releases); any other run, or
    other files, the demo refuses to replace."""
    if not is_run_folder(cfg.out):
        return False
    try:
        saved = read_run_config(cfg.out)
    except (FileNotFoundError, RunError):
        return False
    return all(getattr(saved, k) == getattr(cfg, k) for k in cfg.run_settings()
               if k not in RESUMABLE and k not in DEMO_MODEL_SETTINGS)


def _demo(args: argparse.Namespace) -> int:
    cfg = TrainConfig(model="gw", task="row-digits", out=args.out, epochs=args.epochs, progress=not args.no_progress,
                      threads=args.threads)
    replace_old = _holds_a_demo_run(cfg)  # the demo replaces its own run, and only that
    if not replace_old and os.path.isdir(cfg.out) and os.listdir(cfg.out):
        raise UsageError(f"--out {cfg.out} holds {'a run that is not the demo' if is_run_folder(cfg.out) else 'files'}"
                         "; the demo replaces only its own run: choose another folder")
    metrics = train(cfg, overwrite=replace_old)
    print(f"\ndemo: GW net on row-digits, test accuracy {metrics['test_accuracy']:.4f} in {metrics['wall_time_s']:.0f} s;"
          f" plots and metrics.json in {args.out}/")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import parse_shape, sweep

    base = _config_from(args, TrainConfig())  # every model and training setting of train
    shapes = [parse_shape(v) for v in args.shapes] if args.shapes else None
    sweep(args.task, args.topologies, args.feedback_sparsity, seeds=args.seeds, epochs=args.epochs,
          out=args.out or os.path.join("runs", f"sweep-{args.task}"), base=base, shapes=shapes,
          workspace_sizes=args.workspace_sizes)
    return 0


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the train, evaluate and demo commands to the CLI."""
    tr = sub.add_parser("train", help="train a model on a task (also under torchrun)")
    _add_train_args(tr, TrainConfig())
    tr.set_defaults(func=_train)
    ev = sub.add_parser("evaluate", help="reload a run and recompute its test accuracy and ablation")
    ev.add_argument("dir", help="the --out folder of a finished run")
    ev.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the run's)")
    ev.set_defaults(func=_evaluate)
    demo = sub.add_parser("demo", help="train the GW net on row-digits (what `make demo` runs)")
    demo.add_argument("--out", default="runs/demo", help="run folder; the demo replaces the run it holds")
    demo.add_argument("--epochs", type=int, default=TrainConfig().epochs, help="number of epochs")
    demo.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)
    d = TrainConfig()
    sw = sub.add_parser("sweep", help="train Sparse Combo Nets over topologies x feedback sparsities x seeds "
                        "(the GW paper's study), with ablation and plots")
    sw.add_argument("--task", choices=list(TASKS), default=d.task, help="data set")
    sw.add_argument("--topologies", nargs="+", default=["gw", "all", "random:matched"],
                    help="gw, all, random:<density>, random-pairs:<count>, random:matched (as many pairs as gw)")
    sw.add_argument("--feedback-sparsity", nargs="+", type=float, default=[0.0, 0.5, 0.9],
                    help="fractions of inter-area weights fixed at 0")
    sw.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of every combination")
    sw.add_argument("--epochs", type=int, default=d.epochs, help="epochs of every run")
    sw.add_argument("--out", default=None, help="sweep folder (default: runs/sweep-TASK); resumes the sweep it holds")
    sw.add_argument("--workspace-sizes", nargs="+", type=int, default=None, metavar="W",
                    help="repeat the GW star (--topologies gw) for each size of its workspace area (units; areas "
                         "of different sizes need --areas sparse)")
    sw.add_argument("--shapes", nargs="+", default=None, metavar="PxN",
                    help="repeat the study for each number of areas x area size (e.g. 8x64 16x32 24x32 32x16; "
                         "default: --num-areas x --area-size only); with svd areas every area has the same size")
    # the model and training settings of train, the same for every run (e.g. the papers' own
    # configuration: --feedback-step euler --areas sparse --no-learn-timescales ...)
    _add_train_args(sw, d, for_sweep=True)
    sw.set_defaults(func=_sweep)
