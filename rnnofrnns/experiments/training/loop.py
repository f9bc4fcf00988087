"""Training and evaluation of sequence classifiers: the main job of `python -m rnnofrnns train`.

Models: "gw" (GlobalWorkspaceNet), "scn" (SparseComboNet), and the torch.nn baselines
"gru" and "lstm" sized to a comparable number of trainable parameters. Under torchrun the
same code trains data-parallel (gloo on CPU, nccl on GPU): every rank takes its share of
each global batch, gradients are averaged by DistributedDataParallel, rank 0 logs and
writes the checkpoints.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
import re
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ... import topology as topo
from ...models import GlobalWorkspaceNet, RNNClassifier, SparseComboNet
from ...models.areas import AREA_KINDS
from ...models.feedback import FEEDBACK_STEP_KINDS, feedback_step_of
from ...ops._common import FORMS, NONLINEARITIES
from ...ops._backend import flush_denormal, resolve_backend
from .._files import (atomic_save, atomic_write_json, check_only_own_files, hold_run_folder, read_json,
                      remove_entries, safe_torch_load)
from .._limits import check_fits, check_threads, run_threads_here
from ..errors import RunError, UsageError
from .data import TASKS, TaskData, load_task

MODELS = ("gw", "scn", "gru", "lstm")


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
    num_areas: int = 16
    area_size: int = 32
    topology: Optional[str] = None          # scn: default "all"
    workspace_size: Optional[int] = None    # gw only
    feedback_sparsity: float = 0.0
    form: str = "hopfield"
    nonlinearity: str = "relu"
    # the certified nets' defaults are the best configuration of the study in docs/training.md
    # (svd areas, cayley step, learned timescales); the earlier one is --feedback-step euler
    # --areas sparse --alpha 0.5 --no-learn-timescales
    alpha: Union[float, Tuple[float, ...]] = 0.3  # one step, or one per area
    gamma: float = 0.9                            # sparse areas
    density: float = 0.2                          # sparse areas
    guarantee: bool = True
    feedback_step: str = "cayley"
    areas: str = "svd"
    sigma_max: float = 0.999
    learn_timescales: bool = True
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
        for name in ("epochs", "batch_size", "num_areas", "area_size"):
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
        if self.learn_timescales and not all(a < 1.0 for a in alphas):
            raise bad("alpha", "below 1 with --learn-timescales (alpha_i = sigmoid(theta_i) starts there)", self.alpha)
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
        hidden = p * n
        weights = (p + pairs) * n * n + hidden * 8
    states = 6 * TASK_STEPS.get(cfg.task, 1024) * max(cfg.batch_size, 512) * hidden
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


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def effective_trainable_parameters(model: nn.Module) -> int:
    """Trainable parameters less the entries that never change: the inter-area weights that the
    feedback-sparsity mask holds at zero, and the entries combine(freeze=True) holds."""
    count = trainable_parameters(model)
    rnn = getattr(model, "rnn", None)
    if rnn is not None and hasattr(rnn, "feedback_mask") and rnn.B.requires_grad:
        count -= rnn.B.numel() - rnn.num_feedback_parameters()
        count -= rnn.num_frozen_parameters()  # combine(freeze=True): the parts' entries
        if "B" in rnn._frozen:  # frozen blocks' masked entries were subtracted twice
            count += int((rnn.frozen_mask_B & (rnn.feedback_mask == 0)).sum())
    return count


def baseline_hidden_size(kind: str, input_size: int, num_classes: int, budget: int) -> int:
    """Largest hidden size whose GRU/LSTM classifier has at most `budget` trainable parameters."""
    gates = 3 if kind == "gru" else 4

    def count(h):
        return gates * (h * input_size + h * h + 2 * h) + h * num_classes + num_classes

    h = 1
    while count(h + 1) <= budget:
        h += 1
    return h


def modular_kwargs(cfg: TrainConfig, generator: torch.Generator, dtype: torch.dtype) -> Dict[str, Any]:
    return dict(form=cfg.form, nonlinearity=cfg.nonlinearity, alpha=cfg.alpha, gamma=cfg.gamma,
                density=cfg.density, guarantee=cfg.guarantee, feedback_sparsity=cfg.feedback_sparsity,
                feedback_step=cfg.feedback_step, areas=cfg.areas, sigma_max=cfg.sigma_max,
                learn_timescales=cfg.learn_timescales, backend=cfg.backend, generator=generator, dtype=dtype)


def build_model(cfg: TrainConfig, input_size: int, num_classes: int) -> nn.Module:
    """The model of a run, deterministic given cfg.seed."""
    dtype = getattr(torch, cfg.dtype)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.model == "gw":
        return GlobalWorkspaceNet(input_size, num_classes, cfg.num_areas, cfg.area_size,
                                  workspace_size=cfg.workspace_size, **modular_kwargs(cfg, gen, dtype))
    if cfg.model == "scn":
        topology = "all" if cfg.topology is None else cfg.topology
        return SparseComboNet(input_size, num_classes, cfg.num_areas, cfg.area_size, topology=topology,
                              **modular_kwargs(cfg, gen, dtype))
    hidden = cfg.hidden_size
    if hidden is None:
        budget = trainable_parameters(GlobalWorkspaceNet(
            input_size, num_classes, cfg.num_areas, cfg.area_size, workspace_size=cfg.workspace_size,
            **modular_kwargs(cfg, torch.Generator().manual_seed(cfg.seed), dtype)))
        hidden = baseline_hidden_size(cfg.model, input_size, num_classes, budget)
    torch.manual_seed(cfg.seed)
    return RNNClassifier(cfg.model, input_size, hidden, num_classes).to(dtype)


# -- distributed ----------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per process
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


# -- checkpoints ----------------------------------------------------------------------------

def rng_state() -> Dict[str, Any]:
    """The generators' states as tensors, numbers and strings only (weights_only loads them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return dict(torch=torch.get_rng_state(),
                numpy=dict(kind=str(kind), keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                           has_gauss=int(has_gauss), cached_gaussian=float(gauss)),
                python=random.getstate())


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    if isinstance(npy, dict):
        npy = (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
               npy["cached_gaussian"])
    np.random.set_state(npy)  # checkpoints before 2026-12 hold numpy's own tuple
    random.setstate(state["python"])


