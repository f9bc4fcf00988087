"""`gated_paths`: the public entry point; checks arguments and dispatches to a backend."""
from __future__ import annotations

from typing import Optional

import torch

from .._backend import implementation
from . import backends  # noqa: F401  (registers the backends)
from .checks import check_gated_paths_args


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
    return implementation("gated_paths", backend, x.device)(x, W, c)
