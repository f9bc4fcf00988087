"""Fused ops of an ensemble of I small RNNs (one area each of a modular_rnn call).
References in PyTorch; the "cpu" backend is csrc/cpu/ensemble.cpp. There are no Triton
kernels for these: on other devices the reference runs.

    ensemble_drive(x [I, B, T, F], W_x [I, n, F]) -> drive [T, B, I*n]
    ensemble_readout_loss(h [T, B, I*n], W_y [I, n, F], b [I, F], y [I, B, T, F], relu)
        -> loss [I], loss[i] = mean over (b, t, f) of (sigma(h_i W_y[i] + b[i]) - y[i])^2
    ensemble_loss(x, W_x, W_h [I, n, n], W_y, b, y, relu_hidden, relu_out) -> loss [I]:
        the whole training loss in one pass (drive, recurrence h_t = W_x x_t + W_h s(h_{t-1}),
        readout, loss); its reference is the composition of the three references below.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from .._backend import cpu_extension_available
from ._common import check_float_dtypes, check_same_device, check_tensor


def ensemble_drive_reference(x: torch.Tensor, W_x: torch.Tensor) -> torch.Tensor:
    I, B, T, F = x.shape
    return torch.einsum("ibtf,inf->tbin", x, W_x).reshape(T, B, I * W_x.shape[1])


def ensemble_readout_loss_reference(h: torch.Tensor, W_y: torch.Tensor, b: torch.Tensor, y: torch.Tensor,
                                    relu: bool) -> torch.Tensor:
    T, B, _ = h.shape
    I, n, F = W_y.shape
    out = torch.einsum("tbin,inf->ibtf", h.reshape(T, B, I, n), W_y) + b[:, None, None, :]
    if relu:
        out = torch.relu(out)
    return (out - y).square().mean(dim=(1, 2, 3))


def ensemble_loss_reference(x: torch.Tensor, W_x: torch.Tensor, W_h: torch.Tensor, W_y: torch.Tensor,
                            b: torch.Tensor, y: torch.Tensor, relu_hidden: bool, relu_out: bool) -> torch.Tensor:
    from .modular_rnn import modular_rnn_reference

    n = W_h.shape[1]
    h = modular_rnn_reference(ensemble_drive_reference(x, W_x), W_h, W_h.new_zeros(0, n, n),
                              torch.zeros(0, 2, dtype=torch.int64, device=x.device), alpha=1.0,
                              nonlinearity="relu" if relu_hidden else "identity", form="hopfield")
    return ensemble_readout_loss_reference(h, W_y, b, y, relu_out)


def _backend(backend: Optional[str], device: torch.device) -> str:
    if backend not in (None, "reference", "cpu"):
        raise ValueError(f"backend must be 'reference', 'cpu' or None for the ensemble ops, got {backend!r}")
    if backend is None:
        return "cpu" if device.type == "cpu" and cpu_extension_available() else "reference"
    if backend == "cpu" and (device.type != "cpu" or not cpu_extension_available()):
        raise ValueError(f"backend='cpu' needs CPU tensors and the compiled extension (tensors on {device})")
    return backend


def _check_x_w(x: torch.Tensor, W: torch.Tensor, xname: str, wname: str) -> None:
    check_tensor(xname, x, 4, "[I, B, T, F]")
    check_tensor(wname, W, 3, "[I, n, F]")
    I, _, _, F = x.shape
    if W.shape[0] != I or W.shape[2] != F:
        raise ValueError(f"{wname} must be [I, n, F] = [{I}, n, {F}] for {xname} of shape {tuple(x.shape)}, "
                         f"got shape {tuple(W.shape)}")


def ensemble_drive(x: torch.Tensor, W_x: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """Each instance's input projection, laid out as one modular_rnn drive [T, B, I*n]."""
    _check_x_w(x, W_x, "x", "W_x")
    check_float_dtypes(["x", "W_x"], [x, W_x])
    check_same_device(["x", "W_x"], [x, W_x])
    if _backend(backend, x.device) == "reference":
        return ensemble_drive_reference(x, W_x)
    return torch.ops.rnnofrnns.ensemble_drive_fwd(x, W_x)


