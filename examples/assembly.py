"""Recursive assembly of pretrained certified networks (issue: the GW paper's open question).

Two Sparse Combo Nets (svd areas, Cayley feedback, learned timescales: the certified default)
each learn to classify the 8x8 digits from one half of every row: net A sees columns 0-3, net B
columns 4-7, one row per step. ModularRNN.combine joins them with a new workspace area linked
to every area of both; only the new feedback, the workspace's input row and a new readout
train, on whole rows. Compared at the same epoch budget:
  - assembled:  pretrained parts, frozen;
  - random parts: the same architecture and the same trainable parameters, parts untrained
    and frozen (what the pretraining is worth);
  - from scratch: the same architecture, everything trainable (more trainable parameters);
  - the parts alone, each on its own half.
Reported per seed: test accuracy (at the best validation epoch), epochs and seconds until the
validation accuracy first reaches --target, trainable parameters and both certificates.

    python examples/assembly.py --out runs/assembly --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch
from torch import nn

from rnnofrnns import ModularRNN
from rnnofrnns.experiments.training.data import load_task


class Classifier(nn.Module):
    def __init__(self, rnn: ModularRNN, num_classes: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.readout = nn.Linear(rnn.hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.rnn(x)[1][0])


def part(seed: int, inputs: int) -> ModularRNN:
    return ModularRNN(inputs, (4, 16), topology="gw", areas="svd", feedback_step="cayley", alpha=0.3,
                      learn_timescales=True, sigma_max=0.999, input_timescales=False,
                      generator=torch.Generator().manual_seed(seed))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def fit(model: nn.Module, data, cols: slice, epochs: int, seed: int, target: float, lr: float = 0.01) -> dict:
    """Adam on the trainable parameters; the test accuracy of the best validation epoch."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    xtr, xva, xte = data.x_train[..., cols], data.x_val[..., cols], data.x_test[..., cols]
    best, best_state, reached, t0 = -1.0, None, None, time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(order), 64):
            b = order[i:i + 64]
            loss = nn.functional.cross_entropy(model(xtr[b]), data.y_train[b])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        val = accuracy(model, xva, data.y_val)
        if reached is None and val >= target:
            reached = dict(epochs=epoch + 1, seconds=time.perf_counter() - t0)
        if val > best:
            best, best_state = val, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    cert = model.rnn.certify()
    trainable = sum(p.numel() for p in params) - model.rnn.num_frozen_parameters()
    return dict(test_accuracy=accuracy(model, xte, data.y_test), best_val_accuracy=best, reached_target=reached,
                trainable_parameters=trainable, continuous_holds=bool(cert.holds),
                discrete_holds=bool(cert.discrete_holds), step_factor=float(cert.step_factor),
                seconds=time.perf_counter() - t0)


def run(seed: int, epochs_parts: int, epochs_whole: int, target: float) -> dict:
    torch.manual_seed(seed)
    data = load_task("row-digits", seed=seed)
    halves = (slice(0, 4), slice(4, 8))
    out = {}
    pretrained = []
    for k, cols in enumerate(halves):
        net = Classifier(part(100 * seed + k, 4), data.num_classes)
        out[f"part {'AB'[k]} alone"] = fit(net, data, cols, epochs_parts, seed, target)
        pretrained.append(net.rnn)
    whole_cols = slice(0, 8)
    variants = {
        "assembled": ModularRNN.combine(pretrained, "workspace", generator=torch.Generator().manual_seed(seed)),
        "random parts": ModularRNN.combine([part(100 * seed, 4), part(100 * seed + 1, 4)], "workspace",
                                           generator=torch.Generator().manual_seed(seed)),
        "from scratch": ModularRNN.combine([part(100 * seed, 4), part(100 * seed + 1, 4)], "workspace",
                                           freeze=False, generator=torch.Generator().manual_seed(seed)),
    }
    for name, rnn in variants.items():
        torch.manual_seed(seed)
        out[name] = fit(Classifier(rnn, data.num_classes), data, whole_cols, epochs_whole, seed, target)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs-parts", type=int, default=40, help="epochs of each part's pretraining")
    parser.add_argument("--epochs", type=int, default=40, help="epochs of the assembled and the control nets")
    parser.add_argument("--target", type=float, default=0.9, help="validation accuracy for the time-to-target")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="runs/assembly")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    results = {seed: run(seed, args.epochs_parts, args.epochs, args.target) for seed in args.seeds}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "assembly.json")
    with open(path + ".tmp", "w") as f:
        json.dump(dict(settings=vars(args), results=results), f, indent=2)
    os.replace(path + ".tmp", path)
    print(f"| net | test accuracy (seeds {', '.join(map(str, args.seeds))}) | epochs to val {args.target} | "
          "trainable parameters | certificates |")
    print("|---|---|---|---:|---|")
    for name in results[args.seeds[0]]:
        rs = [results[s][name] for s in args.seeds]
        accs = ", ".join(f"{r['test_accuracy']:.3f}" for r in rs)
        reach = ", ".join(str(r["reached_target"]["epochs"]) if r["reached_target"] else "-" for r in rs)
        holds = all(r["continuous_holds"] and r["discrete_holds"] for r in rs)
        print(f"| {name} | {accs} | {reach} | {rs[0]['trainable_parameters']:,} | {'both hold' if holds else 'FAIL'} |")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
