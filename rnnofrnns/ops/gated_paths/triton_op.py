"""The Triton backend of gated_paths as a pair of torch.library custom ops.

The kernels live in rnnofrnns.kernels.gated_paths (kernels/ in the source tree);
triton is imported only when an op runs.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .autograd import register_op_pair


@torch.library.custom_op("rnnofrnns::gated_paths_fwd_triton", mutates_args=())
def gated_paths_fwd_triton(x: Tensor, W: Tensor, c: Tensor) -> Tuple[Tensor, Tensor]:
    from rnnofrnns.kernels.gated_paths import forward

    return forward(x, W, c)


@torch.library.custom_op("rnnofrnns::gated_paths_bwd_triton", mutates_args=())
def gated_paths_bwd_triton(
    grad_y: Tensor, x: Tensor, W: Tensor, c: Tensor, aux: Tensor, need_x_grad: bool, need_W_grad: bool,
    need_c_grad: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    from rnnofrnns.kernels.gated_paths import backward

    return backward(grad_y, x, W, c, aux, need_x_grad, need_W_grad, need_c_grad)


register_op_pair("rnnofrnns::gated_paths_fwd_triton", "rnnofrnns::gated_paths_bwd_triton", weights_in_place=True)
