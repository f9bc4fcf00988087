"""Which areas talk to which: the connected pairs that the inter-area feedback uses.

Every function returns the connected pairs as an int64 tensor [m, 2], one row per
unordered pair (i, j), i != j. Negative feedback (rnnofrnns.stability.negative_feedback)
makes block (i, j) a parameter and derives the mirrored block (j, i) from it, so the op's
L_index is `feedback_index(pairs)` = the pairs followed by the same pairs reversed.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

Topology = Union[str, torch.Tensor, Sequence[Sequence[int]]]


def _check_p(p: int) -> int:
    if not isinstance(p, int) or isinstance(p, bool) or p < 1:
        raise ValueError(f"the number of areas must be a positive integer, got {p!r}")
    return p


def _pairs(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 2)


def all_to_all(p: int) -> torch.Tensor:
    """Every pair of areas: p (p-1) / 2 pairs (i, j) with i > j."""
    _check_p(p)
    return _pairs([(i, j) for i in range(p) for j in range(i)])


def global_workspace(p: int, workspace: int = -1) -> torch.Tensor:
    """A star through one area (by default the last): the workspace is linked to every
    other area and the other areas only to it. p - 1 pairs (workspace, j)."""
    _check_p(p)
    if not isinstance(workspace, int) or not -p <= workspace < p:
        raise ValueError(f"workspace must be an area index in [{-p}, {p - 1}], got {workspace!r}")
    w = workspace % p
    return _pairs([(w, j) for j in range(p) if j != w])


def random_topology(p: int, density: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Each unordered pair of areas kept independently with probability `density`."""
    _check_p(p)
    if not 0.0 <= float(density) <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density!r}")
    pairs = all_to_all(p)
    keep = torch.rand(len(pairs), generator=generator) < density
    return pairs[keep]


def random_pairs(p: int, count: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Exactly `count` unordered pairs of areas, drawn uniformly without replacement: a random
    topology with as many feedback blocks (trainable parameters) as another one."""
    _check_p(p)
    pairs = all_to_all(p)
    if not 0 <= int(count) <= len(pairs):
        raise ValueError(f"count must be in [0, {len(pairs)}] for {p} areas, got {count!r}")
    keep = torch.randperm(len(pairs), generator=generator)[: int(count)].sort().values
    return pairs[keep]


def from_adjacency(adjacency: torch.Tensor) -> torch.Tensor:
    """Pairs of a boolean [p, p] adjacency matrix (symmetrised: feedback is mutual; the
    diagonal is ignored)."""
    if not isinstance(adjacency, torch.Tensor) or adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1]:
        shape = tuple(adjacency.shape) if isinstance(adjacency, torch.Tensor) else type(adjacency).__name__
        raise ValueError(f"adjacency must be a square [p, p] tensor, got {shape}")
    a = adjacency.bool().cpu()
    a = a | a.T
    i, j = torch.nonzero(torch.tril(a, diagonal=-1), as_tuple=True)
    return torch.stack([i, j], 1).to(torch.int64)


def resolve(topology: Topology, p: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Turn a topology spec into pairs: "all" (or "all_to_all"), "gw" (or
    "global_workspace", star through the last area), "none", "random:<density>" (each pair
    kept with that probability), "random-pairs:<count>" (exactly that many pairs), a boolean
    (or 0/1 float) [p, p] adjacency tensor, or explicit integer pairs [m, 2]."""
    _check_p(p)
    if isinstance(topology, str):
        name = topology.lower()
        if name in ("all", "all_to_all", "all-to-all"):
            return all_to_all(p)
        if name in ("gw", "global_workspace", "global-workspace", "star"):
            return global_workspace(p)
        if name == "none":
            return _pairs([])
        for prefix, kind, what, build in (("random-pairs:", int, "<count>' needs an integer", random_pairs),
                                          ("random:", float, "<density>' needs a number", random_topology)):
            if name.startswith(prefix):
                try:
                    value = kind(name[len(prefix):])
                except ValueError:
                    raise ValueError(f"topology '{prefix}{what}, got {topology!r}") from None
                return build(p, value, generator)
        raise ValueError(
            f"topology must be 'all', 'gw', 'none', 'random:<density>', 'random-pairs:<count>', a [p, p] adjacency "
            f"or [m, 2] pairs; "
            f"got {topology!r}"
        )
    t = torch.as_tensor(topology)
    if t.dtype == torch.bool or t.is_floating_point():  # an adjacency matrix
        if tuple(t.shape) != (p, p):
            raise ValueError(f"adjacency topology must be [{p}, {p}], got {tuple(t.shape)}")
        return from_adjacency(t)
    if t.numel() and (t.dim() != 2 or t.shape[1] != 2):
        raise ValueError(f"topology pairs must be [m, 2], got shape {tuple(t.shape)}")
    t = t.to(torch.int64).reshape(-1, 2)
    if t.numel():
        if (t < 0).any() or (t >= p).any():
            raise ValueError(f"topology pairs must index areas in [0, {p - 1}], got {t.tolist()}")
        if (t[:, 0] == t[:, 1]).any():
            raise ValueError(f"topology pairs must join two different areas, got {t.tolist()}")
        key = torch.maximum(t[:, 0], t[:, 1]) * p + torch.minimum(t[:, 0], t[:, 1])
        if torch.unique(key).numel() != len(t):
            raise ValueError(f"topology pairs must be unique unordered pairs, got {t.tolist()}")
    return t


def feedback_index(pairs: torch.Tensor) -> torch.Tensor:
    """The op's L_index for negative feedback on `pairs`: [2m, 2], parameter blocks first."""
    return torch.cat([pairs, pairs.flip(1)]).contiguous()


def block_mask(num_pairs: int, n: int, sparsity: float, generator: Optional[torch.Generator] = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Elementwise inter-area sparsity inside trainable blocks: [num_pairs, n, n] with entries
    exactly 0 or 1, each kept with probability 1 - sparsity (the published code used dropout,
    whose surviving entries were 1/(1-sparsity) instead of 1)."""
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return (torch.rand(num_pairs, n, n, generator=generator) >= sparsity).to(dtype)
