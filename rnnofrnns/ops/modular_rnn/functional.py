"""`modular_rnn`: the public entry point; checks arguments and dispatches to a backend."""
from __future__ import annotations

from typing import Optional, Union

import torch

from .._backend import implementation
from . import backends  # noqa: F401  (registers the backends)
from .plan import FeedbackPlan, check_feedback_plan
from .checks import check_modular_rnn_args


FEEDBACK_STEPS = ("euler", "cayley")


def modular_rnn(
    drive: torch.Tensor,
    W: torch.Tensor,
    L_blocks: torch.Tensor,
    L_index: torch.Tensor,
    h0: Optional[torch.Tensor] = None,
    *,
    alpha: Union[float, torch.Tensor] = 1.0,
    nonlinearity: str = "tanh",
    form: str = "rate",
    feedback_step: str = "euler",
    feedback_alpha: Union[float, torch.Tensor, None] = None,
    feedback_plan: Optional[FeedbackPlan] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Run the modular recurrence over all T steps and return the states h_1..h_T.

    Args:
        drive: [T, B, p*n] projected input u_t for every step.
        W: [p, n, n] intra-area blocks (the block-diagonal matrix).
        L_blocks: [k, n, n] inter-area blocks; k may be 0.
        L_index: int64 [k, 2]; block r sits at (target area, source area) = L_index[r].
        h0: [B, p*n] initial state, or None for zeros.
        alpha: the areas' step a = dt/tau in (0, 1]: a number, a tensor of p per-area values
            (alpha_i = dt/tau_i), or [T, B, p] values per step, row and area (input-driven
            timescales, e.g. a_min + (a_max - a_min) sigmoid(G x_t + c)); differentiable.
        nonlinearity: "relu", "tanh" or "identity".
        form: "rate": F = phi(W h + u_t); "hopfield": F = W phi(h) + u_t.
        feedback_step: "euler": h_t = (1-a) h + a (F + L h);
            "cayley": h_t = C ((1-a) h + a F) with C = (I - A L/2)^{-1} (I + A L/2),
            A = diag(feedback_alpha): M A^{-1}-orthogonal when L is M-skew, so the feedback
            never expands.
        feedback_alpha: the cayley map's rates (a number or p per-area values; default alpha,
            required when alpha is per step). Not used by the euler step, where a scales L h.
        feedback_plan: `feedback_plan(L_index, p, feedback_step)`, made once for a fixed
            topology: the cayley step then never reads L_index's values, so
            `torch.compile(..., fullgraph=True)` traces it (checked against the index outside
            traced code). None: the cayley step reads the index on every call.
        backend: "reference", "cpu", "triton" or None (RNNOFRNNS_BACKEND, else "cpu"
            for CPU tensors and "triton" for CUDA tensors).

    Returns:
        states [T, B, p*n] (empty for B = 0). Differentiable in drive, W, L_blocks, h0, alpha and
        feedback_alpha.
    """
    if feedback_step not in FEEDBACK_STEPS:
        raise ValueError(f"feedback_step must be one of {FEEDBACK_STEPS}, got {feedback_step!r}")
    check_modular_rnn_args(drive, W, L_blocks, L_index, h0, alpha, nonlinearity, form, feedback_step, feedback_alpha)
    if feedback_plan is not None:
        check_feedback_plan(feedback_plan, L_index, W.shape[0], feedback_step)
    run = implementation("modular_rnn", backend, drive.device)
    if drive.shape[1] == 0:  # an empty batch: empty states, still tied to the drive's graph
        return drive.clone()
    return run(drive, W, L_blocks, L_index, h0, alpha, nonlinearity, form, feedback_step, feedback_alpha,
               feedback_plan)
