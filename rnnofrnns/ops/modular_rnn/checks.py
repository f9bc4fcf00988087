"""Argument checks of modular_rnn, shared by the functional and the Triton op (their C++
twins are in csrc/cpu/checks.h): every error names the argument, what was expected and what was given."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .._common import FORMS, NONLINEARITIES, check_float_dtypes, check_same_device, check_tensor


def check_modular_rnn_args(
    drive: torch.Tensor,
    W: torch.Tensor,
    L_blocks: torch.Tensor,
    L_index: torch.Tensor,
    h0: Optional[torch.Tensor],
    alpha: Union[float, torch.Tensor],
    nonlinearity: str,
    form: str,
    feedback_step: str = "euler",
    feedback_alpha: Union[float, torch.Tensor, None] = None,
) -> None:
    """Raise ValueError/TypeError naming the argument, what was expected and what was given.

    Checks shapes, dtypes, devices and scalars (safe under tracing); the values of
    L_index are checked by `check_block_index`.
    """
    check_tensor("drive", drive, 3, "[T, B, p*n]")
    check_tensor("W", W, 3, "[p, n, n]")
    p, n, n2 = W.shape
    if n != n2 or p < 1 or n < 1:
        raise ValueError(f"W must be [p, n, n] with p, n >= 1 (square intra-area blocks), got shape {tuple(W.shape)}")
    T, B, H = drive.shape
    if T < 1:
        raise ValueError(f"drive needs T >= 1 steps (B = 0 rows are allowed), got shape {tuple(drive.shape)}")
    if H != p * n:
        raise ValueError(f"drive must be [T, B, p*n] = [{T}, {B}, {p * n}] for W of shape {tuple(W.shape)}, got {tuple(drive.shape)}")
    check_tensor("L_blocks", L_blocks, 3, f"[k, {n}, {n}]")
    if tuple(L_blocks.shape[1:]) != (n, n):
        raise ValueError(f"L_blocks must be [k, {n}, {n}] to match W, got shape {tuple(L_blocks.shape)}")
    k = L_blocks.shape[0]
    check_tensor("L_index", L_index, 2, f"[k, 2] = [{k}, 2]")
    if tuple(L_index.shape) != (k, 2):
        raise ValueError(f"L_index must be [k, 2] = [{k}, 2] to match L_blocks, got shape {tuple(L_index.shape)}")
    if L_index.dtype != torch.int64:
        raise TypeError(f"L_index must be int64, got {L_index.dtype}")
    names, tensors = ["drive", "W", "L_blocks"], [drive, W, L_blocks]
    if h0 is not None:
        check_tensor("h0", h0, 2, f"[B, p*n] = [{B}, {H}]")
        if tuple(h0.shape) != (B, H):
            raise ValueError(f"h0 must be [B, p*n] = [{B}, {H}], got shape {tuple(h0.shape)}")
        names.append("h0")
        tensors.append(h0)
    check_float_dtypes(names, tensors)
    check_same_device(names + ["L_index"], tensors + [L_index])
    check_alpha(alpha, p, (T, B))
    per_step = isinstance(alpha, torch.Tensor) and alpha.dim() == 3
    if feedback_alpha is not None:
        if feedback_step != "cayley":
            raise ValueError("feedback_alpha sets the rates of the cayley step's map; the euler step scales L h by "
                             f"alpha, got feedback_alpha={feedback_alpha!r} with feedback_step={feedback_step!r}")
        if isinstance(feedback_alpha, torch.Tensor) and feedback_alpha.dim() == 3:
            raise ValueError("feedback_alpha must be a number or p per-area values (the cayley map's rates are "
                             f"constant in time), got a tensor of shape {tuple(feedback_alpha.shape)}")
        check_alpha(feedback_alpha, p, None, "feedback_alpha")
    elif per_step and feedback_step == "cayley":
        raise ValueError("alpha per step [T, B, p] with the cayley step needs feedback_alpha (p constant rates of its "
                         "map: a map whose rates change in time is orthogonal in no fixed metric)")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")


def check_alpha(alpha: Union[float, torch.Tensor], p: int, steps: Optional[Tuple[int, int]] = None,
                name: str = "alpha") -> None:
    """A number in (0, 1], or a tensor of one or p values in (0, 1], or (steps = (T, B) given)
    [T, B, p] values per step (values read outside tracing)."""
    if isinstance(alpha, torch.Tensor):
        per_step = steps is not None and tuple(alpha.shape) == (*steps, p)
        if not (alpha.dim() == 0 or tuple(alpha.shape) in ((1,), (p,)) or per_step):
            also = f" or [T, B, p] = [{steps[0]}, {steps[1]}, {p}] values per step" if steps is not None else ""
            raise ValueError(f"{name} must be a number, a one-element tensor or a tensor of p = {p} per-area values"
                             f"{also}, got a tensor of shape {tuple(alpha.shape)}")
        if not alpha.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {alpha.dtype}")
        if not torch.compiler.is_compiling():
            a = alpha.detach()
            ok = (a > 0) & (a <= 1)
            if not bool(ok.all()):
                bad = a[~ok]
                raise ValueError(f"{name} must lie in (0, 1], got {bad.numel()} values outside, e.g. "
                                 f"{bad[:4].cpu().tolist()}")
        return
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not (0.0 < float(alpha) <= 1.0):
        raise ValueError(f"{name} must be a number in (0, 1], got {alpha!r}")


def check_block_index(L_index: torch.Tensor, p: int) -> None:
    """Every block (target, source) in range, off the diagonal, and listed once.

    Reads the index values, so it runs outside traced code: the fused ops call it
    (or its C++ twin) inside their own bodies.
    """
    if L_index.shape[0] == 0:
        return
    idx = L_index.detach().cpu()
    bad = (idx < 0) | (idx >= p)
    if bad.any():
        r = int(bad.any(1).nonzero()[0])
        raise ValueError(f"L_index[{r}] = {tuple(idx[r].tolist())} is out of range for p = {p} areas")
    diag = idx[:, 0] == idx[:, 1]
    if diag.any():
        r = int(diag.nonzero()[0])
        raise ValueError(f"L_index[{r}] = {tuple(idx[r].tolist())} lies on the diagonal; intra-area weights belong in W")
    seen = set()
    for r, v in enumerate((idx[:, 0] * p + idx[:, 1]).tolist()):
        if v in seen:
            raise ValueError(f"L_index[{r}] = {tuple(idx[r].tolist())} is a duplicate block")
        seen.add(v)
