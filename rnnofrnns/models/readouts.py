"""Readouts: the map from a recurrent network's states to its outputs. They sit outside the
recurrence, so no certificate depends on them. A readout is an nn.Module called as
readout(output, h_n) with output [B, T, hidden_size] (batch first) and h_n [1, B, hidden_size]
(or None: the last step of output).

- "last" (LastStateReadout): a linear map of the last state h_T;
- "mean" (MeanStateReadout): a linear map of the mean state (1/T) sum_t h_t;
- "glu" (GLUPoolReadout): a linear map of the mean over t of a gated linear unit of h_t,
  (1/T) sum_t (A h_t + a) * sigmoid(G h_t + g), of `width` units: a nonlinear, pooled readout.
- "recent" (RecentGLUReadout): the same units, each pooled over its own learned window of the
  most recent steps, sum_t w_{j,t} u_{j,t} with w_{j,t} proportional to exp(-(T-1-t)/window_j);
  the windows start spread log-uniformly over 4-512 steps. A short window reads the last states
  (what a long sequence needs), a long one the mean (what helps a short one).

Every built-in readout is a sum over time followed by a head, so that a network run in segments
of steps (models/segments.py) never holds all the states: `pool(output, start, total)` is a
segment's share of the pooled quantity (output [B, K, hidden_size] holds steps start..start+K-1
of total; None when the segment adds nothing), `head(pooled)` maps the sum of the shares to the
outputs.

`make_readout(name, hidden_size, output_size)` builds one; `readout_parameters` counts its
parameters without building it (for the equal-parameter comparison with GRU and LSTM).
"""
from __future__ import annotations

import math
from typing import ClassVar, Dict, Optional, Type, Union

import torch
from torch import nn


def _uniform_(t: torch.Tensor, bound: float, generator: Optional[torch.Generator]) -> None:
    with torch.no_grad():
        t.copy_((2 * torch.rand(t.shape, generator=generator, dtype=torch.float64) - 1) * bound)


