"""Backends as a table per op: each op registers its implementations in one place
(ops/<op>/backends.py), and `backend=` / RNNOFRNNS_BACKEND look them up there."""
from __future__ import annotations

import pytest
import torch

from rnnofrnns.ops import _backend, ensemble_drive, gated_paths


def test_every_op_lists_its_backends():
    assert _backend.backends_of("modular_rnn") == ("reference", "cpu", "triton")
    assert _backend.backends_of("gated_paths") == ("reference", "cpu", "triton")
    for op in ("ensemble_drive", "ensemble_readout_loss", "ensemble_loss"):
        assert _backend.backends_of(op) == ("reference", "cpu")


def test_a_call_runs_the_registered_implementation(monkeypatch):
    calls = []
    real = _backend._IMPLEMENTATIONS["gated_paths"]["reference"]
    monkeypatch.setitem(_backend._IMPLEMENTATIONS["gated_paths"], "reference",
                        lambda *args: calls.append(len(args)) or real(*args))
    x, W, c = torch.randn(3, 4), torch.randn(2, 5, 4), torch.rand(2)
    torch.testing.assert_close(gated_paths(x, W, c, backend="reference"), real(x, W, c))
    assert calls == [3]


def test_an_op_without_the_backend_asked_for(monkeypatch):
    x, W = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"backend must be one of \('reference', 'cpu'\) or None for ensemble_drive, "
                                         r"got 'triton'"):
        ensemble_drive(x, W, backend="triton")
    monkeypatch.setenv("RNNOFRNNS_BACKEND", "triton")  # the variable falls back to the op's default
    torch.testing.assert_close(ensemble_drive(x, W), ensemble_drive(x, W, backend="reference"))


def test_register_names_a_known_backend():
    with pytest.raises(ValueError, match=r"backend must be one of \('reference', 'cpu', 'triton'\), got 'cuda'"):
        _backend.register("gated_paths", "cuda")
