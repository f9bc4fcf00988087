"""The operands the fused kernels take for each feedback step, formed by differentiable torch
ops so that autograd carries the kernels' gradients on to L_blocks and alpha.

The Cayley map C = (I - K)^{-1} (I + K), K = A L/2, is applied in one of two factored forms:
- "star": a product of stars, C_S = C_{m-1} ... C_1 C_0. Star q is a hub area h_q and the
  blocks that link it to its leaves; C_q is the Cayley map of K restricted to those blocks, which
  the kernels apply through the hub's n x n Schur complement: with P = (a_target/2) L (the
  blocks' kernel operands) and S_q^{-1}, S_q = I - sum_j P_hj P_jh,
      r = z_h + sum_j P_hj z_j,  s = S_q^{-1} r,  h_h = 2 s - z_h,  h_j = z_j + 2 P_jh s,
  k + m block products per step for k blocks in m stars (the Euler step's L h costs k). One star
  (every block touches one hub, as in the global workspace) is the Cayley map of K itself. Several
  stars are a splitting of the same skew generator: each factor is orthogonal in the metric
  N = M A^{-1} when L is M-skew (both blocks of a pair always sit in the same star), so the
  product never expands either and the certificate holds as for C; but the map is not C (it
  agrees with it to second order in K).
- "dense": the p*p blocks of C itself, from one dense [p*n, p*n] solve per call; each step then
  costs p*p block products.
With no feedback blocks C = I and both steps are the same; the Euler kernel runs.

`feedback_plan` reads L_index once into a FeedbackPlan of Python values: which form runs and,
for the stars, their hubs and blocks. The stars come from a greedy cover: the area with the
most links still uncovered is the next hub and takes all of them. cayley_form chooses the form:
"auto" (the cheaper by block products per step: k + 3m for the stars, p*p for dense), "exact"
(the Cayley map itself: one star if the topology is a star, else dense; the only choice before
the product of stars existed), "stars" or "dense". A model makes its plan when it is built (its
topology is fixed), so that `torch.compile(fullgraph=True)` never meets a read of the index;
without a plan the op reads the index on every call.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .plan import FeedbackPlan, feedback_plan
from .reference import cayley_map, dense_feedback


def kernel_operands(
    L_blocks: torch.Tensor, L_index: torch.Tensor, alpha: torch.Tensor, p: int, feedback_step: str,
    plan: Optional[FeedbackPlan] = None,
) -> Tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(step, blocks, index, S_inv) for the fused op; alpha is [p]. Without a plan the cayley
    step reads the index (feedback_plan, cayley_form "auto"); the euler step never does.

    The star step's index is [k, 4]: (target, source, star, hub) per block, and S_inv is
    [m, n, n], the inverse of every star's Schur complement."""
    n = L_blocks.shape[1]
    empty = L_blocks.new_zeros(0, 0, 0)
    if feedback_step == "euler" or L_blocks.shape[0] == 0:  # the kernel checks the index itself
        return "euler", L_blocks, L_index, empty
    if plan is None:
        plan = feedback_plan(L_index, p, feedback_step)
    if plan.step == "euler":
        return "euler", L_blocks, L_index, empty
    if plan.step == "star":
        P = L_blocks * (alpha[L_index[:, 0]] / 2)[:, None, None]
        eye = torch.eye(n, dtype=L_blocks.dtype, device=L_blocks.device)
        S = [eye - torch.bmm(P[list(s.hub_rows)], P[list(s.hub_cols)]).sum(0) if s.hub_rows else eye
             for s in plan.stars]
        star_of, hub_of = [0] * plan.num_blocks, [0] * plan.num_blocks
        for q, s in enumerate(plan.stars):
            for r in s.blocks:
                star_of[r], hub_of[r] = q, s.hub
        roles = torch.tensor([star_of, hub_of], dtype=L_index.dtype, device=L_index.device).T
        return "star", P, torch.cat([L_index, roles], 1), torch.linalg.inv(torch.stack(S))
    C = cayley_map(dense_feedback(L_blocks, L_index, p), alpha.repeat_interleave(n))
    blocks = C.view(p, n, p, n).permute(0, 2, 1, 3).reshape(p * p, n, n)
    ar = torch.arange(p, device=L_index.device)
    index = torch.stack([ar.repeat_interleave(p), ar.repeat(p)], 1)
    return "dense", blocks, index, empty
