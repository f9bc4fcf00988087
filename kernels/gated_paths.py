"""Triton kernels for the gated multi-path matmul y = sum_p c_p * (W_p x).

Path gates [P] need no kernel of their own: W_eff = sum_p c_p W_p is one small
reduction over W and y = x W_eff^T a plain GEMM whose reduction is D_in, not P*D_in
(the backward likewise: G = dy^T x, dW_p = c_p G, dc_p = <W_p, G>, dx = dy W_eff).
Two kernels serve sample gates [B, P] and neuron gates [B, P, D_out]:

_gated_mm: out[b, n] = sum_p sum_k A[b, k] g_p(b, k) M_p[k, n]   (gate BEFORE the dot), or
           out[b, n] = sum_p g_p(b, n) sum_k A[b, k] M_p[k, n]   (gate AFTER the dot).
    The gate is read through strides (s_gb, s_gp, s_gj), zero where it broadcasts.
    With the gate BEFORE the dot it folds into the reduction dimension: each tile of
    A is scaled on the fly, so P paths are one long reduction over P*K and no
    [B, P, D_out] intermediate exists. Used for
      y  = forward, A = x, M_p = W_p^T: sample gates BEFORE; neuron gates AFTER
           (their per-path outputs Z are stored for dc);
      dx = A = dy, M_p = W_p: neuron gates BEFORE; sample gates AFTER, which
           also yields dc[b, p] = sum_i x[b, i] (dy W_p)[b, i] from the same tiles
           (partial sums per column tile, added up by the launcher): no second pass over W.
_gated_wgrad: dW_p[o, i] = sum_b dy[b, o] g_p(b, o) x[b, i], one program per
    (o-tile, i-tile, path).

float32 dots follow torch.backends.cuda.matmul.allow_tf32 (TF32 when allowed, else
IEEE); float64 is always IEEE. Without a GPU the kernels run in Triton's interpreter
on CPU tensors (TRITON_INTERPRET=1).
"""
from __future__ import annotations

import os
from typing import Tuple

import torch
import triton
import triton.language as tl

from ._common import new_output


@triton.jit
def _gated_mm_kernel(
    a_ptr, m_ptr, g_ptr, out_ptr, z_ptr, dc_ptr, x_ptr,
    Bn, K, N, P,
    s_ab, s_ak, s_mp, s_mk, s_mn, s_gb, s_gp, s_gj,
    GATE_AFTER: tl.constexpr, GATE_PER_K: tl.constexpr, SAVE_Z: tl.constexpr, DC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_in = rm < Bn
    n_in = rn < N
    m2 = m_in[:, None] & n_in[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=out_ptr.dtype.element_ty)
    if GATE_AFTER:
        for p in range(P):
            acc_p = tl.zeros([BLOCK_M, BLOCK_N], dtype=out_ptr.dtype.element_ty)
            for k0 in range(0, K, BLOCK_K):
                kk = k0 + rk
                k_in = kk < K
                a = tl.load(a_ptr + rm[:, None] * s_ab + kk[None, :] * s_ak, mask=m_in[:, None] & k_in[None, :],
                            other=0.0)
                mt = tl.load(m_ptr + p * s_mp + kk[:, None] * s_mk + rn[None, :] * s_mn,
                             mask=k_in[:, None] & n_in[None, :], other=0.0)
                acc_p += tl.dot(a, mt, input_precision=PRECISION)
            g = tl.load(g_ptr + rm[:, None] * s_gb + p * s_gp + rn[None, :] * s_gj, mask=m2, other=0.0)
            acc += g * acc_p
            if SAVE_Z:
                tl.store(z_ptr + rm[:, None] * (P * N) + p * N + rn[None, :], acc_p, mask=m2)
            if DC:
                xv = tl.load(x_ptr + rm[:, None] * N + rn[None, :], mask=m2, other=0.0)
                part = tl.sum(xv * acc_p, axis=1)
                tl.store(dc_ptr + pid_n * Bn * P + rm * P + p, part, mask=m_in)
    else:
        # The gate folds into the reduction: one flat loop over (path, k-tile) pairs,
        # which the compiler can software-pipeline as one long GEMM over P*K.
        KT = tl.cdiv(K, BLOCK_K)
        for it in range(P * KT):
            p = it // KT
            kk = (it - p * KT) * BLOCK_K + rk
            k_in = kk < K
            ma = m_in[:, None] & k_in[None, :]
            a = tl.load(a_ptr + rm[:, None] * s_ab + kk[None, :] * s_ak, mask=ma, other=0.0)
            if GATE_PER_K:
                g = tl.load(g_ptr + rm[:, None] * s_gb + p * s_gp + kk[None, :] * s_gj, mask=ma, other=0.0)
                a = a * g
            else:
                g = tl.load(g_ptr + rm * s_gb + p * s_gp, mask=m_in, other=0.0)
                a = a * g[:, None]
            mt = tl.load(m_ptr + p * s_mp + kk[:, None] * s_mk + rn[None, :] * s_mn,
                         mask=k_in[:, None] & n_in[None, :], other=0.0)
            acc += tl.dot(a, mt, input_precision=PRECISION)
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], acc, mask=m2)


