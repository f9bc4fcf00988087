"""Fused ops of an ensemble of I small RNNs (one area each of a modular_rnn call).
References in PyTorch; the "cpu" backend is csrc/cpu/ensemble_*.cpp. There are no Triton
kernels for these: on other devices the reference runs.

    ensemble_drive(x [I, B, T, F], W_x [I, n, F]) -> drive [T, B, I*n]
    ensemble_readout_loss(h [T, B, I*n], W_y [I, n, F], b [I, F], y [I, B, T, F], relu)
        -> loss [I], loss[i] = mean over (b, t, f) of (sigma(h_i W_y[i] + b[i]) - y[i])^2
    ensemble_loss(x, W_x, W_h [I, n, n], W_y, b, y, relu_hidden, relu_out) -> loss [I]:
        the whole training loss in one pass (drive, recurrence h_t = W_x x_t + W_h s(h_{t-1}),
        readout, loss); its reference is the composition of the three references below.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._backend import implementation
from . import backends  # noqa: F401  (registers the backends)
from .checks import check_ensemble_drive_args, check_ensemble_loss_args, check_ensemble_readout_loss_args


def ensemble_drive(x: torch.Tensor, W_x: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """Each instance's input projection, laid out as one modular_rnn drive [T, B, I*n]."""
    check_ensemble_drive_args(x, W_x)
    return implementation("ensemble_drive", backend, x.device)(x, W_x)


def ensemble_readout_loss(h: torch.Tensor, W_y: torch.Tensor, b: torch.Tensor, y: torch.Tensor, relu: bool,
                          backend: Optional[str] = None) -> torch.Tensor:
    """Per-instance mean squared error of the readout, [I]; the [I, B, T, F] output is
    never formed by the cpu backend. y is the target and must not require grad."""
    check_ensemble_readout_loss_args(h, W_y, b, y)
    return implementation("ensemble_readout_loss", backend, h.device)(h, W_y, b, y, relu)


def ensemble_loss(x: torch.Tensor, W_x: torch.Tensor, W_h: torch.Tensor, W_y: torch.Tensor, b: torch.Tensor,
                  y: torch.Tensor, relu_hidden: bool, relu_out: bool, backend: Optional[str] = None) -> torch.Tensor:
    """Per-instance training loss [I] of I small RNNs, h_t = W_x x_t + W_h s(h_{t-1}) (s = relu
    if relu_hidden), output r(W_y^T h_t + b) (r = relu if relu_out), mean squared error
    against y. The cpu backend computes the loss and the parameter gradients in one fused
    pass over x and y (a linear hidden layer of size 5 or 10 with F = 8 in the orthogonal basis
    of a Hessenberg reduction of each W_h: the same function, fewer FMAs); x [I, B, T, F] may
    be an expanded view of shared data. x and y are data: they must not require grad."""
    check_ensemble_loss_args(x, W_x, W_h, W_y, b, y)
    return implementation("ensemble_loss", backend, y.device)(x, W_x, W_h, W_y, b, y, relu_hidden, relu_out)
