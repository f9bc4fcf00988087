"""What forming the svd areas costs per training step (issue: at most 10 % at B=64, T=64).

    python bench/micro/svd_area_cost.py

A 16 x 32 GW net with areas="svd" and the cayley step on seq-digits-sized input (T=64, one
feature, ten classes): the median time of forming W (two batched matrix exponentials and
the products; forward and backward of that part alone) against the median time of a whole
training step (forward, backward, Adam), alternating, in one process.
"""
from __future__ import annotations

import statistics
import time

import torch

from rnnofrnns import GlobalWorkspaceNet


def main() -> None:
    torch.manual_seed(0)
    net = GlobalWorkspaceNet(1, 10, num_areas=16, area_size=32, areas="svd", feedback_step="cayley", alpha=0.2,
                             learn_timescales=True)
    opt = torch.optim.Adam(net.parameters(), lr=0.005)
    x, y = torch.randn(64, 64, 1), torch.randint(0, 10, (64,))

    def train_step():
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def form_areas():
        W = net.rnn.area_weights()
        W.sum().backward()

    steps, forms = [], []
    for _ in range(30):
        t0 = time.perf_counter()
        train_step()
        t1 = time.perf_counter()
        form_areas()
        t2 = time.perf_counter()
        steps.append(t1 - t0)
        forms.append(t2 - t1)
    s, f = statistics.median(steps[5:]) * 1e3, statistics.median(forms[5:]) * 1e3
    print(f"training step {s:.1f} ms, forming the svd areas (forward + backward) {f:.1f} ms: {100 * f / s:.1f} %"
          f" [{'PASS' if f / s <= 0.10 else 'MISS'}: at most 10 %], {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