@triton.jit
def _gated_wgrad_kernel(
    dy_ptr, x_ptr, g_ptr, dw_ptr,
    Bn, O, I,
    s_gb, s_gp, s_go,
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_B: tl.constexpr, PRECISION: tl.constexpr,
):
    """dW_p[o, i] = sum_b dy[b, o] g_p(b, o) x[b, i]; program (o-tile, i-tile, p)."""
    pid_o = tl.program_id(0)
    pid_i = tl.program_id(1)
    p = tl.program_id(2)
    ro = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    ri = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    rb = tl.arange(0, BLOCK_B)
    o_in = ro < O
    i_in = ri < I
    acc = tl.zeros([BLOCK_O, BLOCK_I], dtype=dw_ptr.dtype.element_ty)
    for b0 in range(0, Bn, BLOCK_B):
        bb = b0 + rb
        b_in = bb < Bn
        mt = o_in[:, None] & b_in[None, :]
        dyt = tl.load(dy_ptr + bb[None, :] * O + ro[:, None], mask=mt, other=0.0)
        g = tl.load(g_ptr + bb[None, :] * s_gb + p * s_gp + ro[:, None] * s_go, mask=mt, other=0.0)
        xv = tl.load(x_ptr + bb[:, None] * I + ri[None, :], mask=b_in[:, None] & i_in[None, :], other=0.0)
        acc += tl.dot(dyt * g, xv, input_precision=PRECISION)
    tl.store(dw_ptr + p * O * I + ro[:, None] * I + ri[None, :], acc, mask=o_in[:, None] & i_in[None, :])


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and os.environ.get("TRITON_INTERPRET") != "1":
        return "tf32"
    return "ieee"


def _gate_strides(c: torch.Tensor) -> Tuple[int, int, int]:
    """(per row, per path, per column) strides of a contiguous gate tensor; 0 where it broadcasts."""
    if c.dim() == 1:
        return 0, 1, 0
    if c.dim() == 2:
        return c.shape[1], 1, 0
    return c.shape[1] * c.shape[2], c.shape[2], 1


def _tiles(M: int, N: int) -> Tuple[int, int]:
    """64x64 output tiles when they give at least ~one program per SM, else 32x32."""
    return (64, 64) if triton.cdiv(M, 64) * triton.cdiv(N, 64) >= 128 else (32, 32)


