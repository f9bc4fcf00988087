"""The Triton backend of modular_rnn as a pair of torch.library custom ops.

The kernels themselves live in rnnofrnns.kernels.modular_rnn (kernels/ in the
source tree); triton is imported only when an op runs, so that TRITON_INTERPRET
can still be set beforehand and the package imports without triton.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .autograd import register_op_pair
from .checks import check_block_index


@torch.library.custom_op("rnnofrnns::modular_rnn_fwd_triton", mutates_args=())
def modular_rnn_fwd_triton(
    drive: Tensor, W: Tensor, L_blocks: Tensor, L_index: Tensor, h0: Tensor,
    alpha: float, nonlinearity: str, form: str, save_pre: bool,
) -> Tuple[Tensor, Tensor]:
    from rnnofrnns.kernels.modular_rnn import forward

    check_block_index(L_index, W.shape[0])
    return forward(drive, W, L_blocks, L_index, h0, alpha, nonlinearity, form, save_pre)


@torch.library.custom_op("rnnofrnns::modular_rnn_bwd_triton", mutates_args=())
def modular_rnn_bwd_triton(
    grad_states: Tensor, W: Tensor, L_blocks: Tensor, L_index: Tensor, h0: Tensor, states: Tensor, pre: Tensor,
    alpha: float, nonlinearity: str, form: str, need_W_grad: bool, need_L_grad: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    from rnnofrnns.kernels.modular_rnn import backward

    return backward(grad_states, W, L_blocks, L_index, h0, states, pre, alpha, nonlinearity, form,
                    need_W_grad, need_L_grad)


register_op_pair("rnnofrnns::modular_rnn_fwd_triton", "rnnofrnns::modular_rnn_bwd_triton")
