"""Triton kernels for the modular recurrence, with the whole time loop inside the kernel.

One program owns BLOCK_B batch rows for all T steps. Each step walks the p areas:
the intra-area block and every inter-area block that targets the area are applied
with tl.dot on [BLOCK_B, BLOCK_N] tiles (n padded to BLOCK_N >= 16 and masked).
The states live in the output buffer [T, B, p*n] (h_0 in its own [B, p*n]); a
barrier separates the writes of step t from the reads of step t+1 inside the program. Blocks are found
through CSR lists (by target for the forward, by source for the backward), so
only the non-zero blocks are touched.

On a machine without a GPU these kernels run in Triton's interpreter on CPU
tensors (TRITON_INTERPRET=1), which is how the test suite checks them.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ._common import new_output

NONLINEARITY_CODES = {"relu": 0, "tanh": 1, "identity": 2}
BLOCK_B = 16


@triton.jit
def _tanh(x):
    # tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|): never overflows.
    e = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -y, y)


@triton.jit
def _phi(x, NONLIN: tl.constexpr):
    if NONLIN == 0:
        return tl.maximum(x, 0.0)
    elif NONLIN == 1:
        return _tanh(x)
    else:
        return x


@triton.jit
def _dphi_times(x, g, NONLIN: tl.constexpr):
    """phi'(x) * g."""
    if NONLIN == 0:
        return tl.where(x > 0, g, 0.0)
    elif NONLIN == 1:
        th = _tanh(x)
        return g * (1.0 - th * th)
    else:
        return g


