"""Flexible task abstractions: the two-timescale gradient flow of a gated multi-path
linear network on a blocked curriculum of orthogonal teachers (Sandbrink et al., 2024).

    python -m rnnofrnns task-switching --regime flexible --out runs/task-switching

Learning is gradient flow integrated by Euler steps of dt, with no optimizer state:
    c <- c - dt/tau_c * dL/dc,   W <- W - dt/tau_W * dL/dW,
L = 1/2 sum_o (y*_o - y_o)^2 averaged over a fresh Gaussian batch every step, plus
lambda_nonneg * sum max(0, -c) + lambda_norm * 1/2 (||c||_k - 1)^2 for the gates
(the norm over the paths; per output neuron for neuron gates). The loss reported
everywhere is L without the regulariser.
"""
from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional

import torch

from ...models import GatedLinearNetwork
from ...ops._backend import resolve_backend
from .._files import atomic_save, atomic_write_json, pyplot, save_figure
from .._limits import check_fits, check_threads
from ..errors import RunError, UsageError
from .tasks import blocked_curriculum, compose_mean, compose_rows, teachers

REGIMES = ("flexible", "forgetful")
NETWORKS = ("linear", "fc", "image")

# The defaults that depend on the network (None in TaskSwitchingConfig): the linear gated
# network of the paper, and the two-layer fully-connected one of the authors' public code
# (W1 slow, every entry of W2 with the gates' constraints and the fast timescale). For fc,
# --tau-w is W1's time constant and --tau-c W2's; the regulariser acts on vec(W2).
NETWORK_DEFAULTS = {
    "linear": dict(tau_w=1.3, dt=1e-3, blocks=20, norm_k=1, tau_c=0.03, lambda_nonneg=0.091, lambda_norm=0.91,
                   block_length=1.0, batch=200),
    "fc": dict(tau_w=0.06, dt=0.01, blocks=30, norm_k=2, tau_c=0.01, lambda_nonneg=0.2, lambda_norm=0.2,
               block_length=1.0, batch=200),
    # a gated readout of frozen CNN features (the authors' MNIST configuration: weight
    # learning rate 0.001 = 1 / tau_W, gate learning rate 2 = 1 / tau_c, dt 0.1, blocks of
    # 1,000 steps, regulariser 0.1 split between the non-negativity and L1 norm terms, each
    # of which that code multiplies by 10)
    "image": dict(tau_w=1000.0, dt=0.1, blocks=10, norm_k=1, tau_c=0.5, lambda_nonneg=0.5, lambda_norm=0.5,
                  block_length=100.0, batch=100),
}


