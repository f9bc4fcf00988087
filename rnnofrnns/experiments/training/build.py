"""A model from a configuration: the certified nets and the GRU/LSTM baselines of the same
trainable-parameter count."""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from ...models import GlobalWorkspaceNet, RNNClassifier, SparseComboNet
from ...models.readouts import readout_parameters
from .config import TrainConfig


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


def baseline_hidden_size(kind: str, input_size: int, num_classes: int, budget: int, readout: str = "last") -> int:
    """Largest hidden size whose GRU/LSTM classifier (readout included) has at most `budget`
    trainable parameters."""
    gates = 3 if kind == "gru" else 4

    def count(h):
        return gates * (h * input_size + h * h + 2 * h) + readout_parameters(readout, h, num_classes)

    h = 1
    while count(h + 1) <= budget:
        h += 1
    return h


def modular_kwargs(cfg: TrainConfig, generator: torch.Generator, dtype: torch.dtype) -> Dict[str, Any]:
    return dict(form=cfg.form, nonlinearity=cfg.nonlinearity, alpha=cfg.alpha, gamma=cfg.gamma,
                density=cfg.density, guarantee=cfg.guarantee, feedback_sparsity=cfg.feedback_sparsity,
                feedback_step=cfg.feedback_step, areas=cfg.areas, sigma_max=cfg.sigma_max,
                learn_timescales=cfg.learn_timescales, input_timescales=cfg.input_timescales,
                skew_feedback=cfg.skew_feedback, cayley_form=cfg.cayley_form,
                alpha_min=cfg.alpha_min, input_encoder=cfg.input_encoder, drive_scale=cfg.drive_scale,
                alpha_log_spread=cfg.alpha_log_spread, num_layers=cfg.num_layers, between_layers=cfg.between_layers,
                backend=cfg.backend, generator=generator, dtype=dtype)


def build_model(cfg: TrainConfig, input_size: int, num_classes: int) -> nn.Module:
    """The model of a run, deterministic given cfg.seed."""
    dtype = getattr(torch, cfg.dtype)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.model == "gw":
        return GlobalWorkspaceNet(input_size, num_classes, cfg.num_areas, cfg.area_size,
                                  workspace_size=cfg.workspace_size, readout=cfg.readout,
                                  recompute_every=cfg.recompute_every, memory_budget_gb=cfg.memory_budget_gb,
                                  **modular_kwargs(cfg, gen, dtype))
    if cfg.model == "scn":
        topology = "all" if cfg.topology is None else cfg.topology
        return SparseComboNet(input_size, num_classes, cfg.num_areas, cfg.area_size, topology=topology,
                              readout=cfg.readout, recompute_every=cfg.recompute_every,
                              memory_budget_gb=cfg.memory_budget_gb, **modular_kwargs(cfg, gen, dtype))
    hidden = cfg.hidden_size
    if hidden is None:
        budget = trainable_parameters(GlobalWorkspaceNet(
            input_size, num_classes, cfg.num_areas, cfg.area_size, workspace_size=cfg.workspace_size,
            readout=cfg.readout, **modular_kwargs(cfg, torch.Generator().manual_seed(cfg.seed), dtype)))
        hidden = baseline_hidden_size(cfg.model, input_size, num_classes, budget, cfg.readout)
    torch.manual_seed(cfg.seed)
    return RNNClassifier(cfg.model, input_size, hidden, num_classes, readout=cfg.readout).to(dtype)
