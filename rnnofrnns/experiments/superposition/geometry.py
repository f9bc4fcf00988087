"""Geometry of temporal superposition in small RNNs (Sharma et al., ICLR 2026).

A feature seen s steps ago sits in the state along w_s = W_h^s W_x (linear recurrence).
For hidden size 2, theta is the angle by which one step of the recurrence turns a feature's
direction, and k*theta the total turn between a feature's entry (w_0) and its recall
(w_k), accumulated step by step (so it can exceed 180 degrees) and taken without sign
(mirror images are the same solution).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch


def feature_directions(W_x: torch.Tensor, W_h: torch.Tensor, max_delay: int) -> torch.Tensor:
    """w_s = W_h^s W_x for s = 0..max_delay: [max_delay + 1, F, n] (one direction per feature).
    Batched over leading instance dimensions: W_x [..., n, F], W_h [..., n, n] -> [..., S, F, n]."""
    out = []
    w = W_x
    for _ in range(max_delay + 1):
        out.append(w.transpose(-1, -2))
        w = W_h @ w
    return torch.stack(out, dim=-3)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def angles_between_features(directions: torch.Tensor) -> torch.Tensor:
    """Angles (degrees) between the features at each delay: [..., S, F, F]."""
    d = directions
    return torch.rad2deg(torch.acos(_cos(d[..., :, None, :], d[..., None, :, :]).clamp(-1, 1)))


def angles_between_delays(directions: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) of each feature between delay 0 and delay s: [..., S, F]."""
    return torch.rad2deg(torch.acos(_cos(directions, directions[..., :1, :, :]).clamp(-1, 1)))


def interference(directions: torch.Tensor, delay: int) -> torch.Tensor:
    """Mean |cos| between each feature's direction at the recalled delay and every other
    (feature, delay) direction up to it: 0 when the recalled item is interference-free."""
    target = directions[..., delay, :, :]                       # [..., F, n]
    others = directions[..., : delay + 1, :, :]                 # [..., S, F, n]
    c = _cos(target[..., None, :, None, :], others[..., :, None, :, :]).abs()  # [..., S, F(target), F(other)]
    S, F = c.shape[-3], c.shape[-1]
    mask = torch.ones(S, F, F, dtype=torch.bool, device=c.device)
    mask[delay, torch.arange(F), torch.arange(F)] = False
    return (c * mask).sum((-3, -2, -1)) / mask.sum()


def spectral_radius(W_h: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvals(W_h.double()).abs().amax(-1)


def rotation_angle(W_h: torch.Tensor) -> torch.Tensor:
    """|arg| (degrees, in [0, 180]) of the eigenvalue of W_h with the largest modulus."""
    ev = torch.linalg.eigvals(W_h.double())
    top = ev.gather(-1, ev.abs().argmax(-1, keepdim=True)).squeeze(-1)
    return torch.rad2deg(torch.atan2(top.imag, top.real).abs())


def total_rotation(directions: torch.Tensor, delay: int) -> torch.Tensor:
    """k*theta for hidden size 2 (degrees, in [0, 360)): the signed turns from w_s to w_{s+1},
    summed over s < delay, averaged over the features, absolute value."""
    if directions.shape[-1] != 2:
        raise ValueError(f"total_rotation needs hidden size 2, got {directions.shape[-1]}")
    a, b = directions[..., :delay, :, :], directions[..., 1:delay + 1, :, :]
    cross = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    dot = (a * b).sum(-1)
    turn = torch.rad2deg(torch.atan2(cross, dot)).sum(-2)    # [..., F]
    return turn.mean(-1).abs() % 360.0


def summary(W_x: torch.Tensor, W_h: torch.Tensor, delay: int) -> Dict[str, torch.Tensor]:
    """Per instance: k*theta (degrees; hidden size 2 only), spectral radius, interference."""
    d = feature_directions(W_x.double(), W_h.double(), delay)
    out = dict(spectral_radius=spectral_radius(W_h), interference=interference(d, delay))
    if W_h.shape[-1] == 2:
        out["k_theta"] = total_rotation(d, delay)
    return out


def linear_loss_decomposition(W_x: torch.Tensor, W_h: torch.Tensor, W_y: torch.Tensor, b: torch.Tensor, delay: int,
                              feature_probability: float, seq_len: int,
                              importance: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """The expected loss of the linear variant (h_t = W_x x_t + W_h h_{t-1}, h_{-1} = 0, output
    W_y^T h_t + b) on k-delay recall, exactly, from its weights, in four parts.

    With A_s = W_y^T W_h^s W_x (how output f reads input g seen s steps ago), the error of output
    f at step t is sum_{s<=t, g} c_s[f, g] x_{t-s, g} + b_f with c = A - (the target: 1 at s = k,
    g = f, from t = k on). Inputs are independent with mean mu = p/2 and variance
    v = p/3 - p^2/4 (x = Bernoulli(p) U[0, 1]), so its expected square is
        v (A_k[f, f] - 1)^2                      recall: what the net does not give back
      + v sum_{s != k} A_s[f, f]^2               temporal interference: feature f at other delays
      + v sum_{s, g != f} A_s[f, g]^2            spatial interference: the other features
      + (mu sum_{s, g} c_s[f, g] + b_f)^2         mean: what the bias does not correct
    (before step k the whole A enters the interference terms). Each part is averaged over the
    seq_len steps and the features (weighted by importance, as the loss): the parts sum to the
    expected training loss. This split is derived here; the paper names a four-term
    decomposition whose definitions were not available to this package."""
    F = W_x.shape[-1]
    A = torch.stack([W_y.T @ w.T for w in feature_directions(W_x, W_h, seq_len - 1)]).double()  # [S, F, F]
    bb = b.double()
    mu, var = feature_probability / 2, feature_probability / 3 - feature_probability ** 2 / 4
    eye = torch.eye(F, dtype=torch.float64)
    weight = torch.ones(F, dtype=torch.float64) if importance is None else importance.double()
    parts = dict(recall=0.0, temporal_interference=0.0, spatial_interference=0.0, mean=0.0)
    sq = A.square()
    diag_sq = torch.diagonal(sq, dim1=1, dim2=2)  # [S, F]
    for t in range(seq_len):
        recalls = t >= delay
        c = A[: t + 1].clone()
        if recalls:
            c[delay] -= eye
        recall = var * (A[delay].diagonal() - 1).square() if recalls else torch.zeros(F, dtype=torch.float64)
        same = diag_sq[: t + 1].sum(0) - (diag_sq[delay] if recalls else 0)
        other = sq[: t + 1].sum((0, 2)) - diag_sq[: t + 1].sum(0)
        mean = (mu * c.sum((0, 2)) + bb).square()
        for name, value in (("recall", recall), ("temporal_interference", var * same),
                            ("spatial_interference", var * other), ("mean", mean)):
            parts[name] += float((weight * value).sum()) / (seq_len * F)
    parts["total"] = sum(parts.values())
    return parts
