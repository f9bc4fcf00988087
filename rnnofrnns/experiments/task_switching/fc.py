"""Task switching in the two-layer fully-connected network y = W2 W1 x (`--network fc`).

Nothing marks paths: every entry of W2 gets the gates' constraints (the regulariser on
vec(W2)) and the fast timescale (tau_c), W1 the slow one (tau_W), in the same Euler-stepped
gradient flow as the gated linear network. In the flexible regime the hidden units
specialise to one teacher each and W2 selects, per task, the units of the current teacher.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any, Callable, Dict, List

import torch

from ...models import TwoLayerLinearNetwork
from .._files import atomic_save, atomic_write_json, pyplot, save_figure
from .experiment import TaskSwitchingConfig, block_threshold, check_block_finite, first_time_below, gate_regulariser
from .tasks import blocked_curriculum, teachers


def unit_alignment(W1: torch.Tensor, teacher_set: torch.Tensor) -> torch.Tensor:
    """[hidden, M]: for every hidden unit, the best |cosine| of its W1 row to a row of teacher m."""
    Wn = torch.nn.functional.normalize(W1, dim=-1)
    Tn = torch.nn.functional.normalize(teacher_set, dim=-1)  # [M, O, I]
    return torch.einsum("hi,moi->hmo", Wn, Tn).abs().amax(-1)


def selector_mass(W2: torch.Tensor, owners: torch.Tensor, num_teachers: int) -> torch.Tensor:
    """[M]: the share of W2's absolute mass on the hidden units of each teacher."""
    mass = torch.stack([W2[:, owners == m].abs().sum() for m in range(num_teachers)])
    return mass / mass.sum().clamp_min(1e-30)


