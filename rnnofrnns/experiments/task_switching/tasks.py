"""Tasks of the flexible task abstractions experiment (Sandbrink et al., NeurIPS 2024):
orthogonal linear teachers, the blocked curriculum and the two composition tasks."""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def teachers(
    d_in: int, d_out: int, num_teachers: int = 2, generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Orthogonal linear teachers [M, d_out, d_in]: the rows of a random rotation of the
    d_in x d_in identity, times 1/sqrt(d_in), split into M teachers of d_out rows each,
    so that all M * d_out teacher rows are mutually orthogonal (needs M * d_out <= d_in)."""
    for name, v in (("d_in", d_in), ("d_out", d_out), ("num_teachers", num_teachers)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if num_teachers * d_out > d_in:
        raise ValueError(f"num_teachers * d_out = {num_teachers} * {d_out} must be <= d_in = {d_in} "
                         "for mutually orthogonal teacher rows")
    q, r = torch.linalg.qr(torch.randn(d_in, d_in, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # a uniformly random rotation (Haar)
    rows = q[: num_teachers * d_out] / d_in ** 0.5
    return rows.reshape(num_teachers, d_out, d_in).to(dtype)


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
