"""Helpers shared by the ops: activations, argument checks with clear messages, and the guard
that makes a double backward through a fused op an error instead of a silent zero."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import torch

NONLINEARITIES = ("relu", "tanh", "identity")
FORMS = ("rate", "hopfield")


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "relu":
        return torch.relu
    if name == "tanh":
        return torch.tanh
    if name == "identity":
        return lambda x: x
    raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {name!r}")


def check_tensor(name: str, t: object, ndim: int, expected: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {expected}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {expected}, got shape {tuple(t.shape)}")
    return t


def check_float_dtypes(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{names[0]} must be float32 or float64, got {dtype}")
    for name, t in zip(names[1:], tensors[1:]):
        if t.dtype != dtype:
            raise TypeError(f"{name} must have the dtype of {names[0]} ({dtype}), got {t.dtype}")


def check_same_device(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    device = tensors[0].device
    for name, t in zip(names[1:], tensors[1:]):
        if t.device != device:
            raise ValueError(f"{name} must be on the device of {names[0]} ({device}), got {t.device}")


class _NoDoubleBackward(torch.autograd.Function):
    """Hands a fused op's gradients on unchanged and refuses to be differentiated: the fused
    backward kernels have no backward of their own, and a second derivative through them would
    otherwise come out silently wrong (zero)."""

    @staticmethod
    def forward(ctx: Any, op: str, num_anchors: int, *tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        ctx.op = op
        return tuple(t.view_as(t) for t in tensors[num_anchors:])

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> None:
        raise RuntimeError(
            f"{ctx.op}: double backward through the fused kernels is not supported (their backward pass "
            "has no backward of its own); use backend='reference' for second derivatives")


def guard_double_backward(op: str, inputs: Sequence[Any], grads: Sequence[Optional[torch.Tensor]]) -> Tuple[Any, ...]:
    """`grads` as they are, unless the backward pass records a graph (create_graph=True): then they
    pass through a node that raises if a second backward reaches it. `inputs` are the op's inputs,
    which tie that node into the graph."""
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return tuple(grads)
    anchors = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    present = [g for g in grads if g is not None]
    if not anchors or not present:
        return tuple(grads)
    guarded = iter(_NoDoubleBackward.apply(op, len(anchors), *anchors, *present))
    return tuple(None if g is None else next(guarded) for g in grads)