def run_fc(cfg: TaskSwitchingConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """The blocked curriculum on TwoLayerLinearNetwork (cfg resolved, network "fc"); writes
    metrics.json, task_switching.png and network.pt into cfg.out and returns the metrics."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    os.makedirs(cfg.out, exist_ok=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    teacher_set = teachers(cfg.d_in, cfg.d_out, cfg.teachers, generator=gen, overlap=cfg.teacher_overlap)
    net = TwoLayerLinearNetwork(cfg.d_in, cfg.hidden, cfg.d_out, init_scale=cfg.init_scale, generator=gen)
    W1, W2 = net.W1, net.W2
    steps = int(round(cfg.block_length / cfg.dt))
    schedule = blocked_curriculum(cfg.blocks, list(range(cfg.teachers)))
    trace_t: List[float] = []
    trace_W2: List[torch.Tensor] = []
    block_W2: List[torch.Tensor] = []
    blocks, all_losses = [], []
    wall0 = time.perf_counter()
    for b, task in enumerate(schedule):
        losses = torch.empty(steps, dtype=W1.dtype)
        for s in range(steps):
            x = torch.randn(cfg.batch, cfg.d_in, generator=gen, dtype=W1.dtype)
            err = net(x) - x @ teacher_set[task].T
            loss = 0.5 * err.square().sum(1).mean()
            reg = gate_regulariser(W2.reshape(-1), cfg.lambda_nonneg, cfg.lambda_norm, cfg.norm_k)
            g1, g2 = torch.autograd.grad(loss + reg, (W1, W2))
            with torch.no_grad():
                W1.sub_(g1, alpha=cfg.dt / cfg.tau_w)
                W2.sub_(g2, alpha=cfg.dt / cfg.tau_c)
                losses[s] = loss
            if (s + 1) % cfg.record_every == 0 or s == steps - 1:
                trace_t.append((b * steps + s + 1) * cfg.dt)
                trace_W2.append(W2.detach().clone())
        check_block_finite(cfg, b, losses)
        all_losses.append(losses)
        block_W2.append(W2.detach().clone())
        with torch.no_grad():
            align = unit_alignment(W1, teacher_set)
        blocks.append(dict(block=b + 1, task=int(task),
                           time_to_threshold=first_time_below(losses, block_threshold(cfg, losses), cfg.dt),
                           final_loss=float(losses[-max(1, steps // 20):].mean()),
                           specialisation=float(align.max(1).values.mean())))
    wall = time.perf_counter() - wall0
    with torch.no_grad():
        align = unit_alignment(W1, teacher_set)
        order = torch.argsort(align.argmax(1) * 2 + (1 - align.max(1).values), stable=True)
        # W2 as a selector: its mass on the units of each teacher (the units' final owners) at
        # the end of every block, and over time
        owners = align.argmax(1)
        for e, w in zip(blocks, block_W2):
            e["w2_mass_on_current_task"] = float(selector_mass(w, owners, cfg.teachers)[e["task"]])
        trace_mass = [selector_mass(w, owners, cfg.teachers).tolist() for w in trace_W2]
    metrics: Dict[str, Any] = dict(
        config=asdict(cfg),
        blocks=blocks,
        time_to_threshold=[e["time_to_threshold"] for e in blocks],
        final_specialisation=blocks[-1]["specialisation"],
        final_loss=blocks[-1]["final_loss"],
        # hidden units sorted by the teacher they follow best, then by how well
        unit_alignment=align[order].tolist(),
        units_per_teacher=[int((owners == m).sum()) for m in range(cfg.teachers)],
        steps=len(schedule) * steps,
        wall_time_s=wall,
    )
    atomic_write_json({"command": "task-switching", **metrics}, os.path.join(cfg.out, "metrics.json"))
    picture = _plot(cfg, torch.cat(all_losses), steps, schedule, trace_t, trace_mass, align[order],
                    os.path.join(cfg.out, "task_switching.png"))
    atomic_save(net.state_dict(), os.path.join(cfg.out, "network.pt"))
    log(f"{cfg.regime} fc network: {metrics['steps']} Euler steps in {wall:.1f} s")
    level = f"{cfg.relative_threshold:g}x first" if cfg.relative_threshold is not None else f"{cfg.threshold:.2g}"
    log(f"block  task  time to loss<{level}  final loss  W2 mass on the task's units  specialisation")
    for e in blocks:
        t = "not reached" if e["time_to_threshold"] is None else f"{e['time_to_threshold']:.3f}"
        log(f"{e['block']:5d}  {e['task']:4d}  {t:>16}  {e['final_loss']:10.4f}  {e['w2_mass_on_current_task']:27.3f}"
            f"  {e['specialisation']:14.3f}")
    log(f"metrics: {os.path.join(cfg.out, 'metrics.json')}; plot: {picture}")
    return metrics


def _plot(cfg, losses, steps, schedule, trace_t, trace_mass, align, path: str) -> str:
    """Loss with the block boundaries, W2's mass on each teacher's units, final unit alignment."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(9, 7.5))
    t = (torch.arange(losses.numel()) + 1) * cfg.dt
    axes[0].plot(t.numpy(), losses.numpy(), lw=0.6)
    if cfg.relative_threshold is None:
        axes[0].axhline(cfg.threshold, color="k", ls=":", lw=0.8, label=f"loss = {cfg.threshold:g}")
    axes[0].set_yscale("log"), axes[0].set_ylabel("loss")
    if cfg.relative_threshold is None:
        axes[0].legend(loc="upper right", fontsize=8)
    mass = torch.tensor(trace_mass)
    for m in range(mass.shape[1]):
        axes[1].plot(trace_t, mass[:, m].numpy(), label=f"units of teacher {'ABCDEFGH'[m % 8]}")
    axes[1].set_ylabel("share of |W2|"), axes[1].set_xlabel("time"), axes[1].legend(loc="upper right", fontsize=8)
    for ax in axes[:2]:
        for b in range(1, len(schedule)):
            ax.axvline(b * steps * cfg.dt, color="grey", lw=0.4, alpha=0.6)
    im = axes[2].imshow(align.T.numpy(), aspect="auto", vmin=0, vmax=1, cmap="viridis")
    axes[2].set_yticks(range(align.shape[1]), [f"teacher {'ABCDEFGH'[m % 8]}" for m in range(align.shape[1])])
    axes[2].set_xlabel("hidden unit (sorted)"), fig.colorbar(im, ax=axes[2], label="best |cos| to a teacher row")
    axes[0].set_title(f"fc network, {cfg.regime} regime: tau_W1={cfg.tau_w:g}, tau_W2={cfg.tau_c:g}, "
                      f"lambda_nonneg={cfg.lambda_nonneg:g}, lambda_norm={cfg.lambda_norm:g}")
    fig.tight_layout()
    return save_figure(fig, path)
