"""Helpers shared by the Triton launchers."""
from __future__ import annotations

import os

import torch


def new_output(*shape: int, like: torch.Tensor) -> torch.Tensor:
    """A fresh buffer; NaN-filled under RNNOFRNNS_DEBUG_NAN_FILL=1 so that unwritten elements show."""
    t = torch.empty(*shape, dtype=like.dtype, device=like.device)
    if os.environ.get("RNNOFRNNS_DEBUG_NAN_FILL") == "1":
        t.fill_(float("nan"))
    return t
