"""Temporal superposition: the task, small RNNs, ensembles in one fused call, geometry."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from rnnofrnns import RNNEnsemble, SmallRNN
from rnnofrnns.experiments.superposition import geometry as geo
from rnnofrnns.experiments.superposition.task import delayed_recall
from rnnofrnns.models.small_rnn import instance_generator
from problems import device_for


def test_delayed_recall():
    g = torch.Generator().manual_seed(0)
    x, y = delayed_recall(5, 3, 0.2, 40, 64, generator=g)
    assert x.shape == y.shape == (64, 40, 5)
    assert torch.equal(y[:, :3], torch.zeros_like(y[:, :3]))
    assert torch.equal(y[:, 3:], x[:, :-3])
    assert 0.17 < (x > 0).float().mean() < 0.23 and x.min() >= 0 and x.max() <= 1
    x2, y2, w = delayed_recall(5, 0, 1.0, 4, 2, importance=torch.arange(5.0))
    assert torch.equal(x2, y2) and (x2 > 0).all() and w.shape == (5,)
    for kw, match in [(dict(delay=40), "delay"), (dict(feature_probability=1.5), "feature_probability"),
                      (dict(num_features=0), "num_features")]:
        args = dict(num_features=5, delay=3, feature_probability=0.2, seq_len=40, batch_size=2)
        args.update(kw)
        with pytest.raises(ValueError, match=match):
            delayed_recall(**args)


def small_rnn_by_hand(m: SmallRNN, x: torch.Tensor) -> torch.Tensor:
    """The definition, one step at a time: h_t = W_x x_t + W_h sigma(h_{t-1}); sigma_out(W_y^T h_t + b)."""
    sigma = torch.relu if m.variant == "relu" else (lambda v: v)
    h = x.new_zeros(x.shape[0], m.hidden_size)
    outs = []
    for t in range(x.shape[1]):
        h = x[:, t] @ m.W_x.T + sigma(h) @ m.W_h.T
        o = h @ readout_by_hand(m) + m.b
        outs.append(torch.relu(o) if m.variant != "linear" else o)
    return torch.stack(outs, 1)


def readout_by_hand(m):
    """W_y, W_x, or W_h^k W_x by k products (tied_readout)."""
    if m.tied_readout == "output-direction":
        w = m.W_x
        for _ in range(m.delay):
            w = m.W_h @ w
        return w
    return m.W_x if m.tied_readout == "input" else m.W_y


@pytest.mark.parametrize("variant", ["linear", "relu_readout", "relu"])
@pytest.mark.parametrize("tied,bias", [(False, True), (True, True), ("output-direction", True),
                                       ("output-direction", False), (False, False)])
def test_small_rnn_matches_its_definition(variant, tied, bias):
    m = SmallRNN(4, 3, variant, tied_readout=tied, seed=1, dtype=torch.float64, output_bias=bias, delay=2)
    if bias:
        with torch.no_grad():
            m.b.normal_(0, 0.3)
    else:
        assert "b" not in dict(m.named_parameters()) and torch.equal(m.b, torch.zeros(4, dtype=torch.float64))
    x = torch.rand(5, 9, 4, dtype=torch.float64)
    out, ref = m(x), small_rnn_by_hand(m, x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.autograd.grad(out.square().sum(), list(m.parameters()))
    gr = torch.autograd.grad(ref.square().sum(), list(m.parameters()))
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", ["linear", "relu_readout", "relu"])
@pytest.mark.parametrize("tied,bias", [(False, True), ("output-direction", False)])
def test_ensemble_equals_its_instances(variant, tied, bias):
    ens = RNNEnsemble(6, 4, 3, variant=variant, seed=2, dtype=torch.float64, tied_readout=tied, output_bias=bias,
                      delay=[1, 2, 3, 1, 2, 3])
    x = torch.rand(6, 5, 7, 4, dtype=torch.float64)
    out = ens(x)
    assert out.shape == (6, 5, 7, 4)
    for i in range(6):
        torch.testing.assert_close(out[i], ens.instance(i)(x[i]), rtol=1e-12, atol=1e-12)
    shared = ens(x[0])
    torch.testing.assert_close(shared[3], ens.instance(3)(x[0]), rtol=1e-12, atol=1e-12)


def test_initialisation_does_not_depend_on_the_number_of_instances():
    a, b = RNNEnsemble(3, 4, 5, seed=7), RNNEnsemble(11, 4, 5, seed=7)
    for name in ("W_x", "W_h", "W_y", "b"):
        assert torch.equal(getattr(a, name), getattr(b, name)[:3])
    single = SmallRNN(4, 5, generator=instance_generator(7, 2))
    assert torch.equal(single.W_h, a.W_h[2])


def test_joint_training_equals_separate_training():
    """8 instances with their own task settings, trained jointly (summed loss, Adam) and
    separately: identical parameters after 50 steps (float64)."""
    I, F, n = 8, 5, 3
    probs, delays = [0.05 + 0.1 * i for i in range(I)], [1 + i % 3 for i in range(I)]
    ens = RNNEnsemble(I, F, n, variant="relu_readout", feature_probability=probs, delay=delays, seed=3,
                      dtype=torch.float64)
    singles = [SmallRNN(F, n, "relu_readout", generator=instance_generator(3, i), dtype=torch.float64)
               for i in range(I)]
    opt = torch.optim.Adam(ens.parameters(), lr=0.01)
    opts = [torch.optim.Adam(m.parameters(), lr=0.01) for m in singles]
    gens = [torch.Generator().manual_seed(100 + i) for i in range(I)]
    gens_single = [torch.Generator().manual_seed(100 + i) for i in range(I)]
    for _ in range(50):
        x, y = ens.sample_batch(16, 12, gens)
        loss = ens.loss(ens(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for i, (m, o) in enumerate(zip(singles, opts)):
            xi, yi = delayed_recall(F, delays[i], probs[i], 12, 16, generator=gens_single[i], dtype=torch.float64)
            li = (m(xi) - yi).square().mean()
            o.zero_grad()
            li.backward()
            o.step()
    for i, m in enumerate(singles):
        for name in ("W_x", "W_h", "W_y", "b"):
            torch.testing.assert_close(getattr(ens, name)[i], getattr(m, name), rtol=0, atol=1e-13)
    assert not torch.allclose(ens.W_h, RNNEnsemble(I, F, n, seed=3, dtype=torch.float64).W_h)  # it trained


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_ensemble_on_every_backend(backend):
    dev = device_for(backend)
    ens = RNNEnsemble(3, 4, 2, variant="relu", seed=4, backend=backend, dtype=torch.float64).to(dev)
    x = torch.rand(3, 2, 5, 4, dtype=torch.float64, device=dev)
    out = ens(x)
    ens.backend = "reference"
    torch.testing.assert_close(out, ens(x), rtol=1e-12, atol=1e-12)


def test_ensemble_errors():
    with pytest.raises(ValueError, match="num_instances"):
        RNNEnsemble(0, 4, 2)
    with pytest.raises(ValueError, match="variant"):
        RNNEnsemble(2, 4, 2, variant="gelu")
    ens = RNNEnsemble(2, 4, 2)
    with pytest.raises(ValueError, match=r"x must be \[I=2, B, T, F=4\]"):
        ens(torch.rand(3, 1, 5, 4))
    with pytest.raises(ValueError, match="instance index"):
        ens.instance(2)


# --- geometry -----------------------------------------------------------------------------

def rotation(deg, r=1.0):
    t = math.radians(deg)
    return r * torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64)


def test_feature_directions_and_rotation():
    W_h = rotation(135, 0.8)
    W_x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    d = geo.feature_directions(W_x, W_h, 2)
    assert d.shape == (3, 2, 2)
    torch.testing.assert_close(d[2], (W_h @ W_h @ W_x).T)
    assert geo.total_rotation(d, 2).item() == pytest.approx(270.0)
    assert geo.spectral_radius(W_h).item() == pytest.approx(0.8)
    assert geo.rotation_angle(W_h).item() == pytest.approx(135.0)
    s = geo.summary(W_x, rotation(45), 2)
    assert s["k_theta"].item() == pytest.approx(90.0) and s["spectral_radius"].item() == pytest.approx(1.0)
    angles = geo.angles_between_features(d)
    assert angles[0, 0, 1].item() == pytest.approx(90.0)
    assert geo.angles_between_delays(d)[1, 0].item() == pytest.approx(135.0)


def test_interference():
    # one feature, k = 1: a 90-degree turn makes the recalled direction orthogonal to the
    # newest input (no interference); no turn makes them parallel (full interference)
    d = geo.feature_directions(torch.eye(2, dtype=torch.float64)[:, :1], rotation(90), 1)
    assert geo.interference(d, 1).item() == pytest.approx(0.0, abs=1e-12)
    d = geo.feature_directions(torch.eye(2, dtype=torch.float64)[:, :1], rotation(0), 1)
    assert geo.interference(d, 1).item() == pytest.approx(1.0)


# --- the experiment ---------------------------------------------------------------------

def test_phase_transition_direction_shortened(tmp_path):
    """Hidden 2, one feature, delay 2, 6 seeds, 2,000 Adam steps (the full run: 8 seeds,
    4,000 steps, README). Read off the best seed of each sparsity, k*theta sits near 90
    degrees for dense inputs and near 270 for sparse ones, and the spectral radius drops."""
    from rnnofrnns.__main__ import main

    out = tmp_path / "sp"
    assert main(["superposition", "--hidden", "2", "--features", "1", "--delay", "2", "--sparsities", "0", "0.8",
                 "0.9", "--seeds", "6", "--steps", "2000", "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    dense, *sparse = m["by_sparsity"]
    assert 60 <= dense["best_k_theta"] <= 120, dense
    for e in sparse:
        assert 225 <= e["best_k_theta"] <= 315, e
        assert e["best_spectral_radius"] < dense["best_spectral_radius"] - 0.1, e
        assert e["best_loss"] < dense["best_loss"]
    assert len(m["instances"]) == 18
    assert all(0.0 <= r["interference_free"] <= 1.0 for r in m["instances"])
    for name in ("angle_vs_sparsity.png", "spectral_radius_vs_sparsity.png", "feature_directions.png",
                 "dynamics.png"):
        assert (out / name).stat().st_size > 5_000
    dyn = json.loads((out / "dynamics.json").read_text())
    assert dyn["step"][:2] == [0, 20] and dyn["step"][-1] == 1999 and len(dyn["loss"][0]) == 18
    assert len(dyn["projections"][0][0]) == 5  # s = 0..2k
    # the ensemble's recorded loss falls, and the records are the per-instance training losses
    assert sum(dyn["loss"][-1]) < 0.8 * sum(dyn["loss"][0])
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    # the run flushed subnormals but gave the process its setting back (off by default)
    assert (torch.tensor([1e-38]) / 100).item() != 0


def test_the_config_checks_variant_and_readout_tie(tmp_path):
    from rnnofrnns.experiments.errors import UsageError
    from rnnofrnns.experiments.superposition.experiment import SuperpositionConfig

    with pytest.raises(UsageError, match="--variant must be linear, relu_readout or relu, got 'tanh'"):
        SuperpositionConfig(variant="tanh", out=str(tmp_path)).validate()
    with pytest.raises(UsageError, match="--tied-readout must be one of none, input, output-direction, got 'output'"):
        SuperpositionConfig(tied_readout="output", out=str(tmp_path)).validate()


def test_projections_read_the_delayed_directions():
    ens = RNNEnsemble(3, 2, 3, tied_readout="output-direction", delay=[1, 2, 3], seed=4, dtype=torch.float64)
    P = ens.projections(5)
    assert P.shape == (3, 5, 2)
    for i in range(3):
        w_y = ens.readout_weight()[i]
        for s in range(5):
            w_s = torch.linalg.matrix_power(ens.W_h[i], s) @ ens.W_x[i]
            torch.testing.assert_close(P[i, s], (w_y * w_s).sum(0))
        k = int(ens.delay[i])  # the tie reads its own delay's direction: |w_k|^2
        torch.testing.assert_close(P[i, k], ens.readout_weight()[i].square().sum(0))


# --- feature importance --------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["linear", "relu_readout", "relu"])
@pytest.mark.parametrize("tied", ["none", "output-direction"])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_importance_weighted_loss_fused_equals_its_definition(variant, tied, backend):
    """training_loss with importances (the fused op through sqrt(c)-scaled readout, bias and
    targets) = loss(self(x), y, importance): value and every gradient, float64."""
    I, F, n = 3, 4, 3
    imp = torch.tensor([[1.0, 0.5, 0.25, 0.0], [2.0, 1.0, 1.0, 1.0], [0.3, 0.3, 0.9, 1.5]], dtype=torch.float64)
    ens = RNNEnsemble(I, F, n, variant=variant, tied_readout=tied, delay=[1, 2, 1], seed=2, backend=backend,
                      dtype=torch.float64, importance=imp)
    x, y = ens.sample_batch(5, 7, [torch.Generator().manual_seed(i) for i in range(I)])
    params = [p for p in ens.parameters()]
    fused = ens.training_loss(x, y)
    g_fused = torch.autograd.grad(fused, params)
    want = ens.loss(ens(x), y, ens.importance)
    g_want = torch.autograd.grad(want, params)
    torch.testing.assert_close(fused, want, rtol=1e-12, atol=1e-14)
    for a, b in zip(g_fused, g_want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # a feature of importance 0 gives its readout column no gradient
    if tied == "none":
        assert float(g_fused[[i for i, p in enumerate(params) if p is ens.W_y][0]][0, :, 3].abs().max()) == 0.0


def test_importance_checks_and_old_state_dicts():
    with pytest.raises(ValueError, match=r"importance must be F = 3 or \[I, F\] = \[2, 3\] finite values >= 0"):
        RNNEnsemble(2, 3, 2, importance=[1.0, -1.0, 0.5])
    with pytest.raises(ValueError, match="importance must be"):
        RNNEnsemble(2, 3, 2, importance=[1.0, 0.5])
    ens = RNNEnsemble(2, 3, 2, importance=[1.0, 0.5, 0.25])
    assert ens.importance.shape == (2, 3)
    old = {k: v for k, v in RNNEnsemble(2, 3, 2, seed=1).state_dict().items() if k != "importance"}
    ens.load_state_dict(old)  # from before importances: every feature alike
    assert bool((ens.importance == 1).all())


def test_which_features_are_kept_is_reported(tmp_path):
    from rnnofrnns.__main__ import main

    out = tmp_path / "sp"
    assert main(["superposition", "--hidden", "2", "--features", "3", "--delay", "1", "3", "--sparsities", "0.9",
                 "--seeds", "2", "--steps", "300", "--importance-decay", "0.5", "--out", str(out),
                 "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["importance_decay"] == 0.5
    for e in m["by_sparsity"]:
        assert len(e["best_feature_recall"]) == 3 and all(v <= 1.0 for v in e["best_feature_recall"])
        assert 0 <= e["features_kept"] <= 3 and 0.0 <= e["best_partial_share"] <= 1.0
    # the most important feature is recalled at the short delay
    assert m["by_sparsity"][0]["best_feature_recall"][0] > 0.5
    assert (out / "feature_recall.png").stat().st_size > 5_000
    from rnnofrnns.experiments.errors import UsageError
    from rnnofrnns.experiments.superposition.experiment import SuperpositionConfig
    with pytest.raises(UsageError, match=r"--importance-decay must be in \(0, 1\], got 0.0"):
        SuperpositionConfig(importance_decay=0.0, out=str(tmp_path)).validate()


def test_linear_loss_decomposition_is_the_expected_loss():
    """The four parts from the weights sum to the loss measured on many sequences (float64,
    importance-weighted), and a net that recalls exactly with nothing else has only the mean part."""
    from rnnofrnns.experiments.superposition.geometry import linear_loss_decomposition
    from rnnofrnns.experiments.superposition.task import delayed_recall

    m = SmallRNN(3, 2, variant="linear", dtype=torch.float64)
    with torch.no_grad():
        m.W_h.mul_(1.5)
    x, y = delayed_recall(num_features=3, delay=2, feature_probability=0.3, seq_len=12, batch_size=100_000,
                          generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    imp = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    with torch.no_grad():
        measured = float(((m(x) - y).square() * imp).mean())
        d = linear_loss_decomposition(m.W_x, m.W_h, m.W_y, m.b, 2, 0.3, 12, imp)
    assert min(d.values()) >= 0 and d["total"] == pytest.approx(sum(v for k, v in d.items() if k != "total"))
    assert d["total"] == pytest.approx(measured, rel=0.01)
    # a shift register of 1 feature over 2 steps (n = 3): h = (x_t, x_{t-1}, x_{t-2}), read at s = 2
    W_x = torch.tensor([[1.0], [0.0], [0.0]], dtype=torch.float64)
    W_h = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.float64)
    W_y = torch.tensor([[0.0], [0.0], [1.0]], dtype=torch.float64)
    d = linear_loss_decomposition(W_x, W_h, W_y, torch.zeros(1, dtype=torch.float64), 2, 0.5, 10)
    assert d["recall"] == d["temporal_interference"] == d["spatial_interference"] == 0.0
    # before step 2 the output reads x_{t-2} = 0 of the zero state: exact, so nothing at all
    assert d["mean"] == 0.0


def test_a_linear_run_reports_the_decomposition(tmp_path):
    from rnnofrnns.__main__ import main

    out = tmp_path / "sp"
    assert main(["superposition", "--variant", "linear", "--hidden", "2", "--features", "2", "--delay", "1",
                 "--sparsities", "0.5", "--seeds", "2", "--steps", "200", "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for r in m["instances"]:
        d = r["loss_decomposition"]
        assert d["total"] == pytest.approx(r["loss"], rel=0.1)  # held-out: 1,024 sequences of 20 steps
    assert "best_loss_decomposition" in m["by_sparsity"][0]
