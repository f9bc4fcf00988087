"""Task switching in a nonlinear network on images (`--network image`).

A small CNN (two convolutions, a hidden layer of 64, ReLU) is trained once on MNIST and
frozen; on its features a gated readout of P paths (`gated_paths`, one gate per path) is
trained by the same two-timescale gradient flow as the linear network, with softmax
cross-entropy plus the gate regulariser. Two tasks alternate in blocks: the original labels
and the permutation y -> y // 2 + 5 (y mod 2). In the flexible regime the gates come to
select one path per task and switching becomes fast; in the forgetful one every switch is
relearned by the weights.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import gated_paths
from .._files import atomic_save, atomic_write_json, pyplot, save_figure
from ..errors import RunError
from ..training.data import load_task
from .experiment import TaskSwitchingConfig, gate_regulariser, specialisation, stop_diverged


class MnistFeatures(nn.Module):
    """Two 5x5 convolutions (16 and 32 channels, ReLU, 2x2 max pooling), a hidden layer of
    64 with ReLU, and a linear classifier used only while the extractor is trained."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 16, 5), nn.Conv2d(16, 32, 5)
        self.hidden, self.classify = nn.Linear(32 * 4 * 4, 64), nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 1, 28, 28] -> the 64 hidden units [B, 64]."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.hidden(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def permuted_labels(y: torch.Tensor) -> torch.Tensor:
    """The second task's labels: y -> y // 2 + 5 (y mod 2), a permutation of 0..9."""
    return y // 2 + 5 * (y % 2)


