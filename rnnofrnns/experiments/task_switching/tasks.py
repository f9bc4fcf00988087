"""Tasks of the flexible task abstractions experiment (Sandbrink et al., NeurIPS 2024):
orthogonal linear teachers, the blocked curriculum and the two composition tasks."""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def teachers(
    d_in: int, d_out: int, num_teachers: int = 2, generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32, overlap: float = 0.0,
) -> torch.Tensor:
    """Linear teachers [M, d_out, d_in] from the rows of a random rotation of the d_in x d_in
    identity, times 1/sqrt(d_in), split into M blocks Q_m of d_out rows (needs M * d_out <= d_in).
    overlap = 0: T_m = Q_m, all M * d_out teacher rows mutually orthogonal. overlap c in (0, 1]:
    T_0 = Q_0 and T_m = c Q_0 + sqrt(1 - c^2) Q_m for m > 0, so that row o of every later
    teacher has cosine c with row o of T_0 (c^2 between two later teachers), every row keeps
    its norm, and c = 1 makes all teachers one."""
    for name, v in (("d_in", d_in), ("d_out", d_out), ("num_teachers", num_teachers)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if num_teachers * d_out > d_in:
        raise ValueError(f"num_teachers * d_out = {num_teachers} * {d_out} must be <= d_in = {d_in} "
                         "for mutually orthogonal teacher rows")
    if not (isinstance(overlap, (int, float)) and 0.0 <= overlap <= 1.0):
        raise ValueError(f"overlap must be a cosine in [0, 1], got {overlap!r}")
    q, r = torch.linalg.qr(torch.randn(d_in, d_in, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # a uniformly random rotation (Haar)
    blocks = (q[: num_teachers * d_out] / d_in ** 0.5).reshape(num_teachers, d_out, d_in)
    if overlap > 0:
        mixed = overlap * blocks[0] + (1.0 - overlap ** 2) ** 0.5 * blocks[1:]
        blocks = torch.cat([blocks[:1], mixed])
    return blocks.to(dtype)


def blocked_curriculum(num_blocks: int, tasks: Sequence[int] = (0, 1)) -> list:
    """The task of each block: A, B, A, B, ... (cycling through `tasks`)."""
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks must be a positive integer, got {num_blocks!r}")
    if len(tasks) < 1:
        raise ValueError("tasks must name at least one teacher")
    return [tasks[i % len(tasks)] for i in range(num_blocks)]


def compose_mean(teacher_set: torch.Tensor, a: int = 0, b: int = 1) -> torch.Tensor:
    """Composition task 1: the mean of teachers a and b, (T_a + T_b) / 2."""
    return 0.5 * (teacher_set[a] + teacher_set[b])


def compose_rows(teacher_set: torch.Tensor, a: int = 0, b: int = 1, rows_from_a: Optional[int] = None) -> torch.Tensor:
    """Composition task 2: the first `rows_from_a` output rows from teacher a (default half),
    the rest from teacher b. Solving it by gates alone needs per-neuron gates."""
    d_out = teacher_set.shape[1]
    k = d_out // 2 if rows_from_a is None else rows_from_a
    if not 0 <= k <= d_out:
        raise ValueError(f"rows_from_a must be in [0, d_out] = [0, {d_out}], got {k}")
    return torch.cat([teacher_set[a, :k], teacher_set[b, k:]], dim=0)
