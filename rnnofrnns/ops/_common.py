"""Helpers shared by the ops: activations and argument checks with clear messages."""
from __future__ import annotations

from typing import Callable, Sequence

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
