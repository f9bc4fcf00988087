"""Triton kernels for the modular recurrence, with the whole time loop inside the kernel.

One program owns BLOCK_B batch rows for all T steps. Each step walks the p areas:
the intra-area block and every inter-area block that targets the area are applied
with tl.dot on [BLOCK_B, BLOCK_N] tiles (n padded to BLOCK_N >= 16 and masked).
The states live in the output buffer [T, B, p*n] (h_0 in its own [B, p*n]); a
barrier separates the writes of step t from the reads of step t+1 inside the program. Blocks are found
through CSR lists (by target for the forward, by source for the backward), so
only the non-zero blocks are touched.

alpha, the areas' rate, is one value per area or one per step, row and area (PER_STEP,
[T, B, p]: input-driven timescales; the Euler step's L h is scaled by the same rate). The
Cayley feedback step (STEP 1 "star", 2 "dense"; see
rnnofrnns/ops/modular_rnn/cayley.py) first writes z_t for every area, then, after a barrier,
applies C: the dense map as one more pass over the blocks (C's p*p blocks), the product of
stars one star at a time, in place on the state: the hub's solve
s = S_q^{-1}(z_hub + sum_j P_hj z_j) and, after another barrier, h_hub = 2 s - z_hub and the
leaves h_j = z_j + 2 P_jh s. The backward mirrors this with the transposed blocks (the stars in
reverse order); its launcher forms the weight, alpha and S^{-1} gradients as GEMMs over the
saved per-step gradients (for the stars, after walking them back in torch).

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


STEP_CODES = {"euler": 0, "star": 1, "dense": 2}


@triton.jit
def _csr_row_dot(acc, rowptr_ptr, key, other_ptr, l_ptr, blk, x_ptr, row, N, m2, mw, PRECISION: tl.constexpr):
    """acc + sum over the blocks r of CSR row `key` of x[other area of r] @ block r (loaded
    through the offsets blk: transposed or as is)."""
    for r in range(tl.load(rowptr_ptr + key), tl.load(rowptr_ptr + key + 1)):
        other = tl.load(other_ptr + r)
        lb = tl.load(l_ptr + r * N * N + blk, mask=mw, other=0.0)
        acc += tl.dot(tl.load(x_ptr + row + other * N, mask=m2, other=0.0), lb, input_precision=PRECISION)
    return acc


@triton.jit
def _rate(alpha_ptr, t, i, rb, B, P, PER_STEP: tl.constexpr):
    """The rate of area i at step t: a scalar, or per step a [BLOCK_B, 1] column of this program's rows."""
    if PER_STEP:
        return tl.load(alpha_ptr + (t * B + rb) * P + i, mask=rb < B, other=1.0)[:, None]
    else:
        return tl.load(alpha_ptr + i)