# -- the loop -------------------------------------------------------------------------------

def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The example order of an epoch: a function of (seed, epoch) only, so resumed and
    distributed runs see exactly the same global batches."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@torch.no_grad()
def evaluate_split(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: str):
    """(mean cross-entropy, accuracy) of a model on a split, in one pass."""
    model.eval()
    total, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        logits = model(x[i:i + batch_size].to(device))
        yb = y[i:i + batch_size].to(device)
        total += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    model.train()
    n = max(1, len(y))
    return total / n, correct / n


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: str) -> float:
    return evaluate_split(model, x, y, batch_size, device)[1]


def ablation(model: nn.Module, data: TaskData, batch_size: int, device: str) -> List[float]:
    """Test accuracy with each area silenced in turn (modular models only)."""
    if not hasattr(model, "ablate"):
        return []
    out = []
    for area in range(model.rnn.num_areas):
        with model.ablate(area):
            out.append(accuracy(model, data.x_test, data.y_test, batch_size, device))
    return out


def certificate_summary(model: nn.Module) -> Optional[Dict[str, Any]]:
    if not hasattr(model, "certify"):
        return None
    c = model.certify()
    return dict(holds=c.holds, rate=c.rate, worst_skew=c.worst_skew, discrete_holds=c.discrete_holds,
                step_factor=c.step_factor, max_alpha=c.max_alpha, alpha=c.alpha, kappa=c.kappa, omega=c.omega,
                feedback_step=c.feedback_step, alphas=None if c.alphas is None else c.alphas.tolist())


# The files a training run writes into its folder; --overwrite removes only a folder of these.
RUN_FILES = ("config.json", "last.pt", "best.pt", "metrics.json", "training_curves.png", "connectivity.png",
             "ablation.png")
# Any of these marks a folder as a run's (the plots alone do not).
RUN_MARKERS = ("config.json", "last.pt", "best.pt", "metrics.json")


def load_checkpoint(path: str) -> Dict[str, Any]:
    """A checkpoint written by `train`, or RunError naming the file."""
    if not os.path.exists(path):
        raise RunError(f"{path} is missing")
    ckpt = safe_torch_load(path, "checkpoint", RunError)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise RunError(f"{path} is not a checkpoint of rnnofrnns train")
    return ckpt


def is_run_folder(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in RUN_MARKERS)


