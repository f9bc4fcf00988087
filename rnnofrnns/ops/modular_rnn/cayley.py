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

Which form runs, and the blocks the star's Schur complement reads, depend on the values of
L_index: `feedback_plan` reads them once into a FeedbackPlan of Python values. A model makes
its plan when it is built (its topology is fixed), so that `torch.compile(fullgraph=True)`
never meets a read of the index; without a plan the op reads the index on every call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from .checks import check_block_index
from .reference import cayley_map, dense_feedback


@dataclass(frozen=True)
class FeedbackPlan:
    """How the fused kernels apply the feedback of one block index (Python values only).

    step: "euler" (the Euler step, or no blocks), "star" or "dense" (the Cayley step's forms);
    num_areas, num_blocks: the p and k it was made for; hub: the star's hub (-1 otherwise);
    hub_rows, hub_cols: the blocks (hub, j) and (j, hub) of the areas j linked to the hub both
    ways, in the same order (the terms of the Schur complement S = I - sum_j P_hj P_jh).
    """

    step: str
    num_areas: int
    num_blocks: int
    hub: int = -1
    hub_rows: Tuple[int, ...] = ()
    hub_cols: Tuple[int, ...] = ()


def feedback_plan(L_index: torch.Tensor, p: int, feedback_step: str) -> FeedbackPlan:
    """The plan of L_index [k, 2] for p areas and feedback_step "euler" or "cayley". Reads the
    index (checked: in range, off the diagonal, no duplicates), so call it outside traced code."""
    k = int(L_index.shape[0])
    check_block_index(L_index, p)
    if feedback_step == "euler" or k == 0:
        return FeedbackPlan("euler", p, k)
    hub = star_hub(L_index, p)
    if hub is None:
        return FeedbackPlan("dense", p, k)
    tgt, src = L_index[:, 0].tolist(), L_index[:, 1].tolist()
    row = {s: r for r, (t, s) in enumerate(zip(tgt, src)) if t == hub}
    col = {t: r for r, (t, s) in enumerate(zip(tgt, src)) if s == hub}
    both = sorted(set(row) & set(col))
    return FeedbackPlan("star", p, k, hub, tuple(row[j] for j in both), tuple(col[j] for j in both))


def check_feedback_plan(plan: object, L_index: torch.Tensor, p: int, feedback_step: str) -> None:
    """A plan given to the op must be a FeedbackPlan made for this index, p and step. Its sizes
    are checked always; its values against the index only outside traced code (they read it)."""
    if not isinstance(plan, FeedbackPlan):
        raise TypeError(f"feedback_plan must be a FeedbackPlan (from feedback_plan(L_index, p, feedback_step)) "
                        f"or None, got {type(plan).__name__}")
    k = L_index.shape[0]
    wants_euler = feedback_step == "euler" or k == 0
    if (plan.num_areas, plan.num_blocks) != (p, k) or (plan.step == "euler") != wants_euler:
        raise ValueError(f"feedback_plan was made for {plan.num_blocks} blocks of {plan.num_areas} areas and the "
                         f"{plan.step} form, got L_index of {k} blocks, p = {p} and feedback_step={feedback_step!r}")
    if not torch.compiler.is_compiling() and plan != feedback_plan(L_index, p, feedback_step):
        raise ValueError("feedback_plan was made for another L_index (its blocks differ): make it again with "
                         "feedback_plan(L_index, p, feedback_step)")


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
    plan: Optional[FeedbackPlan] = None,
) -> Tuple[str, int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(step, hub, blocks, index, S_inv) for the fused op; alpha is [p]. Without a plan the
    cayley step reads the index (feedback_plan); the euler step never does."""
    n = L_blocks.shape[1]
    empty = L_blocks.new_zeros(0, 0)
    if feedback_step == "euler" or L_blocks.shape[0] == 0:  # the kernel checks the index itself
        return "euler", -1, L_blocks, L_index, empty
    if plan is None:
        plan = feedback_plan(L_index, p, feedback_step)
    if plan.step == "euler":
        return "euler", -1, L_blocks, L_index, empty
    if plan.step == "star":
        P = L_blocks * (alpha[L_index[:, 0]] / 2)[:, None, None]
        S = torch.eye(n, dtype=L_blocks.dtype, device=L_blocks.device)
        if plan.hub_rows:
            S = S - torch.bmm(P[list(plan.hub_rows)], P[list(plan.hub_cols)]).sum(0)
        return "star", plan.hub, P, L_index, torch.linalg.inv(S)
    C = cayley_map(dense_feedback(L_blocks, L_index, p), alpha.repeat_interleave(n))
    blocks = C.view(p, n, p, n).permute(0, 2, 1, 3).reshape(p * p, n, n)
    ar = torch.arange(p, device=L_index.device)
    index = torch.stack([ar.repeat_interleave(p), ar.repeat(p)], 1)
    return "dense", -1, blocks, index, empty
