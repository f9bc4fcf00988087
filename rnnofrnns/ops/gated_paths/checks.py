"""Argument checks of gated_paths (their C++ twins are in csrc/cpu/checks.h): every error
names the argument, what was expected and what was given."""
from __future__ import annotations

import torch

from .._common import check_float_dtypes, check_same_device, check_tensor


def check_gated_paths_args(x: torch.Tensor, W: torch.Tensor, c: torch.Tensor) -> None:
    """Raise ValueError/TypeError naming the argument, what was expected and what was given."""
    check_tensor("x", x, 2, "[B, D_in]")
    check_tensor("W", W, 3, "[P, D_out, D_in]")
    if not isinstance(c, torch.Tensor):
        raise TypeError(f"c must be a torch.Tensor of shape [P], [B, P] or [B, P, D_out], got {type(c).__name__}")
    B, D_in = x.shape
    P, D_out, D_in_w = W.shape
    if B < 1 or D_in < 1:
        raise ValueError(f"x must be [B, D_in] with B, D_in >= 1, got shape {tuple(x.shape)}")
    if P < 1 or D_out < 1:
        raise ValueError(f"W must be [P, D_out, D_in] = [P, D_out, {D_in}] with P, D_out >= 1 "
                         f"for x of shape {tuple(x.shape)}, got shape {tuple(W.shape)}")
    if D_in_w != D_in:  # which of the two is wrong, only the caller knows: name both
        raise ValueError(f"x and W disagree on D_in: x of shape {tuple(x.shape)} has D_in = {D_in}, so W must be "
                         f"[P, D_out, D_in] = [P, D_out, {D_in}]; got shape {tuple(W.shape)} for W (D_in = {D_in_w})")
    allowed = [(P,), (B, P), (B, P, D_out)]
    if tuple(c.shape) not in allowed:
        raise ValueError(f"c must be [P] = [{P}], [B, P] = [{B}, {P}] or [B, P, D_out] = [{B}, {P}, {D_out}], "
                         f"got shape {tuple(c.shape)}")
    check_float_dtypes(["x", "W", "c"], [x, W, c])
    check_same_device(["x", "W", "c"], [x, W, c])
