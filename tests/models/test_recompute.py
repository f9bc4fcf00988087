"""Segments with recomputation (models/segments.py): the gradients are bitwise those of the same
segments kept in memory, equal to the one-pass network up to rounding, on every backend; K
from a memory budget; the saved tensors do not grow with T; bad settings are one-line errors."""
from __future__ import annotations

import pytest
import torch

from rnnofrnns.models import GlobalWorkspaceNet, SparseComboNet
from rnnofrnns.models.segments import segment_length_for_budget, segmented_forward


def _net(readout="recent", dtype=torch.float64, backend=None, **kw):
    return GlobalWorkspaceNet(3, 5, 4, 8, readout=readout, generator=torch.Generator().manual_seed(0), dtype=dtype,
                              batch_first=True, backend=backend, **kw)


def _outputs_and_grads(net, run):
    net.zero_grad(set_to_none=True)
    out = run()
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach().clone(), {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("readout", ["recent", "glu", "mean", "last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_recompute_is_bitwise_the_kept_segments_and_close_to_one_pass(readout, dtype):
    net = _net(readout, dtype)
    x = torch.randn(6, 37, 3, dtype=dtype, generator=torch.Generator().manual_seed(1))  # 37 = 4 x 8 + 5
    out_r, g_r = _outputs_and_grads(net, lambda: segmented_forward(net.rnn, net.readout, x, None, 8, recompute=True))
    out_k, g_k = _outputs_and_grads(net, lambda: segmented_forward(net.rnn, net.readout, x, None, 8, recompute=False))
    out_1, g_1 = _outputs_and_grads(net, lambda: net(x))
    assert torch.equal(out_r, out_k)
    assert g_r.keys() == g_k.keys() == g_1.keys() and len(g_r) > 5
    for name in g_r:
        assert torch.equal(g_r[name], g_k[name]), name
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(out_r, out_1, rtol=tol, atol=tol)
    for name in g_r:
        scale = g_1[name].abs().max().clamp_min(1e-6)
        assert (g_r[name] - g_1[name]).abs().max() / scale < tol, name


def test_the_option_on_the_net_and_its_h0():
    net = _net()
    x = torch.randn(4, 21, 3, dtype=torch.float64)
    h0 = torch.randn(1, 4, net.rnn.hidden_size, dtype=torch.float64)
    want = net(x, h0)
    net.recompute_every = 5
    assert net.segment_length(21, 4) == 5
    got = net(x, h0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    net.recompute_every = 100  # longer than the sequence: one segment
    assert net.segment_length(21, 4) == 21
    torch.testing.assert_close(net(x, h0), want, rtol=1e-12, atol=1e-12)


def test_stacked_layers_run_in_segments():
    net = SparseComboNet(2, 3, 3, 4, num_layers=2, between_layers="tanh", generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    x = torch.randn(13, 3, 2, dtype=torch.float64)
    want = net(x)
    net.recompute_every = 4
    torch.testing.assert_close(net(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpu", "reference", "triton"])
def test_every_backend_recomputes_bitwise(backend):  # Triton: in the interpreter (conftest.py)
    net = _net(backend=backend, dtype=torch.float32)
    x = torch.randn(3, 9, 3, generator=torch.Generator().manual_seed(2))
    _, g_r = _outputs_and_grads(net, lambda: segmented_forward(net.rnn, net.readout, x, None, 4, recompute=True))
    _, g_k = _outputs_and_grads(net, lambda: segmented_forward(net.rnn, net.readout, x, None, 4, recompute=False))
    for name in g_r:
        assert torch.equal(g_r[name], g_k[name]), name


def test_saved_tensors_do_not_grow_with_the_sequence():
    """What autograd keeps after the forward: with recomputation, the segments' starting states
    (one [B, hidden] each) and the inputs; without, the states of every step."""
    net = _net(dtype=torch.float32)
    B, H = 4, net.rnn.hidden_size

    def saved_values(T, every):
        net.recompute_every = every
        x = torch.randn(B, T, 3)
        sizes = {}

        def pack(t):
            sizes[(t.data_ptr(), t.numel())] = t.numel()  # the same storage saved twice counts once
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(x)
        return sum(sizes.values())

    keep_short, keep_long = saved_values(64, None), saved_values(256, None)
    rec_short, rec_long = saved_values(64, 16), saved_values(256, 16)
    assert keep_long > 3.5 * keep_short  # grows with T
    assert keep_long > 8 * rec_long
    # the growth with recomputation: the starting states of 12 more segments and the inputs
    assert rec_long - rec_short <= 12 * 2 * B * H + 2 * 192 * B * 3 + 256 * 64


def test_segment_length_from_a_budget():
    # (ceil(T/K) + 10 K) B H values: T=4096, B=64, H=512, float32: the least at K=20, 0.03 GB
    unit = 64 * 512 * 4
    assert segment_length_for_budget(4096, 64, 512, 4, 1e12) == 4096  # everything fits
    k = segment_length_for_budget(4096, 64, 512, 4, 0.5e9)
    need = lambda k: ((4096 + k - 1) // k + 10 * k) * unit  # noqa: E731
    assert need(k) <= 0.5e9 < need(k + 1)
    with pytest.raises(ValueError, match="memory_budget_gb=0.01 is below"):
        segment_length_for_budget(4096, 64, 512, 4, 0.01e9)
    net = _net(recompute_every="auto", memory_budget_gb=1e-3)
    assert 1 <= net.segment_length(500, 8) < 500


@pytest.mark.parametrize("kwargs, match", [
    (dict(recompute_every=0), "recompute_every must be None, a positive number of steps or 'auto', got 0"),
    (dict(recompute_every="sometimes"), "recompute_every must be None"),
    (dict(recompute_every=True), "recompute_every must be None"),
    (dict(recompute_every="auto"), "recompute_every='auto' needs memory_budget_gb"),
    (dict(recompute_every="auto", memory_budget_gb=-1.0), "memory_budget_gb must be a positive number of GB, got -1.0"),
    (dict(recompute_every=4, readout=torch.nn.Identity()), "needs a readout with pool\\(\\) and head\\(\\)"),
])
def test_bad_settings_are_named(kwargs, match):
    readout = kwargs.pop("readout", "recent")
    with pytest.raises(ValueError, match=match):
        _net(readout, **kwargs)
