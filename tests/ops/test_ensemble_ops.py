"""The fused ensemble ops (input projection, readout+loss) against their references."""
from __future__ import annotations

import pytest
import torch

from rnnofrnns import RNNEnsemble
from rnnofrnns.ops.ensemble import (ensemble_drive, ensemble_drive_reference, ensemble_loss, ensemble_loss_reference,
                                    ensemble_readout_loss, ensemble_readout_loss_reference)

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


@pytest.mark.parametrize("tied,bias", [(False, True), (True, True), ("output-direction", True),
                                       ("output-direction", False)])
@pytest.mark.parametrize("variant", ["linear", "relu_readout", "relu"])
def test_training_loss_equals_unfused_loss(variant, tied, bias):
    ens = RNNEnsemble(6, 3, 2, variant=variant, tied_readout=tied, seed=0, dtype=torch.float64, output_bias=bias,
                      delay=[1, 2, 3, 2, 1, 4])
    x, y = ens.sample_batch(5, 7, [torch.Generator().manual_seed(i) for i in range(6)])
    fused = ens.training_loss(x, y)
    ref = ens.loss(ens(x), y)
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-14)
    params = [p for p in ens.parameters()]
    for a, r in zip(torch.autograd.grad(fused, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-13)


# --- ensemble_loss: the whole training loss in one fused op ----------------------------

# I, B, T, F, n. F = 8 with n = 2 / 5 / 10 runs the compile-time specialisations, the rest the
# generic code; B = 1, 5, 9, 13 leave lanes of the last batch tile empty (8 float32 / 4
# float64 lanes); T = 1 has no recurrence at all. With I >= 32 every piece of work is a whole
# instance, so the specialisations run batch tiles in pairs (B = 20: 5 float64 tiles, two
# pairs and one left over). The weight gradients' register blocks (outer_tiled) see every
# kind of leftover: a column against 8 or 4 rows (F = 8 / 13 with n = 10 / 7, n = 13), two
# columns (n = 5, 2), rows left over with up to 9 columns and with more than 10 (n = 13). The
# recurrences' unit blocks of 5 (fused_steps) leave 1 to 4 units over (n = 1, 12, 3 / 13, 9).
LOSS_SIZES = [(1, 1, 1, 1, 1), (3, 5, 4, 3, 2), (2, 9, 6, 8, 2), (2, 13, 5, 8, 5), (3, 8, 7, 8, 10), (4, 6, 1, 8, 5),
              (2, 11, 5, 7, 3), (1, 4, 3, 16, 12), (32, 20, 6, 8, 10), (33, 9, 5, 8, 5), (32, 13, 4, 8, 2),
              (2, 6, 5, 13, 7), (2, 5, 4, 5, 13), (2, 10, 4, 6, 9)]


def loss_tensors(I, B, T, F, n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(I, B, T, F, generator=g, dtype=dtype) < 0.5) * torch.rand(I, B, T, F, generator=g, dtype=dtype)
    y = torch.rand(I, B, T, F, generator=g, dtype=dtype)
    Wx = torch.randn(I, n, F, generator=g, dtype=dtype) / F ** 0.5
    Wh = torch.randn(I, n, n, generator=g, dtype=dtype) / n ** 0.5
    Wy = torch.randn(I, n, F, generator=g, dtype=dtype) / n ** 0.5
    b = 0.1 * torch.randn(I, F, generator=g, dtype=dtype)
    return x, y, [Wx, Wh, Wy, b]


@pytest.mark.parametrize("relu_hidden,relu_out", [(False, False), (False, True), (True, True), (True, False)])
@pytest.mark.parametrize("I,B,T,F,n", LOSS_SIZES)
def test_fused_loss_matches_reference(I, B, T, F, n, relu_hidden, relu_out):
    x, y, ws = loss_tensors(I, B, T, F, n)
    for w in ws:
        w.requires_grad_(True)
    out = ensemble_loss(x, *ws, y, relu_hidden, relu_out, backend="cpu")
    ref = ensemble_loss_reference(x, *ws, y, relu_hidden, relu_out)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)
    gl = torch.rand(I, dtype=torch.float64) + 0.5
    for a, r in zip(torch.autograd.grad(out, ws, gl), torch.autograd.grad(ref, ws, gl)):
        torch.testing.assert_close(a, r, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("n", [2, 5, 7, 10])
def test_fused_loss_float32_accuracy(n):
    """float32 at a realistic size (n = 2, 5, 10: the specialised paths, T = 50 not a multiple
    of their step blocks; n = 7: the generic one)."""
    x, y, ws = loss_tensors(40, 61, 50, 8, n)
    w32 = [w.float().requires_grad_(True) for w in ws]
    w64 = [w.clone().requires_grad_(True) for w in ws]
    out = ensemble_loss(x.float(), *w32, y.float(), False, True, backend="cpu")
    ref = ensemble_loss_reference(x, *w64, y, False, True)
    pairs = [(out, ref)] + list(zip(torch.autograd.grad(out.sum(), w32), torch.autograd.grad(ref.sum(), w64)))
    for a, r in pairs:
        assert ((a.double() - r).abs().max() / r.abs().max()).item() < 1e-5


def special_recurrences(n, dtype=torch.float64):
    """W_h and W_y of 6 instances that take the special paths of the Hessenberg basis (linear hidden
    layers of n = 5 and 10): W_h zero, diagonal, already upper Hessenberg, strongly non-normal
    (a Jordan-like chain with entries of 1e3), with a zero first column, and a random one; W_y's
    first column zero, parallel to e_0, or random."""
    g = torch.Generator().manual_seed(3)
    Wh = torch.randn(6, n, n, generator=g, dtype=dtype) / n ** 0.5
    Wh[0] = 0
    Wh[1] = torch.diag(torch.linspace(-0.9, 0.9, n, dtype=dtype))
    Wh[2] = torch.triu(Wh[2], diagonal=-1)
    Wh[3] = 0.5 * torch.eye(n, dtype=dtype) + 1e3 * torch.diag(torch.ones(n - 1, dtype=dtype), 1)
    Wh[3] = Wh[3] / torch.linalg.matrix_norm(Wh[3], 2)  # keeps h bounded, stays non-normal
    Wh[4, :, 0] = 0
    Wy = torch.randn(6, n, 8, generator=g, dtype=dtype) / n ** 0.5
    Wy[0, :, 0] = 0
    Wy[1, 1:, 0] = 0
    Wy[2, :, 0] = 0
    return Wh, Wy


@pytest.mark.parametrize("n", [5, 10])
def test_fused_loss_hessenberg_basis_special_weights(n):
    """The linear hidden layer runs in the basis of a Hessenberg reduction of W_h (one per
    instance, its first vector along W_y's first column): special weights give the reference's
    loss and gradients, in float64 tightly and in float32 to float32 accuracy."""
    x, y, ws = loss_tensors(6, 13, 7, 8, n)
    ws[1], ws[2] = special_recurrences(n)
    for dtype, rtol in ((torch.float64, 1e-11), (torch.float32, 2e-5)):
        w = [v.to(dtype).requires_grad_(True) for v in ws]
        w64 = [v.clone().requires_grad_(True) for v in ws]
        out = ensemble_loss(x.to(dtype), *w, y.to(dtype), False, True, backend="cpu")
        ref = ensemble_loss_reference(x, *w64, y, False, True)
        pairs = [(out, ref)] + list(zip(torch.autograd.grad(out.sum(), w), torch.autograd.grad(ref.sum(), w64)))
        for a, r in pairs:
            err = (a.double() - r).abs().amax() / r.abs().amax()
            assert err.item() < rtol, (dtype, err.item())


def test_fused_loss_gradcheck_and_opcheck():
    x, y, ws = loss_tensors(2, 3, 4, 3, 2)
    ws = [w.requires_grad_(True) for w in ws]
    for rh, ro in ((False, True), (True, False)):
        assert torch.autograd.gradcheck(lambda *w: ensemble_loss(x, *w, y, rh, ro, backend="cpu"), ws)
    torch.library.opcheck(torch.ops.rnnofrnns.ensemble_loss, (x, *ws, y, False, True, True))
    torch.library.opcheck(torch.ops.rnnofrnns.ensemble_loss, (x, *[w.detach() for w in ws], y, True, True, False))


def test_fused_loss_shared_data_and_no_grad():
    """Shared data as an expanded view (instance stride 0) gives what the copy gives; under
    no_grad the op skips the backward pass and returns the same loss."""
    x, y, ws = loss_tensors(5, 9, 6, 8, 5)
    shared = x[0].expand(5, *x.shape[1:])
    a = torch.ops.rnnofrnns.ensemble_loss(shared, *ws, y, False, True, True)
    b = torch.ops.rnnofrnns.ensemble_loss(shared.contiguous(), *ws, y, False, True, True)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    with torch.no_grad():
        loss, *grads = torch.ops.rnnofrnns.ensemble_loss(x, *ws, y, False, True, False)
    assert all(g.numel() == 0 for g in grads)
    torch.testing.assert_close(loss, ensemble_loss_reference(x, *ws, y, False, True), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("I,n,relu_hidden", [(3, 5, True), (3, 10, False), (40, 10, False)])
def test_fused_loss_does_not_depend_on_the_thread_count(I, n, relu_hidden):
    x, y, ws = loss_tensors(I, 50, 9, 8, n, dtype=torch.float32)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.rnnofrnns.ensemble_loss(x, *ws, y, relu_hidden, True, True)
        torch.set_num_threads(2)
        two = torch.ops.rnnofrnns.ensemble_loss(x, *ws, y, relu_hidden, True, True)
    finally:
        torch.set_num_threads(old)
    for u, v in zip(one, two):
        assert torch.equal(u, v)


def test_fused_loss_bad_input():
    x, y, ws = loss_tensors(3, 2, 3, 4, 2)
    Wx, Wh, Wy, b = ws
    with pytest.raises(ValueError, match=r"W_h must be \[I, n, n\] = \[3, 2, 2\], got shape \(3, 2, 3\)"):
        ensemble_loss(x, Wx, torch.zeros(3, 2, 3, dtype=torch.float64), Wy, b, y, False, True)
    with pytest.raises(ValueError, match=r"x must have the shape of y \[I, B, T, F\] = \[3, 2, 3, 4\]"):
        ensemble_loss(x[:, :1], Wx, Wh, Wy, b, y, False, True)
    with pytest.raises(ValueError, match=r"W_x must be \[I, n, F\] = \[3, 2, 4\]"):
        ensemble_loss(x, Wx[:, :1], Wh, Wy, b, y, False, True)
    with pytest.raises(ValueError, match="x is data for ensemble_loss and must not require grad"):
        ensemble_loss(x.clone().requires_grad_(True), Wx, Wh, Wy, b, y, False, True)
    with pytest.raises(TypeError, match=r"W_x must have the dtype of x \(torch.float32\), got torch.float64"):
        ensemble_loss(x.float(), Wx, Wh, Wy, b, y, False, True)
    big = torch.zeros(1, 1, 1, 65, dtype=torch.float64)
    with pytest.raises(ValueError, match="n and the feature count F must be at most 64, got n = 1 and F = 65"):
        torch.ops.rnnofrnns.ensemble_loss(big, torch.zeros(1, 1, 65, dtype=torch.float64),
                                          torch.zeros(1, 1, 1, dtype=torch.float64),
                                          torch.zeros(1, 1, 65, dtype=torch.float64),
                                          torch.zeros(1, 65, dtype=torch.float64), big, False, False, True)
    with pytest.raises(ValueError, match=r"ensemble_loss: b must be \[I, F\] = \[3, 4\]"):
        torch.ops.rnnofrnns.ensemble_loss(x, Wx, Wh, Wy, b[:2], y, False, True, True)


def test_training_loss_gradient_with_respect_to_x():
    """x that requires grad goes through modular_rnn (the fused op has no x gradient)."""
    ens = RNNEnsemble(4, 3, 2, variant="relu_readout", seed=1, dtype=torch.float64)
    x, y = ens.sample_batch(5, 6, [torch.Generator().manual_seed(i) for i in range(4)])
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    g1, = torch.autograd.grad(ens.training_loss(x1, y), x1)
    g2, = torch.autograd.grad(ens.loss(ens(x2), y), x2)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relu_hidden", [False, True])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_nan_parameters_reach_the_loss(dtype, relu_hidden, sign):
    """A NaN weight of one instance (either sign bit: x86 makes NaNs with the sign set) gives
    that instance a NaN loss, as the reference does, and leaves the other instances exactly as
    they were: the relu masks of the fused ops must not turn a NaN output into a dead (zero)
    one. (The reference spreads a NaN in W_x or W_h to every instance: its recurrence is one
    dense block-diagonal matmul, and NaN * 0 is NaN.)"""
    x, y, ws = loss_tensors(3, 9, 5, 8, 5, dtype=dtype)
    clean = torch.ops.rnnofrnns.ensemble_loss(x, *ws, y, relu_hidden, True, True)[0]
    nan = sign * torch.tensor(float("nan"), dtype=dtype)
    for which in (0, 1, 2):  # W_x, W_h, W_y
        bad = [w.clone() for w in ws]
        bad[which][1, 0, 0] = nan
        ref = ensemble_loss_reference(x, *bad, y, relu_hidden, True)
        fused = torch.ops.rnnofrnns.ensemble_loss(x, *bad, y, relu_hidden, True, True)[0]
        assert torch.isnan(ref[1]) and torch.isnan(fused[1])
        assert torch.equal(fused[[0, 2]], clean[[0, 2]])
    h = torch.randn(5, 9, 3 * 5, dtype=dtype)
    bad_Wy = ws[2].clone()
    bad_Wy[1, 0, 0] = nan
    for loss in (torch.ops.rnnofrnns.ensemble_readout_loss(h, bad_Wy, ws[3], y, True)[0],
                 ensemble_readout_loss_reference(h, bad_Wy, ws[3], y, True)):
        assert torch.isnan(loss[1]) and not torch.isnan(loss[[0, 2]]).any()
