"""The gated multi-path linear network of the flexible task abstractions (Sandbrink et al., 2024)."""
from __future__ import annotations

import math

from typing import Optional

import torch
from torch import nn

from ..ops import gated_paths
from ._dtype import input_in_model_dtype, without_autocast


class GatedLinearNetwork(nn.Module):
    """Gated multi-path linear network y = sum_p c_p * (W_p x) (Sandbrink et al., 2024).

    Args:
        d_in, d_out: input and output sizes.
        num_paths: number of paths P.
        gate_shape: "path" (one gate per path, c [P]) or "neuron" (one gate per path and
            output neuron, c [P, d_out]); the gates are shared by the batch.
        init_gate: initial value of every gate (0.5 in the paper).
        init_scale: W entries start as N(0, (init_scale / sqrt(d_in))^2) (0.01 in the paper).
        backend: gated_paths backend, or None for the default of the tensors' device.
    """

    def __init__(self, d_in: int, d_out: int, num_paths: int, gate_shape: str = "path", *,
                 init_gate: float = 0.5, init_scale: float = 0.01, backend: Optional[str] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        for name, v in (("d_in", d_in), ("d_out", d_out), ("num_paths", num_paths)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if gate_shape not in ("path", "neuron"):
            raise ValueError(f"gate_shape must be 'path' or 'neuron', got {gate_shape!r}")
        self.d_in, self.d_out, self.num_paths, self.gate_shape = d_in, d_out, num_paths, gate_shape
        self.backend = backend
        W = torch.randn(num_paths, d_out, d_in, generator=generator) * (init_scale / math.sqrt(d_in))
        self.W = nn.Parameter(W)
        shape = (num_paths,) if gate_shape == "path" else (num_paths, d_out)
        self.c = nn.Parameter(torch.full(shape, float(init_gate)))

    def gates_for(self, batch_size: int) -> torch.Tensor:
        """The gate tensor gated_paths takes: c [P], or c expanded to [B, P, d_out]."""
        if self.gate_shape == "path":
            return self.c
        return self.c.unsqueeze(0).expand(batch_size, -1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, d_in] -> y [B, d_out]."""
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"x must be [B, d_in] = [B, {self.d_in}], got shape {tuple(x.shape)}")
        x = input_in_model_dtype(x, self.W.dtype, type(self).__name__)
        with without_autocast(x):
            return gated_paths(x, self.W, self.gates_for(x.shape[0]), backend=self.backend)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, num_paths={self.num_paths}, gate_shape={self.gate_shape!r}"


class TwoLayerLinearNetwork(nn.Module):
    """The fully-connected counterpart of the gated network: y = W2 W1 x, no paths marked
    (the authors' public code of Sandbrink et al., 2024). In the task-switching experiment
    every entry of W2 takes the gates' constraints and fast timescale.

    Args:
        d_in, hidden, d_out: layer sizes.
        init_scale: W1 and W2 entries start as N(0, (init_scale / sqrt(d_in))^2).
    """

    def __init__(self, d_in: int, hidden: int, d_out: int, init_scale: float = 0.01,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        for name, v in (("d_in", d_in), ("hidden", hidden), ("d_out", d_out)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        std = init_scale / math.sqrt(d_in)
        self.W1 = nn.Parameter(torch.randn(hidden, d_in, generator=generator) * std)
        self.W2 = nn.Parameter(torch.randn(d_out, hidden, generator=generator) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W1.T @ self.W2.T
