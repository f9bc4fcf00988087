"""How the fused kernels apply the feedback of one block index: the FeedbackPlan, made once
from the index's values (Python values only, so that traced code never reads the index).

The Cayley step runs as "dense" (the p*p blocks of C) or "star", a product of stars
C_{m-1} ... C_0 (see cayley.py). The stars come from a greedy cover of the topology's links:
the area with the most links not yet covered is the next hub and takes all of them (both
blocks of a pair always land in one star). One star (the global workspace's topology) is the
Cayley map itself; several are a splitting of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from .checks import check_block_index

CAYLEY_FORMS = ("auto", "exact", "stars", "dense")


@dataclass(frozen=True)
class StarFactor:
    """One star of the product: its hub area, every block it holds (rows of L_index, all
    touching the hub), and the blocks (hub, j) and (j, hub) of the leaves j linked both ways, in
    the same order (the terms of its Schur complement S = I - sum_j P_hj P_jh)."""

    hub: int
    blocks: Tuple[int, ...]
    hub_rows: Tuple[int, ...] = ()
    hub_cols: Tuple[int, ...] = ()


@dataclass(frozen=True)
class FeedbackPlan:
    """How the fused kernels apply the feedback of one block index (Python values only).

    step: "euler" (the Euler step, or no blocks), "star" (a product of the stars in `stars`,
    applied in order) or "dense" (the Cayley map's p*p blocks); num_areas, num_blocks: the p and
    k it was made for; cayley_form: the form asked for ("auto", "exact", "stars" or "dense").
    """

    step: str
    num_areas: int
    num_blocks: int
    cayley_form: str = "auto"
    stars: Tuple[StarFactor, ...] = ()

    @property
    def hub(self) -> int:
        """The hub of a single star (the Cayley map itself), else -1."""
        return self.stars[0].hub if len(self.stars) == 1 else -1

    @property
    def exact(self) -> bool:
        """Whether the map that runs is the Cayley map of the whole feedback (no splitting)."""
        return len(self.stars) <= 1


def star_cover(L_index: torch.Tensor, p: int) -> Tuple[StarFactor, ...]:
    """The stars of the greedy cover of L_index's links (reads the index): repeatedly the area
    with the most uncovered links (the lowest index on a tie) becomes a hub and takes them."""
    pairs: List[List[int]] = L_index.tolist()
    links: Dict[Tuple[int, int], List[int]] = {}
    for r, (tgt, src) in enumerate(pairs):
        links.setdefault((min(tgt, src), max(tgt, src)), []).append(r)
    stars = []
    while links:
        degree = [0] * p
        for a, b in links:
            degree[a] += 1
            degree[b] += 1
        hub = max(range(p), key=lambda i: (degree[i], -i))
        mine = sorted(key for key in links if hub in key)
        blocks = tuple(r for key in mine for r in links.pop(key))
        row = {pairs[r][1]: r for r in blocks if pairs[r][0] == hub}
        col = {pairs[r][0]: r for r in blocks if pairs[r][1] == hub}
        both = sorted(set(row) & set(col))
        stars.append(StarFactor(hub, blocks, tuple(row[j] for j in both), tuple(col[j] for j in both)))
    return tuple(stars)


def stars_cost(stars: Tuple[StarFactor, ...]) -> int:
    """Block products per step of the product of stars, with each star's own passes over its
    hub counted as two more: k + 3m."""
    return sum(len(s.blocks) + 3 for s in stars)


def feedback_plan(L_index: torch.Tensor, p: int, feedback_step: str, cayley_form: str = "auto") -> FeedbackPlan:
    """The plan of L_index [k, 2] for p areas and feedback_step "euler" or "cayley". Reads the
    index (checked: in range, off the diagonal, no duplicates), so call it outside traced code.

    cayley_form: "auto" (the product of stars when it costs fewer block products per step than
    the dense map, k + 3m < p*p, or is a single star), "exact" (one star if every block touches
    one hub, else dense: the Cayley map itself), "stars" or "dense"."""
    if cayley_form not in CAYLEY_FORMS:
        raise ValueError(f"cayley_form must be one of {CAYLEY_FORMS}, got {cayley_form!r}")
    k = int(L_index.shape[0])
    check_block_index(L_index, p)
    if feedback_step == "euler" or k == 0:
        return FeedbackPlan("euler", p, k, cayley_form)
    stars = star_cover(L_index, p)
    single = len(stars) == 1
    if cayley_form == "stars" or single and cayley_form != "dense" or (
            cayley_form == "auto" and stars_cost(stars) < p * p):
        return FeedbackPlan("star", p, k, cayley_form, stars)
    return FeedbackPlan("dense", p, k, cayley_form)


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
    if not torch.compiler.is_compiling() and plan != feedback_plan(L_index, p, feedback_step, plan.cayley_form):
        raise ValueError("feedback_plan was made for another L_index (its blocks differ): make it again with "
                         "feedback_plan(L_index, p, feedback_step)")


def star_hub(L_index: torch.Tensor, p: int) -> Optional[int]:
    """The area that every block touches (as target or source), or None. Reads the index."""
    stars = star_cover(L_index, p)
    return stars[0].hub if len(stars) == 1 else None
