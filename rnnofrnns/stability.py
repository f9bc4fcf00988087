"""Contraction certificates for RNNs of RNNs, computed from the weights, not assumed.

Continuous time. Each area's Jacobian is -I + W D (hopfield) or -I + D W (rate), D diagonal
with entries in [0, 1] (phi' for relu/tanh/identity). If A = |W| - I is Hurwitz there is a
positive diagonal P with P A + A^T P < 0, and then x^T P (-I + W D) x <= |x|^T P A |x|, so
every such Jacobian contracts in P at the rate of A. With M = blockdiag(P_1..P_p) and
feedback L = B - M^{-1} B^T M (skew in M: M L + L^T M = 0), the whole network contracts in
M at the slowest area's rate, whatever B is.

Discrete time. What runs is the Euler map h -> (1-a) h + a (...), whose Jacobian is
G = (1-a) I + a (W D + L). In the coordinates y = M^{1/2} x write W~ = M^{1/2} W M^{-1/2},
S = M^{1/2} L M^{-1/2} (skew-symmetric), kappa >= ||W~ D|| for all D, omega = ||S||, and c
the continuous rate, so sym(W~ D) <= (1 - c) I. Expanding G~^T G~ with X = (1-a) I + a W~ D:
  ||X||^2 <= (1-a)^2 + 2a(1-a)(1-c) + a^2 kappa^2,
  X^T S + S^T X = a (D W~^T S - S W~ D),  norm <= 2 a kappa omega,
so  ||G||_M^2 <= 1 - 2 a c (1-a) + a^2 ((kappa + omega)^2 - 1).
This is exact for pure skew feedback (W = 0: (1-a)^2 + a^2 omega^2, the eigenvalues
(1-a) +- i a omega of the SCIENCE notes). The plain triangle bound (1-a) + a (kappa + omega)
needs neither skewness nor c; the certificate uses the smaller of the two.

kappa is the largest ||W~_i||_2 of the areas (it bounds ||W~_i D|| and ||D W~_i|| for D in
[0, 1]); the rate c_i of an area is the larger of the Metzler rate of |W_i| - I and 1 - kappa_i
(both are lower bounds).

Per-area steps A = diag(a_i) (a_i = dt / tau_i). A L is skew in the metric N = M A^{-1}
(N A L = M L), and the update (1-A) + A W D is block diagonal, so in N:
  Euler:  ||G||_N <= max_i ((1-a_i) + a_i kappa_i) + ||N^{1/2} A L N^{-1/2}||  (triangle bound);
  Cayley: G = C ((1-A) + A W D) with C = (I - A L/2)^{-1} (I + A L/2) N-orthogonal, so
          ||G||_N <= max_i (1-a_i) + a_i kappa_i < 1 whatever the feedback.
With one alpha the metric N is M up to a constant; the Euler bound above is then the refined one.

Input-driven rates (the areas' rates a_{i,t} in [a_min, a_max], read from the input only; the
Cayley map keeps constant rates A): G_t = C X_t with X_t = (1 - A_t) + A_t W D block diagonal.
A block-diagonal operator's norm does not change when each block's metric is scaled, so
||X_t||_N = max_i ||X_{i,t}||_{M_i} <= max_i 1 - a_{i,t} (1 - kappa_i), and with C N-orthogonal
  ||G_t||_N <= max over a in {a_min, a_max} of max_i (1 - a) + a kappa_i   (at a_min when kappa < 1).
A gate that read the state, or a Cayley map whose rates changed in time, would break this.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Tuple

import torch

from .ops.modular_rnn.reference import dense_feedback

__all__ = [
    "Certificate",
    "sparse_contracting_block",
    "perron_root",
    "diagonal_metric",
    "area_rate",
    "negative_feedback",
    "areas_rate_and_kappa",
    "svd_areas_rate_and_kappa",
    "metric_on_common_scale",
    "discrete_step_bound",
    "feedback_norm_budget",
    "feedback_norm_bound",
    "rescaled_to_budget",
    "cayley_step_bound",
    "non_finite_tensors",
    "certify",
]


def perron_root(A: torch.Tensor) -> float:
    """Spectral radius of a square matrix (for |W| >= 0 it is the Perron root)."""
    if A.numel() == 0:
        return 0.0
    return float(torch.linalg.eigvals(A.detach().double().cpu()).abs().max())


def sparse_contracting_block(
    n: int,
    density: float,
    scale: float = 1.0,
    gamma: float = 0.9,
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """A sparse random zero-diagonal area matrix [n, n] with rho(|W|) = gamma < 1.

    Entries U(-scale, scale) on a random pattern of the given density (the diagonal stays
    zero), then rescaled so that the Perron root of |W| equals gamma. No rejection loop:
    a pattern without a cycle (rho = 0, e.g. n = 1) cannot be rescaled to gamma and is
    redrawn at most 16 times; after that it is returned as drawn (it contracts anyway).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 < float(density) <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    if not float(scale) > 0.0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    if not 0.0 < float(gamma) < 1.0:
        raise ValueError(f"gamma must be in (0, 1) for the area to contract, got {gamma!r}")
    dtype = dtype or torch.get_default_dtype()
    off_diag = ~torch.eye(n, dtype=torch.bool)
    for _ in range(16):
        mask = (torch.rand(n, n, generator=generator, dtype=torch.float64) < density) & off_diag
        W = (2 * torch.rand(n, n, generator=generator, dtype=torch.float64) - 1) * scale * mask
        rho = perron_root(W.abs())
        if rho > 1e-12:
            return (W * (gamma / rho)).to(dtype)
        if n == 1:
            break
    return W.to(dtype)


