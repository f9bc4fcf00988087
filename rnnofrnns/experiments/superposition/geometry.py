"""Geometry of temporal superposition in small RNNs (Sharma et al., ICLR 2026).

A feature seen s steps ago sits in the state along w_s = W_h^s W_x (linear recurrence).
For hidden size 2, theta is the angle by which one step of the recurrence turns a feature's
direction, and k*theta the total turn between a feature's entry (w_0) and its recall
(w_k), accumulated step by step (so it can exceed 180 degrees) and taken without sign
(mirror images are the same solution).
"""
from __future__ import annotations

from typing import Dict

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
