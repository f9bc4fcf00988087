"""Contenders that are not part of the package: a per-step PyTorch loop over the blocks."""
from __future__ import annotations

import torch


def modular_rnn_bmm_loop(drive, W, L_blocks, L_index, h0=None, *, alpha=1.0, nonlinearity="tanh", form="rate"):
    """One PyTorch step per time step: bmm over the p intra-area blocks and the k
    inter-area blocks (gather sources, bmm, index_add into targets)."""
    phi = {"relu": torch.relu, "tanh": torch.tanh, "identity": lambda x: x}[nonlinearity]
    T, B, H = drive.shape
    p, n, _ = W.shape
    tgt, src = L_index[:, 0], L_index[:, 1]
    Wt, Lt = W.transpose(1, 2), L_blocks.transpose(1, 2)
    h = drive.new_zeros(p, B, n) if h0 is None else h0.view(B, p, n).transpose(0, 1)
    out = []
    for u in drive.view(T, B, p, n).transpose(1, 2).unbind(0):  # u: [p, B, n]
        fb = torch.zeros_like(h).index_add_(0, tgt, torch.bmm(h[src], Lt))
        if form == "hopfield":
            h = (1 - alpha) * h + alpha * (torch.bmm(phi(h), Wt) + fb + u)
        else:
            h = (1 - alpha) * h + alpha * (phi(torch.bmm(h, Wt) + u) + fb)
        out.append(h)
    return torch.stack(out).transpose(1, 2).reshape(T, B, H)