def _metric_closed_form(A: torch.Tensor) -> torch.Tensor:
    one = torch.ones(A.shape[0], dtype=A.dtype)
    x = torch.linalg.solve(A, -one)
    y = torch.linalg.solve(A.T, -one)
    return y / x


def _metric_perron(absW: torch.Tensor, rho: float) -> torch.Tensor:
    # Perron vectors of |W| + eps (positive, so both vectors are strictly positive). With
    # P = diag(y / x) the matrix P^{1/2} |W| P^{-1/2} has equal left and right Perron
    # vectors, so its spectral norm equals its Perron root: kappa = rho (+ eps).
    n = absW.shape[0]
    eps = 1e-3 * (1.0 - rho) / n
    E = absW + eps

    def perron_vector(X):
        vals, vecs = torch.linalg.eig(X)
        v = vecs[:, vals.real.argmax()].real
        return (v * v.sign().sum().sign()).abs().clamp_min(1e-300)

    return perron_vector(E.T) / perron_vector(E)


def diagonal_metric(W: torch.Tensor, method: str = "closed_form") -> Tuple[torch.Tensor, float]:
    """A positive diagonal metric p [n] for A = |W| - I, and the contraction rate in it.

    method="closed_form" (the standard result on Metzler matrices):
        x = -A^{-1} 1, y = -A^{-T} 1, p = y / x.
    method="perron": p = y / x with x, y the right and left Perron vectors of |W| (+ a tiny
        positive shift). This metric makes ||P^{1/2} |W| P^{-1/2}|| = rho(|W|) and gives the
        best rate 1 - rho(|W|); the models use it because it leaves the most room for
        feedback in the discrete-time certificate.
    The metric is scaled so that min(p) = 1 (then sym(P A) <= -rate P implies eigenvalues of
    sym(P A) below -rate). It is checked: the largest eigenvalue of P A + A^T P must be < 0.
    Raises ValueError if |W| - I is not Hurwitz (Perron root of |W| >= 1).
    """
    if not isinstance(W, torch.Tensor) or W.dim() != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be a square [n, n] tensor, got {getattr(W, 'shape', type(W).__name__)}")
    if method not in ("closed_form", "perron"):
        raise ValueError(f"method must be 'closed_form' or 'perron', got {method!r}")
    absW = W.detach().double().cpu().abs()
    n = absW.shape[0]
    rho = perron_root(absW)
    if not rho < 1.0:
        raise ValueError(f"|W| - I is not Hurwitz: the Perron root of |W| is {rho:.6g} >= 1, so no diagonal "
                         "metric makes this area contract")
    A = absW - torch.eye(n, dtype=torch.float64)
    p = _metric_closed_form(A) if method == "closed_form" else _metric_perron(absW, rho)
    if not (torch.isfinite(p).all() and (p > 0).all()):
        raise ValueError("the diagonal metric is not positive and finite: |W| - I is not Hurwitz")
    p = p / p.min()
    P = torch.diag(p)
    if not float(torch.linalg.eigvalsh(P @ A + A.T @ P).max()) < 0:
        raise ValueError("the diagonal metric failed its check: P A + A^T P is not negative definite")
    return p.to(W.dtype), area_rate(W, p)