@triton.jit
def _modular_rnn_fwd_kernel(
    drive_ptr, w_ptr, l_ptr, tgt_rowptr_ptr, src_ptr, h0_ptr, states_ptr, pre_ptr, z_ptr, r_ptr, s_ptr,
    sinv_ptr, star_ptr, hubs_ptr, T, B, H, P, N, alpha_ptr, M, Z_TSTRIDE, R_TSTRIDE, S_TSTRIDE,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, NONLIN: tl.constexpr,
    HOPFIELD: tl.constexpr, SAVE_PRE: tl.constexpr, STEP: tl.constexpr, PRECISION: tl.constexpr,
    PER_STEP: tl.constexpr,
):
    # alpha arrives as a [p] tensor of the data's dtype: a Python float argument would be
    # rounded to float32 on the GPU (and not in the interpreter).
    rn, row, m2, mw = _tile(B, H, N, BLOCK_B, BLOCK_N)
    w_t = rn[None, :] * N + rn[:, None]  # loads a block transposed: tile[c, r] = M[r, c]
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    nrow = rb[:, None] * (M * N) + rn[None, :]  # a [BLOCK_B, BLOCK_N] tile of a [B, m*n] buffer (star 0)
    prev_ptr = h0_ptr
    cur_ptr = states_ptr
    u_ptr = drive_ptr
    pz_ptr = pre_ptr
    for t in range(T):
        for i in range(P):
            alpha = _rate(alpha_ptr, t, i, rb, B, P, PER_STEP)
            h_i = tl.load(prev_ptr + row + i * N, mask=m2, other=0.0)
            u = tl.load(u_ptr + row + i * N, mask=m2, other=0.0)
            wt = tl.load(w_ptr + i * N * N + w_t, mask=mw, other=0.0)
            if HOPFIELD:
                acc = (1.0 - alpha) * h_i + alpha * (tl.dot(_phi(h_i, NONLIN), wt, input_precision=PRECISION) + u)
            else:
                zz = tl.dot(h_i, wt, input_precision=PRECISION) + u
                if SAVE_PRE:
                    tl.store(pz_ptr + row + i * N, zz, mask=m2)
                acc = (1.0 - alpha) * h_i + alpha * _phi(zz, NONLIN)
            if STEP == 0:
                start = tl.load(tgt_rowptr_ptr + i)
                end = tl.load(tgt_rowptr_ptr + i + 1)
                for r in range(start, end):
                    # the launcher sorted the blocks by target: block r's source is src[r]
                    src_j = tl.load(src_ptr + r)
                    lt = tl.load(l_ptr + r * N * N + w_t, mask=mw, other=0.0)
                    h_j = tl.load(prev_ptr + row + src_j * N, mask=m2, other=0.0)
                    acc += alpha * tl.dot(h_j, lt, input_precision=PRECISION)
                tl.store(cur_ptr + row + i * N, acc, mask=m2)
            elif STEP == 1:  # the stars map the state in place
                tl.store(cur_ptr + row + i * N, acc, mask=m2)
            else:
                tl.store(z_ptr + row + i * N, acc, mask=m2)
        if STEP != 0:
            # the Cayley map h_t = C z_t, z_t complete for every area
            tl.debug_barrier()
            if STEP == 2:  # dense: h_i = sum_j C_ij z_j (every block)
                for i in range(P):
                    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=states_ptr.dtype.element_ty)
                    acc = _csr_row_dot(acc, tgt_rowptr_ptr, i, src_ptr, l_ptr, w_t, z_ptr, row, N, m2, mw, PRECISION)
                    tl.store(cur_ptr + row + i * N, acc, mask=m2)
            else:  # star q: r = z_hub + sum_j P_hj z_j, s = S_q^{-1} r, h_hub = 2 s - z_hub, h_j = z_j + 2 P_jh s
                # (blocks in star order: star q's hub-row blocks from star_ptr[2q], its leaf
                # blocks from star_ptr[2q+1]; src holds each block's other area)
                for q in range(M):
                    hub = tl.load(hubs_ptr + q)
                    z_h = tl.load(cur_ptr + row + hub * N, mask=m2, other=0.0)
                    acc = z_h
                    for r in range(tl.load(star_ptr + 2 * q), tl.load(star_ptr + 2 * q + 1)):
                        lt = tl.load(l_ptr + r * N * N + w_t, mask=mw, other=0.0)
                        acc += tl.dot(tl.load(cur_ptr + row + tl.load(src_ptr + r) * N, mask=m2, other=0.0), lt,
                                      input_precision=PRECISION)
                    tl.store(r_ptr + nrow + q * N, acc, mask=m2)
                    st = tl.load(sinv_ptr + q * N * N + w_t, mask=mw, other=0.0)
                    sh = tl.dot(acc, st, input_precision=PRECISION)
                    tl.store(s_ptr + nrow + q * N, sh, mask=m2)
                    tl.debug_barrier()
                    tl.store(cur_ptr + row + hub * N, 2.0 * sh - z_h, mask=m2)
                    for r in range(tl.load(star_ptr + 2 * q + 1), tl.load(star_ptr + 2 * q + 2)):
                        leaf = tl.load(src_ptr + r)
                        lt = tl.load(l_ptr + r * N * N + w_t, mask=mw, other=0.0)
                        acc = tl.load(cur_ptr + row + leaf * N, mask=m2, other=0.0) + 2.0 * tl.dot(
                            tl.load(s_ptr + nrow + q * N, mask=m2, other=0.0), lt, input_precision=PRECISION)
                        tl.store(cur_ptr + row + leaf * N, acc, mask=m2)
                    tl.debug_barrier()
        tl.debug_barrier()
        prev_ptr = cur_ptr
        cur_ptr += B * H
        u_ptr += B * H
        pz_ptr += B * H
        z_ptr += Z_TSTRIDE
        r_ptr += R_TSTRIDE
        s_ptr += S_TSTRIDE


