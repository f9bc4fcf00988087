"""One training step of 256 small RNNs (T=64, B=256, F=8): the fused ensemble against a
Python loop over 256 separate models and against torch.func.vmap over stacked models.

Contenders: "ensemble" (RNNEnsemble.training_loss: the one-pass ensemble_loss op),
"modular_rnn" (the same ensemble as one modular_rnn call between the fused input
projection and the fused readout+loss op), "loop" and "vmap".
Targets: the ensemble at least 20x faster than the loop and 3x faster than vmap.
"""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, stack_module_state, vmap

from rnnofrnns import RNNEnsemble, SmallRNN
from rnnofrnns.models.small_rnn import instance_generator
from rnnofrnns.ops.ensemble import ensemble_readout_loss

I, T, B, F = 256, 64, 256, 8


def data():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(I, B, T, F, generator=g) < 0.1) * torch.rand(I, B, T, F, generator=g)
    y = torch.zeros_like(x)
    y[:, :, 2:] = x[:, :, :-2]
    return x, y


class TorchSmallRNN(torch.nn.Module):
    """The same model in plain PyTorch (a loop over time), for torch.func.vmap."""

    def __init__(self, n, i):
        super().__init__()
        ref = SmallRNN(F, n, "relu_readout", generator=instance_generator(0, i))
        self.W_x, self.W_h, self.W_y, self.b = ref.W_x, ref.W_h, ref.W_y, ref.b

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.W_h.shape[0])
        outs = []
        for t in range(x.shape[1]):
            h = x[:, t] @ self.W_x.T + h @ self.W_h.T
            outs.append(torch.relu(h @ self.W_y + self.b))
        return torch.stack(outs, 1)


@pytest.mark.parametrize("hidden", [2, 5, 10])
@pytest.mark.parametrize("contender", ["ensemble", "modular_rnn", "loop", "vmap"])
def test_training_step(benchmark, contender, hidden):
    x, y = data()
    benchmark.group = f"ensemble training step, hidden {hidden}"
    benchmark.extra_info.update(instances=I, T=T, B=B, F=F, hidden=hidden)
    if contender in ("ensemble", "modular_rnn"):
        ens = RNNEnsemble(I, F, hidden, variant="relu_readout", seed=0, backend="cpu")
        opt = torch.optim.Adam(ens.parameters(), lr=1e-3)

        def step():
            if contender == "ensemble":
                loss = ens.training_loss(x, y)
            else:
                loss = ensemble_readout_loss(ens.states(x), ens.W_y, ens.b, y, True, backend="cpu").sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    elif contender == "loop":
        models = [SmallRNN(F, hidden, "relu_readout", generator=instance_generator(0, i), backend="cpu")
                  for i in range(I)]
        opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]

        def step():
            for i, (m, o) in enumerate(zip(models, opts)):
                loss = (m(x[i]) - y[i]).square().mean()
                o.zero_grad()
                loss.backward()
                o.step()
    else:
        models = [TorchSmallRNN(hidden, i) for i in range(I)]
        params, buffers = stack_module_state(models)
        base = TorchSmallRNN(hidden, 0).to("meta")
        opt = torch.optim.Adam(list(params.values()), lr=1e-3)

        def loss_fn(p, bufs, xi, yi):
            return (functional_call(base, (p, bufs), (xi,)) - yi).square().mean()

        grads_fn = vmap(grad(loss_fn))

        def step():
            grads = grads_fn(params, buffers, x, y)
            for k, v in params.items():
                v.grad = grads[k]
            opt.step()

    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
