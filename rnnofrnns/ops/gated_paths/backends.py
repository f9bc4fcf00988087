"""The backends of `gated_paths`, registered with the op table of ops/_backend.py."""
from __future__ import annotations

import torch

from .._backend import register
from .reference import gated_paths_reference

register("gated_paths", "reference")(gated_paths_reference)


@register("gated_paths", "cpu")
def _cpu(x: torch.Tensor, W: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.ops.rnnofrnns.gated_paths_fwd(x, W, c)[0]


@register("gated_paths", "triton")
def _triton(x: torch.Tensor, W: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.ops.rnnofrnns.gated_paths_fwd_triton(x, W, c)[0]