@triton.jit
def _modular_rnn_bwd_kernel(
    gstates_ptr, w_ptr, l_ptr, h0_ptr, states_ptr, pre_ptr, gd_ptr, g_ptr, gz_ptr, carry_ptr, gh0_ptr,
    gr_ptr, sinv_ptr, src_rowptr_ptr, tgt_ptr, star_ptr, hubs_ptr,
    T, B, H, P, N, alpha_ptr, M,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, NONLIN: tl.constexpr,
    HOPFIELD: tl.constexpr, STEP: tl.constexpr, PRECISION: tl.constexpr, PER_STEP: tl.constexpr,
):
    rn, row, m2, mw = _tile(B, H, N, BLOCK_B, BLOCK_N)
    w_n = rn[:, None] * N + rn[None, :]  # loads a block as is: x @ M computes (M^T x^T)^T
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    nrow = rb[:, None] * (M * N) + rn[None, :]  # star 0's tile of the [B, m*n] scratch of gr
    BH = B * H
    # carry_ptr holds two [B, H] buffers (zeroed by the launcher): read one, write the other.
    cin_ptr = carry_ptr
    cout_ptr = carry_ptr + BH
    gin_ptr = gstates_ptr + (T - 1) * BH  # gradient arriving at h_t (t = T first)
    h_ptr = states_ptr + (T - 2) * BH     # h_{t-1}, read only while t > 0; h0 at the last step
    d_ptr = gd_ptr + (T - 1) * BH
    z_ptr = pre_ptr + (T - 1) * BH
    gt_ptr = g_ptr + (T - 1) * BH         # total gradient of h_t (Cayley: saved for the block gradients)
    gzt_ptr = gz_ptr + (T - 1) * BH       # gradient of z_t (= of h_t for the Euler step)
    for step in range(T):
        t = T - 1 - step
        # phase 0: total gradient of h_t, and for the Cayley step gz = C^T g
        for i in range(P):
            off = row + i * N
            g = tl.load(gin_ptr + off, mask=m2, other=0.0) + tl.load(cin_ptr + off, mask=m2, other=0.0)
            tl.store(gzt_ptr + off, g, mask=m2)
            if STEP != 0:
                tl.store(gt_ptr + off, g, mask=m2)
        if STEP != 0:
            tl.debug_barrier()
            if STEP == 2:  # dense: gz_j = sum_i C_ij^T g_i (blocks sorted by source)
                for j in range(P):
                    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=states_ptr.dtype.element_ty)
                    acc = _csr_row_dot(acc, src_rowptr_ptr, j, tgt_ptr, l_ptr, w_n, gt_ptr, row, N, m2, mw, PRECISION)
                    tl.store(gzt_ptr + row + j * N, acc, mask=m2)
            else:  # the stars in reverse, in place on gz: star q turns the gradient of its output
                # into that of its input: gs = 2 g_hub + 2 sum_j P_jh^T g_j, gr = S_q^{-T} gs,
                # gz_hub = gr - g_hub, gz_j = g_j + P_hj^T gr
                for qq in range(M):
                    q = M - 1 - qq
                    hub = tl.load(hubs_ptr + q)
                    g_h = tl.load(gzt_ptr + row + hub * N, mask=m2, other=0.0)
                    acc = g_h
                    for r in range(tl.load(star_ptr + 2 * q + 1), tl.load(star_ptr + 2 * q + 2)):
                        lb = tl.load(l_ptr + r * N * N + w_n, mask=mw, other=0.0)
                        acc += tl.dot(tl.load(gzt_ptr + row + tl.load(tgt_ptr + r) * N, mask=m2, other=0.0), lb,
                                      input_precision=PRECISION)
                    sb = tl.load(sinv_ptr + q * N * N + w_n, mask=mw, other=0.0)
                    gr = tl.dot(2.0 * acc, sb, input_precision=PRECISION)
                    tl.store(gr_ptr + nrow + q * N, gr, mask=m2)
                    tl.debug_barrier()
                    tl.store(gzt_ptr + row + hub * N, gr - g_h, mask=m2)
                    for r in range(tl.load(star_ptr + 2 * q), tl.load(star_ptr + 2 * q + 1)):
                        j = tl.load(tgt_ptr + r)
                        lb = tl.load(l_ptr + r * N * N + w_n, mask=mw, other=0.0)
                        acc = tl.load(gzt_ptr + row + j * N, mask=m2, other=0.0) + tl.dot(
                            tl.load(gr_ptr + nrow + q * N, mask=m2, other=0.0), lb, input_precision=PRECISION)
                        tl.store(gzt_ptr + row + j * N, acc, mask=m2)
                    tl.debug_barrier()
        tl.debug_barrier()
        # phase 1: the drive's gradient d
        for i in range(P):
            alpha = _rate(alpha_ptr, t, i, rb, B, P, PER_STEP)
            off = row + i * N
            g = tl.load(gzt_ptr + off, mask=m2, other=0.0)
            if HOPFIELD:
                tl.store(d_ptr + off, alpha * g, mask=m2)
            else:
                z = tl.load(z_ptr + off, mask=m2, other=0.0)
                tl.store(d_ptr + off, _dphi_times(z, alpha * g, NONLIN), mask=m2)
        tl.debug_barrier()
        # phase 2: gradient flowing into h_{t-1}, area by area (as the source of every block)
        for j in range(P):
            alpha = _rate(alpha_ptr, t, j, rb, B, P, PER_STEP)
            off = row + j * N
            g = tl.load(gzt_ptr + off, mask=m2, other=0.0)
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
            if STEP == 0:
                start = tl.load(src_rowptr_ptr + j)
                end = tl.load(src_rowptr_ptr + j + 1)
                for r in range(start, end):
                    # the launcher sorted the blocks by source: block r's target is tgt[r]
                    tgt_i = tl.load(tgt_ptr + r)
                    lb = tl.load(l_ptr + r * N * N + w_n, mask=mw, other=0.0)
                    ag = _rate(alpha_ptr, t, tgt_i, rb, B, P, PER_STEP) * tl.load(gzt_ptr + row + tgt_i * N, mask=m2,
                                                                                   other=0.0)
                    acc += tl.dot(ag, lb, input_precision=PRECISION)
            tl.store(cout_ptr + off, acc, mask=m2)
        tl.debug_barrier()
        tmp = cin_ptr
        cin_ptr = cout_ptr
        cout_ptr = tmp
        gin_ptr -= BH
        h_ptr -= BH
        d_ptr -= BH
        z_ptr -= BH
        gt_ptr -= BH
        gzt_ptr -= BH
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