def area_rate(W: torch.Tensor, p: torch.Tensor) -> float:
    """Contraction rate of every -I + W D (D in [0, 1]) in the metric diag(p), from A = |W| - I:
    c = -lambda_max(P^{-1/2} sym(P A) P^{-1/2}). Negative when the area does not contract in p."""
    absW = W.detach().double().cpu().abs()
    p = p.detach().double().cpu()
    if not (p > 0).all():
        return -math.inf
    A = absW - torch.eye(absW.shape[0], dtype=torch.float64)
    s = p.rsqrt()
    S = s[:, None] * (0.5 * (p[:, None] * A + (p[:, None] * A).T)) * s[None, :]
    return -float(torch.linalg.eigvalsh(S).max())


def _weighted_abs_norm(W: torch.Tensor, p: torch.Tensor) -> float:
    """|| P^{1/2} |W| P^{-1/2} ||_2: bounds || P^{1/2} W D P^{-1/2} || and || P^{1/2} D W P^{-1/2} ||
    for every diagonal D with entries in [0, 1]."""
    p = p.detach().double().cpu()
    X = p.sqrt()[:, None] * W.detach().double().cpu().abs() * p.rsqrt()[None, :]
    return float(torch.linalg.matrix_norm(X, ord=2))


def _weighted_norm(W: torch.Tensor, p: torch.Tensor) -> float:
    """|| P^{1/2} W P^{-1/2} ||_2 (at most the norm of the absolute values): bounds the same products."""
    p = p.detach().double().cpu()
    X = p.sqrt()[:, None] * W.detach().double().cpu() * p.rsqrt()[None, :]
    return float(torch.linalg.matrix_norm(X, ord=2))


def areas_rate_and_kappa(W: torch.Tensor, metric: torch.Tensor) -> Tuple[float, float]:
    """(rate, kappa) of fixed areas W [p, n, n] in their metrics [p, n]: the slowest area's
    Metzler rate (area_rate) and the largest ||P^{1/2} |W_i| P^{-1/2}||, which bounds
    ||P^{1/2} W_i D P^{-1/2}|| for every D in [0, 1]."""
    W, metric = W.detach().double().cpu(), metric.detach().double().cpu()
    rate = min(area_rate(W[i], metric[i]) for i in range(W.shape[0]))
    kappa = max(_weighted_abs_norm(W[i], metric[i]) for i in range(W.shape[0]))
    return rate, kappa


def svd_areas_rate_and_kappa(sigma_max: float) -> Tuple[float, float]:
    """(rate, kappa) of SVD areas, whatever they have learned: ||Phi W D Phi^{-1}|| <= sigma_max
    (kappa), so sym(Phi W D Phi^{-1}) <= sigma_max and the rate is 1 - sigma_max."""
    return 1.0 - float(sigma_max), float(sigma_max)


def metric_on_common_scale(metric: torch.Tensor) -> torch.Tensor:
    """metric / (its geometric mean), in float64. Scaling an area's metric by a number c > 0
    changes neither its rate nor the skewness of its feedback (c M L + L^T c M = 0), so
    `combine` puts every part's metric on this scale: the mirrored block of an inter-part pair
    is scaled by the ratio of two metrics, which would otherwise be as far from 1 as the
    parts' arbitrary metric scales are from each other."""
    m = metric.double()
    return m / m.log().mean().exp()