def prepare_out(out: str, resume: bool, overwrite: bool) -> List[str]:
    """Check the run folder before anything is written (UsageError when it cannot be used);
    returns the entries that --overwrite will remove (the old run's own regular files)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file, not a folder")
    if resume:
        if overwrite:
            raise UsageError("--resume and --overwrite contradict each other: continue the run, or replace it")
        return []
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise UsageError(f"--out {out} already holds {'a run' if is_run_folder(out) else 'files'}; "
                             "pass --resume to continue it, --overwrite to replace it, or choose another folder")
        # a run's own files, and the temporary files an interrupted write of one leaves
        entries = check_only_own_files(out, RUN_FILES, "training")
        if not is_run_folder(out):
            raise UsageError(f"--overwrite replaces a training run, but {out} holds no config.json, checkpoint or "
                             "metrics.json; choose another folder")
        return entries
    return []


def _is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a plain process: the one that writes the run folder."""
    return os.environ.get("RANK", "0") == "0"


def train(cfg: TrainConfig, resume: bool = False, log=print, overwrite: bool = False) -> Dict[str, Any]:
    """Train, checkpoint, evaluate; returns the metrics (rank 0) that also go to OUT/metrics.json.

    cfg.out is the run folder (default runs/MODEL-TASK). With resume=True the run continues
    exactly where OUT/last.pt left it; a non-empty folder is otherwise refused unless
    overwrite=True, which replaces the old run. Everything is checked before anything is
    written. A non-finite loss stops the run at once (RunError), keeping the last finite
    checkpoint and a metrics.json that says why. Subnormals are flushed to zero during the
    run (the caller's setting is restored after)."""
    cfg.validate()
    if cfg.out is None:
        cfg.out = os.path.join("runs", f"{cfg.model}-{cfg.task}")
    with hold_run_folder(cfg.out) if _is_main_process() else nullcontext():
        replaced = prepare_out(cfg.out, resume, overwrite)
        with flush_denormal():
            return _train(cfg, resume, log, replaced)


