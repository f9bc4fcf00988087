"""The dtypes the models run in: float32 or float64 weights, inputs of the same dtype, and under
torch.autocast the fused ops in the weights' dtype (as torch.nn.RNN runs its recurrence on the CPU)."""
from __future__ import annotations

import torch

RUN_DTYPES = (torch.float32, torch.float64)


def input_in_model_dtype(x: torch.Tensor, dtype: torch.dtype, model: str) -> torch.Tensor:
    """x in the model's dtype: cast when autocast is on for x's device, else checked (a
    ValueError naming x, the model's dtype and x's)."""
    if dtype not in RUN_DTYPES:
        raise ValueError(f"{model} runs in float32 or float64, its parameters are {dtype} "
                         "(for lower precision keep them float32 and use torch.autocast)")
    if x.dtype == dtype:
        return x
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        return x.to(dtype)
    raise ValueError(f"x must have the model's dtype {dtype}, got {x.dtype} "
                     f"(convert x with .to({dtype}) or the model with .to(dtype))")


def without_autocast(x: torch.Tensor) -> torch.autocast:
    """A context in which the fused ops see the dtypes they were given."""
    return torch.autocast(x.device.type, enabled=False)
