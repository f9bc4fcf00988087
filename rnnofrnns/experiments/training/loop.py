"""The epoch loop of `python -m rnnofrnns train`: a run folder held, the model built from its
configuration (build.py), trained with checkpoints after every epoch (run_folder.py), stopped
at once on a non-finite loss, and summarised at the end (evaluation.py).

Models: "gw" (GlobalWorkspaceNet), "scn" (SparseComboNet), and the torch.nn baselines
"gru" and "lstm" sized to a comparable number of trainable parameters. Under torchrun the
same code trains data-parallel (gloo on CPU, nccl on GPU): every rank takes its share of
each global batch, gradients are averaged by DistributedDataParallel, rank 0 logs and
writes the checkpoints.
"""
from __future__ import annotations

import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...ops._backend import flush_denormal
from .._files import (atomic_save, atomic_write_json, hold_run_folder, remove_entries)
from ..errors import RunError
from .data import TaskData, load_task
from .build import build_model, trainable_parameters
from .config import TrainConfig
from .evaluation import evaluate_split, finish
from .run_folder import load_checkpoint, prepare_out, rng_state, set_rng_state


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


# -- the loop -------------------------------------------------------------------------------

def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The example order of an epoch: a function of (seed, epoch) only, so resumed and
    distributed runs see exactly the same global batches."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


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


def lr_at(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of an epoch (counted from 0) of a run of `epochs`: "none" keeps lr;
    "cosine" is lr (1 + cos(pi epoch / epochs)) / 2; "step" divides it by 10 after each third
    of the run. A function of the epoch only, so a resumed run follows the same schedule."""
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule == "step":
        return lr * 0.1 ** (3 * epoch // epochs)
    return lr


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
        lr = lr_at(cfg.lr, cfg.lr_schedule, epoch, cfg.epochs)
        for group in opt.param_groups:
            group["lr"] = lr
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
                            val_loss=val_loss, val_acc=val_acc, seconds=epoch_time, lr=lr))
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
