"""Random problems for the modular recurrence tests."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

FUSED_BACKENDS = ("cpu", "triton")


def device_for(backend: str) -> torch.device:
    if backend == "triton" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def gradcheck_steps(backend: str) -> Tuple[int, int]:
    """(T, B) of the float64 gradchecks: Triton in its interpreter (no GPU) costs 0.05-0.1 s a
    call and a gradcheck makes two calls per input element, so it runs 2 steps of one sequence
    there (the areas, blocks and h0 as on the other backends); elsewhere 3 steps of 2."""
    return (2, 1) if backend == "triton" and not torch.cuda.is_available() else (3, 2)


def star(p: int) -> List[Tuple[int, int]]:
    """Global-workspace star through the last area, both directions."""
    hub = p - 1
    return [(hub, j) for j in range(p - 1)] + [(j, hub) for j in range(p - 1)]


def all_to_all(p: int) -> List[Tuple[int, int]]:
    return [(i, j) for i in range(p) for j in range(p) if i != j]


@dataclass
class Problem:
    drive: torch.Tensor
    W: torch.Tensor
    L_blocks: torch.Tensor
    L_index: torch.Tensor
    h0: Optional[torch.Tensor]

    def args(self):
        return (self.drive, self.W, self.L_blocks, self.L_index, self.h0)

    def grad_inputs(self) -> List[torch.Tensor]:
        return [t for t in (self.drive, self.W, self.L_blocks, self.h0) if t is not None and t.requires_grad]


def make_problem(
    T: int, B: int, p: int, n: int, pairs: Sequence[Tuple[int, int]], *,
    dtype=torch.float64, device="cpu", h0: bool = True, requires_grad: bool = True,
    scale: float = 0.9, seed: int = 0,
) -> Problem:
    g = torch.Generator().manual_seed(seed)
    H = p * n

    def rnd(*shape, s=1.0):
        return (s * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device)

    drive = rnd(T, B, H)
    W = rnd(p, n, n, s=scale / n ** 0.5)
    k = len(pairs)
    L = rnd(k, n, n, s=0.5 * scale / (n * max(1, len(pairs) / max(p, 1))) ** 0.5)
    idx = torch.tensor(list(pairs), dtype=torch.int64, device=device).reshape(k, 2)
    h = rnd(B, H) if h0 else None
    if requires_grad:
        for t in (drive, W, L, h):
            if t is not None:
                t.requires_grad_(True)
    return Problem(drive, W, L, idx, h)
