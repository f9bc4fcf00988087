"""Every C++ op allocates its outputs through the one allocator (csrc/cpu/output.h), which the
test suite makes fill them with NaN (RNNOFRNNS_DEBUG_NAN_FILL=1, set in conftest.py). Each
test here makes one op skip writing the last row of its main output
(RNNOFRNNS_DEBUG_SKIP_WRITE=<op>) and checks that the skipped row comes out as NaN, so that
the comparison with the reference would fail, while the rest of the output is unchanged."""
from __future__ import annotations

import os

import pytest
import torch

import rnnofrnns
from rnnofrnns.ops.modular_rnn.cayley import kernel_operands
from problems import make_problem, star

pytestmark = pytest.mark.skipif(not rnnofrnns.cpu_extension_available(), reason="needs the compiled extension")

ops = torch.ops.rnnofrnns


def run_skipping(monkeypatch, op_name, call):
    """call() normally and with op_name skipping its last row; both results, as tuples."""
    assert os.environ.get("RNNOFRNNS_DEBUG_NAN_FILL") == "1"
    monkeypatch.delenv("RNNOFRNNS_DEBUG_SKIP_WRITE", raising=False)
    full = call()
    monkeypatch.setenv("RNNOFRNNS_DEBUG_SKIP_WRITE", op_name)
    skipped = call()
    monkeypatch.delenv("RNNOFRNNS_DEBUG_SKIP_WRITE")
    as_tuple = lambda r: r if isinstance(r, tuple) else (r,)  # noqa: E731
    return as_tuple(full), as_tuple(skipped)


def assert_last_row_unwritten(full: torch.Tensor, skipped: torch.Tensor, dim: int = 0,
                              rest_unchanged: bool = True) -> None:
    """The skipped row is NaN; the other rows are written (and, where they do not depend on
    the skipped row, bitwise those of the full run)."""
    assert not full.isnan().any(), "the full run must write every element"
    last = skipped.select(dim, skipped.shape[dim] - 1)
    assert last.isnan().all(), "the skipped row must hold the allocator's NaN"
    rest, full_rest = skipped.narrow(dim, 0, skipped.shape[dim] - 1), full.narrow(dim, 0, full.shape[dim] - 1)
    assert not rest.isnan().any()
    if rest_unchanged:
        torch.testing.assert_close(rest, full_rest, rtol=0, atol=0)
    with pytest.raises(AssertionError):  # what a comparison with the reference would see
        torch.testing.assert_close(skipped, full)


@pytest.mark.parametrize("feedback_step", ["euler", "cayley"])
@pytest.mark.parametrize("form", ["rate", "hopfield"])
def test_modular_rnn_fwd_and_bwd(monkeypatch, form, feedback_step):
    pr = make_problem(p=3, n=5, T=6, B=3, pairs=star(3), dtype=torch.float64, h0=True, requires_grad=False)
    alpha = torch.full((3,), 0.5, dtype=torch.float64)
    step, blocks, index, S_inv = kernel_operands(pr.L_blocks, pr.L_index, alpha, 3, feedback_step)
    assert step == ("star" if feedback_step == "cayley" else "euler")
    args = (pr.drive, pr.W, blocks, index, pr.h0, alpha, S_inv, "tanh", form, step)
    full, skipped = run_skipping(monkeypatch, "modular_rnn_fwd", lambda: ops.modular_rnn_fwd(*args, True))
    assert_last_row_unwritten(full[0], skipped[0])
    states, pre, z, r = full
    grad = torch.randn_like(states)
    bwd = lambda: ops.modular_rnn_bwd(grad, pr.W, blocks, index, pr.h0, alpha, S_inv, states, pre, z, r,  # noqa: E731
                                      "tanh", form, step, True, True, True)
    full, skipped = run_skipping(monkeypatch, "modular_rnn_bwd", bwd)
    # grad_drive, its last step; the skipped step's gradient no longer flows into the others
    assert_last_row_unwritten(full[0], skipped[0], rest_unchanged=False)


@pytest.mark.parametrize("gate_shape", ["path", "sample", "neuron"])
def test_gated_paths_fwd_and_bwd(monkeypatch, gate_shape):
    g = torch.Generator().manual_seed(0)
    B, P, O, I = 5, 3, 4, 6
    x, W = torch.randn(B, I, generator=g, dtype=torch.float64), torch.randn(P, O, I, generator=g, dtype=torch.float64)
    c = torch.rand({"path": (P,), "sample": (B, P), "neuron": (B, P, O)}[gate_shape], generator=g,
                   dtype=torch.float64)
    full, skipped = run_skipping(monkeypatch, "gated_paths_fwd", lambda: ops.gated_paths_fwd(x, W, c))
    assert_last_row_unwritten(full[0], skipped[0])  # y, its last batch row
    aux, dy = full[1], torch.randn(B, O, generator=g, dtype=torch.float64)
    full, skipped = run_skipping(monkeypatch, "gated_paths_bwd",
                                 lambda: ops.gated_paths_bwd(dy, x, W, c, aux, True, True, True))
    assert_last_row_unwritten(full[0], skipped[0])  # grad_x, its last batch row


def ensemble_data(I=3, B=5, T=4, F=8, n=5):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return r(I, B, T, F), r(I, n, F), r(I, n, n) * 0.3, r(I, n, F), r(I, F), r(I, B, T, F)


def test_ensemble_drive_fwd_and_bwd(monkeypatch):
    x, Wx, *_ = ensemble_data()
    full, skipped = run_skipping(monkeypatch, "ensemble_drive_fwd", lambda: ops.ensemble_drive_fwd(x, Wx))
    assert_last_row_unwritten(full[0], skipped[0])  # drive, its last step
    grad = torch.randn_like(full[0])
    full, skipped = run_skipping(monkeypatch, "ensemble_drive_bwd",
                                 lambda: ops.ensemble_drive_bwd(grad, x, Wx, True, True))
    assert_last_row_unwritten(full[0], skipped[0], dim=2)  # grad_x, its last step


def test_ensemble_readout_loss(monkeypatch):
    x, Wx, Wh, Wy, b, y = ensemble_data()
    h = torch.randn(x.shape[2], x.shape[1], x.shape[0] * Wy.shape[1], dtype=torch.float64)
    full, skipped = run_skipping(monkeypatch, "ensemble_readout_loss",
                                 lambda: ops.ensemble_readout_loss(h, Wy, b, y, True))
    assert_last_row_unwritten(full[1], skipped[1])  # grad_h, its last step


@pytest.mark.parametrize("n", [5, 3])  # the Hessenberg path and the run-time-sized one
def test_ensemble_loss(monkeypatch, n):
    x, Wx, Wh, Wy, b, y = ensemble_data(n=n)
    full, skipped = run_skipping(monkeypatch, "ensemble_loss",
                                 lambda: ops.ensemble_loss(x.float(), Wx.float(), Wh.float(), Wy.float(), b.float(),
                                                           y.float(), False, True, True))
    for f, s in zip(full, skipped):  # the loss and every gradient, for the last instance
        assert_last_row_unwritten(f, s)