def _train(cfg: TrainConfig, resume: bool, log, replaced: List[str]) -> Dict[str, Any]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    last_path = os.path.join(cfg.out, "last.pt")
    # a run stopped in its first epoch has a config.json and no checkpoint yet: it starts again
    first_epoch_only = resume and not any(os.path.lexists(os.path.join(cfg.out, f)) for f in ("last.pt", "best.pt"))
    ckpt = load_checkpoint(last_path) if resume and not first_epoch_only else None
    data = load_task(cfg.task, cfg.data_dir, cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.input_size, data.num_classes)
    dist_info = init_distributed(cfg.device)  # every rank has checked the folder before this rendezvous
    if dist_info.world > 1 and cfg.device == "cuda":
        cfg.device = f"cuda:{torch.cuda.current_device()}"
    model = model.to(cfg.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, history, best_val, wall_before = 0, [], -1.0, 0.0
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise RunError(f"{last_path} does not fit this run's model: {str(e).splitlines()[0]}") from None
        start_epoch, history, best_val = ckpt["epoch"] + 1, ckpt["history"], ckpt["best_val"]
        wall_before = ckpt.get("wall_time", 0.0)
        set_rng_state(ckpt["rng"])
    if dist_info.main:
        remove_entries(cfg.out, replaced)  # only the old run's files that prepare_out checked
        atomic_write_json(cfg.run_settings(), os.path.join(cfg.out, "config.json"))
        log(data.summary())
        if first_epoch_only:
            log("no checkpoint yet (the run stopped in its first epoch): starting from epoch 1")
        log(f"model {cfg.model}: {trainable_parameters(model):,} trainable parameters"
            + (f", resuming after epoch {start_epoch}" if start_epoch else ""))
    net = model
    if dist_info.world > 1:
        net = nn.parallel.DistributedDataParallel(model)

    t_start = time.perf_counter()
    try:
        return _epochs(cfg, data, model, net, opt, dist_info, start_epoch, history, best_val, wall_before, t_start,
                       log)
    except (KeyboardInterrupt, Exception) as e:
        if dist_info.main and not getattr(e, "recorded", False):
            _record_stop(cfg, e)
        raise


def _record_stop(cfg: TrainConfig, e: BaseException) -> None:
    """metrics.json of a run that stopped on an error: why, and the checkpoint it left (best
    effort: on a full disk the error itself already says so)."""
    kept = os.path.exists(os.path.join(cfg.out, "last.pt"))
    why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    try:
        _write_stop(cfg, e, kept, why)
    except RunError:
        pass


def _write_stop(cfg: TrainConfig, e: BaseException, kept: bool, why: str) -> None:
    atomic_write_json(dict(stopped="interrupted" if isinstance(e, KeyboardInterrupt) else "error", reason=why,
                           last_checkpoint="last.pt" if kept else None, config=cfg.run_settings()),
                      os.path.join(cfg.out, "metrics.json"))


def _epochs(cfg: TrainConfig, data: TaskData, model: nn.Module, net: nn.Module, opt, dist_info: "Dist",
            start_epoch: int, history: List[Dict[str, float]], best_val: float, wall_before: float, t_start: float,
            log) -> Dict[str, Any]:
    """The epochs of a run from start_epoch on, then `finish`."""
    dtype = getattr(torch, cfg.dtype)
    last_path, best_path = os.path.join(cfg.out, "last.pt"), os.path.join(cfg.out, "best.pt")
    x_train, y_train = data.x_train.to(dtype), data.y_train
    G = cfg.batch_size
    steps = len(y_train) // G + (1 if len(y_train) % G >= dist_info.world else 0)
    run_epochs = 0
    for epoch in range(start_epoch, cfg.epochs):
        order = epoch_order(len(y_train), cfg.seed, epoch)
        t0 = time.perf_counter()
        bar = None
        if dist_info.main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
        tot_loss, tot_correct, seen = 0.0, 0, 0
        for s in range(steps):
            idx = order[s * G:(s + 1) * G]
            mine = idx.tensor_split(dist_info.world)[dist_info.rank]
            xb, yb = x_train[mine].to(cfg.device), y_train[mine].to(cfg.device)
            logits = net(xb)
            # sum over my examples / global batch size: DDP's average over ranks is the global mean
            loss = F.cross_entropy(logits, yb, reduction="sum") * dist_info.world / len(idx)
            if not _all_finite(loss, dist_info):
                if bar is not None:
                    bar.close()
                _stop_diverged(cfg, epoch, s, float(loss.detach()), dist_info, log)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip and cfg.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            tot_loss += float(loss.detach()) * len(idx) / dist_info.world  # this rank's summed loss
            tot_correct += int((logits.argmax(1) == yb).sum())
            seen += len(mine)
            if bar is not None:
                bar.update(1)
                rate = (s + 1) / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{tot_loss / seen:.4f}", acc=f"{tot_correct / seen:.3f}",
                                steps_per_s=f"{rate:.1f}")
        if bar is not None:
            bar.close()
        if dist_info.world > 1:
            import torch.distributed as dist

            totals = torch.tensor([tot_loss, tot_correct, seen], dtype=torch.float64, device=cfg.device)
            dist.all_reduce(totals)
            tot_loss, tot_correct, seen = float(totals[0]), int(totals[1]), int(totals[2])
        epoch_time = time.perf_counter() - t0
        val_loss, val_acc = evaluate_split(model, data.x_val.to(dtype), data.y_val, 512, cfg.device)
        history.append(dict(epoch=epoch + 1, train_loss=tot_loss / max(seen, 1), train_acc=tot_correct / max(seen, 1),
                            val_loss=val_loss, val_acc=val_acc, seconds=epoch_time))
        run_epochs += 1
        if dist_info.main:
            log(f"epoch {epoch + 1:3d}/{cfg.epochs}: loss {history[-1]['train_loss']:.4f} "
                f"train acc {history[-1]['train_acc']:.4f} val loss {val_loss:.4f} val acc {val_acc:.4f} "
                f"({epoch_time:.1f} s, {steps / epoch_time:.1f} steps/s)")
            improved = val_acc > best_val
            best_val = max(best_val, val_acc)
            ckpt = dict(model=model.state_dict(), optimizer=opt.state_dict(), epoch=epoch, history=history,
                        best_val=best_val, rng=rng_state(), config=cfg.run_settings(),
                        wall_time=wall_before + time.perf_counter() - t_start)
            if improved:
                atomic_save(ckpt, best_path)
            atomic_save(ckpt, last_path)
        if cfg.stop_after is not None and run_epochs >= cfg.stop_after and epoch + 1 < cfg.epochs:
            if dist_info.main:
                log(f"stopping after {run_epochs} epochs of this run (--stop-after); continue with --resume")
            return dict(stopped=True, epoch=epoch + 1)
    wall = wall_before + time.perf_counter() - t_start
    if not dist_info.main:
        return {}
    return finish(cfg, data, model, history, wall, log)