@triton.jit
def _tile(B, H, N, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's batch rows: offsets of a [BLOCK_B, BLOCK_N] area tile in a [B, H] state,
    its mask, and the mask of an [N, N] block."""
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rn = tl.arange(0, BLOCK_N)
    m2 = (rb < B)[:, None] & (rn < N)[None, :]
    mw = (rn < N)[:, None] & (rn < N)[None, :]
    row = rb[:, None] * H + rn[None, :]
    return rn, row, m2, mw


@triton.jit
def _modular_rnn_fwd_kernel(
    drive_ptr, w_ptr, l_ptr, tgt_rowptr_ptr, src_ptr, h0_ptr, states_ptr, pre_ptr,
    T, B, H, P, N, alpha_ptr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, NONLIN: tl.constexpr,
    HOPFIELD: tl.constexpr, SAVE_PRE: tl.constexpr, PRECISION: tl.constexpr,
):
    # alpha arrives as a one-element tensor of the data's dtype: a Python float argument
    # would be rounded to float32 on the GPU (and not in the interpreter).
    alpha = tl.load(alpha_ptr)
    rn, row, m2, mw = _tile(B, H, N, BLOCK_B, BLOCK_N)
    w_t = rn[None, :] * N + rn[:, None]  # loads a block transposed: tile[c, r] = M[r, c]
    prev_ptr = h0_ptr
    cur_ptr = states_ptr
    u_ptr = drive_ptr
    z_ptr = pre_ptr
    for t in range(T):
        for i in range(P):
            h_i = tl.load(prev_ptr + row + i * N, mask=m2, other=0.0)
            u = tl.load(u_ptr + row + i * N, mask=m2, other=0.0)
            wt = tl.load(w_ptr + i * N * N + w_t, mask=mw, other=0.0)
            if HOPFIELD:
                acc = (1.0 - alpha) * h_i + alpha * (tl.dot(_phi(h_i, NONLIN), wt, input_precision=PRECISION) + u)
            else:
                z = tl.dot(h_i, wt, input_precision=PRECISION) + u
                if SAVE_PRE:
                    tl.store(z_ptr + row + i * N, z, mask=m2)
                acc = (1.0 - alpha) * h_i + alpha * _phi(z, NONLIN)
            start = tl.load(tgt_rowptr_ptr + i)
            end = tl.load(tgt_rowptr_ptr + i + 1)
            for r in range(start, end):
                # the launcher sorted the blocks by target: block r's source is src[r]
                src_j = tl.load(src_ptr + r)
                lt = tl.load(l_ptr + r * N * N + w_t, mask=mw, other=0.0)
                h_j = tl.load(prev_ptr + row + src_j * N, mask=m2, other=0.0)
                acc += alpha * tl.dot(h_j, lt, input_precision=PRECISION)
            tl.store(cur_ptr + row + i * N, acc, mask=m2)
        tl.debug_barrier()
        prev_ptr = cur_ptr
        cur_ptr += B * H
        u_ptr += B * H
        z_ptr += B * H


@triton.jit
def _modular_rnn_bwd_kernel(
    gstates_ptr, w_ptr, l_ptr, h0_ptr, states_ptr, pre_ptr, gd_ptr, ag_ptr, carry_ptr, gh0_ptr,
    src_rowptr_ptr, tgt_ptr,
    T, B, H, P, N, alpha_ptr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, NONLIN: tl.constexpr,
    HOPFIELD: tl.constexpr, PRECISION: tl.constexpr,
):
    alpha = tl.load(alpha_ptr)
    rn, row, m2, mw = _tile(B, H, N, BLOCK_B, BLOCK_N)
    w_n = rn[:, None] * N + rn[None, :]  # loads a block as is: x @ M computes (M^T x^T)^T
    BH = B * H
    # carry_ptr holds two [B, H] buffers (zeroed by the launcher): read one, write the other.
    cin_ptr = carry_ptr
    cout_ptr = carry_ptr + BH
    g_ptr = gstates_ptr + (T - 1) * BH  # gradient arriving at h_t (t = T first)
    h_ptr = states_ptr + (T - 2) * BH   # h_{t-1}, read only while t > 0; h0 at the last step
    d_ptr = gd_ptr + (T - 1) * BH
    a_ptr = ag_ptr + (T - 1) * BH
    z_ptr = pre_ptr + (T - 1) * BH
    for step in range(T):
        # phase 1: total gradient g of h_t; drive gradient d; a*g for the feedback terms
        for i in range(P):
            off = row + i * N
            g = tl.load(g_ptr + off, mask=m2, other=0.0) + tl.load(cin_ptr + off, mask=m2, other=0.0)
            if HOPFIELD:
                tl.store(d_ptr + off, alpha * g, mask=m2)
            else:
                z = tl.load(z_ptr + off, mask=m2, other=0.0)
                tl.store(d_ptr + off, _dphi_times(z, alpha * g, NONLIN), mask=m2)
                tl.store(a_ptr + off, alpha * g, mask=m2)
        tl.debug_barrier()
        # phase 2: gradient flowing into h_{t-1}, area by area (as the source of every block)
        for j in range(P):
            off = row + j * N
            g = tl.load(g_ptr + off, mask=m2, other=0.0) + tl.load(cin_ptr + off, mask=m2, other=0.0)
            d = tl.load(d_ptr + off, mask=m2, other=0.0)
            w = tl.load(w_ptr + j * N * N + w_n, mask=mw, other=0.0)
            back = tl.dot(d, w, input_precision=PRECISION)
            if HOPFIELD:
                if step < T - 1:
                    h = tl.load(h_ptr + off, mask=m2, other=0.0)
                else:
                    h = tl.load(h0_ptr + off, mask=m2, other=0.0)
                acc = (1.0 - alpha) * g + _dphi_times(h, back, NONLIN)
            else:
                acc = (1.0 - alpha) * g + back
            start = tl.load(src_rowptr_ptr + j)
            end = tl.load(src_rowptr_ptr + j + 1)
            for r in range(start, end):
                # the launcher sorted the blocks by source: block r's target is tgt[r]
                tgt_i = tl.load(tgt_ptr + r)
                lb = tl.load(l_ptr + r * N * N + w_n, mask=mw, other=0.0)
                if HOPFIELD:
                    ag = tl.load(d_ptr + row + tgt_i * N, mask=m2, other=0.0)
                else:
                    ag = tl.load(a_ptr + row + tgt_i * N, mask=m2, other=0.0)
                acc += tl.dot(ag, lb, input_precision=PRECISION)
            tl.store(cout_ptr + off, acc, mask=m2)
        tl.debug_barrier()
        tmp = cin_ptr
        cin_ptr = cout_ptr
        cout_ptr = tmp
        g_ptr -= BH
        h_ptr -= BH
        d_ptr -= BH
        a_ptr -= BH
        z_ptr -= BH
    for i in range(P):
        off = row + i * N
        tl.store(gh0_ptr + off, tl.load(cin_ptr + off, mask=m2, other=0.0), mask=m2)


def _csr(keys: torch.Tensor, p: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row pointers [p+1] and the order that sorts the blocks by key (target or source area).
    The launchers pass the blocks and their other index in that order, so the kernels
    read block r directly instead of through one more dependent load."""
    order = torch.argsort(keys, stable=True)
    counts = torch.bincount(keys, minlength=p)
    rowptr = torch.zeros(p + 1, dtype=torch.int64, device=keys.device)
    rowptr[1:] = torch.cumsum(counts, 0)
    return rowptr, order.to(torch.int64)


# Rows of the batch per program and warps per program: the fastest launch shape that
# bench/gpu/gpu_tune_modular_rnn.py found on an H100 (bench/gpu/RESULTS.md).
LAUNCH = {"BLOCK_B": BLOCK_B, "num_warps": 2}


def _launch_config(n: int) -> dict:
    return dict(
        BLOCK_B=LAUNCH["BLOCK_B"],
        BLOCK_N=max(16, triton.next_power_of_2(n)),
        PRECISION="ieee",
        num_warps=LAUNCH["num_warps"],
    )


def forward(drive, W, L_blocks, L_index, h0, alpha, nonlinearity, form, save_pre):
    T, B, H = drive.shape
    p, n, _ = W.shape
    drive, W, L_blocks, L_index = drive.contiguous(), W.contiguous(), L_blocks.contiguous(), L_index.contiguous()
    h0 = h0.contiguous()
    states = new_output(T, B, H, like=drive)
    keep_pre = save_pre and form == "rate"
    pre = new_output(T if keep_pre else 0, B, H, like=drive)
    rowptr, order = _csr(L_index[:, 0], p)
    src = L_index[order, 1].contiguous()
    L_sorted = L_blocks[order].contiguous()
    grid = (triton.cdiv(B, LAUNCH["BLOCK_B"]),)
    _modular_rnn_fwd_kernel[grid](
        drive, W, L_sorted, rowptr, src, h0, states, pre if keep_pre else states,
        T, B, H, p, n, torch.full((1,), float(alpha), dtype=W.dtype, device=W.device),
        NONLIN=NONLINEARITY_CODES[nonlinearity], HOPFIELD=form == "hopfield", SAVE_PRE=keep_pre,
        **_launch_config(n),
    )
    return states, pre


def backward(grad_states, W, L_blocks, L_index, h0, states, pre, alpha, nonlinearity, form, need_W_grad, need_L_grad):
    T, B, H = states.shape
    p, n, _ = W.shape
    hopfield = form == "hopfield"
    if not hopfield and tuple(pre.shape) != (T, B, H):
        raise ValueError(f"the rate form's backward needs pre of shape {(T, B, H)}, got {tuple(pre.shape)} "
                         "(run the forward with save_pre=True)")
    grad_states, W, L_blocks = grad_states.contiguous(), W.contiguous(), L_blocks.contiguous()
    h0, states, pre, L_index = h0.contiguous(), states.contiguous(), pre.contiguous(), L_index.contiguous()
    grad_drive = new_output(T, B, H, like=states)
    ag = grad_drive if hopfield else new_output(T, B, H, like=states)
    carry = torch.zeros(2, B, H, dtype=states.dtype, device=states.device)
    grad_h0 = new_output(B, H, like=states)
    rowptr, order = _csr(L_index[:, 1], p)
    tgt = L_index[order, 0].contiguous()
    grid = (triton.cdiv(B, LAUNCH["BLOCK_B"]),)
    _modular_rnn_bwd_kernel[grid](
        grad_states, W, L_blocks[order].contiguous(), h0, states, pre if not hopfield else states,
        grad_drive, ag, carry, grad_h0, rowptr, tgt,
        T, B, H, p, n, torch.full((1,), float(alpha), dtype=W.dtype, device=W.device),
        NONLIN=NONLINEARITY_CODES[nonlinearity], HOPFIELD=hopfield,
        **_launch_config(n),
    )
    # Weight gradients that are not asked for are returned as zeros.
    grad_W = new_output(*W.shape, like=W) if need_W_grad else torch.zeros_like(W)
    grad_L = new_output(*L_blocks.shape, like=L_blocks) if need_L_grad else torch.zeros_like(L_blocks)
    hprev = torch.cat([h0[None], states[:-1]]).view(T * B, p, n)
    if need_W_grad:
        x = hprev
        if hopfield and nonlinearity == "relu":
            x = torch.relu(hprev)
        elif hopfield and nonlinearity == "tanh":
            x = torch.tanh(hprev)
        d = grad_drive.view(T * B, p, n)
        for i in range(p):
            torch.mm(d[:, i].T, x[:, i], out=grad_W[i])
    if need_L_grad:
        a = ag.view(T * B, p, n)
        for r, (i, j) in enumerate(L_index.tolist()):
            torch.mm(a[:, i].T, hprev[:, j], out=grad_L[r])
    return grad_drive, grad_W, grad_L, grad_h0
