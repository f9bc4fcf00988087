"""The dense reference of the modular recurrence: the ground truth every backend is tested against."""
from __future__ import annotations

from typing import Optional, Union

import torch

from .._common import activation
from .plan import FeedbackPlan, feedback_plan as make_plan


def dense_feedback(L_blocks: torch.Tensor, L_index: torch.Tensor, p: int) -> torch.Tensor:
    """The dense [p*n, p*n] inter-area matrix with block r at (L_index[r, 0], L_index[r, 1])."""
    k, n, _ = L_blocks.shape
    dense = L_blocks.new_zeros(p, p, n, n).index_put((L_index[:, 0], L_index[:, 1]), L_blocks)
    return dense.permute(0, 2, 1, 3).reshape(p * n, p * n)


def unit_rates(alpha: Union[float, torch.Tensor], p: int, n: int) -> Union[float, torch.Tensor]:
    """alpha per unit: a number stays a number; p per-area values become [p*n]; rates per
    step [T, B, p] become [T, B, p*n]."""
    if isinstance(alpha, torch.Tensor) and alpha.dim() in (1, 3):
        return alpha.repeat_interleave(n, dim=-1)
    return float(alpha)


def cayley_map(Ld: torch.Tensor, a: Union[float, torch.Tensor]) -> torch.Tensor:
    """C = (I - A L/2)^{-1} (I + A L/2) for the dense feedback L and A = diag(a), by a dense solve."""
    eye = torch.eye(Ld.shape[0], dtype=Ld.dtype, device=Ld.device)
    K = (a[:, None] if isinstance(a, torch.Tensor) else a) * Ld / 2
    return torch.linalg.solve(eye - K, eye + K)


def cayley_product(L_blocks: torch.Tensor, L_index: torch.Tensor, p: int, a: Union[float, torch.Tensor],
                   plan: FeedbackPlan) -> torch.Tensor:
    """The map the plan runs, densely: C_{m-1} ... C_0 for a product of stars (C_q the Cayley
    map of star q's blocks alone), else the Cayley map of the whole feedback."""
    if plan.step != "star":
        return cayley_map(dense_feedback(L_blocks, L_index, p), a)
    C = None
    for star in plan.stars:
        rows = list(star.blocks)
        Cq = cayley_map(dense_feedback(L_blocks[rows], L_index[rows], p), a)
        C = Cq if C is None else Cq @ C
    return C


def modular_rnn_reference(
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
) -> torch.Tensor:
    """Materialise W (block diagonal) and L densely and loop over time in PyTorch.

    euler step:
      hopfield: h_t = (1-a) h_{t-1} + a (W phi(h_{t-1}) + L h_{t-1} + u_t)
      rate:     h_t = (1-a) h_{t-1} + a (phi(W h_{t-1} + u_t) + L h_{t-1})
    cayley step: z_t = the same without the L term, h_t = C z_t with
      C = (I - A L/2)^{-1} (I + A L/2), A = diag(feedback_alpha) (formed densely by
    torch.linalg.solve; feedback_alpha defaults to alpha), or the product of stars that
    feedback_plan names (cayley_product; default: feedback_plan(L_index, p, "cayley"), the
    plan the fused backends make).
    alpha (the areas' rates a) is a number, p per-area values or [T, B, p] values per step
    (input-driven timescales; then a_t scales the Euler step's L h as well, and the Cayley step
    needs feedback_alpha). Returns the states h_1..h_T, [T, B, p*n].
    Differentiable by autograd (alpha and feedback_alpha included).
    """
    phi = activation(nonlinearity)
    B, H = drive.shape[1:]
    p, n = W.shape[0], W.shape[1]
    a = unit_rates(alpha, p, n)
    per_step = isinstance(a, torch.Tensor) and a.dim() == 3
    Wd = torch.block_diag(*W)
    Ld = dense_feedback(L_blocks, L_index, p)
    if feedback_step == "cayley":
        fa = unit_rates(alpha if feedback_alpha is None else feedback_alpha, p, n)
        if isinstance(fa, torch.Tensor) and fa.dim() != 1:
            raise ValueError("the cayley step's rates are constant: give feedback_alpha (p values) with alpha per step")
        plan = make_plan(L_index, p, "cayley") if feedback_plan is None else feedback_plan
        C = cayley_product(L_blocks, L_index, p, fa, plan)
    elif feedback_step != "euler":
        raise ValueError(f"feedback_step must be 'euler' or 'cayley', got {feedback_step!r}")
    h = drive.new_zeros(B, H) if h0 is None else h0
    out = []
    # unbind once: indexing drive[t] per step would make autograd build a full-size
    # zero gradient per step (O(T^2) memory traffic in the backward pass)
    rates = a.unbind(0) if per_step else [a] * drive.shape[0]
    for u, a_t in zip(drive.unbind(0), rates):
        if form == "hopfield":
            z = (1 - a_t) * h + a_t * (phi(h) @ Wd.T + u)
        elif form == "rate":
            z = (1 - a_t) * h + a_t * phi(h @ Wd.T + u)
        else:
            raise ValueError(f"form must be 'rate' or 'hopfield', got {form!r}")
        h = z @ C.T if feedback_step == "cayley" else z + a_t * (h @ Ld.T)
        out.append(h)
    return torch.stack(out)
