"""Accuracy, ablation and certificates of a trained model; the end-of-run summary
(metrics.json, plots, the table) and `evaluate` of a run folder."""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._files import (atomic_write_json, read_json)
from .._limits import run_threads_here
from ..errors import RunError, UsageError
from .data import TaskData, load_task
from .build import build_model, effective_trainable_parameters, trainable_parameters
from .config import TrainConfig, read_run_config
from .run_folder import load_checkpoint


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
                feedback_step=c.feedback_step, alphas=None if c.alphas is None else c.alphas.tolist(),
                area_rate_range=None if c.area_rate_range is None else list(c.area_rate_range),
                **({} if not hasattr(c, "layers") else dict(
                    layer_step_factors=[layer.step_factor for layer in c.layers],
                    coupling_gains=c.coupling_gains, metric_weights=c.metric_weights)))


# The files a training run writes into its folder; --overwrite removes only a folder of these.


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
                     f"{' (largest of the areas)' if c.get('alphas') else ''}"
                     + (", input-driven area rates in [{:g}, {:g}]".format(*c["area_rate_range"])
                        if c.get("area_rate_range") else "")
                     + (f", {len(c['layer_step_factors'])} layers" if c.get("layer_step_factors") else "") + ")")
    abl = m.get("ablation_test_accuracy") or []
    if abl:
        lines.append("ablation: test accuracy with one area silenced")
        lines.append("  area  " + " ".join(f"{i:>5d}" for i in range(len(abl))))
        lines.append("  acc   " + " ".join(f"{a:5.3f}" for a in abl))
    return "\n".join(lines)


# What a setting meant before it was added: config.json files of earlier runs lack it.


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