def _all_finite(loss: torch.Tensor, dist_info: Dist) -> bool:
    """Whether the loss is finite on every rank (all ranks stop together)."""
    ok = torch.isfinite(loss.detach()).to(torch.float64)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok)


def _stop_diverged(cfg: TrainConfig, epoch: int, step: int, loss: float, dist_info: Dist, log) -> None:
    """Record why the run stopped in metrics.json (keeping the last finite checkpoint) and raise."""
    last = os.path.join(cfg.out, "last.pt")
    kept = os.path.exists(last)
    reason = (f"the loss became {loss} at epoch {epoch + 1}, step {step + 1}; "
              + (f"the last finite checkpoint is {last} (resume with --resume, e.g. with a lower --lr)" if kept
                 else "no epoch finished, so there is no checkpoint"))
    if dist_info.main:
        atomic_write_json(dict(stopped="diverged", reason=reason, epoch=epoch + 1, step=step + 1, loss=loss,
                               last_checkpoint="last.pt" if kept else None, config=cfg.run_settings()),
                          os.path.join(cfg.out, "metrics.json"))
    err = RunError(reason)
    err.recorded = True  # metrics.json says why already
    raise err


def finish(cfg: TrainConfig, data: TaskData, model: nn.Module, history: List[Dict[str, float]], wall: float,
           log=print) -> Dict[str, Any]:
    """Evaluate the best checkpoint, write metrics.json and the plots, print the summary."""
    from . import plots

    best = load_checkpoint(os.path.join(cfg.out, "best.pt"))
    model.load_state_dict(best["model"])
    dtype = getattr(torch, cfg.dtype)
    data.x_test = data.x_test.to(dtype)
    test_acc = accuracy(model, data.x_test, data.y_test, 512, cfg.device)
    abl = ablation(model, data, 512, cfg.device)
    cert = certificate_summary(model)
    secs = [h["seconds"] for h in history]
    metrics = dict(
        model=cfg.model, task=cfg.task, test_accuracy=test_acc, best_epoch=best["epoch"] + 1,
        best_val_accuracy=best["best_val"], trainable_parameters=trainable_parameters(model),
        feedback_parameters=model.num_feedback_parameters() if hasattr(model, "num_feedback_parameters") else None,
        effective_trainable_parameters=effective_trainable_parameters(model),
        wall_time_s=wall, seconds_per_epoch=float(np.mean(secs)) if secs else None, epochs=len(history),
        certificate=cert, ablation_test_accuracy=abl, history=history, config=cfg.run_settings(),
    )
    atomic_write_json(metrics, os.path.join(cfg.out, "metrics.json"))
    pictures = plots.save_run_plots(cfg.out, history, model, abl, test_acc)
    log(summary_table(metrics))
    log("plots: " + ", ".join(pictures))
    return metrics


def summary_table(m: Dict[str, Any]) -> str:
    lines = [
        f"{'model':<28}{m['model']}",
        f"{'task':<28}{m['task']}",
        f"{'test accuracy':<28}{m['test_accuracy']:.4f}  (best epoch {m['best_epoch']}, "
        f"validation {m['best_val_accuracy']:.4f})",
        f"{'trainable parameters':<28}{m['trainable_parameters']:,}",
        f"{'wall time':<28}{m['wall_time_s']:.1f} s ({m['seconds_per_epoch']:.2f} s per epoch)",
    ]
    c = m.get("certificate")
    if c:
        lines.append(f"{'certificate':<28}continuous {'holds' if c['holds'] else 'FAILS'} (rate {c['rate']:.4f}), "
                     f"discrete {'holds' if c['discrete_holds'] else 'FAILS'} "
                     f"({c.get('feedback_step', 'euler')} step factor {c['step_factor']:.4f} at alpha {c['alpha']:.4g}"
                     f"{' (largest of the areas)' if c.get('alphas') else ''})")
    abl = m.get("ablation_test_accuracy") or []
    if abl:
        lines.append("ablation: test accuracy with one area silenced")
        lines.append("  area  " + " ".join(f"{i:>5d}" for i in range(len(abl))))
        lines.append("  acc   " + " ".join(f"{a:5.3f}" for a in abl))
    return "\n".join(lines)