def ensemble_readout_loss(h: torch.Tensor, W_y: torch.Tensor, b: torch.Tensor, y: torch.Tensor, relu: bool,
                          backend: Optional[str] = None) -> torch.Tensor:
    """Per-instance mean squared error of the readout, [I]; the [I, B, T, F] output is
    never formed by the cpu backend. y is the target and must not require grad."""
    _check_x_w(y, W_y, "y", "W_y")
    I, B, T, F = y.shape
    n = W_y.shape[1]
    check_tensor("h", h, 3, f"[T, B, I*n] = [{T}, {B}, {I * n}]")
    if tuple(h.shape) != (T, B, I * n):
        raise ValueError(f"h must be [T, B, I*n] = [{T}, {B}, {I * n}], got shape {tuple(h.shape)}")
    check_tensor("b", b, 2, f"[I, F] = [{I}, {F}]")
    if tuple(b.shape) != (I, F):
        raise ValueError(f"b must be [I, F] = [{I}, {F}], got shape {tuple(b.shape)}")
    check_float_dtypes(["h", "W_y", "b", "y"], [h, W_y, b, y])
    check_same_device(["h", "W_y", "b", "y"], [h, W_y, b, y])
    if y.requires_grad:
        raise ValueError("y is the target of ensemble_readout_loss and must not require grad")
    if _backend(backend, h.device) == "reference":
        return ensemble_readout_loss_reference(h, W_y, b, y, relu)
    return torch.ops.rnnofrnns.ensemble_readout_loss(h, W_y, b, y, relu)[0]


def ensemble_loss(x: torch.Tensor, W_x: torch.Tensor, W_h: torch.Tensor, W_y: torch.Tensor, b: torch.Tensor,
                  y: torch.Tensor, relu_hidden: bool, relu_out: bool, backend: Optional[str] = None) -> torch.Tensor:
    """Per-instance training loss [I] of I small RNNs, h_t = W_x x_t + W_h s(h_{t-1}) (s = relu
    if relu_hidden), output r(W_y^T h_t + b) (r = relu if relu_out), mean squared error
    against y. The cpu backend computes the loss and the parameter gradients in one fused
    pass over x and y (a linear hidden layer of size 5 or 10 with F = 8 in the orthogonal basis
    of a Hessenberg reduction of each W_h: the same function, fewer FMAs); x [I, B, T, F] may
    be an expanded view of shared data. x and y are data: they must not require grad."""
    _check_x_w(y, W_y, "y", "W_y")
    I, B, T, F = y.shape
    n = W_y.shape[1]
    if tuple(x.shape) != tuple(y.shape):
        raise ValueError(f"x must have the shape of y [I, B, T, F] = {list(y.shape)}, got {list(x.shape)}")
    if tuple(W_x.shape) != (I, n, F):
        raise ValueError(f"W_x must be [I, n, F] = [{I}, {n}, {F}], got shape {tuple(W_x.shape)}")
    if tuple(W_h.shape) != (I, n, n):
        raise ValueError(f"W_h must be [I, n, n] = [{I}, {n}, {n}], got shape {tuple(W_h.shape)}")
    if tuple(b.shape) != (I, F):
        raise ValueError(f"b must be [I, F] = [{I}, {F}], got shape {tuple(b.shape)}")
    if min(B, T) < 1:
        raise ValueError(f"y needs B >= 1 rows and T >= 1 steps, got shape {tuple(y.shape)}")
    names, ts = ["x", "W_x", "W_h", "W_y", "b", "y"], [x, W_x, W_h, W_y, b, y]
    check_float_dtypes(names, ts)
    check_same_device(names, ts)
    for name, t in (("x", x), ("y", y)):
        if t.requires_grad:
            raise ValueError(f"{name} is data for ensemble_loss and must not require grad")
    if _backend(backend, y.device) == "reference":
        return ensemble_loss_reference(x, W_x, W_h, W_y, b, y, relu_hidden, relu_out)
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (W_x, W_h, W_y, b))
    return torch.ops.rnnofrnns.ensemble_loss(x, W_x, W_h, W_y, b, y, relu_hidden, relu_out, need_grad)[0]