def feedback_norm_bound(B_blocks: torch.Tensor, index: torch.Tensor, metric: torch.Tensor, p: int) -> torch.Tensor:
    """Upper bound of omega = ||M^{1/2} L M^{-1/2}||_2 for L = negative_feedback(B_blocks, index,
    metric) (differentiable): the spectral norm of the symmetric p x p matrix of the blocks'
    norms (block (i, j) and its mirror have equal norms in M)."""
    st, ss = metric[index[:, 0]].sqrt(), metric[index[:, 1]].rsqrt()
    norms = torch.linalg.matrix_norm(st[:, :, None] * B_blocks * ss[:, None, :], ord=2)
    N = torch.zeros(p, p, dtype=norms.dtype, device=norms.device)
    N = N.index_put((index[:, 0], index[:, 1]), norms).index_put((index[:, 1], index[:, 0]), norms)
    return torch.linalg.matrix_norm(N, ord=2)


def rescaled_to_budget(L_blocks: torch.Tensor, budget: torch.Tensor, norm_bound: torch.Tensor) -> torch.Tensor:
    """The Euler guarantee: L scaled by min(1, budget / bound), so that its M-weighted norm
    stays within the budget (feedback_norm_budget times a margin)."""
    return L_blocks * torch.clamp(budget / (norm_bound + 1e-30), max=1.0)


