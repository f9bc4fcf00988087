"""Readouts: the map from a recurrent network's states to its outputs. They sit outside the
recurrence, so no certificate depends on them. A readout is an nn.Module called as
readout(output, h_n) with output [B, T, hidden_size] (batch first) and h_n [1, B, hidden_size]."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


class LastStateReadout(nn.Linear):
    """A linear map of the last state h_T (its parameters are those of nn.Linear: the state-dict
    keys `weight` and `bias`). With a generator the weights are drawn from it, uniformly in
    +-1/sqrt(hidden_size) as nn.Linear draws them."""

    def __init__(self, hidden_size: int, output_size: int, generator: Optional[torch.Generator] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(hidden_size, output_size, dtype=dtype)
        if generator is not None:
            bound = 1.0 / math.sqrt(hidden_size)
            with torch.no_grad():
                self.weight.copy_((2 * torch.rand(self.weight.shape, generator=generator) - 1) * bound)
                self.bias.copy_((2 * torch.rand(output_size, generator=generator) - 1) * bound)

    def forward(self, output: torch.Tensor, h_n: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        last = output[:, -1] if h_n is None else h_n[0]
        return super().forward(last)
