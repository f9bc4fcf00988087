"""PNG figures of a training run (matplotlib, Agg backend)."""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

import torch

from .._files import pyplot, save_figure


def training_curves(history: List[Dict[str, float]], path: str) -> str:
    plt = pyplot()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [h["train_loss"] for h in history], label="train")
    a.plot(ep, [h["val_loss"] for h in history], label="validation")
    a.set_xlabel("epoch"), a.set_ylabel("cross-entropy"), a.set_yscale("log"), a.legend()
    b.plot(ep, [h["train_acc"] for h in history], label="train")
    b.plot(ep, [h["val_acc"] for h in history], label="validation")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.legend()
    fig.suptitle("training curves")
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def connectivity(model, path: str) -> str:
    """|W| + |L| as an image, with the area boundaries."""
    plt = pyplot()
    rnn = model.rnn
    with torch.no_grad():
        C = (rnn.intra_matrix().abs() + rnn.feedback_matrix().abs()).float().cpu()
    fig, ax = plt.subplots(figsize=(6, 5.4))
    im = ax.imshow(C.clamp_min(1e-6).log10(), cmap="magma", vmin=-4)
    edges = torch.tensor(rnn.area_sizes).cumsum(0)[:-1].tolist()
    for e in edges:
        ax.axhline(e - 0.5, color="cyan", lw=0.4)
        ax.axvline(e - 0.5, color="cyan", lw=0.4)
    ax.set_title("connectivity log10(|W| + |L|), area boundaries in cyan")
    ax.set_xlabel("source unit"), ax.set_ylabel("target unit")
    fig.colorbar(im, ax=ax, shrink=0.8)
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def ablation_bars(ablation: Sequence[float], full: float, path: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(ablation)), ablation, color="tab:blue")
    ax.axhline(full, color="tab:red", ls="--", label=f"no area silenced ({full:.3f})")
    ax.set_xlabel("silenced area"), ax.set_ylabel("test accuracy"), ax.set_ylim(0, 1)
    ax.set_xticks(range(len(ablation)))
    ax.legend(loc="lower right")
    ax.set_title("test accuracy with one area silenced")
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def save_run_plots(out_dir: str, history, model, ablation, test_acc) -> List[str]:
    paths = [training_curves(history, os.path.join(out_dir, "training_curves.png"))]
    if hasattr(model, "rnn") and hasattr(model.rnn, "intra_matrix"):
        paths.append(connectivity(model, os.path.join(out_dir, "connectivity.png")))
    if ablation:
        paths.append(ablation_bars(ablation, test_acc, os.path.join(out_dir, "ablation.png")))
    return paths
