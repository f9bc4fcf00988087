"""The training job's configuration: TrainConfig and its checks (sizes against the machine
included), the settings a resumed run may change, and reading a run's config.json (runs of
earlier versions with the settings they ran with)."""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ... import topology as topo
from ...models.areas import AREA_KINDS
from ...models.modular import DRIVE_SCALES
from ...models.stack import BETWEEN_LAYERS
from ...models.readouts import READOUTS
from ...models.segments import STEP_VALUES_PER_UNIT, check_recompute
from ...models.feedback import FEEDBACK_STEP_KINDS, feedback_step_of
from ...ops import CAYLEY_FORMS
from ...ops._common import FORMS, NONLINEARITIES
from ...ops._backend import resolve_backend
from .._files import read_json
from .._limits import check_fits, check_threads
from ..errors import RunError, UsageError
from .data import TASKS


MODELS = ("gw", "scn", "gru", "lstm")
LR_SCHEDULES = ("none", "cosine", "step")


@dataclass
class TrainConfig:
    model: str = "gw"
    task: str = "row-digits"
    out: Optional[str] = None               # default: runs/MODEL-TASK
    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.01
    weight_decay: float = 0.0
    clip: float = 1.0
    lr_schedule: str = "none"               # none, cosine or step (loop.lr_at), for every model
    num_areas: int = 16
    area_size: int = 32
    topology: Optional[str] = None          # scn: default "all"
    workspace_size: Optional[int] = None    # gw only
    feedback_sparsity: float = 0.0
    form: str = "hopfield"
    nonlinearity: str = "relu"
    # the certified nets' defaults are the best configuration of the study in docs/training.md
    # (svd areas, cayley step, learned and input-driven timescales, an input encoder of 16, glu
    # readout); the earlier one is --feedback-step euler --areas sparse --alpha 0.5
    # --no-learn-timescales --no-input-timescales --input-encoder 0 --readout last
    alpha: Union[float, Tuple[float, ...]] = 0.3  # one step, or one per area
    gamma: float = 0.9                            # sparse areas
    density: float = 0.2                          # sparse areas
    guarantee: bool = True
    feedback_step: str = "cayley"
    areas: str = "svd"
    sigma_max: float = 0.999
    learn_timescales: bool = True
    skew_feedback: bool = True              # gw/scn: False trains both blocks of a pair freely (a control)
    cayley_form: str = "auto"               # gw/scn: auto, exact, stars or dense (the Cayley step's form)
    input_timescales: bool = True           # gw/scn: the areas' rates follow the input (cayley step)
    alpha_min: float = 0.02                 # the slowest input-driven rate
    input_encoder: int = 16                 # gw/scn: width of a tanh layer in front of the projection (0: none)
    drive_scale: str = "none"               # gw/scn: none, or rate (each area's drive times sqrt((2 - a) / a))
    alpha_log_spread: Optional[Tuple[float, float]] = None  # gw/scn: the areas' rates from lo to hi, geometric
    num_layers: int = 1                     # gw/scn: stacked certified layers (ModularRNNStack)
    between_layers: str = "none"            # gw/scn: none or tanh between stacked layers
    recompute_every: Optional[Union[int, str]] = None  # gw/scn: segments of K steps recomputed in the backward, or "auto"
    memory_budget_gb: Optional[float] = None  # gw/scn with recompute_every auto: the GB a step's states may take
    readout: str = "recent"                 # every model: recent, glu, last or mean (models/readouts.py)
    hidden_size: Optional[int] = None       # gru/lstm; default: match the GW net's trainable parameters
    seed: int = 0
    device: str = "cpu"
    backend: Optional[str] = None
    data_dir: Optional[str] = None
    dtype: str = "float32"
    threads: Optional[int] = None
    progress: bool = True
    stop_after: Optional[int] = None        # stop after this many epochs of this invocation (as if interrupted)

    def validate(self) -> None:
        """Raise UsageError naming the first argument that cannot work (nothing is written yet)."""
        def bad(flag: str, expected: str, got: Any) -> UsageError:
            return UsageError(f"--{flag} must be {expected}, got {got!r}")

        if self.model not in MODELS:
            raise bad("model", f"one of {', '.join(MODELS)}", self.model)
        if self.task not in TASKS:
            raise bad("task", f"one of {', '.join(TASKS)}", self.task)
        for name in ("epochs", "batch_size", "num_areas", "area_size", "num_layers"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        for name in ("hidden_size", "workspace_size", "threads", "stop_after"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.seed < 0:
            raise bad("seed", "an integer >= 0", self.seed)
        check_threads(self.threads)
        check_memory(self)
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if not self.weight_decay >= 0 or not math.isfinite(self.weight_decay):
            raise bad("weight-decay", "a number >= 0", self.weight_decay)
        if not self.clip >= 0 or not math.isfinite(self.clip):
            raise bad("clip", "a number >= 0 (0: no clipping)", self.clip)
        alphas = self.alpha if isinstance(self.alpha, tuple) else (self.alpha,)
        if isinstance(self.alpha, tuple) and self.model in ("gw", "scn") and len(alphas) != self.num_areas:
            raise UsageError(f"--alpha must be one value or --num-areas = {self.num_areas} comma-separated values, "
                             f"got {len(alphas)}")
        if not all(0.0 < a <= 1.0 for a in alphas):
            raise bad("alpha", "in (0, 1]", self.alpha)
        if self.feedback_step not in FEEDBACK_STEP_KINDS:
            raise bad("feedback-step", " or ".join(FEEDBACK_STEP_KINDS), self.feedback_step)
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr-schedule", " or ".join(LR_SCHEDULES), self.lr_schedule)
        if self.cayley_form not in CAYLEY_FORMS:
            raise ValueError(f"cayley_form must be one of {CAYLEY_FORMS}, got {self.cayley_form!r}")
        if self.readout not in READOUTS:
            raise bad("readout", " or ".join(READOUTS), self.readout)
        try:
            check_recompute(self.recompute_every, self.memory_budget_gb)
        except ValueError as e:
            raise UsageError(re.sub(r"\b(recompute_every|memory_budget_gb)\b",
                                    lambda m: "--" + m.group(1).replace("_", "-"), str(e))) from None
        if self.recompute_every is not None and self.model not in ("gw", "scn"):
            raise UsageError(f"--recompute-every is for the certified nets (gw, scn), not --model {self.model}")
        if self.areas not in AREA_KINDS:
            raise bad("areas", " or ".join(AREA_KINDS), self.areas)
        if not 0.0 < self.sigma_max < 1.0:
            raise bad("sigma-max", "in (0, 1)", self.sigma_max)
        try:
            feedback_step_of(self.feedback_step, self.guarantee).check_rates(
                isinstance(self.alpha, tuple) or self.learn_timescales)
        except ValueError:
            raise UsageError(f"per-area --alpha and --learn-timescales need --feedback-step cayley: add "
                             f"--no-learn-timescales (or --no-guarantee) for the {self.feedback_step} step, whose "
                             "feedback budget assumes one alpha") from None
        if not self.skew_feedback and self.feedback_step == "euler" and self.guarantee:
            raise UsageError("--no-skew-feedback needs --no-guarantee with the euler step (its guarantee rescales the "
                             "feedback to a budget that assumes the skew tie)")
        if self.between_layers not in BETWEEN_LAYERS:
            raise bad("between-layers", " or ".join(BETWEEN_LAYERS), self.between_layers)
        if self.input_encoder < 0:
            raise bad("input-encoder", "a width >= 0 (0: none)", self.input_encoder)
        if self.drive_scale not in DRIVE_SCALES:
            raise bad("drive-scale", " or ".join(DRIVE_SCALES), self.drive_scale)
        if self.alpha_log_spread is not None:
            if len(self.alpha_log_spread) != 2 or not 0.0 < self.alpha_log_spread[0] <= self.alpha_log_spread[1] <= 1.0:
                raise bad("alpha-log-spread", "LO,HI with 0 < LO <= HI <= 1", ",".join(map(str, self.alpha_log_spread)))
            alphas = tuple(self.alpha_log_spread)  # the rates the areas start at span this range
        if self.learn_timescales and not all(a < 1.0 for a in alphas):
            raise bad("alpha", "below 1 with --learn-timescales (alpha_i = sigmoid(theta_i) starts there)", self.alpha)
        if self.input_timescales and self.model in ("gw", "scn"):
            if self.feedback_step != "cayley":
                raise UsageError(f"--input-timescales needs --feedback-step cayley (its map keeps constant rates while "
                                 f"the areas' follow the input): add --no-input-timescales for the "
                                 f"{self.feedback_step} step")
            if not max(alphas) < 1.0:
                raise bad("alpha", "below 1 with --input-timescales (every area's rate starts there, inside "
                          "(alpha_min, 1))", self.alpha)
            if not 0.0 < self.alpha_min < min(alphas):
                raise bad("alpha-min", f"in (0, --alpha = {min(alphas)}) with --input-timescales", self.alpha_min)
        if AREA_KINDS[self.areas].equal_sizes_only and self.model == "gw" and \
                self.workspace_size not in (None, self.area_size):
            raise UsageError(f"--areas {self.areas} needs areas of equal size: --workspace-size {self.workspace_size} "
                             f"differs from --area-size {self.area_size}")
        if not 0.0 < self.gamma < 1.0:
            raise bad("gamma", "in (0, 1)", self.gamma)
        if not 0.0 < self.density <= 1.0:
            raise bad("density", "in (0, 1]", self.density)
        if not 0.0 <= self.feedback_sparsity < 1.0:
            raise bad("feedback-sparsity", "in [0, 1)", self.feedback_sparsity)
        if self.form not in FORMS:
            raise bad("form", " or ".join(sorted(FORMS)), self.form)
        if self.nonlinearity not in NONLINEARITIES:
            raise bad("nonlinearity", ", ".join(NONLINEARITIES[:-1]) + " or " + NONLINEARITIES[-1],
                      self.nonlinearity)
        if self.dtype not in ("float32", "float64"):
            raise bad("dtype", "float32 or float64", self.dtype)
        if self.model == "gw":
            if self.topology not in (None, "gw"):
                raise UsageError(f"--topology applies to --model scn; the gw net is a star, got {self.topology!r}")
            if self.num_areas < 2:
                raise UsageError(f"--num-areas must be at least 2 for --model gw (areas and a workspace), "
                                 f"got {self.num_areas}")
        if self.model == "scn":
            try:
                spec = "all" if self.topology is None else self.topology
                topo.resolve(spec, self.num_areas, torch.Generator().manual_seed(0))
            except (ValueError, TypeError) as e:
                raise UsageError(f"--topology {self.topology!r}: {e}") from None
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise bad("device", "cpu, cuda or cuda:N", self.device)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {self.device}: this torch ({torch.__version__}) sees no CUDA device")
        if self.backend is not None:
            try:
                resolve_backend(self.backend, torch.device(self.device.split(":")[0]), op="the model")
            except (ValueError, RuntimeError) as e:
                raise UsageError(f"--backend {self.backend}: {e}") from None

    def run_settings(self) -> Dict[str, Any]:
        """The settings saved in a run's config.json: everything but where the run lives."""
        return {k: v for k, v in asdict(self).items() if k != "out"}


# Steps per sequence of each task, for the memory estimate before anything is built or loaded.
TASK_STEPS = {"row-digits": 8, "seq-digits": 64, "mnist1d": 40, "smnist-5k": 784, "psmnist-5k": 784, "smnist": 784,
              "psmnist": 784, "scifar10": 1024}


def memory_estimate(cfg: "TrainConfig") -> float:
    """Bytes a training step needs, roughly from above: weights with gradients and Adam's two
    moments, and the states the backward keeps (a few [T, B, hidden] tensors)."""
    size = 8 if cfg.dtype == "float64" else 4
    if cfg.model in ("gru", "lstm"):
        hidden = cfg.hidden_size or 512
        weights = (4 if cfg.model == "lstm" else 3) * hidden * (hidden + 8)
    else:
        p, n = cfg.num_areas, max(cfg.area_size, cfg.workspace_size or 0)
        pairs = 2 * (p - 1) if cfg.model == "gw" else p * (p - 1)
        hidden = p * n * cfg.num_layers  # every layer keeps its states
        weights = cfg.num_layers * (p + pairs) * n * n + hidden * 8
    steps, batch = TASK_STEPS.get(cfg.task, 1024), max(cfg.batch_size, 512)
    states = 6 * steps * batch * hidden
    if cfg.recompute_every is not None and cfg.model in ("gw", "scn"):  # segments: T/K states + one segment's
        if cfg.recompute_every == "auto":
            states = min(states, int((cfg.memory_budget_gb or 0) * 1e9 / size))
        else:
            k = min(int(cfg.recompute_every), steps)
            states = min(states, (math.ceil(steps / k) + STEP_VALUES_PER_UNIT * k) * batch * hidden)
    return float(size) * (4 * weights + states)


def check_memory(cfg: "TrainConfig") -> None:
    """A UsageError naming the size flags when a run cannot fit in this machine's memory."""
    sizes = (f"--hidden-size {cfg.hidden_size}" if cfg.model in ("gru", "lstm")
             else f"--num-areas {cfg.num_areas} x --area-size {cfg.area_size}")
    check_fits(memory_estimate(cfg), f"{sizes} with --batch-size {cfg.batch_size} on {cfg.task}")


# Settings that may differ when a run is resumed: how long it goes on, how it reports, where
# its data lie and how many threads it uses. Any other setting given with --resume must match
# the run's config.json.
RESUMABLE = ("epochs", "stop_after", "progress", "threads", "data_dir")


LEGACY_SETTINGS = dict(feedback_step="euler", areas="sparse", sigma_max=0.99, learn_timescales=False, readout="last",
                       skew_feedback=True, cayley_form="exact",
                       lr_schedule="none", input_timescales=False, alpha_min=0.02, input_encoder=0, drive_scale="none",
                       alpha_log_spread=None, num_layers=1, between_layers="none", recompute_every=None,
                       memory_budget_gb=None)


def _config_field_types() -> Dict[str, Tuple[type, ...]]:
    """The JSON types each TrainConfig setting may have in a config.json."""
    d = TrainConfig()
    out: Dict[str, Tuple[type, ...]] = {}
    for f in fields(TrainConfig):
        default = getattr(d, f.name)
        if f.name == "alpha":
            out[f.name] = (int, float, list)
        elif f.name == "alpha_log_spread":
            out[f.name] = (list, type(None))
        elif f.name == "recompute_every":
            out[f.name] = (int, str, type(None))
        elif f.name == "memory_budget_gb":
            out[f.name] = (int, float, type(None))
        elif isinstance(default, bool):
            out[f.name] = (bool,)
        elif isinstance(default, int):
            out[f.name] = (int,)
        elif isinstance(default, float):
            out[f.name] = (int, float)
        elif isinstance(default, str):
            out[f.name] = (str,)
        else:  # None by default: the optional settings
            kind = {"topology": str, "backend": str, "data_dir": str, "out": str}.get(f.name, int)
            out[f.name] = (kind, type(None))
    return out


def read_run_config(out_dir: str) -> TrainConfig:
    """The settings of the run in out_dir (its config.json), with out = out_dir: a run folder
    may be moved or copied, and its files are found relative to where it is now. A setting of
    the wrong type or value is a RunError naming config.json and the key."""
    path = os.path.join(out_dir, "config.json")
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path} is missing")
    saved = read_json(path)
    if not isinstance(saved, dict):
        raise RunError(f"{path} is not the config.json of a training run (expected a JSON object)")
    saved.pop("out", None)  # written by earlier releases: where the run was, not where it is
    for name, value in LEGACY_SETTINGS.items():  # a run from before a setting existed ran without it
        saved.setdefault(name, value)
    types = _config_field_types()
    for key, value in saved.items():
        if key not in types:
            raise RunError(f"{path}: unknown setting {key!r}; is it the config.json of a training run?")
        ok = isinstance(value, types[key]) and not (isinstance(value, bool) and bool not in types[key])
        if key in ("alpha", "alpha_log_spread") and isinstance(value, list):
            ok = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in value)
        if not ok:
            want = " or ".join("null" if t is type(None) else {"int": "an integer", "float": "a number",
                               "str": "a string", "bool": "true/false", "list": "a list"}[t.__name__]
                               for t in types[key])
            raise RunError(f"{path}: {key!r} must be {want}, got {json.dumps(value)}")
    for key in ("alpha", "alpha_log_spread"):
        if isinstance(saved.get(key), list):
            saved[key] = tuple(saved[key])
    cfg = TrainConfig(**saved, out=out_dir)
    try:  # the values, wherever the run may go on (the device is checked where it runs)
        replace(cfg, device="cpu", backend=None, threads=None).validate()
    except UsageError as e:
        msg = re.sub(r"--([a-z][a-z-]*)", lambda m: repr(m.group(1).replace("-", "_")), str(e))
        raise RunError(f"{path}: {msg}") from None
    return cfg