def negative_feedback(B_blocks: torch.Tensor, index: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
    """Feedback blocks that are skew in M: L = B - M^{-1} B^T M on the connected pairs.

    B_blocks [m, n, n] are the parameter blocks at (target, source) = index[r]; the mirrored
    block at (source, target) is -M_src^{-1} B^T M_tgt. Returns L_blocks [2m, n, n] for
    L_index = rnnofrnns.topology.feedback_index(index) (parameter blocks first), so that
    M L + L^T M = 0 to rounding. metric: the diagonal of M as [p, n].
    """
    if B_blocks.dim() != 3 or B_blocks.shape[1] != B_blocks.shape[2]:
        raise ValueError(f"B_blocks must be [m, n, n], got shape {tuple(B_blocks.shape)}")
    if index.dim() != 2 or index.shape != (B_blocks.shape[0], 2):
        raise ValueError(f"index must be [m, 2] = [{B_blocks.shape[0]}, 2], got shape {tuple(index.shape)}")
    if metric.dim() != 2 or metric.shape[1] != B_blocks.shape[1]:
        raise ValueError(f"metric must be [p, n] with n = {B_blocks.shape[1]}, got shape {tuple(metric.shape)}")
    m_tgt = metric[index[:, 0]]  # [m, n]
    m_src = metric[index[:, 1]]
    mirror = -B_blocks.transpose(1, 2) * (m_tgt[:, None, :] / m_src[:, :, None])
    return torch.cat([B_blocks, mirror])


def cayley_step_bound(alphas: torch.Tensor, kappas: torch.Tensor) -> float:
    """Contraction factor of the Cayley step in the metric M A^{-1}: max_i (1-a_i) + a_i kappa_i."""
    a = alphas.double()
    return float(((1 - a) + a * kappas.double()).max())


def discrete_step_bound(alpha: float, rate: float, kappa: float, omega: float, skew: bool = True) -> float:
    """Sound upper bound of the Euler map's contraction factor ||G||_M (module docstring)."""
    triangle = (1 - alpha) + alpha * (kappa + omega)
    if not skew or rate <= 0:
        return triangle
    sq = 1 - 2 * alpha * rate * (1 - alpha) + alpha ** 2 * ((kappa + omega) ** 2 - 1)
    return min(triangle, math.sqrt(max(sq, 0.0)))


def feedback_norm_budget(alpha: float, rate: float, kappa: float) -> float:
    """Largest omega = ||M^{1/2} L M^{-1/2}|| for which the discrete bound stays below 1
    at step alpha (0 or negative: impossible even without feedback)."""
    if alpha >= 1.0:
        return 1.0 - kappa
    if rate <= 0:  # an area that does not contract leaves no room, whatever the feedback
        return -math.inf
    return math.sqrt(1.0 + 2.0 * rate * (1.0 - alpha) / alpha) - kappa


@dataclass
class Certificate:
    """Result of `certify`. `holds`: the continuous-time network contracts in `metric` at
    `rate` (every area contracts, feedback skew in M up to rounding). `discrete_holds`: the
    map that runs (`feedback_step`, with the model's alpha) contracts by the factor
    `step_factor` < 1 per step, in M (one alpha) or M A^{-1} (per-area alphas, `alphas`).
    `max_alpha`: the largest (uniform) step for which the discrete bound certifies contraction.
    `omega`: ||M^{1/2} L M^{-1/2}||, the feedback's strength (no limit under the cayley step)."""

    holds: bool
    rate: float
    metric: torch.Tensor
    worst_skew: float
    discrete_holds: bool
    step_factor: float
    max_alpha: float
    alpha: float
    kappa: float
    omega: float
    area_rates: torch.Tensor = field(repr=False)
    reason: str = ""  # why it fails, where that is not a number (non-finite weights)
    feedback_step: str = "euler"
    alphas: Optional[torch.Tensor] = field(default=None, repr=False)  # per-area steps, when not one alpha
    # input-driven rates: the range (a_min, a_max) of the areas' rates; alpha(s) are then the Cayley map's
    area_rate_range: Optional[Tuple[float, float]] = None

    def __str__(self) -> str:
        if self.reason:
            return f"Certificate(FAILS: {self.reason})"
        return (f"Certificate(continuous {'holds' if self.holds else 'FAILS'}: rate {self.rate:.4g}, "
                f"worst skew {self.worst_skew:.2e}; discrete {'holds' if self.discrete_holds else 'FAILS'}: "
                f"{self.feedback_step} step factor {self.step_factor:.4g} at alpha "
                f"{self.alpha:g}{' (largest of the areas)' if self.alphas is not None else ''}, "
                + (f"input-driven area rates in [{self.area_rate_range[0]:g}, {self.area_rate_range[1]:g}] "
                   "(metric M A^{-1}, A the map's rates), " if self.area_rate_range else "")
                + f"max alpha {self.max_alpha:.4g}; "
                f"kappa {self.kappa:.4g}, omega {self.omega:.4g})")


def non_finite_tensors(model: torch.nn.Module) -> List[str]:
    """The names of the floating parameters and buffers of `model` that hold a NaN or an
    infinity (a feedback_budget may be +inf: no budget needed). Checked before anything is
    derived from them: a norm or a factorisation of a non-finite matrix raises or means nothing."""
    tensors = [(name, t.detach()) for name, t in list(model.named_parameters()) + list(model.named_buffers())
               if t.is_floating_point() and t.numel()]

    def fine(name: str, t: torch.Tensor) -> torch.Tensor:
        if name.rsplit(".", 1)[-1] == "feedback_budget":  # inf: no budget needed (cayley, per-area alpha)
            return ~(torch.isnan(t) | (t < 0)).any()
        return torch.isfinite(t).all()

    if not tensors:
        return []
    ok = torch.stack([fine(name, t).to(tensors[0][1].device) for name, t in tensors])
    if bool(ok.all()):  # one synchronisation when all is well
        return []
    return [name for (name, _), good in zip(tensors, ok.tolist()) if not good]


def _non_finite_tensors(model: Any) -> Optional[Certificate]:
    """A failing certificate naming every parameter and buffer of `model` (an nn.Module) that
    holds a NaN or an infinity, or None when all are finite."""
    if not isinstance(model, torch.nn.Module):
        return None
    bad = non_finite_tensors(model)
    if not bad:
        return None
    rnn = getattr(model, "rnn", model)
    sizes = getattr(rnn, "area_sizes", ())
    p, n = len(sizes), max(sizes, default=0)
    return Certificate(
        holds=False, rate=math.nan, metric=torch.full((p, n), math.nan, dtype=torch.float64), worst_skew=math.nan,
        discrete_holds=False, step_factor=math.inf, max_alpha=0.0, alpha=math.nan, kappa=math.nan, omega=math.nan,
        area_rates=torch.full((p,), math.nan, dtype=torch.float64),
        reason=f"{', '.join(bad)} {'hold' if len(bad) > 1 else 'holds'} non-finite values",
        feedback_step=getattr(rnn, "feedback_step", "euler"))


def _cayley_discrete(alphas: Optional[torch.Tensor], a: float, rate: float, kappas: torch.Tensor, omega: float,
                     m: torch.Tensor, L: torch.Tensor, n: int, holds: bool) -> Tuple[float, float]:
    """(step factor, max alpha) of the Cayley step: cayley_step_bound in N = M A^{-1}. C is
    orthogonal in N only when L is skew in M: otherwise there is no discrete certificate."""
    p = kappas.numel()
    step = cayley_step_bound(alphas if alphas is not None else torch.full((p,), a), kappas) if holds else math.inf
    return step, 1.0 if (holds and float(kappas.max()) < 1) else 0.0


def _euler_discrete(alphas: Optional[torch.Tensor], a: float, rate: float, kappas: torch.Tensor, omega: float,
                    m: torch.Tensor, L: torch.Tensor, n: int, holds: bool) -> Tuple[float, float]:
    """(step factor, max alpha) of the Euler step: discrete_step_bound with one alpha, the
    triangle bound in N = M A^{-1} with per-area alphas (module docstring)."""
    kappa = float(kappas.max())
    if alphas is None:
        step = discrete_step_bound(a, rate, kappa, omega, skew=holds)
    else:
        au = alphas.repeat_interleave(n)
        nm = m / au
        SA = nm.sqrt()[:, None] * (au[:, None] * L) * nm.rsqrt()[None, :]
        omega_a = float(torch.linalg.matrix_norm(SA, ord=2)) if SA.numel() else 0.0
        step = cayley_step_bound(alphas, kappas) + omega_a if holds else math.inf
    if kappa + omega < 1:
        max_alpha = 1.0
    elif holds:
        max_alpha = min(1.0, 2 * rate / ((kappa + omega) ** 2 - 1 + 2 * rate))
    else:
        max_alpha = 0.0
    return step, max_alpha


# The discrete bound of each feedback step (the op's names), for certify.
DISCRETE_BOUNDS = {"euler": _euler_discrete, "cayley": _cayley_discrete}


def certify(model_or_matrices: Any, *, alpha: Optional[float] = None) -> Certificate:
    """Check contraction from the weights a model would actually use.

    Accepts a module with `certify_inputs()` (ModularRNN, SparseComboNet,
    GlobalWorkspaceNet) or a mapping with keys W [p, n, n], L_blocks [k, n, n], L_index [k, 2],
    metric [p, n] (the diagonal of M), alpha (a number or p per-area values) and feedback_step
    ("euler", the default, or "cayley"). Nothing is recomputed from a recipe: the given metric
    and feedback are tested as they are.
    """
    if hasattr(model_or_matrices, "certify_inputs"):
        failed = _non_finite_tensors(model_or_matrices)
        if failed is not None:
            return failed
        inputs = dict(model_or_matrices.certify_inputs())
    elif isinstance(model_or_matrices, Mapping):
        inputs = dict(model_or_matrices)
    else:
        raise TypeError("certify takes a model with certify_inputs() or a mapping with W, L_blocks, L_index, "
                        f"metric and alpha; got {type(model_or_matrices).__name__}")
    missing = {"W", "L_blocks", "L_index", "metric"} - set(inputs)
    if missing:
        raise ValueError(f"certify: missing {sorted(missing)}")
    step_kind = inputs.get("feedback_step", "euler")
    if step_kind not in DISCRETE_BOUNDS:
        raise ValueError(f"feedback_step must be 'euler' or 'cayley', got {step_kind!r}")
    rate_range = inputs.get("area_rate_range")
    if rate_range is not None:
        lo, hi = (float(v) for v in rate_range)
        if step_kind != "cayley" or not 0.0 < lo <= hi <= 1.0:
            raise ValueError("area_rate_range (input-driven rates) must be (a_min, a_max) with 0 < a_min <= a_max <= 1 "
                             f"and the cayley step, got {rate_range!r} with {step_kind!r}")
    raw = alpha if alpha is not None else inputs.get("alpha", 1.0)
    p_areas = inputs["W"].shape[0]
    if isinstance(raw, torch.Tensor) and raw.numel() > 1:
        alphas: Optional[torch.Tensor] = raw.detach().double().cpu().reshape(-1)
        if alphas.numel() != p_areas:
            raise ValueError(f"alpha must be a number or p = {p_areas} per-area values, got {alphas.numel()}")
    elif isinstance(raw, (tuple, list)):
        alphas = torch.tensor(raw, dtype=torch.float64)
    else:
        alphas = None
    if alphas is not None and bool((alphas == alphas[0]).all()):
        raw, alphas = float(alphas[0]), None
    a = float(alphas.max()) if alphas is not None else float(raw)
    if not 0.0 < a <= 1.0 or (alphas is not None and not bool((alphas > 0).all())):
        raise ValueError(f"alpha must be in (0, 1], got {raw}")
    with torch.no_grad():
        W = inputs["W"].detach().double().cpu()
        Lb = inputs["L_blocks"].detach().double().cpu()
        idx = inputs["L_index"].detach().cpu()
        metric = inputs["metric"].detach().double().cpu()
        p, n, _ = W.shape
        if tuple(metric.shape) != (p, n):
            raise ValueError(f"metric must be [p, n] = [{p}, {n}], got {tuple(metric.shape)}")
        bad = [name for name, t in (("W", W), ("L_blocks", Lb), ("metric", metric)) if not torch.isfinite(t).all()]
        if bad:  # no eigenvalue or norm of a NaN matrix means anything: the certificate fails
            return Certificate(
                holds=False, rate=math.nan, metric=metric.to(inputs["metric"].dtype), worst_skew=math.nan,
                discrete_holds=False, step_factor=math.inf, max_alpha=0.0, alpha=a, kappa=math.nan, omega=math.nan,
                area_rates=torch.full((p,), math.nan, dtype=torch.float64),
                reason=f"{' and '.join(bad)} {'hold' if len(bad) > 1 else 'holds'} non-finite values",
                feedback_step=step_kind, alphas=alphas)
        if (metric > 0).all():
            kappas = torch.tensor([_weighted_norm(W[i], metric[i]) for i in range(p)], dtype=torch.float64)
        else:
            kappas = torch.full((p,), math.inf, dtype=torch.float64)
        rates = torch.tensor([max(area_rate(W[i], metric[i]), 1.0 - float(kappas[i])) for i in range(p)],
                             dtype=torch.float64)
        rate = float(rates.min())
        kappa = float(kappas.max())
        m = metric.reshape(-1)
        L = dense_feedback(Lb, idx, p)
        ML = m[:, None] * L
        skew = ML + ML.T
        worst_skew = float(skew.abs().max()) if skew.numel() else 0.0
        scale = float(ML.abs().max()) if ML.numel() else 0.0
        eps = torch.finfo(inputs["L_blocks"].dtype).eps if inputs["L_blocks"].is_floating_point() else 1e-16
        skew_ok = worst_skew <= 64 * eps * max(scale, 1e-30)
        holds = bool(rate > 0 and skew_ok)
        if (metric > 0).all():
            S = m.sqrt()[:, None] * L * m.rsqrt()[None, :]
            omega = float(torch.linalg.matrix_norm(S, ord=2)) if S.numel() else 0.0
        else:
            omega = math.inf
        step, max_alpha = DISCRETE_BOUNDS[step_kind](alphas, a, rate, kappas, omega, m, L, n, holds)
        if rate_range is not None and holds:  # the areas' rates anywhere in [a_min, a_max]
            step = max(cayley_step_bound(torch.full((p,), v, dtype=torch.float64), kappas) for v in (lo, hi))
    return Certificate(
        holds=holds, rate=rate, metric=metric.to(inputs["metric"].dtype), worst_skew=worst_skew,
        discrete_holds=bool(step < 1.0), step_factor=step, max_alpha=max_alpha, alpha=a,
        kappa=kappa, omega=omega, area_rates=rates, feedback_step=step_kind, alphas=alphas,
        area_rate_range=(lo, hi) if rate_range is not None else None,
    )
