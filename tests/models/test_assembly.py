"""ModularRNN.combine: the whole against a dense reference of the combined step built from the
parts themselves (float64, gradients included), the rescaled metric, frozen parts after hard
training of the new connections, and the certificate of the whole."""
from __future__ import annotations

import pytest
import torch

from rnnofrnns import ModularRNN, stability



def rn(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def part(seed, *, areas="svd", step="cayley", p=3, n=6, inputs=2, learn=True, alpha=0.3, topology="all"):
    """A trained-looking part; cayley_form "exact" (the whole inherits it), so that the dense
    reference below forms the Cayley map of the whole feedback."""
    g = torch.Generator().manual_seed(seed)
    net = ModularRNN(inputs, (p, n), topology=topology, areas=areas, feedback_step=step, alpha=alpha,
                     learn_timescales=learn, nonlinearity="tanh", generator=g, dtype=torch.float64, feedback_init=2.0,
                     cayley_form="exact")
    with torch.no_grad():  # parts that have "trained": a metric far from 1, strong feedback
        if areas == "svd":
            net.area_log_metric.normal_(3.0 * seed, 0.5, generator=g)
        net.B.mul_(5.0)
        if net.input_timescales:  # rates that move with the input
            net.rate_gate_weight.normal_(0.0, 1.0, generator=g)
    return net


def dense_step_reference(parts, whole, x_parts, x_whole):
    """h_t of the whole from dense matrices: the parts' own W and L (their intra_matrix and
    feedback_matrix), plus the new blocks from the whole's new B in the whole's metric."""
    H_parts = sum(p.hidden_size for p in parts)
    H = whole.hidden_size
    p_parts = sum(p.num_areas for p in parts)
    W = torch.block_diag(*[p.intra_matrix() for p in parts], *whole.area_weights()[p_parts:])
    L = torch.zeros(H, H, dtype=torch.float64)
    L[:H_parts, :H_parts] = torch.block_diag(*[p.feedback_matrix() for p in parts])
    rows = sum(len(p.pairs) for p in parts)
    M = whole.area_metric()
    new = stability.negative_feedback(whole.B[rows:], whole.pairs[rows:], M)
    idx = torch.cat([whole.pairs[rows:], whole.pairs[rows:].flip(1)])
    n = whole.area_size
    for blk, (i, j) in zip(new, idx.tolist()):
        L[i * n:(i + 1) * n, j * n:(j + 1) * n] = blk
    a = whole.area_alpha().repeat_interleave(n)
    u = torch.cat([p.drive(x.transpose(0, 1)) for p, x in zip(parts, x_parts)], -1)
    u_new = whole.drive(x_whole.transpose(0, 1))[..., H_parts:]
    u = torch.cat([u, u_new], -1)
    C = torch.linalg.solve(torch.eye(H, dtype=L.dtype) - 0.5 * a[:, None] * L,
                         torch.eye(H, dtype=L.dtype) + 0.5 * a[:, None] * L)
    if whole.feedback_step == "cayley":  # the map the whole runs is that one
        torch.testing.assert_close(whole.feedback_map(), C, rtol=1e-10, atol=1e-12)
    if whole.input_timescales:  # the areas' rates per step: each part's own gate, the new area's from the whole
        rates = [p.input_rates(x.transpose(0, 1)) if p.input_timescales
                 else p.area_alpha().expand(x.shape[1], x.shape[0], p.num_areas) for p, x in zip(parts, x_parts)]
        rates.append(whole.input_rates(x_whole.transpose(0, 1))[..., p_parts:])
        a_t = torch.cat(rates, -1).repeat_interleave(n, -1)
    else:
        a_t = a.expand(u.shape[0], *a.shape)
    h = torch.zeros(u.shape[1], H, dtype=L.dtype)
    out = []
    for t in range(u.shape[0]):
        z = (1 - a_t[t]) * h + a_t[t] * (torch.tanh(h) @ W.T + u[t])
        h = z @ C.T
        out.append(h)
    return torch.stack(out, 1)


def test_whole_matches_the_dense_reference_of_its_parts():
    parts = [part(1), part(2, p=2, inputs=3)]
    whole = ModularRNN.combine(parts, "workspace", generator=torch.Generator().manual_seed(5))
    assert whole.num_areas == 6 and whole.input_size == 5 and whole.backend is None
    x1, x2 = rn(4, 7, 2), rn(4, 7, 3)
    x = torch.cat([x1, x2], -1)
    ref = dense_step_reference(parts, whole, [x1, x2], x)
    out, _ = whole(x)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    # gradients of what trains: the new feedback and the new area's input row
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum(), (whole.B, whole.input_weight))
    want = torch.autograd.grad((dense_step_reference(parts, whole, [x1, x2], x) * g).sum(),
                               (whole.B, whole.input_weight))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    rows = sum(len(p.pairs) for p in parts)
    assert got[0][:rows].abs().max() == 0 and got[0][rows:].abs().max() > 0  # frozen blocks get none
    assert got[1][:30].abs().max() == 0 and got[1][30:].abs().max() > 0


