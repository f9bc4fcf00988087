"""torch.compile with its default backend (inductor), forward and backward, for every op of the
cpu backend and both feedback steps, and for the models of every step and topology with
fullgraph=True: the fake implementations must describe the real outputs (shapes and strides),
or inductor's generated code reads them wrong."""
from __future__ import annotations

import pytest
import torch

from rnnofrnns.experiments.training.build import build_model
from rnnofrnns.experiments.training.config import TrainConfig
from rnnofrnns.ops import ensemble, feedback_plan, gated_paths, modular_rnn
from problems import all_to_all, star


def _rand(g, *shape, s=1.0):
    return (s * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()


def _check(fn, inputs, fullgraph, rtol=1e-9, atol=1e-11):
    """fn compiled by inductor against fn eager: value and the gradient of every input."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=fullgraph)
    out = compiled(*inputs)
    grads = torch.autograd.grad(out, inputs)
    ref = fn(*inputs)
    ref_grads = torch.autograd.grad(ref, inputs)
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol)


RING = [(0, 1), (1, 2), (2, 3), (3, 0), (1, 0), (2, 1), (3, 2), (0, 3)]  # 4 areas: a product of 2 stars


@pytest.mark.parametrize("planned", [True, False], ids=["plan", "no-plan"])
@pytest.mark.parametrize("step,pairs", [("euler", star(4)), ("cayley", star(4)), ("cayley", all_to_all(3)),
                                        ("cayley", RING)],
                         ids=["euler-star", "cayley-star", "cayley-dense", "cayley-stars"])
def test_modular_rnn_under_inductor(step, pairs, planned):
    g = torch.Generator().manual_seed(0)
    p, n, T, B = (3, 5, 6, 3) if len(pairs) == 6 and pairs != star(4) else (4, 5, 6, 3)
    idx = torch.tensor(pairs)
    plan = feedback_plan(idx, p, step) if planned else None
    inputs = [_rand(g, T, B, p * n), _rand(g, p, n, n, s=0.2), _rand(g, len(pairs), n, n, s=0.2), _rand(g, B, p * n)]
    alpha = torch.linspace(0.2, 0.7, p, dtype=torch.float64).requires_grad_()

    def loss(drive, W, L, h0, a):
        states = modular_rnn(drive, W, L, idx, h0, alpha=a, nonlinearity="tanh", form="rate", feedback_step=step,
                             feedback_plan=plan, backend="cpu")
        return (states * torch.linspace(-1, 1, states.numel(), dtype=states.dtype).view_as(states)).sum()

    # without a plan the cayley step reads L_index to choose its factorisation: one graph break
    _check(loss, inputs + [alpha], fullgraph=planned or step == "euler")


@pytest.mark.parametrize("gates", ["path", "sample", "neuron"])
def test_gated_paths_under_inductor(gates):
    g = torch.Generator().manual_seed(1)
    B, P, O, I = 5, 3, 7, 6
    c_shape = {"path": (P,), "sample": (B, P), "neuron": (B, P, O)}[gates]
    inputs = [_rand(g, B, I), _rand(g, P, O, I), _rand(g, *c_shape)]

    def loss(x, W, c):
        return (gated_paths(x, W, c, backend="cpu") ** 2).sum()

    _check(loss, inputs, fullgraph=True)


def test_ensemble_ops_under_inductor():
    g = torch.Generator().manual_seed(2)
    I, B, T, F, n = 3, 4, 5, 8, 2
    x, y = torch.randn(I, B, T, F, generator=g, dtype=torch.float64), torch.randn(I, B, T, F, generator=g,
                                                                                   dtype=torch.float64)
    inputs = [_rand(g, I, n, F, s=0.3), _rand(g, I, n, n, s=0.3), _rand(g, I, n, F, s=0.3), _rand(g, I, F, s=0.1)]

    def loss(W_x, W_h, W_y, b):
        drive = ensemble.ensemble_drive(x, W_x, backend="cpu")
        total = ensemble.ensemble_loss(x, W_x, W_h, W_y, b, y, True, True, backend="cpu").sum()
        h = drive.reshape(T, B, I * n)
        return total + ensemble.ensemble_readout_loss(h, W_y, b, y, False, backend="cpu").sum()

    _check(loss, inputs, fullgraph=True)


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
@pytest.mark.parametrize("settings", [
    dict(),  # the default: svd areas, cayley star, input-driven timescales, encoder, recent readout
    dict(model="scn", num_areas=5, topology="random-pairs:4"),  # cayley, a product of 2 stars
    dict(model="scn", topology="random-pairs:3", cayley_form="dense"),  # cayley, dense C
    dict(feedback_step="euler", areas="sparse", alpha=0.5, learn_timescales=False, input_timescales=False,
         input_encoder=0),
], ids=["default-star", "cayley-pairs-stars", "cayley-pairs-dense", "euler"])
def test_the_models_train_under_compile_with_fullgraph(settings, backend):
    """Every step and topology of the CLI's models: compiled with fullgraph=True, forward and
    backward match eager, and a few optimiser steps lower the loss."""
    torch.manual_seed(0)
    cfg = TrainConfig(**{"num_areas": 4, "area_size": 8, **settings})
    net = build_model(cfg, 8, 10)
    assert net.rnn.feedback_step == cfg.feedback_step
    if cfg.topology == "random-pairs:4":
        assert len(net.rnn._feedback_plan.stars) == 2
    x = torch.randn(16, 7, 8)
    y = torch.arange(16) % 10
    torch._dynamo.reset()
    compiled = torch.compile(net, backend=backend, fullgraph=True)
    loss = torch.nn.functional.cross_entropy(compiled(x), y)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    ref = torch.nn.functional.cross_entropy(net(x), y)
    ref_grads = torch.autograd.grad(ref, list(net.parameters()))
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    first = None
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(compiled(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
