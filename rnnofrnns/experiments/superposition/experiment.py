"""The temporal-superposition experiment: an ensemble of small RNNs over a grid of input
sparsities (and delays), trained jointly as one fused call, then analysed.

    python -m rnnofrnns superposition --hidden 2 --features 2 --delay 2 --out runs/superposition
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ...models import RNNEnsemble
from ...models.small_rnn import TIED_READOUTS
from ...ops._backend import flush_denormal
from .._files import atomic_save, atomic_write_json, command_run_folder, pyplot, save_figure
from .._limits import check_fits, check_threads
from ..errors import RunError, UsageError
from .geometry import feature_directions, linear_loss_decomposition, summary


@dataclass
class SuperpositionConfig:
    hidden: int = 2
    features: int = 2
    delays: List[int] = field(default_factory=lambda: [2])
    sparsities: List[float] = field(default_factory=lambda: [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99])
    seeds: int = 5
    steps: int = 4000
    batch_size: int = 256
    seq_len: int = 20
    lr: float = 0.01
    variant: str = "relu_readout"
    tied_readout: str = "none"    # none, input (W_y = W_x) or output-direction (W_y = W_h^k W_x)
    output_bias: bool = True
    record_every: int = 20        # Adam steps between the recorded losses and projections (dynamics.json)
    importance_decay: float = 1.0  # feature f's squared error weighs importance_decay ** f (1: all alike)
    out: str = "runs/superposition"
    threads: Optional[int] = None
    progress: bool = True

    def validate(self) -> None:
        for name in ("hidden", "features", "seeds", "steps", "batch_size", "seq_len", "record_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if not self.delays or any(k < 1 or k >= self.seq_len for k in self.delays):
            raise UsageError(f"--delay values must be in [1, seq_len) = [1, {self.seq_len}), got {self.delays}")
        if not self.sparsities or any(not 0.0 <= s < 1.0 for s in self.sparsities):
            raise UsageError(f"--sparsities must lie in [0, 1), got {self.sparsities}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if not 0.0 < self.importance_decay <= 1.0:
            raise UsageError(f"--importance-decay must be in (0, 1], got {self.importance_decay}")
        for flag, values in (("--delay", self.delays), ("--sparsities", self.sparsities)):
            repeated = sorted({v for v in values if list(values).count(v) > 1})
            if repeated:
                raise UsageError(f"{flag} must not repeat a value (it would train the same RNNs twice), "
                                 f"got {', '.join(map(str, repeated))} more than once")
        # (the variant check sat after memory_estimate's return until 2026-12-03: it never ran)
        if self.variant not in ("linear", "relu_readout", "relu"):
            raise UsageError(f"--variant must be linear, relu_readout or relu, got {self.variant!r}")
        if self.tied_readout not in TIED_READOUTS:
            raise UsageError(f"--tied-readout must be one of {', '.join(TIED_READOUTS)}, got {self.tied_readout!r}")
        check_threads(self.threads)
        check_fits(self.memory_estimate(), f"--delay x --sparsities x --seeds = {self.instances} RNNs of "
                                           f"--hidden {self.hidden}, --features {self.features}, "
                                           f"--batch-size {self.batch_size}, --seq-len {self.seq_len}")

    @property
    def instances(self) -> int:
        """RNNs in the ensemble: one per delay, sparsity and seed."""
        return len(self.delays) * len(self.sparsities) * self.seeds

    def memory_estimate(self) -> float:
        """Bytes a training step needs, roughly from above: every RNN's batch of sequences, their
        states and outputs (kept for the backward), and the weights with Adam's moments."""
        per_rnn = 6 * self.batch_size * self.seq_len * (2 * self.features + self.hidden) + \
            8 * (self.hidden * (2 * self.features + self.hidden) + self.features)
        return 4.0 * self.instances * per_rnn


# Everything a superposition run writes into its folder (a rerun replaces them).
OWN_FILES = ("metrics.json", "ensemble.pt", "angle_vs_sparsity.png", "spectral_radius_vs_sparsity.png",
             "feature_directions.png", "dynamics.json", "dynamics.png", "feature_recall.png")