def test_the_metric_is_rescaled_per_part_and_serves_all():
    parts = [part(1), part(2)]
    whole = ModularRNN.combine(parts, [(0, 3), (2, 5)])
    M = whole.area_metric()
    for k, p in enumerate(parts):
        Mk = p.area_metric()
        c = 1 / Mk.log().mean().exp()
        torch.testing.assert_close(M[3 * k:3 * k + 3], c * Mk)
    # one M: the whole's feedback (the parts' and the new) is skew in it
    Md = torch.diag(whole.metric())
    L = whole.feedback_matrix()
    assert (Md @ L + L.T @ Md).abs().max() < 1e-10 * L.abs().max()
    # and the parts' areas and feedback are theirs, exactly (the rescaling cancels in both)
    torch.testing.assert_close(whole.intra_matrix()[:36, :36], torch.block_diag(*[p.intra_matrix() for p in parts]))
    for k, p in enumerate(parts):
        torch.testing.assert_close(whole.feedback_matrix()[18 * k:18 * k + 18, 18 * k:18 * k + 18], p.feedback_matrix())


@pytest.mark.parametrize("areas,step,learn", [("svd", "cayley", True), ("sparse", "cayley", False),
                                              ("sparse", "euler", False)])
def test_frozen_parts_stay_and_the_certificate_holds_after_hard_training(areas, step, learn):
    parts = [part(1, areas=areas, step=step, learn=learn, alpha=0.5 if step == "euler" else 0.3),
             part(2, areas=areas, step=step, learn=learn, alpha=0.5 if step == "euler" else 0.3)]
    whole = ModularRNN.combine(parts, "workspace", generator=torch.Generator().manual_seed(0))
    before = dict(W=whole.area_weights()[:6].detach().clone(), a=whole.area_alpha()[:6].detach().clone(),
                  U=whole._param("input_weight")[:36].detach().clone(), M=whole.area_metric()[:6].detach().clone(),
                  B=whole._param("B")[:6].detach().clone(), Bnew=whole._param("B")[6:].detach().clone())
    opt = torch.optim.AdamW(whole.parameters(), lr=0.5, weight_decay=0.5)
    x, y = rn(8, 10, 4), rn(8, 10, whole.hidden_size)
    for _ in range(25):
        out, _ = whole(x)
        loss = (out - 5 * y).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dict(W=whole.area_weights()[:6], a=whole.area_alpha()[:6], U=whole._param("input_weight")[:36],
                 M=whole.area_metric()[:6], B=whole._param("B")[:6])
    for name, value in after.items():
        assert torch.equal(value, before[name]), name
    assert (whole._param("B")[6:] - before["Bnew"]).abs().max() > 1.0  # the new connections trained hard
    cert = whole.certify()
    assert cert.holds and cert.discrete_holds, cert
    assert whole.num_frozen_parameters() > 0


def test_unfrozen_parts_train_and_shared_input():
    parts = [part(1), part(2)]
    whole = ModularRNN.combine(parts, [(0, 4)], freeze=False, shared_input=True)
    assert whole.input_size == 2 and whole.num_areas == 6
    E = parts[0].input_encoder  # the parts' encoders side by side, each reading the shared input
    assert whole.input_encoder == 2 * E
    torch.testing.assert_close(whole._param("input_weight")[:18, :E], parts[0]._param("input_weight"))
    assert whole._param("input_weight")[:18, E:].abs().max() == 0
    torch.testing.assert_close(whole._param("encoder_weight")[E:], parts[1]._param("encoder_weight"))
    x = rn(2, 5, 2)
    torch.testing.assert_close(whole.input_features(x)[..., :E], parts[0].input_features(x))
    out, _ = whole(x)
    grads = torch.autograd.grad(out.sum(), (whole.B, whole.area_rotation_u))
    assert grads[0][:len(parts[0].pairs)].abs().max() > 0 and grads[1].abs().max() > 0
    assert whole.certify().holds


@pytest.mark.parametrize("make,message", [
    (lambda: [part(1), part(2, n=5)], r"the same area_size: part 0 has 6, part 1 has 5"),
    (lambda: [part(1), part(2, step="euler", learn=False)], r"the same feedback_step"),
    (lambda: [part(1)], r"at least two networks"),
    (lambda: [part(1), ModularRNN(2, (3, 6), topology="all", nonlinearity="tanh", input_encoder=0,
                                  dtype=torch.float64)], r"either every part has an input encoder or none has"),
])
def test_parts_that_cannot_join(make, message):
    with pytest.raises(ValueError, match=message):
        ModularRNN.combine(make(), "workspace")


def test_a_new_pair_must_join_two_parts():
    with pytest.raises(ValueError, match=r"pair \(0, 2\) joins two areas of part 0"):
        ModularRNN.combine([part(1), part(2)], [(0, 2)])


def test_the_assembly_experiment_runs(tmp_path, capsys):
    """examples/assembly.py end to end, one epoch: every net's row, certificates from the trained weights."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "assembly.py"
    spec = importlib.util.spec_from_file_location("assembly_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from rnnofrnns.ops._backend import flush_denormal

    threads = torch.get_num_threads()
    try:
        with flush_denormal():  # main() sets it; this restores the session's setting after
            assert module.main(["--seeds", "0", "--epochs-parts", "1", "--epochs", "1", "--threads", "1",
                                "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    import json

    results = json.loads((tmp_path / "assembly.json").read_text())["results"]["0"]
    assert set(results) == {"part A alone", "part B alone", "assembled", "random parts", "from scratch"}
    assert results["assembled"]["trainable_parameters"] == results["random parts"]["trainable_parameters"] \
        < results["from scratch"]["trainable_parameters"]
    assert all(r["continuous_holds"] and r["discrete_holds"] for r in results.values())
    assert "| assembled |" in capsys.readouterr().out