def _scale_by_instance(grad: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    return grad * grad_loss.view(-1, *([1] * (grad.dim() - 1)))


def _register() -> None:
    @torch.library.register_fake("rnnofrnns::ensemble_drive_fwd")
    def _(x, W_x):
        I, B, T, F = x.shape
        return x.new_empty(T, B, I * W_x.shape[1])

    @torch.library.register_fake("rnnofrnns::ensemble_drive_bwd")
    def _(grad_drive, x, W_x, need_x, need_W):
        return (torch.empty_like(x) if need_x else x.new_empty(0)), torch.empty_like(W_x)

    @torch.library.register_fake("rnnofrnns::ensemble_readout_loss")
    def _(h, W_y, b, y, relu):
        return h.new_empty(W_y.shape[0]), torch.empty_like(h), torch.empty_like(W_y), torch.empty_like(b)

    @torch.library.register_fake("rnnofrnns::ensemble_loss")
    def _(x, W_x, W_h, W_y, b, y, relu_hidden, relu_out, need_grad):
        m = W_x.shape[0] if need_grad else 0
        return (y.new_empty(y.shape[0]), W_x.new_empty(m, *W_x.shape[1:]), W_h.new_empty(m, *W_h.shape[1:]),
                W_y.new_empty(m, *W_y.shape[1:]), b.new_empty(m, *b.shape[1:]))

    def drive_setup(ctx: Any, inputs: Tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs)

    def drive_backward(ctx: Any, grad: torch.Tensor):
        x, W_x = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx, gW = torch.ops.rnnofrnns.ensemble_drive_bwd(grad, x, W_x, need[0], need[1])
        return (gx if need[0] else None, gW if need[1] else None)

    torch.library.register_autograd("rnnofrnns::ensemble_drive_fwd", drive_backward, setup_context=drive_setup)

    def loss_setup(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[torch.Tensor, ...]) -> None:
        ctx.save_for_backward(*output[1:])
        ctx.I = inputs[1].shape[0]

    def loss_backward(ctx: Any, grad_loss: torch.Tensor, *unused: torch.Tensor):
        gh, gW, gb = ctx.saved_tensors
        # The usual case, loss.sum().backward(): no rescaling pass over grad_h. Only for plain
        # eager tensors (traced fake/functional tensors cannot be branched on).
        if type(grad_loss) is torch.Tensor and not torch.compiler.is_compiling() and bool((grad_loss == 1).all()):
            return gh, gW, gb, None, None
        T, B, H = gh.shape
        gh = (gh.view(T, B, ctx.I, H // ctx.I) * grad_loss[None, None, :, None]).view(T, B, H)
        return gh, gW * grad_loss[:, None, None], gb * grad_loss[:, None], None, None

    torch.library.register_autograd("rnnofrnns::ensemble_readout_loss", loss_backward, setup_context=loss_setup)

    def fused_setup(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[torch.Tensor, ...]) -> None:
        ctx.have_grads = inputs[-1]
        ctx.save_for_backward(*output[1:])

    def fused_backward(ctx: Any, grad_loss: torch.Tensor, *unused: torch.Tensor):
        if not ctx.have_grads:
            raise RuntimeError("ensemble_loss was called with need_grad=False, so it has no gradients to give")
        grads = [_scale_by_instance(g, grad_loss) for g in ctx.saved_tensors]
        return (None, *grads, None, None, None, None)

    torch.library.register_autograd("rnnofrnns::ensemble_loss", fused_backward, setup_context=fused_setup)


if cpu_extension_available():
    _register()
