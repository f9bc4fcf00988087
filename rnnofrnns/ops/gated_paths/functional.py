"""`gated_paths`: the public entry point; checks arguments and dispatches to a backend."""
from __future__ import annotations

from typing import Optional

import torch

from ..._backend import resolve_backend
from .._common import check_float_dtypes, check_same_device, check_tensor
from .reference import gated_paths_reference

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
    if P < 1 or D_out < 1 or D_in_w != D_in:
        raise ValueError(f"W must be [P, D_out, D_in] = [P, D_out, {D_in}] with P, D_out >= 1 "
                         f"for x of shape {tuple(x.shape)}, got shape {tuple(W.shape)}")
    allowed = [(P,), (B, P), (B, P, D_out)]
    if tuple(c.shape) not in allowed:
        raise ValueError(f"c must be [P] = [{P}], [B, P] = [{B}, {P}] or [B, P, D_out] = [{B}, {P}, {D_out}], "
                         f"got shape {tuple(c.shape)}")
    check_float_dtypes(["x", "W", "c"], [x, W, c])
    check_same_device(["x", "W", "c"], [x, W, c])


def gated_paths(x: torch.Tensor, W: torch.Tensor, c: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """Gated multi-path matmul y = sum_p c_p * (W_p x).

    Args:
        x: [B, D_in] inputs.
        W: [P, D_out, D_in] one weight matrix per path.
        c: gates, [P] (one per path, shared by the batch), [B, P] (per sample) or
            [B, P, D_out] (per sample and output neuron).
        backend: "reference" (loop over paths), "cpu" (C++), "triton" or None
            (RNNOFRNNS_BACKEND, else "cpu" for CPU tensors and "triton" for CUDA tensors).

    Returns:
        y [B, D_out], differentiable in x, W and c (float32 or float64).
    """
    check_gated_paths_args(x, W, c)
    name = resolve_backend(backend, x.device)
    if name == "reference":
        return gated_paths_reference(x, W, c)
    if name == "cpu":
        op = torch.ops.rnnofrnns.gated_paths_fwd
    else:
        from .triton_op import gated_paths_fwd_triton as op
    y, _ = op(x, W, c)
    return y
