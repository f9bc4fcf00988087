"""Synthetic tasks: k-delay recall (temporal superposition, Sharma et al., ICLR 2026)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch


def delayed_recall(
    num_features: int,
    delay: int,
    feature_probability: float,
    seq_len: int,
    batch_size: int,
    importance: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
) -> Union[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """k-delay recall: x_t = Bernoulli(p) * U[0, 1] per feature and step, y_t = x_{t-k}.

    Returns (x, y), batch first [B, T, F]; y is zero for the first k steps (t <= k counting
    from 1). Sparsity is 1 - feature_probability. With `importance` ([F] weights for the
    loss) the weights are returned as a third element, broadcastable to [B, T, F].
    """
    for name, v in (("num_features", num_features), ("seq_len", seq_len), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not isinstance(delay, int) or not 0 <= delay < seq_len:
        raise ValueError(f"delay must be an integer in [0, seq_len) = [0, {seq_len}), got {delay!r}")
    if not 0.0 <= float(feature_probability) <= 1.0:
        raise ValueError(f"feature_probability must be in [0, 1], got {feature_probability!r}")
    shape = (batch_size, seq_len, num_features)
    on = torch.rand(shape, generator=generator, dtype=dtype) < feature_probability
    x = on * torch.rand(shape, generator=generator, dtype=dtype)
    y = torch.zeros_like(x)
    y[:, delay:] = x[:, : seq_len - delay]
    if importance is None:
        return x, y
    w = torch.as_tensor(importance, dtype=dtype)
    if w.shape != (num_features,):
        raise ValueError(f"importance must be [num_features] = [{num_features}], got {tuple(w.shape)}")
    return x, y, w


def ensemble_delayed_recall(
    feature_probabilities: Sequence[float],
    delays: Sequence[int],
    num_features: int,
    seq_len: int,
    batch_size: int,
    generators: Optional[Sequence[torch.Generator]] = None,
    dtype: torch.dtype = torch.float32,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One delayed-recall batch per instance, each with its own probability and delay:
    x, y of shape [I, B, T, F]. With one generator per instance, instance i's data do not
    depend on the other instances."""
    if len(feature_probabilities) != len(delays):
        raise ValueError(f"feature_probabilities and delays must have one entry per instance, got "
                         f"{len(feature_probabilities)} and {len(delays)}")
    gens = generators if generators is not None else [None] * len(delays)
    xs, ys = zip(*(delayed_recall(num_features, int(k), float(p), seq_len, batch_size, generator=g, dtype=dtype)
                   for p, k, g in zip(feature_probabilities, delays, gens)))
    return torch.stack(xs), torch.stack(ys)


# --- flexible task abstractions (Sandbrink et al., NeurIPS 2024) -------------------


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