def run_superposition(cfg: SuperpositionConfig, log=print) -> Dict[str, Any]:
    """Train the ensemble over the grid, analyse it and write metrics.json and the plots.
    Subnormals are flushed to zero during the run (the caller's setting is restored after)."""
    cfg.validate()
    with command_run_folder(cfg.out, "superposition", OWN_FILES), flush_denormal():
        return _run_superposition(cfg, log)


def _run_superposition(cfg: SuperpositionConfig, log) -> Dict[str, Any]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise UsageError(f"--out {cfg.out} is a file, not a folder")
    os.makedirs(cfg.out, exist_ok=True)
    grid = [(k, s, seed) for k in cfg.delays for s in cfg.sparsities for seed in range(cfg.seeds)]
    ens = RNNEnsemble(len(grid), cfg.features, cfg.hidden, variant=cfg.variant, tied_readout=cfg.tied_readout,
                      output_bias=cfg.output_bias, feature_probability=[1.0 - s for _, s, _ in grid],
                      delay=[k for k, _, _ in grid], seed=0,
                      importance=[cfg.importance_decay ** f for f in range(cfg.features)])
    opt = torch.optim.Adam(ens.parameters(), lr=cfg.lr)
    gens = [torch.Generator().manual_seed(10_000 + i) for i in range(len(grid))]
    log(f"training {len(grid)} RNNs of hidden size {cfg.hidden} jointly: delays {cfg.delays}, "
        f"{len(cfg.sparsities)} sparsities x {cfg.seeds} seeds, {cfg.steps} Adam steps")
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc="superposition", leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    # the training dynamics: every instance's loss and its projections w_y . w_s, s = 0..2k
    span = min(cfg.seq_len, 2 * max(cfg.delays) + 1)
    dynamics: Dict[str, List[Any]] = dict(step=[], loss=[], projections=[])
    for step in range(cfg.steps):
        x, y = ens.sample_batch(cfg.batch_size, cfg.seq_len, gens)
        losses = ens.training_losses(x, y)
        loss = losses.sum()
        if step % cfg.record_every == 0 or step == cfg.steps - 1:
            with torch.no_grad():
                dynamics["step"].append(step)
                dynamics["loss"].append(losses.detach().tolist())
                dynamics["projections"].append(ens.projections(span).mean(2).tolist())
        if not bool(torch.isfinite(loss.detach())):
            if bar is not None:
                bar.close()
            _stop_diverged(cfg, ens, grid, x, y, step, float(loss.detach()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(mean_loss=f"{float(loss) / len(grid):.3e}")
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t0
    with torch.no_grad():
        eval_gens = [torch.Generator().manual_seed(20_000 + i) for i in range(len(grid))]
        x, y = ens.sample_batch(1024, cfg.seq_len, eval_gens)
        err = (ens(x) - y).square()
        per_instance_loss = (err * ens.importance[:, None, None, :]).mean(dim=(1, 2, 3))  # the objective
        # how much of each feature's recall a net keeps: 1 - its error / the variance of its target
        # (1: recalled exactly, 0: no better than a constant); the first k steps have no target
        k_max = max(cfg.delays)
        recall = 1 - err[:, :, k_max:].mean(dim=(1, 2)) / y[:, :, k_max:].var(dim=(1, 2)).clamp_min(1e-12)
    rows = []
    with torch.no_grad():
        proj = ens.projections(span)  # [I, span, F]
    for i, (k, s, seed) in enumerate(grid):
        stats = summary(ens.W_x[i].detach(), ens.W_h[i].detach(), k)
        others = [t for t in range(span) if t != k]
        # the interference-free half-space: the readout of a feature does not read (w_y . w_s <= 0)
        # the directions its input took at the other delays s != k (features and s counted alike)
        free = float((proj[i, others] <= 0).double().mean()) if others else float("nan")
        extra = {}
        if cfg.variant == "linear":  # the expected loss from the weights, in parts (geometry.py)
            with torch.no_grad():
                extra["loss_decomposition"] = linear_loss_decomposition(
                    ens.W_x[i], ens.W_h[i], ens.readout_weight()[i], ens.b[i], k, 1.0 - s, cfg.seq_len,
                    ens.importance[i])
        rows.append(dict(delay=k, sparsity=s, seed=seed, loss=float(per_instance_loss[i]), **extra,
                         projection_k=float(proj[i, k].mean()), interference_free=free,
                         feature_recall=[round(float(v), 4) for v in recall[i]],
                         **{name: float(v) for name, v in stats.items()}))
    table = []
    for k in cfg.delays:
        for s in cfg.sparsities:
            sel = [r for r in rows if r["delay"] == k and r["sparsity"] == s]
            # Seeds can stall in poor local minima (loss several times the best seed's), so the
            # phase diagram is read off the best seed (lowest held-out loss) of each cell;
            # the medians are kept beside it.
            best = min(sel, key=lambda r: r["loss"])
            entry = dict(delay=k, sparsity=s,
                         best_interference_free=best["interference_free"],
                         median_spectral_radius=float(np.median([r["spectral_radius"] for r in sel])),
                         median_loss=float(np.median([r["loss"] for r in sel])),
                         best_seed=best["seed"], best_loss=best["loss"],
                         best_spectral_radius=best["spectral_radius"],
                         best_feature_recall=best["feature_recall"],
                         # all or none: the share of the best seed's features recalled neither
                         # well (>= 0.8) nor hardly at all (<= 0.2)
                         best_partial_share=float(np.mean([0.2 < v < 0.8 for v in best["feature_recall"]])),
                         features_kept=int(sum(v >= 0.8 for v in best["feature_recall"])))
            if "loss_decomposition" in best:
                entry["best_loss_decomposition"] = best["loss_decomposition"]
            if "k_theta" in sel[0]:
                entry["median_k_theta"] = float(np.median([r["k_theta"] for r in sel]))
                entry["best_k_theta"] = best["k_theta"]
            table.append(entry)
    metrics = dict(command="superposition", config=asdict(cfg), wall_time_s=wall, instances=rows, by_sparsity=table)
    atomic_write_json(metrics, os.path.join(cfg.out, "metrics.json"))
    atomic_save(ens.state_dict(), os.path.join(cfg.out, "ensemble.pt"))
    atomic_write_json(dict(command="superposition", grid=[list(g) for g in grid], **dynamics),
                      os.path.join(cfg.out, "dynamics.json"))
    pictures = save_plots(cfg, ens, grid, rows, table)
    pictures.append(plot_dynamics(cfg, grid, table, dynamics, os.path.join(cfg.out, "dynamics.png")))
    pictures.append(plot_feature_recall(cfg, table, os.path.join(cfg.out, "feature_recall.png")))
    log(f"trained in {wall:.1f} s")
    log("delay  sparsity | best seed: k*theta  spectral radius  loss      | median: k*theta  spectral radius  loss")
    for e in table:
        kt = f"{e['best_k_theta']:18.1f}" if "best_k_theta" in e else f"{'-':>18}"
        mkt = f"{e['median_k_theta']:15.1f}" if "median_k_theta" in e else f"{'-':>15}"
        log(f"{e['delay']:5d}  {e['sparsity']:8.2f} | {kt}  {e['best_spectral_radius']:15.3f}  {e['best_loss']:.3e} | "
            f"{mkt}  {e['median_spectral_radius']:15.3f}  {e['median_loss']:.3e}")
    if cfg.variant == "linear":
        log("delay  sparsity | best seed's expected loss from its weights: recall  temporal  spatial  mean  = total "
            "| measured")
        for e in table:
            d = e["best_loss_decomposition"]
            log(f"{e['delay']:5d}  {e['sparsity']:8.2f} | {d['recall']:.3e}  {d['temporal_interference']:.3e}  "
                f"{d['spatial_interference']:.3e}  {d['mean']:.3e}  = {d['total']:.3e} | {e['best_loss']:.3e}")
    if cfg.features > 1:
        log("delay  sparsity | best seed: recall of each feature (importance decay "
            f"{cfg.importance_decay:g})  kept (>= 0.8)  partial share")
        for e in table:
            log(f"{e['delay']:5d}  {e['sparsity']:8.2f} | " + " ".join(f"{v:5.2f}" for v in e["best_feature_recall"])
                + f"  {e['features_kept']:d}  {e['best_partial_share']:.2f}")
    log("plots: " + ", ".join(pictures))
    return metrics


def _stop_diverged(cfg: SuperpositionConfig, ens: RNNEnsemble, grid, x: torch.Tensor, y: torch.Tensor, step: int,
                   loss: float) -> None:
    """Name the instances whose loss is not finite in metrics.json and a RunError: the joint run
    stops at once (nothing of a NaN instance would mean anything)."""
    with torch.no_grad():
        per_instance = (ens(x) - y).square().mean(dim=(1, 2, 3))
    bad = [i for i in range(len(grid)) if not bool(torch.isfinite(per_instance[i]))]
    names = [dict(instance=i, delay=grid[i][0], sparsity=grid[i][1], seed=grid[i][2]) for i in bad]
    shown = ", ".join(f"#{n['instance']} (delay {n['delay']}, sparsity {n['sparsity']:g}, seed {n['seed']})"
                      for n in names[:3])
    reason = (f"the loss became {loss} at Adam step {step + 1}: {len(bad)} of {len(grid)} RNNs diverged"
              f"{': ' + shown if shown else ''}{' ...' if len(bad) > 3 else ''}; lower --lr")
    atomic_write_json(dict(command="superposition", stopped="diverged", reason=reason, step=step + 1, diverged=names,
                           config=asdict(cfg)),
                      os.path.join(cfg.out, "metrics.json"))
    raise RunError(reason)


def save_plots(cfg, ens, grid, rows, table) -> List[str]:
    plt = pyplot()

    paths = []
    for metric, label, fname in [("k_theta", "k * theta (degrees)", "angle_vs_sparsity.png"),
                                 ("spectral_radius", "spectral radius of W_h", "spectral_radius_vs_sparsity.png")]:
        if metric not in rows[0]:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for k in cfg.delays:
            sel = [r for r in rows if r["delay"] == k]
            ax.scatter([r["sparsity"] for r in sel], [r[metric] for r in sel], s=12, alpha=0.5, label=f"k={k} (seeds)")
            med = [e for e in table if e["delay"] == k]
            ax.plot([e["sparsity"] for e in med], [e[f"median_{metric}"] for e in med], lw=1, ls="--",
                    label=f"k={k} median")
            ax.plot([e["sparsity"] for e in med], [e[f"best_{metric}"] for e in med], lw=2, marker="o",
                    label=f"k={k} best seed (lowest loss)")
        ax.set_xlabel("sparsity (1 - p)"), ax.set_ylabel(label), ax.legend(fontsize=8)
        if metric == "k_theta":
            ax.set_yticks([0, 90, 180, 270, 360])
        paths.append(save_figure(fig, os.path.join(cfg.out, fname)))
    if cfg.hidden == 2:
        k = cfg.delays[0]
        best = {(e["delay"], e["sparsity"]): e["best_seed"] for e in table}
        chosen = [i for i, (kk, s, seed) in enumerate(grid) if kk == k and seed == best[(kk, s)]
                  and s in (cfg.sparsities[0], cfg.sparsities[len(cfg.sparsities) // 2], cfg.sparsities[-1])]
        fig, axes = plt.subplots(1, len(chosen), figsize=(3.4 * len(chosen), 3.4))
        for ax, i in zip(np.atleast_1d(axes), chosen):
            d = feature_directions(ens.W_x[i].detach().double(), ens.W_h[i].detach().double(), k)  # [S, F, 2]
            for f in range(d.shape[1]):
                for s_ in range(k + 1):
                    v = d[s_, f]
                    ax.annotate("", xy=(float(v[0]), float(v[1])), xytext=(0, 0),
                                arrowprops=dict(arrowstyle="->", color=f"C{f}", alpha=1.0 - 0.6 * s_ / max(k, 1)))
                    ax.text(float(v[0]), float(v[1]), f"{s_}", fontsize=7, color=f"C{f}")
            lim = float(d.abs().max()) * 1.2 + 1e-9
            ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
            ax.axhline(0, color="grey", lw=0.3), ax.axvline(0, color="grey", lw=0.3)
            ax.set_title(f"sparsity {grid[i][1]:.2f}", fontsize=9)
        fig.suptitle(f"feature directions w_s = W_h^s W_x, s = 0..{k} (colour: feature)", fontsize=9)
        paths.append(save_figure(fig, os.path.join(cfg.out, "feature_directions.png")))
    return paths


def plot_dynamics(cfg: SuperpositionConfig, grid, table, dynamics: Dict[str, List[Any]], path: str) -> str:
    """For the best seed of the first delay at the first, middle and last sparsity: its training
    loss (the staircase) and its projections w_y . w_s over training (s = k drawn thick; the
    interference-free half-space is w_y . w_s <= 0 for s != k)."""
    plt = pyplot()
    k = cfg.delays[0]
    best = {(e["delay"], e["sparsity"]): e["best_seed"] for e in table}
    picks = sorted({cfg.sparsities[0], cfg.sparsities[len(cfg.sparsities) // 2], cfg.sparsities[-1]})
    chosen = [i for i, (kk, s, seed) in enumerate(grid) if kk == k and s in picks and seed == best[(kk, s)]]
    steps = np.asarray(dynamics["step"])
    loss = np.asarray(dynamics["loss"])
    proj = np.asarray(dynamics["projections"])  # [records, I, span]
    fig, axes = plt.subplots(2, len(chosen), figsize=(3.8 * len(chosen), 6), squeeze=False)
    for col, i in enumerate(chosen):
        axes[0, col].plot(steps, loss[:, i], lw=0.8)
        axes[0, col].set_yscale("log")
        axes[0, col].set_title(f"sparsity {grid[i][1]:g}, seed {grid[i][2]}", fontsize=9)
        for s_ in range(proj.shape[2]):
            axes[1, col].plot(steps, proj[:, i, s_], lw=2.0 if s_ == k else 0.8, label=f"s={s_}")
        axes[1, col].axhline(0, color="grey", lw=0.4)
        axes[1, col].set_xlabel("Adam step")
    axes[0, 0].set_ylabel("training loss")
    axes[1, 0].set_ylabel("w_y . w_s (mean over features)")
    axes[1, -1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"training dynamics, delay k={k} (best seed of each sparsity)", fontsize=9)
    return save_figure(fig, path)


def plot_feature_recall(cfg: SuperpositionConfig, table, path: str) -> str:
    """Which features the best seed of every (delay, sparsity) keeps: the recall of each feature
    (1 - error / variance of its target) as a delay x feature map, one panel per sparsity."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(cfg.sparsities), figsize=(0.5 * cfg.features * len(cfg.sparsities) + 2.5, 3.2),
                             squeeze=False)
    for ax, s_ in zip(axes[0], cfg.sparsities):
        grid = np.array([next(e["best_feature_recall"] for e in table if e["delay"] == k and e["sparsity"] == s_)
                         for k in cfg.delays])
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(cfg.features)), ax.set_yticks(range(len(cfg.delays)))
        ax.set_yticklabels([str(k) for k in cfg.delays]), ax.set_xlabel("feature (importance decays ->)")
        ax.set_title(f"sparsity {s_:g}", fontsize=9)
    axes[0, 0].set_ylabel("delay k")
    fig.colorbar(im, ax=axes[0].tolist(), label="recall (1 - error / variance)")
    fig.suptitle(f"features kept by the best seed, importance {cfg.importance_decay:g}^f, hidden {cfg.hidden}",
                 fontsize=9)
    return save_figure(fig, path)
