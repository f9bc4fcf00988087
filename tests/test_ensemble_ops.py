"""The fused ensemble ops (input projection, readout+loss) against their references."""
from __future__ import annotations

import pytest
import torch

from rnnofrnns import RNNEnsemble
from rnnofrnns.ops.ensemble import (ensemble_drive, ensemble_drive_reference, ensemble_readout_loss,
                                    ensemble_readout_loss_reference)

# I, B, T, F, n. F = 4 runs the SIMD path in float64 (4 lanes with AVX2), F = 8 the scalar one;
# in float32 F = 8 is the SIMD path (test_float32_*).
SIZES = [(1, 1, 1, 1, 1), (3, 5, 4, 3, 2), (70, 2, 3, 8, 5), (4, 17, 6, 16, 1), (2, 3, 2, 7, 3), (66, 5, 3, 4, 3)]


def tensors(I, B, T, F, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(I, B, T, F, generator=g, dtype=torch.float64)
    W = torch.randn(I, n, F, generator=g, dtype=torch.float64)
    h = torch.randn(T, B, I * n, generator=g, dtype=torch.float64)
    b = 0.1 * torch.randn(I, F, generator=g, dtype=torch.float64)
    return x, W, h, b


@pytest.mark.parametrize("I,B,T,F,n", SIZES)
def test_drive_matches_reference(I, B, T, F, n):
    x, W, _, _ = tensors(I, B, T, F, n)
    x.requires_grad_(True)
    W.requires_grad_(True)
    out, ref = ensemble_drive(x, W, backend="cpu"), ensemble_drive_reference(x, W)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-13)
    go = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, (x, W), go), torch.autograd.grad(ref, (x, W), go)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("I,B,T,F,n", SIZES)
def test_readout_loss_matches_reference(I, B, T, F, n, relu):
    y, W, h, b = tensors(I, B, T, F, n)
    for t in (W, h, b):
        t.requires_grad_(True)
    out, ref = ensemble_readout_loss(h, W, b, y, relu, backend="cpu"), ensemble_readout_loss_reference(h, W, b, y, relu)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-13)
    gl = torch.randn(I, dtype=torch.float64)
    for a, r in zip(torch.autograd.grad(out, (h, W, b), gl), torch.autograd.grad(ref, (h, W, b), gl)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-13)


def test_gradcheck_and_opcheck():
    y, W, h, b = tensors(3, 2, 3, 4, 2)
    x = y.clone().requires_grad_(True)
    W.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, W: ensemble_drive(x, W, backend="cpu"), (x, W))
    h.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h, W, b: ensemble_readout_loss(h, W, b, y, True, backend="cpu"), (h, W, b))
    torch.library.opcheck(torch.ops.rnnofrnns.ensemble_drive_fwd, (x, W))
    torch.library.opcheck(torch.ops.rnnofrnns.ensemble_readout_loss, (h, W, b, y, True))


@pytest.mark.parametrize("F", [8, 5])
def test_float32_accuracy(F):
    """float32 losses and gradients within 1e-5 of the float64 reference (F=8: SIMD path)."""
    y, W, h, b = tensors(70, 32, 16, F, 3)
    x = y.clone()
    ins32 = [t.float().requires_grad_(True) for t in (h, W, b)]
    ins64 = [t.clone().requires_grad_(True) for t in (h, W, b)]
    out = ensemble_readout_loss(*ins32, y.float(), True, backend="cpu")
    ref = ensemble_readout_loss_reference(*ins64, y, True)
    gl = torch.rand(70, dtype=torch.float64)
    pairs = [(out, ref)] + list(zip(torch.autograd.grad(out, ins32, gl.float()), torch.autograd.grad(ref, ins64, gl)))
    xw32 = [x.float().requires_grad_(True), W.float().requires_grad_(True)]
    xw64 = [x.clone().requires_grad_(True), W.clone().requires_grad_(True)]
    d32, d64 = ensemble_drive(*xw32, backend="cpu"), ensemble_drive_reference(*xw64)
    gd = torch.randn(d64.shape, dtype=torch.float64)
    pairs += [(d32, d64)] + list(zip(torch.autograd.grad(d32, xw32, gd.float()), torch.autograd.grad(d64, xw64, gd)))
    for a, r in pairs:
        assert ((a.double() - r).abs().max() / r.abs().max()).item() < 1e-5


def test_bad_input():
    y, W, h, b = tensors(3, 2, 3, 4, 2)
    with pytest.raises(ValueError, match=r"W_y must be \[I, n, F\] = \[3, n, 4\]"):
        ensemble_readout_loss(h, W[:2], b, y, True)
    with pytest.raises(ValueError, match=r"h must be \[T, B, I\*n\] = \[3, 2, 6\]"):
        ensemble_readout_loss(h[:, :, :5], W, b, y, True)
    with pytest.raises(ValueError, match="must not require grad"):
        ensemble_readout_loss(h, W, b, y.clone().requires_grad_(True), True)
    with pytest.raises(ValueError, match=r"x must be 4-D \[I, B, T, F\]"):
        ensemble_drive(y[0], W)
    with pytest.raises(ValueError, match="ensemble_readout_loss: h must be"):
        torch.ops.rnnofrnns.ensemble_readout_loss(h[:1], W, b, y, True)


@pytest.mark.parametrize("variant", ["linear", "relu_readout", "relu"])
def test_training_loss_equals_unfused_loss(variant):
    ens = RNNEnsemble(6, 3, 2, variant=variant, seed=0, dtype=torch.float64)
    x, y = ens.sample_batch(5, 7, [torch.Generator().manual_seed(i) for i in range(6)])
    fused = ens.training_loss(x, y)
    ref = ens.loss(ens(x), y)
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-14)
    params = [p for p in ens.parameters()]
    for a, r in zip(torch.autograd.grad(fused, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-13)
