"""Argument checks of the ensemble ops (their C++ twins are in csrc/cpu/checks.h): every
error names the argument, what was expected and what was given."""
from __future__ import annotations

import torch

from .._common import check_float_dtypes, check_same_device, check_tensor


def _check_x_w(x: torch.Tensor, W: torch.Tensor, xname: str, wname: str) -> None:
    check_tensor(xname, x, 4, "[I, B, T, F]")
    check_tensor(wname, W, 3, "[I, n, F]")
    I, _, _, F = x.shape
    if W.shape[0] != I or W.shape[2] != F:
        raise ValueError(f"{wname} must be [I, n, F] = [{I}, n, {F}] for {xname} of shape {tuple(x.shape)}, "
                         f"got shape {tuple(W.shape)}")


def check_ensemble_drive_args(x: torch.Tensor, W_x: torch.Tensor) -> None:
    """Shapes, dtypes and devices of ensemble_drive."""
    _check_x_w(x, W_x, "x", "W_x")
    check_float_dtypes(["x", "W_x"], [x, W_x])
    check_same_device(["x", "W_x"], [x, W_x])


def check_ensemble_readout_loss_args(h: torch.Tensor, W_y: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> None:
    """Shapes, dtypes and devices of ensemble_readout_loss; y must not require grad."""
    _check_x_w(y, W_y, "y", "W_y")
    I, B, T, F = y.shape
    n = W_y.shape[1]
    check_tensor("h", h, 3, f"[T, B, I*n] = [{T}, {B}, {I * n}]")
    if tuple(h.shape) != (T, B, I * n):
        raise ValueError(f"h must be [T, B, I*n] = [{T}, {B}, {I * n}], got shape {tuple(h.shape)}")
    check_tensor("b", b, 2, f"[I, F] = [{I}, {F}]")
    if tuple(b.shape) != (I, F):
        raise ValueError(f"b must be [I, F] = [{I}, {F}], got shape {tuple(b.shape)}")
    check_float_dtypes(["h", "W_y", "b", "y"], [h, W_y, b, y])
    check_same_device(["h", "W_y", "b", "y"], [h, W_y, b, y])
    if y.requires_grad:
        raise ValueError("y is the target of ensemble_readout_loss and must not require grad")


def check_ensemble_loss_args(x: torch.Tensor, W_x: torch.Tensor, W_h: torch.Tensor, W_y: torch.Tensor,
                             b: torch.Tensor, y: torch.Tensor) -> None:
    """Shapes, dtypes and devices of ensemble_loss; x and y are data and must not require grad."""
    _check_x_w(y, W_y, "y", "W_y")
    I, B, T, F = y.shape
    n = W_y.shape[1]
    if tuple(x.shape) != tuple(y.shape):
        raise ValueError(f"x must have the shape of y [I, B, T, F] = {list(y.shape)}, got {list(x.shape)}")
    if tuple(W_x.shape) != (I, n, F):
        raise ValueError(f"W_x must be [I, n, F] = [{I}, {n}, {F}], got shape {tuple(W_x.shape)}")
    if tuple(W_h.shape) != (I, n, n):
        raise ValueError(f"W_h must be [I, n, n] = [{I}, {n}, {n}], got shape {tuple(W_h.shape)}")
    if tuple(b.shape) != (I, F):
        raise ValueError(f"b must be [I, F] = [{I}, {F}], got shape {tuple(b.shape)}")
    if min(B, T) < 1:
        raise ValueError(f"y needs B >= 1 rows and T >= 1 steps, got shape {tuple(y.shape)}")
    names, ts = ["x", "W_x", "W_h", "W_y", "b", "y"], [x, W_x, W_h, W_y, b, y]
    check_float_dtypes(names, ts)
    check_same_device(names, ts)
    for name, t in (("x", x), ("y", y)):
        if t.requires_grad:
            raise ValueError(f"{name} is data for ensemble_loss and must not require grad")