def _star_order(L_index: torch.Tensor, m: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the stars' index [k, 4] (target, source, star, hub): the order that lists star q's
    hub-row blocks and then its leaf blocks, star after star; the pointers [2m+1] of those runs;
    each block's other area (not the hub), in that order; and the stars' hubs [m]."""
    tgt, src, star, hub = L_index.unbind(1)
    leaf = (tgt != hub).to(torch.int64)
    order = torch.argsort(star * 2 + leaf, stable=True)
    counts = torch.bincount(star * 2 + leaf, minlength=2 * m)
    ptr = torch.zeros(2 * m + 1, dtype=torch.int64, device=L_index.device)
    ptr[1:] = torch.cumsum(counts, 0)
    other = torch.where(leaf.bool(), tgt, src)[order].contiguous()
    hubs = torch.zeros(m, dtype=torch.int64, device=L_index.device).scatter_(0, star, hub)
    return order, ptr, other, hubs


def forward(drive, W, L_blocks, L_index, h0, alpha, S_inv, nonlinearity, form, step, save):
    T, B, H = drive.shape
    p, n, _ = W.shape
    drive, W, L_blocks, L_index = drive.contiguous(), W.contiguous(), L_blocks.contiguous(), L_index.contiguous()
    h0, alpha, S_inv = h0.contiguous(), alpha.contiguous(), S_inv.contiguous()
    states = new_output(T, B, H, like=drive)
    keep_pre = save and form == "rate"
    star = step == "star"
    pre = new_output(T if keep_pre else 0, B, H, like=drive)
    # kept for all steps when saved, otherwise one step's worth of scratch: z (the dense map's,
    # saved for the backward), r and s_hub (the stars', [B, m*n] per step; the backward rebuilds
    # each star's input from s)
    m = S_inv.shape[0] if star else 1
    keep_z, keep_rs = save and step == "dense", save and star
    z = new_output(T if keep_z else (1 if step == "dense" else 0), B, H, like=drive)
    r = new_output(T if keep_rs else (1 if star else 0), B, m * n, like=drive)
    s = new_output(T if keep_rs else (1 if star else 0), B, m * n, like=drive)
    if star:
        order, rowptr, src, hubs = _star_order(L_index, m)
    else:
        rowptr, order = _csr(L_index[:, 0], p)
        src, hubs = L_index[order, 1].contiguous(), rowptr
    L_sorted = L_blocks[order].contiguous()
    grid = (triton.cdiv(B, LAUNCH["BLOCK_B"]),)
    _modular_rnn_fwd_kernel[grid](
        drive, W, L_sorted, rowptr, src, h0, states, pre if keep_pre else states,
        z if step == "dense" else states, r if star else states, s if star else states, S_inv if star else W,
        rowptr, hubs, T, B, H, p, n, alpha, m, B * H if keep_z else 0, B * m * n if keep_rs else 0,
        B * m * n if keep_rs else 0,
        NONLIN=NONLINEARITY_CODES[nonlinearity], HOPFIELD=form == "hopfield", SAVE_PRE=keep_pre,
        STEP=STEP_CODES[step], PER_STEP=alpha.dim() == 3, **_launch_config(n),
    )
    if keep_rs:
        return states, pre, s, r
    return states, pre, z if keep_z else drive.new_zeros(0, B, m * n if star else H), drive.new_zeros(0, B, m * n)


def _check_saved(name: str, t: torch.Tensor, shape: Tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"modular_rnn_bwd: {name} must be the forward's saved tensor of shape {shape}, got shape "
                         f"{tuple(t.shape)} (run the forward with save=True)")


def backward(grad_states, W, L_blocks, L_index, h0, alpha, S_inv, states, pre, z, r, nonlinearity, form, step,
             need_W_grad, need_L_grad, need_alpha_grad):
    T, B, H = states.shape
    p, n, _ = W.shape
    hopfield, cayley, star = form == "hopfield", step != "euler", step == "star"
    if not hopfield:
        _check_saved("pre", pre, (T, B, H))
    if step == "dense":
        _check_saved("z", z, (T, B, H))
    m = S_inv.shape[0] if star else 1
    if star:
        _check_saved("z", z, (T, B, m * n))
        _check_saved("r", r, (T, B, m * n))
    grad_states, W, L_blocks = grad_states.contiguous(), W.contiguous(), L_blocks.contiguous()
    h0, states, pre, L_index = h0.contiguous(), states.contiguous(), pre.contiguous(), L_index.contiguous()
    alpha, S_inv, z, r = alpha.contiguous(), S_inv.contiguous(), z.contiguous(), r.contiguous()
    grad_drive = new_output(T, B, H, like=states)
    gz = new_output(T, B, H, like=states)
    g = new_output(T, B, H, like=states) if cayley else gz
    gr = new_output(1 if star else 0, B, m * n, like=states)  # one step's S_q^{-T} gs per star
    carry = torch.zeros(2, B, H, dtype=states.dtype, device=states.device)
    grad_h0 = new_output(B, H, like=states)
    if star:
        order, rowptr, tgt, hubs = _star_order(L_index, m)
    else:
        rowptr, order = _csr(L_index[:, 1], p)
        tgt, hubs = L_index[order, 0].contiguous(), rowptr
    grid = (triton.cdiv(B, LAUNCH["BLOCK_B"]),)
    _modular_rnn_bwd_kernel[grid](
        grad_states, W, L_blocks[order].contiguous(), h0, states, pre if not hopfield else states,
        grad_drive, g, gz, carry, grad_h0, gr if star else states, S_inv if star else W,
        rowptr, tgt, rowptr, hubs, T, B, H, p, n, alpha, m,
        NONLIN=NONLINEARITY_CODES[nonlinearity], HOPFIELD=hopfield, STEP=STEP_CODES[step],
        PER_STEP=alpha.dim() == 3, **_launch_config(n),
    )
    # The weight and alpha gradients are reductions over all (t, b): one GEMM per block.
    hprev = torch.cat([h0[None], states[:-1]]).view(T * B, p, n)
    grad_L = new_output(*L_blocks.shape, like=L_blocks) if need_L_grad else torch.zeros_like(L_blocks)
    grad_S = torch.zeros_like(S_inv)
    if star:  # walk the stars back from h_t to z_t: their inputs, and their blocks' and S_inv's gradients
        x = _stars_backward(L_blocks, L_index, S_inv, states, z, r, g, grad_L if need_L_grad else None, grad_S)
    else:
        x = (z if cayley else states).view(T * B, p, n)
    gzv = gz.view(T * B, p, n)
    # the rates as [1, p] (one per area) or [T * B, p] (per step)
    a_rows = alpha.view(T * B, p) if alpha.dim() == 3 else alpha[None]
    if need_alpha_grad:
        per_row = (gzv * (x - hprev)).sum(2) / a_rows  # dx/da_i = (x - h_{t-1}) / a_i
        grad_alpha = per_row.view(T, B, p) if alpha.dim() == 3 else per_row.sum(0)
    else:
        grad_alpha = torch.zeros_like(alpha)
    # Weight gradients that are not asked for are returned as zeros.
    grad_W = new_output(*W.shape, like=W) if need_W_grad else torch.zeros_like(W)
    if need_W_grad:
        xin = hprev
        if hopfield and nonlinearity == "relu":
            xin = torch.relu(hprev)
        elif hopfield and nonlinearity == "tanh":
            xin = torch.tanh(hprev)
        d = grad_drive.view(T * B, p, n)
        for i in range(p):
            torch.mm(d[:, i].T, xin[:, i], out=grad_W[i])
    if need_L_grad and not star:  # (the stars' were formed on the way back)
        left, right = (gzv * a_rows[:, :, None], hprev) if step == "euler" else (g.view(T * B, p, n), x)
        for k, (i, j) in enumerate(L_index.tolist()):
            torch.mm(left[:, i].T, right[:, j], out=grad_L[k])
    return grad_drive, grad_W, grad_L, grad_h0, grad_alpha, grad_S


def _stars_backward(P, L_index, S_inv, states, s_saved, r_saved, g, grad_L, grad_S):
    """The stars walked back from h_t to z_t over all (t, b) rows at once, from the states, the
    saved s and r of every star and g = dLoss/dh_t: star q (last first) has X = (gr at its hub,
    2 g_j at its leaves) and Y = (s at its hub, its input at its leaves) as the two sides of its
    blocks' gradients, grad S_q^{-1} = gs^T r; g becomes the gradient of its input (gr - g_hub,
    g_j + P_hj^T gr) and the state its input (2 s - h_hub, h_j - 2 P_jh s). Returns z_t [T*B, p, n]."""
    T, B, _ = states.shape
    m, n = S_inv.shape[0], S_inv.shape[1]
    p = states.shape[2] // n
    G = g.reshape(T * B, p, n).clone()
    Y = states.reshape(T * B, p, n).clone()
    s_all, r_all = s_saved.reshape(T * B, m, n), r_saved.reshape(T * B, m, n)
    blocks = L_index.tolist()
    for q in reversed(range(m)):
        mine = [(k, tgt, src, hub) for k, (tgt, src, star, hub) in enumerate(blocks) if star == q]
        if not mine:
            continue
        hub = mine[0][3]
        leaves = [(k, tgt) for k, tgt, src, h in mine if tgt != h]  # blocks P_jh
        rows = [(k, src) for k, tgt, src, h in mine if tgt == h]    # blocks P_hj
        s_q = s_all[:, q]
        gs = G[:, hub].clone()
        for k, j in leaves:
            gs += G[:, j] @ P[k]
        gs *= 2
        gr = gs @ S_inv[q]
        torch.mm(gs.T, r_all[:, q], out=grad_S[q])
        if grad_L is not None:
            for k, j in leaves:
                torch.mm((2 * G[:, j]).T, s_q, out=grad_L[k])
        Y[:, hub] = 2 * s_q - Y[:, hub]
        for k, j in leaves:
            Y[:, j] -= 2 * s_q @ P[k].T
        if grad_L is not None:
            for k, j in rows:
                torch.mm(gr.T, Y[:, j], out=grad_L[k])
        G[:, hub] = gr - G[:, hub]
        for k, j in rows:
            G[:, j] += gr @ P[k]
    return Y
