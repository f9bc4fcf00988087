"""The Triton backend of modular_rnn as a pair of torch.library custom ops (the schema of
autograd.py).

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
    drive: Tensor, W: Tensor, L_blocks: Tensor, L_index: Tensor, h0: Tensor, alpha: Tensor, S_inv: Tensor,
    nonlinearity: str, form: str, step: str, save: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    from rnnofrnns.kernels.modular_rnn import forward

    if step != "dense":  # the dense Cayley map has its diagonal blocks; the stars' index has 4 columns
        check_block_index(L_index[:, :2], W.shape[0])
    return forward(drive, W, L_blocks, L_index, h0, alpha, S_inv, nonlinearity, form, step, save)


@torch.library.custom_op("rnnofrnns::modular_rnn_bwd_triton", mutates_args=())
def modular_rnn_bwd_triton(
    grad_states: Tensor, W: Tensor, L_blocks: Tensor, L_index: Tensor, h0: Tensor, alpha: Tensor, S_inv: Tensor,
    states: Tensor, pre: Tensor, z: Tensor, r: Tensor, nonlinearity: str, form: str, step: str,
    need_W_grad: bool, need_L_grad: bool, need_alpha_grad: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    from rnnofrnns.kernels.modular_rnn import backward

    return backward(grad_states, W, L_blocks, L_index, h0, alpha, S_inv, states, pre, z, r, nonlinearity, form,
                    step, need_W_grad, need_L_grad, need_alpha_grad)


register_op_pair("rnnofrnns::modular_rnn_fwd_triton", "rnnofrnns::modular_rnn_bwd_triton")
