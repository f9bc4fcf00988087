"""Long sequences in segments: memory that does not grow with the sequence.

A classifier's forward runs its recurrent network over K steps at a time, carrying the state
from one segment to the next, and pools each segment's states into the readout as it goes
(readouts.py: `pool` and `head`). With recomputation only the state at the start of each
segment is kept for the backward ([B, hidden] per segment, through
torch.utils.checkpoint); the backward runs each segment's forward again, one segment at a time,
and then its backward. The peak memory of a training step then grows as T/K + c K instead of
c T (c: the [T, B, hidden]-sized tensors a step's backward keeps per step, about 8 for the
certified default), at the cost of one more forward.

The gradients are bitwise those of the same segments kept in memory (recompute=False), which
runs the same operations in the same order; against one pass over the whole sequence they
differ by rounding only (the weight gradients are summed per segment, the pooled readout per
segment).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

RecomputeEvery = Union[None, int, str]
# [T, B, hidden]-sized values a training step of the certified default keeps per step and
# unit (measured: bench/ops/recompute.py); the estimate of segment_length_for_budget
STEP_VALUES_PER_UNIT = 10


def check_recompute(recompute_every: RecomputeEvery, memory_budget_gb: Optional[float]) -> None:
    """A one-line ValueError naming the argument that cannot work."""
    if recompute_every is not None and recompute_every != "auto" and (
            not isinstance(recompute_every, int) or isinstance(recompute_every, bool) or recompute_every < 1):
        raise ValueError(f"recompute_every must be None, a positive number of steps or 'auto', got {recompute_every!r}")
    if memory_budget_gb is not None and (isinstance(memory_budget_gb, bool) or not isinstance(memory_budget_gb, (int, float))
                                         or not math.isfinite(memory_budget_gb) or memory_budget_gb <= 0):
        raise ValueError(f"memory_budget_gb must be a positive number of GB, got {memory_budget_gb!r}")
    if recompute_every == "auto" and memory_budget_gb is None:
        raise ValueError("recompute_every='auto' needs memory_budget_gb (the GB a training step's states may take)")


def segment_length_for_budget(steps: int, batch: int, hidden: int, bytes_per_value: int, budget_bytes: float) -> int:
    """The longest segment K whose estimated step memory, (ceil(T/K) + c K) B hidden values,
    fits the budget (c = STEP_VALUES_PER_UNIT): the fewest segments, so the least overhead.
    K = T when the whole sequence fits; a ValueError when no K does."""
    unit = float(batch) * hidden * bytes_per_value

    def need(k: int) -> float:
        return (math.ceil(steps / k) + STEP_VALUES_PER_UNIT * k) * unit

    if need(steps) <= budget_bytes:
        return steps
    best = max(1, min(steps, round(math.sqrt(steps / STEP_VALUES_PER_UNIT))))  # the smallest need
    if need(best) > budget_bytes:
        raise ValueError(f"memory_budget_gb={budget_bytes / 1e9:g} is below the least a step over T={steps}, B={batch} "
                         f"needs (about {need(best) / 1e9:.3g} GB at recompute_every={best}); raise it or lower "
                         "the batch size")
    lo, hi = best, steps  # need grows from best to steps: the last K that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if need(mid) <= budget_bytes else (lo, mid - 1)
    return lo


def segmented_forward(rnn: nn.Module, readout: nn.Module, x: torch.Tensor, h0: Optional[torch.Tensor],
                      segment_length: int, recompute: bool = True) -> torch.Tensor:
    """readout.head(sum of readout.pool over segments) for rnn called on K = segment_length steps
    at a time (rnn(x, h0) -> (output, h_n), its h_n the next segment's h0; batch_first read from
    the rnn). recompute: keep only each segment's starting state for the backward."""
    if not (hasattr(readout, "pool") and hasattr(readout, "head")):
        raise ValueError(f"recompute_every needs a readout with pool() and head() (the built-in ones), got "
                         f"{type(readout).__name__}")
    batch_first = getattr(rnn, "batch_first", False)
    time_dim = 1 if batch_first else 0
    total = x.shape[time_dim]

    def run(start: int) -> Callable[..., Tuple[Optional[torch.Tensor], torch.Tensor]]:
        def segment(x_seg: torch.Tensor, h: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
            output, h_n = rnn(x_seg, h)
            pooled = readout.pool(output if batch_first else output.transpose(0, 1), start, total)
            # h_n may view the segment's states: a copy, so that they are not kept alive
            return pooled, h_n.clone()
        return segment

    pooled_sum: Optional[torch.Tensor] = None
    h = h0
    for start in range(0, total, segment_length):
        x_seg = x.narrow(time_dim, start, min(segment_length, total - start))
        if recompute and torch.is_grad_enabled():
            pooled, h = checkpoint(run(start), x_seg, h, use_reentrant=False)
        else:
            pooled, h = run(start)(x_seg, h)
        if pooled is not None:
            pooled_sum = pooled if pooled_sum is None else pooled_sum + pooled
    assert pooled_sum is not None  # every readout pools the last segment
    return readout.head(pooled_sum)
