"""The backends of the ensemble ops, registered with the op table of ops/_backend.py. There
are no Triton kernels for them: on other devices than the CPU the reference runs."""
from __future__ import annotations

import torch

from .._backend import register
from .reference import ensemble_drive_reference, ensemble_loss_reference, ensemble_readout_loss_reference

register("ensemble_drive", "reference")(ensemble_drive_reference)
register("ensemble_readout_loss", "reference")(ensemble_readout_loss_reference)
register("ensemble_loss", "reference")(ensemble_loss_reference)


@register("ensemble_drive", "cpu")
def _drive_cpu(x: torch.Tensor, W_x: torch.Tensor) -> torch.Tensor:
    return torch.ops.rnnofrnns.ensemble_drive_fwd(x, W_x)


@register("ensemble_readout_loss", "cpu")
def _readout_loss_cpu(h: torch.Tensor, W_y: torch.Tensor, b: torch.Tensor, y: torch.Tensor,
                      relu: bool) -> torch.Tensor:
    return torch.ops.rnnofrnns.ensemble_readout_loss(h, W_y, b, y, relu)[0]


@register("ensemble_loss", "cpu")
def _loss_cpu(x: torch.Tensor, W_x: torch.Tensor, W_h: torch.Tensor, W_y: torch.Tensor, b: torch.Tensor,
              y: torch.Tensor, relu_hidden: bool, relu_out: bool) -> torch.Tensor:
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (W_x, W_h, W_y, b))
    return torch.ops.rnnofrnns.ensemble_loss(x, W_x, W_h, W_y, b, y, relu_hidden, relu_out, need_grad)[0]
