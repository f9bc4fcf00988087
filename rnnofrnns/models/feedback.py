"""Feedback steps: the discrete map that runs, and the bound that certifies it.

A feedback step is a small settings object. `op_name` is the fused op's `feedback_step=`
argument; `check_rates` says whether it can certify per-area rates; `budget` is the bound on
the feedback's M-weighted norm that the step needs (inf: none); `in_use` turns the skew
feedback L into the blocks the op runs with. The bounds themselves are in rnnofrnns.stability.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Type, Union

import torch
from torch import nn

from .. import stability


class FeedbackStep:
    """The interface of a feedback step (see the module docstring)."""

    op_name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # a few words, for the CLI's help
    guarantee: bool = True

    def check_rates(self, per_area: bool) -> None:
        """A ValueError when the step cannot certify per-area (or learned) rates."""

    def uses_budget(self, per_area: bool) -> bool:
        """Whether the feedback is bounded by a finite budget (net.feedback_budget)."""
        return False

    def budget(self, net: nn.Module) -> torch.Tensor:
        """The budget of ||M^{1/2} L M^{-1/2}|| the step needs (float64 scalar; inf: none)."""
        return torch.tensor(math.inf, dtype=torch.float64)

    def in_use(self, net: nn.Module, L: torch.Tensor) -> torch.Tensor:
        """The feedback blocks the op runs with, from the skew blocks L."""
        return L


@dataclass(frozen=True)
class EulerStep(FeedbackStep):
    """h_t = (1-a) h + a (F(h, u_t) + L h). With guarantee=True the feedback is rescaled, when
    needed, so that its M-weighted norm stays within `margin` times the budget that keeps this
    map contracting (stability.euler_feedback_budget); one alpha for all areas."""

    guarantee: bool = True
    margin: float = 0.95

    op_name: ClassVar[str] = "euler"
    summary: ClassVar[str] = "h + a (F + L h)"

    def __post_init__(self) -> None:
        if not 0.0 < float(self.margin) <= 1.0:
            raise ValueError(f"guarantee_margin must be in (0, 1], got {self.margin!r}")

    def check_rates(self, per_area):
        if self.guarantee and per_area:
            raise ValueError("per-area alpha (or learn_timescales=True) with guarantee=True needs "
                             "feedback_step='cayley'; the Euler step's feedback budget assumes one alpha")

    def uses_budget(self, per_area):
        return not per_area

    def budget(self, net):
        if net.per_area_alpha:
            return torch.tensor(math.inf, dtype=torch.float64)
        rate, kappa = net.areas.bounds(net)
        budget = stability.feedback_norm_budget(net.alpha, rate, kappa)
        if self.guarantee and not budget > 0:
            raise ValueError(
                f"guarantee=True cannot hold at alpha={net.alpha}: the areas alone have contraction rate {rate:.3g} "
                f"and weighted norm {kappa:.3g}, which leaves no room for feedback; lower alpha or gamma, "
                "or pass guarantee=False")
        return torch.tensor(self.margin * max(budget, 0.0), dtype=torch.float64)

    def in_use(self, net, L):
        if not (self.guarantee and L.shape[0]):
            return L
        return stability.rescaled_to_budget(L, net.feedback_budget, net.feedback_norm_bound())


@dataclass(frozen=True)
class CayleyStep(FeedbackStep):
    """h_t = C ((1-A) h + A F(h, u_t)), C = (I - A L/2)^{-1} (I + A L/2), orthogonal in the
    metric M A^{-1}: the step contracts by max_i (1-a_i) + a_i kappa_i whatever the feedback's
    strength (stability.cayley_step_bound), so nothing is rescaled, and per-area and learned
    rates are certified too."""

    op_name: ClassVar[str] = "cayley"
    summary: ClassVar[str] = "C ((1-a) h + a F), certified for any feedback"


FEEDBACK_STEP_KINDS: Dict[str, Type[FeedbackStep]] = {step.op_name: step for step in (EulerStep, CayleyStep)}


def feedback_step_of(feedback: Union[str, FeedbackStep], guarantee: Optional[bool] = None,
                     margin: Optional[float] = None) -> FeedbackStep:
    """The step of a name ("euler", "cayley") with the Euler step's guarantee and margin given as
    keywords (None: the defaults; the cayley step needs neither), or a FeedbackStep as it is."""
    if isinstance(feedback, FeedbackStep):
        if isinstance(feedback, EulerStep) and (guarantee is not None or margin is not None):
            raise ValueError("give guarantee and guarantee_margin to EulerStep(...), not as keywords beside it")
        return feedback
    if feedback not in FEEDBACK_STEP_KINDS:
        raise ValueError(f"feedback_step must be one of {tuple(FEEDBACK_STEP_KINDS)}, got {feedback!r} "
                         "(or a FeedbackStep object as feedback=)")
    if margin is not None and not 0.0 < float(margin) <= 1.0:
        raise ValueError(f"guarantee_margin must be in (0, 1], got {margin!r}")
    if FEEDBACK_STEP_KINDS[feedback] is EulerStep:
        return EulerStep(guarantee=True if guarantee is None else bool(guarantee),
                         margin=0.95 if margin is None else float(margin))
    return FEEDBACK_STEP_KINDS[feedback]()
