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