@dataclass
class TaskSwitchingConfig:
    """Settings of the experiment. None means the regime's default (Sandbrink et al., 2024):
    flexible: tau_c 0.03, lambda_nonneg 0.091, lambda_norm 0.91; forgetful: tau_c = tau_W
    and no regulariser."""

    regime: str = "flexible"
    network: str = "linear"
    d_in: int = 20
    d_out: int = 10
    paths: int = 2
    teachers: int = 2
    teacher_overlap: float = 0.0
    gate_shape: str = "path"
    hidden: int = 20
    tau_w: Optional[float] = None
    tau_c: Optional[float] = None
    lambda_nonneg: Optional[float] = None
    lambda_norm: Optional[float] = None
    norm_k: Optional[int] = None
    block_length: Optional[float] = None
    blocks: Optional[int] = None
    dt: Optional[float] = None
    batch: Optional[int] = None
    threshold: float = 0.1
    relative_threshold: Optional[float] = None  # time to loss < this fraction of the block's first loss instead
    init_gate: float = 0.5
    init_scale: float = 0.01
    seed: int = 0
    record_every: int = 10
    compose: bool = False
    compose_length: float = 2.0
    backend: Optional[str] = None
    features: Optional[str] = None  # image: a saved feature extractor (features.pt) to reuse
    data_dir: Optional[str] = None  # image: MNIST idx files; default the bundled 5,000 images
    out: str = "runs/task-switching"
    threads: Optional[int] = None
    progress: bool = True

    def resolved(self) -> "TaskSwitchingConfig":
        """A copy with the regime's defaults filled in, checked."""
        if self.regime not in REGIMES:
            raise UsageError(f"--regime must be one of {REGIMES}, got {self.regime!r}")
        if self.network not in NETWORKS:
            raise UsageError(f"--network must be one of {NETWORKS}, got {self.network!r}")
        flexible = self.regime == "flexible"
        cfg = TaskSwitchingConfig(**asdict(self))
        defaults = NETWORK_DEFAULTS[cfg.network]
        for name in ("tau_w", "dt", "blocks", "norm_k", "block_length", "batch"):
            if getattr(cfg, name) is None:
                setattr(cfg, name, defaults[name])
        if cfg.tau_c is None:
            cfg.tau_c = defaults["tau_c"] if flexible else cfg.tau_w
        if cfg.lambda_nonneg is None:
            cfg.lambda_nonneg = defaults["lambda_nonneg"] if flexible else 0.0
        if cfg.lambda_norm is None:
            cfg.lambda_norm = defaults["lambda_norm"] if flexible else 0.0
        for name in ("d_in", "d_out", "paths", "teachers", "hidden", "blocks", "batch", "record_every"):
            v = getattr(cfg, name)
            if not isinstance(v, int) or v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        for name in ("tau_w", "tau_c", "block_length", "dt", "threshold", "compose_length"):
            v = getattr(cfg, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise UsageError(f"--{name.replace('_', '-')} must be a positive number, got {v!r}")
        for name in ("lambda_nonneg", "lambda_norm"):
            v = getattr(cfg, name)
            if not (math.isfinite(v) and v >= 0):
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {v!r}")
        r = cfg.relative_threshold
        if r is not None and not (isinstance(r, (int, float)) and 0 < r < 1):
            raise UsageError(f"--relative-threshold must be a fraction in (0, 1) of a block's first loss, got {r!r}")
        if cfg.norm_k not in (1, 2):
            raise UsageError(f"--norm-k must be 1 or 2, got {cfg.norm_k!r}")
        if cfg.gate_shape not in ("path", "neuron"):
            raise UsageError(f"--gate-shape must be 'path' or 'neuron', got {cfg.gate_shape!r}")
        if not (isinstance(cfg.teacher_overlap, (int, float)) and 0.0 <= cfg.teacher_overlap <= 1.0):
            raise UsageError(f"--teacher-overlap must be a cosine in [0, 1], got {cfg.teacher_overlap!r}")
        if cfg.teacher_overlap and cfg.network == "image":
            raise UsageError("--teacher-overlap needs linear teachers (--network linear or fc); the image "
                             "network's tasks are classes")
        if cfg.teachers * cfg.d_out > cfg.d_in:
            raise UsageError(f"--teachers * --d-out = {cfg.teachers * cfg.d_out} must be <= --d-in = {cfg.d_in}")
        if cfg.dt > cfg.tau_c or cfg.dt > cfg.tau_w:
            raise UsageError(f"--dt ({cfg.dt}) must not exceed tau_c ({cfg.tau_c}) or tau_W ({cfg.tau_w})")
        if cfg.backend is not None:
            try:
                resolve_backend(cfg.backend, torch.device("cpu"), op="gated_paths")
            except (ValueError, RuntimeError) as e:
                raise UsageError(f"--backend {cfg.backend}: {e}") from None
        if not (isinstance(cfg.init_gate, (int, float)) and math.isfinite(cfg.init_gate)):
            raise UsageError(f"--init-gate must be a finite number, got {cfg.init_gate!r}")
        if not (isinstance(cfg.init_scale, (int, float)) and math.isfinite(cfg.init_scale) and cfg.init_scale >= 0):
            raise UsageError(f"--init-scale must be a finite number >= 0, got {cfg.init_scale!r}")
        if not isinstance(cfg.seed, int) or cfg.seed < 0:
            raise UsageError(f"--seed must be an integer >= 0, got {cfg.seed!r}")
        check_threads(cfg.threads)
        if round(cfg.block_length / cfg.dt) < 1:
            raise UsageError("--block-length must be at least one step --dt")
        check_fits(cfg.memory_estimate(), f"--d-in {cfg.d_in}, --d-out {cfg.d_out}, --paths {cfg.paths}, "
                                          f"--hidden {cfg.hidden}, --batch {cfg.batch}, --blocks {cfg.blocks}")
        return cfg

    def memory_estimate(self) -> float:
        """Bytes a resolved run needs, roughly from above: the weights with their gradients and
        flows, a batch of inputs through the network, the teachers, and the recorded curves."""
        width = max(self.d_in, self.hidden) if self.network == "fc" else self.d_in
        if self.network == "image":
            width = max(width, 28 * 28)
        weights = self.paths * self.d_out * width + (self.hidden * width if self.network == "fc" else 0)
        activations = self.batch * (width + self.hidden + self.paths * self.d_out)
        steps = self.blocks * round(self.block_length / self.dt)
        curves = steps + (steps // self.record_every + 1) * self.paths * self.d_out * (self.teachers + 2)
        return 8.0 * (6 * weights + 4 * activations + self.teachers * self.d_out * width + 2 * curves)


def gate_regulariser(c: torch.Tensor, lambda_nonneg: float, lambda_norm: float, k: int) -> torch.Tensor:
    """lambda_nonneg * sum max(0, -c) + lambda_norm * 1/2 (||c||_k - 1)^2, the norm over the
    paths (dim 0), summed over output neurons for neuron gates [P, d_out]."""
    nonneg = torch.relu(-c).sum()
    norm = c.abs().sum(0) if k == 1 else c.norm(dim=0)
    return lambda_nonneg * nonneg + lambda_norm * 0.5 * (norm - 1.0).square().sum()


def row_alignment(W: torch.Tensor, teacher_set: torch.Tensor) -> torch.Tensor:
    """cos(W_p[o], T_m[o]) for every output row o, path p and teacher m: [O, P, M]."""
    Wn = torch.nn.functional.normalize(W, dim=-1)  # [P, O, I]
    Tn = torch.nn.functional.normalize(teacher_set, dim=-1)  # [M, O, I]
    return torch.einsum("poi,moi->opm", Wn, Tn)


def alignment(W: torch.Tensor, teacher_set: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of every path with every teacher, [P, M]: the absolute
    value of the mean over output rows o of cos(W_p[o], T_m[o]). Sign-free, because a path
    whose gate is negative contributes -W_p: it follows T_m when W_p is near -T_m."""
    return row_alignment(W, teacher_set).mean(0).abs()


def network_specialisation(W: torch.Tensor, teacher_set: torch.Tensor, gate_shape: str) -> float:
    """Specialisation of a network: of its paths for path gates; for neuron gates, where
    every output neuron has its own gates, of each neuron's rows, averaged over neurons
    (neuron o may route teacher A through path 1 while neuron o' routes it through path 2)."""
    if gate_shape == "path":
        return specialisation(alignment(W, teacher_set))
    rows = row_alignment(W, teacher_set).abs()
    return float(sum(specialisation(r) for r in rows) / rows.shape[0])


def specialisation(align: torch.Tensor) -> float:
    """The best one-to-one assignment of paths to teachers, scored by the mean alignment
    of the assigned pairs. Two paths that follow the same teacher cannot both be assigned
    to it, so an unspecialised network scores about (1 + 0) / 2, not 1."""
    P, M = align.shape
    best = -math.inf
    if P >= M:
        for paths in itertools.permutations(range(P), M):
            best = max(best, float(sum(align[p, m] for m, p in enumerate(paths)) / M))
    else:
        for ts in itertools.permutations(range(M), P):
            best = max(best, float(sum(align[p, m] for p, m in enumerate(ts)) / P))
    return best


def block_threshold(cfg: "TaskSwitchingConfig", losses: torch.Tensor) -> float:
    """The loss level of a block's time to threshold: --threshold, or with --relative-threshold
    r that fraction of the block's first loss (a level that means the same whatever the
    input dimension and the loss right after a switch)."""
    return cfg.threshold if cfg.relative_threshold is None else cfg.relative_threshold * float(losses[0])


def first_time_below(losses: torch.Tensor, threshold: float, dt: float) -> Optional[float]:
    """Time (steps * dt, counting the first step as dt) until the loss first falls below
    the threshold; None if it never does."""
    below = (losses < threshold).nonzero()
    return None if below.numel() == 0 else float((int(below[0]) + 1) * dt)


class GradientFlow:
    """Euler integration of the two-timescale gradient flow for one GatedLinearNetwork.

    Each step draws a fresh batch, runs the gated_paths op forward and backward once,
    and updates c and W in place; losses stay on the device until a phase ends."""

    def __init__(self, net: GatedLinearNetwork, cfg: TaskSwitchingConfig, generator: torch.Generator) -> None:
        self.net, self.cfg, self.gen = net, cfg, generator

    def run(self, target: torch.Tensor, steps: int, learn_W: bool = True,
            on_record: Optional[Callable[[int], None]] = None) -> torch.Tensor:
        cfg, net = self.cfg, self.net
        W, c = net.W, net.c
        lr_W, lr_c = cfg.dt / cfg.tau_w, cfg.dt / cfg.tau_c
        losses = torch.empty(steps, dtype=W.dtype, device=W.device)
        params = (W, c) if learn_W else (c,)
        for s in range(steps):
            x = torch.randn(cfg.batch, cfg.d_in, generator=self.gen, dtype=W.dtype, device=W.device)
            err = net(x) - x @ target.T
            loss = 0.5 * err.square().sum(1).mean()
            reg = gate_regulariser(c, cfg.lambda_nonneg, cfg.lambda_norm, cfg.norm_k)
            grads = torch.autograd.grad(loss + reg, params)
            with torch.no_grad():
                if learn_W:
                    W.sub_(grads[0], alpha=lr_W)
                c.sub_(grads[-1], alpha=lr_c)
                losses[s] = loss
            if on_record is not None and ((s + 1) % cfg.record_every == 0 or s == steps - 1):
                on_record(s)  # every record_every steps, and the last step of every phase
        return losses


def run_linear(cfg: TaskSwitchingConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """The gated linear network's run (--network linear) of a resolved config; see
    run.run_task_switching, which dispatches by cfg.network."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise UsageError(f"--out {cfg.out} is a file, not a folder")
    os.makedirs(cfg.out, exist_ok=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    teacher_set = teachers(cfg.d_in, cfg.d_out, cfg.teachers, generator=gen, overlap=cfg.teacher_overlap)
    net = GatedLinearNetwork(cfg.d_in, cfg.d_out, cfg.paths, cfg.gate_shape, init_gate=cfg.init_gate,
                             init_scale=cfg.init_scale, backend=cfg.backend, generator=gen)
    flow = GradientFlow(net, cfg, gen)
    steps = int(round(cfg.block_length / cfg.dt))
    schedule = blocked_curriculum(cfg.blocks, list(range(cfg.teachers)))
    trace_t: List[float] = []
    trace_gates: List[List[float]] = []
    trace_align: List[List[List[float]]] = []
    clock = {"t0": 0.0}

    def record(s: int) -> None:
        with torch.no_grad():
            trace_t.append(clock["t0"] + (s + 1) * cfg.dt)
            c = net.c.detach()
            trace_gates.append((c if c.dim() == 1 else c.mean(1)).tolist())
            trace_align.append(alignment(net.W.detach(), teacher_set).tolist())

    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.blocks, desc=f"task-switching ({cfg.regime})", leave=False, dynamic_ncols=True)
    blocks, all_losses = [], []
    wall0 = time.perf_counter()
    for b, task in enumerate(schedule):
        clock["t0"] = b * steps * cfg.dt
        losses = flow.run(teacher_set[task], steps, on_record=record)
        all_losses.append(losses)
        if not bool(torch.isfinite(losses).all()) and bar is not None:
            bar.close()
        check_block_finite(cfg, b, losses)
        entry = dict(block=b + 1, task=int(task),
                     time_to_threshold=first_time_below(losses, block_threshold(cfg, losses), cfg.dt),
                     final_loss=float(losses[-max(1, steps // 20):].mean()),
                     specialisation=network_specialisation(net.W.detach(), teacher_set, cfg.gate_shape))
        blocks.append(entry)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{entry['final_loss']:.3f}", spec=f"{entry['specialisation']:.2f}")
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - wall0
    with torch.no_grad():
        align = alignment(net.W, teacher_set)
    metrics: Dict[str, Any] = dict(
        config=asdict(cfg),
        blocks=blocks,
        time_to_threshold=[e["time_to_threshold"] for e in blocks],
        final_specialisation=network_specialisation(net.W.detach(), teacher_set, cfg.gate_shape),
        final_loss=blocks[-1]["final_loss"],
        final_alignment=align.tolist(),
        final_gates=net.c.detach().tolist(),
        steps=len(schedule) * steps,
        wall_time_s=wall,
        steps_per_s=len(schedule) * steps / wall,
    )
    if cfg.compose:
        metrics["compose"] = _compose_phase(net, flow, cfg, teacher_set)
    atomic_write_json({"command": "task-switching", **metrics}, os.path.join(cfg.out, "metrics.json"))
    picture = plot_task_switching(cfg, torch.cat(all_losses), steps, schedule, trace_t, trace_gates, trace_align,
                                  os.path.join(cfg.out, "task_switching.png"))
    atomic_save(net.state_dict(), os.path.join(cfg.out, "network.pt"))
    _log_summary(metrics, log)
    log(f"metrics: {os.path.join(cfg.out, 'metrics.json')}; plot: {picture}")
    return metrics


def stop_diverged(cfg: TaskSwitchingConfig, block: int, step: int, loss: float) -> None:
    """Write metrics.json saying why the run stopped (block and step counted from 0), and raise RunError."""
    reason = (f"the loss became {loss} in block {block + 1}, step {step + 1}: the gradient flow "
              f"diverged (lower --dt, or raise --tau-w / --tau-c)")
    atomic_write_json(dict(command="task-switching", stopped="diverged", reason=reason, block=block + 1,
                           step=step + 1, config=asdict(cfg)),
                      os.path.join(cfg.out, "metrics.json"))
    raise RunError(reason)


def check_block_finite(cfg: TaskSwitchingConfig, block: int, losses: torch.Tensor) -> None:
    """stop_diverged at the first non-finite loss of a block's losses, if there is one."""
    if not bool(torch.isfinite(losses).all()):
        step = int((~torch.isfinite(losses)).nonzero()[0])
        stop_diverged(cfg, block, step, float(losses[step]))


def composition_tasks(teacher_set: torch.Tensor) -> List[tuple]:
    """(name, target) of the composition phase: the mean of teachers A and B and the rows of A
    then B; with three teachers or more also the means of every consecutive pair, BC, CA, ...
    (the paper's protocol after a curriculum A, B, C: AB, BC, CA)."""
    M = teacher_set.shape[0]
    tasks = [("mean", compose_mean(teacher_set)), ("rows", compose_rows(teacher_set))]
    letters = "ABCDEFGH"
    for a in range(1, M if M >= 3 else 1):
        b = (a + 1) % M
        tasks.append((f"mean {letters[a % 8]}{letters[b % 8]}", compose_mean(teacher_set, a, b)))
    return tasks


def _compose_phase(net: GatedLinearNetwork, flow: GradientFlow, cfg: TaskSwitchingConfig,
                   teacher_set: torch.Tensor) -> Dict[str, Any]:
    """Gates alone (W frozen) against every composed task (composition_tasks), each from the
    end state of the blocked phase."""
    steps = int(round(cfg.compose_length / cfg.dt))
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    out = {}
    for name, target in composition_tasks(teacher_set):
        net.load_state_dict(start)
        with torch.no_grad():
            x = torch.randn(4096, cfg.d_in, generator=flow.gen)
            initial = float(0.5 * (net(x) - x @ target.T).square().sum(1).mean())
        losses = flow.run(target, steps, learn_W=False)
        out[name] = dict(initial_loss=initial,
                         time_to_threshold=first_time_below(losses, block_threshold(cfg, losses), cfg.dt),
                         final_loss=float(losses[-max(1, steps // 20):].mean()),
                         final_gates=net.c.detach().tolist())
    net.load_state_dict(start)
    return out


def _log_summary(m: Dict[str, Any], log: Callable[[str], None]) -> None:
    cfg = m["config"]
    log(f"{cfg['regime']}: {m['steps']} Euler steps in {m['wall_time_s']:.1f} s ({m['steps_per_s']:.0f} steps/s)")
    level = (f"{cfg['relative_threshold']:g}x first" if cfg.get("relative_threshold") is not None
             else f"{cfg['threshold']:.2g}")
    log(f"block  task  time to loss<{level}  final loss  specialisation")
    for e in m["blocks"]:
        t = "not reached" if e["time_to_threshold"] is None else f"{e['time_to_threshold']:.3f}"
        log(f"{e['block']:5d}  {e['task']:4d}  {t:>16}  {e['final_loss']:10.4f}  {e['specialisation']:14.3f}")
    log(f"final specialisation {m['final_specialisation']:.3f}, final loss {m['final_loss']:.4f}")
    for name, r in m.get("compose", {}).items():
        t = "not reached" if r["time_to_threshold"] is None else f"{r['time_to_threshold']:.3f}"
        log(f"compose {name}: gates alone, loss {r['initial_loss']:.3f} -> {r['final_loss']:.4f}, "
            f"time to loss<{level}: {t}")


def plot_task_switching(cfg, losses, steps, schedule, trace_t, trace_gates, trace_align, path: str) -> str:
    """Loss over time with the block boundaries, gates over time, alignment over time."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
    t = (torch.arange(losses.numel()) + 1) * cfg.dt
    axes[0].plot(t, losses.cpu(), lw=0.6)
    if cfg.relative_threshold is None:
        axes[0].axhline(cfg.threshold, color="k", ls=":", lw=0.8, label=f"loss = {cfg.threshold:g}")
        axes[0].legend(loc="upper right", fontsize=8)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("loss")
    gates = torch.tensor(trace_gates)
    for p in range(gates.shape[1]):
        axes[1].plot(trace_t, gates[:, p], label=f"c_{p + 1}")
    axes[1].set_ylabel("gate" + (" (mean over neurons)" if cfg.gate_shape == "neuron" else ""))
    axes[1].legend(loc="upper right", fontsize=8)
    align = torch.tensor(trace_align)
    for p in range(align.shape[1]):
        for m in range(align.shape[2]):
            axes[2].plot(trace_t, align[:, p, m], label=f"path {p + 1} / teacher {'ABCDEFGH'[m % 8]}")
    axes[2].set_ylabel("row-wise cosine")
    axes[2].set_xlabel("time")
    axes[2].legend(loc="lower right", fontsize=7, ncol=2)
    for ax in axes:
        for b in range(1, len(schedule)):
            ax.axvline(b * steps * cfg.dt, color="grey", lw=0.4, alpha=0.6)
    axes[0].set_title(f"{cfg.regime} regime: tau_W={cfg.tau_w:g}, tau_c={cfg.tau_c:g}, "
                      f"lambda_nonneg={cfg.lambda_nonneg:g}, lambda_norm={cfg.lambda_norm:g}, blocks of {cfg.block_length:g}")
    return save_figure(fig, path)