class LastStateReadout(nn.Linear):
    """A linear map of the last state h_T (its parameters are those of nn.Linear: the state-dict
    keys `weight` and `bias`). With a generator the weights are drawn from it, uniformly in
    +-1/sqrt(hidden_size) as nn.Linear draws them."""

    summary: ClassVar[str] = "linear in the last state"

    def __init__(self, hidden_size: int, output_size: int, generator: Optional[torch.Generator] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(hidden_size, output_size, dtype=dtype)
        if generator is not None:
            bound = 1.0 / math.sqrt(hidden_size)
            with torch.no_grad():
                self.weight.copy_((2 * torch.rand(self.weight.shape, generator=generator) - 1) * bound)
                self.bias.copy_((2 * torch.rand(output_size, generator=generator) - 1) * bound)

    @staticmethod
    def num_parameters(hidden_size: int, output_size: int) -> int:
        return hidden_size * output_size + output_size

    def forward(self, output: torch.Tensor, h_n: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        last = output[:, -1] if h_n is None else h_n[-1]
        return super().forward(last)

    def pool(self, output: torch.Tensor, start: int, total: int) -> Optional[torch.Tensor]:
        """The last state when this segment holds the sequence's last step, else None."""
        return output[:, -1] if start + output.shape[1] == total else None

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return nn.Linear.forward(self, pooled)


class MeanStateReadout(LastStateReadout):
    """A linear map of the mean state over time, (1/T) sum_t h_t."""

    summary: ClassVar[str] = "linear in the mean state"

    def forward(self, output: torch.Tensor, h_n: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        return nn.Linear.forward(self, output.mean(1))

    def pool(self, output: torch.Tensor, start: int, total: int) -> Optional[torch.Tensor]:
        """This segment's share of the mean state: sum_t h_t / total."""
        return output.sum(1) / total


class GLUPoolReadout(nn.Module):
    """A linear map of the mean over t of a gated linear unit of h_t:
    (1/T) sum_t (A h_t + a) * sigmoid(G h_t + g), with A and G [width, hidden_size] (one
    Linear `unit` of 2 * width outputs), then `out` [output_size, width]."""

    summary: ClassVar[str] = "linear in the mean of a gated linear unit of the states"

    def __init__(self, hidden_size: int, output_size: int, generator: Optional[torch.Generator] = None,
                 dtype: Optional[torch.dtype] = None, width: int = 32) -> None:
        super().__init__()
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        self.width = width
        self.unit = nn.Linear(hidden_size, 2 * width, dtype=dtype)
        self.out = nn.Linear(width, output_size, dtype=dtype)
        if generator is not None:
            for layer, fan_in in ((self.unit, hidden_size), (self.out, width)):
                _uniform_(layer.weight, 1.0 / math.sqrt(fan_in), generator)
                _uniform_(layer.bias, 1.0 / math.sqrt(fan_in), generator)

    @staticmethod
    def num_parameters(hidden_size: int, output_size: int, width: int = 32) -> int:
        return 2 * width * (hidden_size + 1) + output_size * (width + 1)

    def units(self, output: torch.Tensor) -> torch.Tensor:
        """The gated linear units u_t = (A h_t + a) * sigmoid(G h_t + g): [B, T, width]."""
        value, gate = self.unit(output).chunk(2, dim=-1)
        return value * torch.sigmoid(gate)

    def forward(self, output: torch.Tensor, h_n: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.out(self.units(output).mean(1))

    def pool(self, output: torch.Tensor, start: int, total: int) -> Optional[torch.Tensor]:
        """This segment's share of the units' mean: sum_t u_t / total."""
        return self.units(output).sum(1) / total

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(pooled)


class RecentGLUReadout(GLUPoolReadout):
    """The gated linear units of GLUPoolReadout, each pooled over a learned window of the most
    recent steps: pooled_j = sum_t w_{j,t} u_{j,t}, w_{j,t} = softmax_t(-(T-1-t) / window_j),
    window_j = exp(log_window_j). The windows start log-uniformly spread over
    [min_window, max_window] steps (no draw from the generator); a window much longer than T
    pools the mean, one of a step reads the last state."""

    summary: ClassVar[str] = "linear in gated linear units of the states, each pooled over a learned recent window"

    def __init__(self, hidden_size: int, output_size: int, generator: Optional[torch.Generator] = None,
                 dtype: Optional[torch.dtype] = None, width: int = 32, min_window: float = 4.0,
                 max_window: float = 512.0) -> None:
        super().__init__(hidden_size, output_size, generator=generator, dtype=dtype, width=width)
        if not 0 < min_window <= max_window:
            raise ValueError(f"min_window and max_window must satisfy 0 < min_window <= max_window, "
                             f"got {min_window!r} and {max_window!r}")
        self.log_window = nn.Parameter(torch.linspace(math.log(min_window), math.log(max_window), width,
                                                      dtype=dtype if dtype is not None else torch.get_default_dtype()))

    @staticmethod
    def num_parameters(hidden_size: int, output_size: int, width: int = 32) -> int:
        return GLUPoolReadout.num_parameters(hidden_size, output_size, width) + width

    def pooling_weights(self, steps: int) -> torch.Tensor:
        """The weights w [steps, width] of every step and unit (each column sums to 1)."""
        age = torch.arange(steps - 1, -1, -1, dtype=self.log_window.dtype, device=self.log_window.device)
        return torch.softmax(-age[:, None] * torch.exp(-self.log_window), dim=0)

    def forward(self, output: torch.Tensor, h_n: Optional[torch.Tensor] = None) -> torch.Tensor:
        pooled = torch.einsum("btj,tj->bj", self.units(output), self.pooling_weights(output.shape[1]))
        return self.out(pooled)

    def pool(self, output: torch.Tensor, start: int, total: int) -> Optional[torch.Tensor]:
        """This segment's share: sum_t w_{j,t} u_{j,t} over its steps (w of the whole sequence)."""
        w = self.pooling_weights(total)[start:start + output.shape[1]]
        return torch.einsum("btj,tj->bj", self.units(output), w)


READOUTS: Dict[str, Type[nn.Module]] = {"last": LastStateReadout, "mean": MeanStateReadout, "glu": GLUPoolReadout,
                                        "recent": RecentGLUReadout}


def make_readout(readout: Union[str, nn.Module], hidden_size: int, output_size: int,
                 generator: Optional[torch.Generator] = None, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """The readout of a name in READOUTS (drawn from `generator`), or a module as it is."""
    if isinstance(readout, nn.Module):
        return readout
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {tuple(READOUTS)} or an nn.Module, got {readout!r}")
    return READOUTS[readout](hidden_size, output_size, generator=generator, dtype=dtype)


def readout_parameters(readout: str, hidden_size: int, output_size: int) -> int:
    """Trainable parameters of the readout of a name, without building it."""
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {tuple(READOUTS)}, got {readout!r}")
    return READOUTS[readout].num_parameters(hidden_size, output_size)