# What a setting meant before it was added: config.json files of earlier runs lack it.
LEGACY_SETTINGS = dict(feedback_step="euler", areas="sparse", sigma_max=0.99, learn_timescales=False)


def _config_field_types() -> Dict[str, Tuple[type, ...]]:
    """The JSON types each TrainConfig setting may have in a config.json."""
    d = TrainConfig()
    out: Dict[str, Tuple[type, ...]] = {}
    for f in fields(TrainConfig):
        default = getattr(d, f.name)
        if f.name == "alpha":
            out[f.name] = (int, float, list)
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
        if key == "alpha" and isinstance(value, list):
            ok = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in value)
        if not ok:
            want = " or ".join("null" if t is type(None) else {"int": "an integer", "float": "a number",
                               "str": "a string", "bool": "true/false", "list": "a list"}[t.__name__]
                               for t in types[key])
            raise RunError(f"{path}: {key!r} must be {want}, got {json.dumps(value)}")
    if isinstance(saved.get("alpha"), list):
        saved["alpha"] = tuple(saved["alpha"])
    cfg = TrainConfig(**saved, out=out_dir)
    try:  # the values, wherever the run may go on (the device is checked where it runs)
        replace(cfg, device="cpu", backend=None, threads=None).validate()
    except UsageError as e:
        msg = re.sub(r"--([a-z][a-z-]*)", lambda m: repr(m.group(1).replace("-", "_")), str(e))
        raise RunError(f"{path}: {msg}") from None
    return cfg


def evaluate(out_dir: str, log=print, threads: Optional[int] = None) -> Dict[str, Any]:
    """Reload a run (config.json, best.pt) and recompute its test accuracy and ablation; a run
    that stopped before finishing is evaluated at its best checkpoint, and says so."""
    cfg_path, best_path = os.path.join(out_dir, "config.json"), os.path.join(out_dir, "best.pt")
    for path in (cfg_path, best_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing: is {out_dir} the --out of a finished training run?")
    cfg = read_run_config(out_dir)
    cfg.threads = threads or run_threads_here(cfg.threads)
    try:
        cfg.validate()  # e.g. a run trained on a GPU, evaluated where there is none
    except UsageError as e:
        raise RunError(f"{cfg_path} cannot run here: {e}") from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_task(cfg.task, cfg.data_dir, cfg.seed)
    model = build_model(cfg, data.input_size, data.num_classes).to(cfg.device)
    try:
        model.load_state_dict(load_checkpoint(best_path)["model"])
    except (RuntimeError, ValueError, KeyError) as e:
        if isinstance(e, RunError):
            raise
        raise RunError(f"{best_path} does not fit the model of {cfg_path}: {str(e).splitlines()[0]}") from None
    dtype = getattr(torch, cfg.dtype)
    data.x_test = data.x_test.to(dtype)
    test_acc = accuracy(model, data.x_test, data.y_test, 512, cfg.device)
    abl = ablation(model, data, 512, cfg.device)
    result = dict(test_accuracy=test_acc, ablation_test_accuracy=abl, certificate=certificate_summary(model))
    metrics_path = os.path.join(out_dir, "metrics.json")
    if os.path.lexists(metrics_path):
        saved = read_json(metrics_path)
        if isinstance(saved, dict) and "stopped" in saved:
            log(f"the run did not finish ({saved['stopped']}: {saved.get('reason', 'no reason given')}); "
                "this is its best checkpoint")
            result["unfinished"] = str(saved["stopped"])
        elif isinstance(saved, dict) and isinstance(saved.get("test_accuracy"), (int, float)):
            saved_abl = saved.get("ablation_test_accuracy", [])
            same_abl = isinstance(saved_abl, list) and len(saved_abl) == len(abl) and np.allclose(saved_abl, abl)
            result["matches_metrics_json"] = math.isclose(saved["test_accuracy"], test_acc) and same_abl
        else:
            raise RunError(f"{metrics_path} is not the metrics.json of a training run")
    log(f"test accuracy {test_acc:.4f}" + (f"; ablation {', '.join(f'{a:.3f}' for a in abl)}" if abl else "")
        + (f"; matches metrics.json: {result['matches_metrics_json']}" if "matches_metrics_json" in result else ""))
    return result