def train_features(x: torch.Tensor, y: torch.Tensor, epochs: int, generator: torch.Generator) -> MnistFeatures:
    """The feature extractor, trained with Adam (lr 1e-3, batch 100)."""
    net = MnistFeatures()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=generator).split(100):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def load_features(path: str) -> MnistFeatures:
    net = MnistFeatures()
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except FileNotFoundError:
        raise RunError(f"--features {path} is missing") from None
    except Exception as e:
        raise RunError(f"--features {path} is not a feature extractor of this command "
                       f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return net.eval()


def _images(cfg: TaskSwitchingConfig) -> Tuple[torch.Tensor, ...]:
    data = load_task("smnist" if cfg.data_dir else "smnist-5k", cfg.data_dir, cfg.seed)
    img = lambda x: x.reshape(-1, 1, 28, 28)  # noqa: E731  (normalised pixels, row-major)
    return img(data.x_train), data.y_train, img(data.x_test), data.y_test


def path_accuracy(f: torch.Tensor, W: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[P, M]: the accuracy of each path alone, W_p f, on each task (the regulariser keeps the
    gates non-negative, so a path contributes with its own sign)."""
    return torch.tensor([[float(((f @ W[p].T).argmax(1) == labels).float().mean())
                          for labels in (y, permuted_labels(y))] for p in range(W.shape[0])])


def run_image(cfg: TaskSwitchingConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """The blocked curriculum on the gated readout of frozen CNN features (cfg resolved,
    network "image"); writes features.pt, metrics.json, task_switching.png and network.pt."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.teachers != 2:
        raise RunError("--network image has exactly two tasks (the labels and their permutation); "
                       f"got --teachers {cfg.teachers}")
    gen = torch.Generator().manual_seed(cfg.seed)
    x_train, y_train, x_test, y_test = _images(cfg)
    os.makedirs(cfg.out, exist_ok=True)
    t0 = time.perf_counter()
    if cfg.features:
        extractor = load_features(cfg.features)
    else:
        extractor = train_features(x_train, y_train, epochs=3, generator=gen)
        atomic_save(extractor.state_dict(), os.path.join(cfg.out, "features.pt"))
    with torch.no_grad():
        f_train, f_test = extractor.features(x_train), extractor.features(x_test)
        feature_acc = float((extractor(x_test).argmax(1) == y_test).float().mean())
    feature_time = time.perf_counter() - t0
    log(f"feature extractor: test accuracy {feature_acc:.3f} ({feature_time:.1f} s"
        f"{', loaded from ' + cfg.features if cfg.features else ', trained, saved as features.pt'})")

    P, D, K = cfg.paths, f_train.shape[1], 10
    W = (torch.randn(P, K, D, generator=gen) * cfg.init_scale * 0.01 / D ** 0.5).requires_grad_()
    c = torch.full((P,), cfg.init_gate).requires_grad_()
    steps = int(round(cfg.block_length / cfg.dt))
    lr_W, lr_c = cfg.dt / cfg.tau_w, cfg.dt / cfg.tau_c
    trace_t: List[float] = []
    trace_acc: List[float] = []
    trace_gates: List[List[float]] = []
    blocks = []
    wall0 = time.perf_counter()
    for b in range(cfg.blocks):
        task = b % 2
        y_task, y_held = (y_train, y_test) if task == 0 else (permuted_labels(y_train), permuted_labels(y_test))
        accs: List[Tuple[int, float]] = []
        for s in range(steps):
            idx = torch.randint(0, len(y_task), (cfg.batch,), generator=gen)
            logits = gated_paths(f_train[idx], W, c, backend=cfg.backend)
            loss = F.cross_entropy(logits, y_task[idx])
            if not bool(torch.isfinite(loss.detach())):
                stop_diverged(cfg, b, s, float(loss.detach()))
            reg = gate_regulariser(c, cfg.lambda_nonneg, cfg.lambda_norm, cfg.norm_k)
            gW, gc = torch.autograd.grad(loss + reg, (W, c))
            with torch.no_grad():
                W.sub_(gW, alpha=lr_W)
                c.sub_(gc, alpha=lr_c)
                if s % cfg.record_every == 0 or s == steps - 1:
                    acc = float((gated_paths(f_test, W, c, backend=cfg.backend).argmax(1) == y_held).float().mean())
                    accs.append((s + 1, acc))
                    trace_t.append((b * steps + s + 1) * cfg.dt)
                    trace_acc.append(acc)
                    trace_gates.append(c.tolist())
        final = accs[-1][1]
        to_90 = next(step for step, a in accs if a >= 0.9 * final)
        blocks.append(dict(block=b + 1, task=task, accuracy_after_switch=accs[0][1], final_accuracy=final,
                           steps_to_90_percent=to_90, gates=c.detach().tolist()))
    wall = time.perf_counter() - wall0
    with torch.no_grad():
        paths = path_accuracy(f_test, W.detach(), y_test)
    metrics: Dict[str, Any] = dict(
        config=asdict(cfg), feature_extractor=dict(test_accuracy=feature_acc, seconds=feature_time,
                                                   path=cfg.features or "features.pt"),
        blocks=blocks, steps_to_90_percent=[e["steps_to_90_percent"] for e in blocks],
        final_gates=c.detach().tolist(), path_accuracy=paths.tolist(), specialisation=specialisation(paths),
        steps=cfg.blocks * steps, wall_time_s=wall,
    )
    atomic_write_json({"command": "task-switching", **metrics}, os.path.join(cfg.out, "metrics.json"))
    picture = _plot(cfg, steps, trace_t, trace_acc, trace_gates, paths, os.path.join(cfg.out, "task_switching.png"))
    atomic_save(dict(W=W.detach(), c=c.detach()), os.path.join(cfg.out, "network.pt"))
    log(f"{cfg.regime} image network: {metrics['steps']} steps in {wall:.1f} s")
    log("block  task  accuracy after the switch  final accuracy  steps to 90 %  gates")
    for e in blocks:
        log(f"{e['block']:5d}  {e['task']:4d}  {e['accuracy_after_switch']:25.3f}  {e['final_accuracy']:14.3f}  "
            f"{e['steps_to_90_percent']:13d}  {', '.join(f'{g:.2f}' for g in e['gates'])}")
    log("each path alone, accuracy on (labels, permuted labels): "
        + "; ".join(f"path {p + 1}: {a:.2f}, {b_:.2f}" for p, (a, b_) in enumerate(paths.tolist()))
        + f"; specialisation {metrics['specialisation']:.3f}")
    log(f"metrics: {os.path.join(cfg.out, 'metrics.json')}; plot: {picture}")
    return metrics


def _plot(cfg, steps, trace_t, trace_acc, trace_gates, paths, path: str) -> str:
    """Held-out accuracy and gates over time with the block boundaries; each path alone on each task."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(9, 7.5))
    axes[0].plot(trace_t, trace_acc, lw=0.8)
    axes[0].set_ylabel("held-out accuracy"), axes[0].set_ylim(0, 1)
    gates = torch.tensor(trace_gates)
    for p in range(gates.shape[1]):
        axes[1].plot(trace_t, gates[:, p].numpy(), label=f"c_{p + 1}")
    axes[1].set_ylabel("gate"), axes[1].set_xlabel("time"), axes[1].legend(loc="upper right", fontsize=8)
    for ax in axes[:2]:
        for b in range(1, cfg.blocks):
            ax.axvline(b * steps * cfg.dt, color="grey", lw=0.4, alpha=0.6)
    im = axes[2].imshow(paths.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axes[2].set_xticks([0, 1], ["labels", "permuted labels"])
    axes[2].set_yticks(range(paths.shape[0]), [f"path {p + 1}" for p in range(paths.shape[0])])
    fig.colorbar(im, ax=axes[2], label="accuracy of the path alone")
    axes[0].set_title(f"image network, {cfg.regime} regime: tau_W={cfg.tau_w:g}, tau_c={cfg.tau_c:g}, "
                      f"lambda_nonneg={cfg.lambda_nonneg:g}, lambda_norm={cfg.lambda_norm:g}")
    fig.tight_layout()
    return save_figure(fig, path)
