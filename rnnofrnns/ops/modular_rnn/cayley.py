"""The operands the fused kernels take for each feedback step, formed by differentiable torch
ops so that autograd carries the kernels' gradients on to L_blocks and alpha.

The Cayley map C = (I - A L/2)^{-1} (I + A L/2) is applied in one of two factored forms:
- "star" (every block touches one hub area h, as in the global workspace): the kernels take
  P = (a_target/2) L and S_inv = S^{-1}, S = I - sum_j P_hj P_jh (n x n, the Schur complement
  of the hub); per step they solve (I - A L/2) s = z through S_inv and set h = 2 s - z.
  No dense C, and as many block products per step as the Euler step's L h.
- "dense" (any other topology): the p*p blocks of C, from one dense [p*n, p*n] solve per call;
  each step then costs p*p block products (the Euler step's k).
With no feedback blocks C = I and both steps are the same; the Euler kernel runs.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .reference import cayley_map, dense_feedback


def star_hub(L_index: torch.Tensor, p: int) -> Optional[int]:
    """The area that every block touches (as target or source), or None. Reads the index."""
    pairs: List[List[int]] = L_index.tolist()
    if not pairs:
        return None
    candidates = set(pairs[0])
    for tgt, src in pairs[1:]:
        candidates &= {tgt, src}
        if not candidates:
            return None
    return min(candidates)


def kernel_operands(
    L_blocks: torch.Tensor, L_index: torch.Tensor, alpha: torch.Tensor, p: int, feedback_step: str,
) -> Tuple[str, int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(step, hub, blocks, index, S_inv) for the fused op; alpha is [p]."""
    k, n = L_blocks.shape[0], L_blocks.shape[1]
    empty = L_blocks.new_zeros(0, 0)
    if feedback_step == "euler" or k == 0:
        return "euler", -1, L_blocks, L_index, empty
    hub = star_hub(L_index, p)
    if hub is not None:
        P = L_blocks * (alpha[L_index[:, 0]] / 2)[:, None, None]
        tgt, src = L_index[:, 0].tolist(), L_index[:, 1].tolist()
        row = {s: r for r, (t, s) in enumerate(zip(tgt, src)) if t == hub}
        col = {t: r for r, (t, s) in enumerate(zip(tgt, src)) if s == hub}
        both = sorted(set(row) & set(col))
        S = torch.eye(n, dtype=L_blocks.dtype, device=L_blocks.device)
        if both:
            S = S - torch.bmm(P[[row[j] for j in both]], P[[col[j] for j in both]]).sum(0)
        return "star", hub, P, L_index, torch.linalg.inv(S)
    C = cayley_map(dense_feedback(L_blocks, L_index, p), alpha.repeat_interleave(n))
    blocks = C.view(p, n, p, n).permute(0, 2, 1, 3).reshape(p * p, n, n)
    ar = torch.arange(p, device=L_index.device)
    index = torch.stack([ar.repeat_interleave(p), ar.repeat(p)], 1)
    return "dense", -1, blocks, index, empty