def _gated_mm(a, m, m_strides, c, K, N, gate_after, save_z=None, dc=None, x=None):
    """out [Bn, N] = sum_p gate * (a [Bn, K] @ M_p), M_p read from m through
    m_strides = (P, stride per path, stride per k, stride per n); see _gated_mm_kernel."""
    Bn = a.shape[0]
    P = m_strides[0]
    out = new_output(Bn, N, like=a)
    bm, bn = _tiles(Bn, N)
    grid = (triton.cdiv(Bn, bm), triton.cdiv(N, bn))
    _gated_mm_kernel[grid](
        a, m, c, out, save_z if save_z is not None else out, dc if dc is not None else out,
        x if x is not None else a,
        Bn, K, N, P, a.stride(0), a.stride(1), *m_strides[1:], *_gate_strides(c),
        GATE_AFTER=gate_after, GATE_PER_K=c.dim() == 3, SAVE_Z=save_z is not None, DC=dc is not None,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=32, PRECISION=_precision(a.dtype), num_warps=4,
    )
    return out


def forward(x: torch.Tensor, W: torch.Tensor, c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y, aux): aux is W_eff for path gates, Z [B, P*D_out] for neuron gates, empty for sample gates."""
    x, W, c = x.contiguous(), W.contiguous(), c.contiguous()
    B, D_in = x.shape
    P, D_out, _ = W.shape
    if c.dim() == 1:
        # Shared gates: W_eff = sum_p c_p W_p, then one GEMM with a reduction of D_in (not P*D_in).
        W_eff = (c @ W.view(P, D_out * D_in)).view(D_out, D_in)
        return x @ W_eff.T, W_eff
    neuron = c.dim() == 3
    z = new_output(B, P * D_out, like=x) if neuron else x.new_empty(0)
    # M_p = W_p^T: M_p[k=i, n=o] = W[p, o, i]
    y = _gated_mm(x, W, (P, D_out * D_in, 1, D_in), c, D_in, D_out, gate_after=neuron,
                  save_z=z if neuron else None)
    return y, z


def backward(grad_y, x, W, c, aux, need_x, need_W, need_c):
    dy, x, W, c = grad_y.contiguous(), x.contiguous(), W.contiguous(), c.contiguous()
    B, D_in = x.shape
    P, D_out, _ = W.shape
    kind = c.dim()
    dx = dW = dc = None
    if kind == 1:
        # G = dy^T x; dW_p = c_p G; dc_p = <W_p, G>; dx = dy W_eff.
        if need_x:
            dx = dy @ aux
        if need_W or need_c:
            G = (dy.T @ x).view(D_out * D_in)
            dW = (c[:, None] * G[None, :]).view(P, D_out, D_in) if need_W else None
            dc = W.view(P, D_out * D_in) @ G if need_c else None
    else:
        if need_x or (need_c and kind == 2):
            # M_p = W_p: M_p[k=o, n=i] = W[p, o, i]
            if kind == 2:
                n_tiles = triton.cdiv(D_in, _tiles(B, D_in)[1])
                parts = new_output(n_tiles, B, P, like=x)
                dx = _gated_mm(dy, W, (P, D_out * D_in, D_in, 1), c, D_out, D_in, gate_after=True, dc=parts, x=x)
                dc = parts.sum(0)
            else:
                dx = _gated_mm(dy, W, (P, D_out * D_in, D_in, 1), c, D_out, D_in, gate_after=False)
        if need_W:
            bo, bi = _tiles(D_out, D_in)
            dW = new_output(P, D_out, D_in, like=W)
            _gated_wgrad_kernel[(triton.cdiv(D_out, bo), triton.cdiv(D_in, bi), P)](
                dy, x, c, dW, B, D_out, D_in, *_gate_strides(c),
                BLOCK_O=bo, BLOCK_I=bi, BLOCK_B=32, PRECISION=_precision(x.dtype), num_warps=4,
            )
        if need_c and kind == 3:
            dc = dy[:, None, :] * aux.view(B, P, D_out)
    # Gradients that were not asked for come back as zeros of the right shape.
    dx = dx if need_x and dx is not None else torch.zeros_like(x)
    dW = dW if need_W and dW is not None else torch.zeros_like(W)
    dc = dc if need_c and dc is not None else torch.zeros_like(c)
    return dx, dW, dc
