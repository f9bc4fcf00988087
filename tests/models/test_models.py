"""The modules: counts, padding, ablation, state_dict, dtypes, backends, errors."""
from __future__ import annotations

import io

import pytest
import torch

from rnnofrnns import GlobalWorkspaceNet, ModularRNN, SparseComboNet
from rnnofrnns.ops import modular_rnn
from problems import device_for


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- modules ------------------------------------------------------------------------------

def test_parameter_counts_of_the_headline_models():
    # the earlier configuration (sparse areas, euler step, the last state's readout): the counts of docs/models.md
    earlier = dict(feedback_step="euler", readout="last")
    scn = SparseComboNet(1, 10, num_areas=16, area_size=32, topology="all", generator=gen(), **earlier)
    assert scn.num_feedback_parameters() == 122_880
    assert scn.rnn.B.numel() == 122_880
    gw = GlobalWorkspaceNet(1, 10, num_areas=16, area_size=32, generator=gen(), **earlier)
    assert gw.num_feedback_parameters() == 15 * 1024
    assert GlobalWorkspaceNet(1, 10, num_areas=16, area_size=32, generator=gen()).num_feedback_parameters() == 15 * 1024
    sparse = GlobalWorkspaceNet(1, 10, feedback_sparsity=0.9, generator=gen())
    assert 0.05 * 15 * 1024 < sparse.num_feedback_parameters() < 0.15 * 15 * 1024
    total = sum(p.numel() for p in scn.parameters())
    assert 125_000 < total < 135_000  # about 130k with input and readout


def test_sparse_feedback_mask_is_applied_and_exact():
    model = GlobalWorkspaceNet(2, 3, num_areas=4, area_size=6, feedback_sparsity=0.7, generator=gen(3),
                               dtype=torch.float64)
    L = model.rnn.raw_feedback_blocks()
    mask = model.rnn.feedback_mask
    m = len(model.rnn.pairs)
    assert torch.all(L[:m][mask == 0] == 0)
    assert torch.all(L[m:][mask.transpose(1, 2) == 0] == 0)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_forward_shapes_like_nn_rnn():
    model = ModularRNN(3, (4, 5), topology="gw", generator=gen())
    x = torch.randn(2, 7, 3)
    out, h_n = model(x)
    assert out.shape == (2, 7, 20) and h_n.shape == (1, 2, 20)
    assert torch.equal(out[:, -1], h_n[0])
    out2, _ = model(x, h_n)  # h0 as nn.RNN returns it
    out3, _ = model(x, h_n[0])
    assert torch.equal(out2, out3)
    tm = ModularRNN(3, (4, 5), topology="gw", batch_first=False, generator=gen())
    out_t, _ = tm(x.transpose(0, 1))
    torch.testing.assert_close(out_t.transpose(0, 1), out)


def test_unequal_area_sizes_pad_and_padded_units_stay_zero():
    model = ModularRNN(2, [5, 3, 7], topology="all", feedback_step="euler", generator=gen(4), dtype=torch.float64)
    assert model.hidden_size == 15 and model.area_size == 7
    x = torch.randn(3, 9, 2, dtype=torch.float64)
    out, h_n = model(x)
    assert out.shape == (3, 9, 15)
    # run the op on the padded layout directly: padded units are exactly zero
    states = modular_rnn(model.drive(x.transpose(0, 1)), model.W, model.feedback_blocks(), model.L_index,
                         alpha=model.alpha, nonlinearity=model.nonlinearity, form=model.form)
    pad = ~model.live.reshape(-1)
    assert torch.equal(states[..., pad], torch.zeros_like(states[..., pad]))
    torch.testing.assert_close(states[..., ~pad].transpose(0, 1), out)
    assert model.intra_matrix().shape == (15, 15) and model.feedback_matrix().shape == (15, 15)
    assert model.metric().shape == (15,)
    cert = model.certify()
    assert cert.holds and cert.discrete_holds


def test_global_workspace_with_a_larger_workspace():
    model = GlobalWorkspaceNet(1, 4, num_areas=5, area_size=6, workspace_size=10, areas="sparse", generator=gen(5))
    assert model.rnn.area_sizes == [6, 6, 6, 6, 10]
    assert model.num_feedback_parameters() == 4 * 6 * 10
    assert model(torch.randn(2, 5, 1)).shape == (2, 4)
    assert model.certify().holds


def test_ablation_silences_areas_and_restores():
    model = ModularRNN(2, (4, 6), topology="all", generator=gen(6), dtype=torch.float64)
    x = torch.randn(3, 12, 2, dtype=torch.float64)
    h0 = torch.randn(3, 24, dtype=torch.float64)
    full, _ = model(x, h0)
    with model.ablate([1, 3]):
        out, _ = model(x, h0)
        cert = model.certify()
    silent = torch.zeros(24, dtype=torch.bool)
    silent[6:12] = silent[18:24] = True
    assert torch.equal(out[..., silent], torch.zeros_like(out[..., silent]))
    assert out[..., ~silent].abs().min() >= 0 and out[..., ~silent].abs().max() > 0
    assert not torch.allclose(out[..., ~silent], full[..., ~silent])  # the others lost their feedback
    assert cert.holds
    again, _ = model(x, h0)
    assert torch.equal(again, full)
    with pytest.raises(ValueError, match="areas to ablate"):
        with model.ablate(4):
            pass


def test_deterministic_from_a_generator_and_state_dict_round_trip():
    a = SparseComboNet(2, 3, num_areas=3, area_size=5, areas="sparse", generator=gen(7))
    b = SparseComboNet(2, 3, num_areas=3, area_size=5, areas="sparse", generator=gen(7))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    c = SparseComboNet(2, 3, num_areas=3, area_size=5, areas="sparse", generator=gen(8))
    assert not torch.equal(c.rnn.W, a.rnn.W)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    c.load_state_dict(torch.load(buf))
    x = torch.randn(4, 6, 2)
    assert torch.equal(c(x), a(x))
    assert c.certify().holds


def test_a_loaded_topology_brings_its_feedback_plan():
    """The plan the model passes to the op (read from L_index once, for fullgraph compile)
    follows a state_dict whose blocks differ: the loaded net runs the loaded topology."""
    a = SparseComboNet(2, 3, num_areas=5, area_size=4, topology="random-pairs:4", generator=gen(1))
    b = SparseComboNet(2, 3, num_areas=5, area_size=4, topology="random-pairs:4", generator=gen(2))
    assert not torch.equal(a.rnn.L_index, b.rnn.L_index) and len(a.rnn._feedback_plan.stars) == 2
    assert b.rnn._feedback_plan != a.rnn._feedback_plan
    star_a = GlobalWorkspaceNet(2, 3, num_areas=5, area_size=4, generator=gen(1))
    b.load_state_dict(a.state_dict())
    assert b.rnn._feedback_plan == a.rnn._feedback_plan
    x = torch.randn(4, 6, 2)
    assert torch.equal(b(x), a(x))
    assert star_a.rnn._feedback_plan.step == "star" and star_a.rnn._feedback_plan.hub == 4


def test_to_float64():
    model = SparseComboNet(2, 3, num_areas=3, area_size=5, areas="sparse", generator=gen(9))
    x = torch.randn(4, 6, 2)
    y32 = model(x)
    model.to(torch.float64)
    assert model.rnn.W.dtype == torch.float64 and model.rnn.L_index.dtype == torch.int64
    y64 = model(x.double())
    torch.testing.assert_close(y64.float(), y32, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["hopfield", "rate"])
def test_all_backends_agree_on_a_model(form):
    model = GlobalWorkspaceNet(2, 3, num_areas=3, area_size=5, form=form, nonlinearity="tanh",
                               generator=gen(10), dtype=torch.float64)
    x = torch.randn(2, 5, 2, dtype=torch.float64)
    results = {}
    for backend in ("reference", "cpu", "triton"):
        dev = device_for(backend)
        model.to(dev).rnn.backend = backend
        model.zero_grad()
        y = model(x.to(dev))
        y.square().sum().backward()
        results[backend] = [y.detach().cpu()] + [p.grad.detach().cpu().clone() for p in model.parameters()]
    for backend in ("cpu", "triton"):
        for a, b in zip(results[backend], results["reference"]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(area_sizes=(4, 0)), "area_sizes"), (dict(area_sizes=[3, -1]), "area_sizes"),
    (dict(topology="ring"), "topology must be"), (dict(alpha=0.0), "alpha"), (dict(form="lstm"), "form"),
    (dict(nonlinearity="gelu"), "nonlinearity"), (dict(input_size=0), "input_size"),
    (dict(gamma=1.2), "gamma"), (dict(density=0.0), "density"),
])
def test_constructor_errors_name_the_argument(kwargs, match):
    args = dict(input_size=2, area_sizes=(4, 5))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ModularRNN(**args)


def test_forward_errors():
    model = ModularRNN(2, (3, 4))
    with pytest.raises(ValueError, match=r"x must be \[B, T, input_size\] with input_size=2"):
        model(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"h0 must be \[1, B, hidden_size\]"):
        model(torch.randn(2, 5, 2), torch.zeros(2, 11))
    with pytest.raises(ValueError, match="num_areas >= 2"):
        GlobalWorkspaceNet(1, 2, num_areas=1)
    with pytest.raises(ValueError, match="fixes the topology"):
        GlobalWorkspaceNet(1, 2, topology="all")


def test_guarantee_impossible_is_reported(monkeypatch):
    """Areas that leave no feedback budget at this alpha (kappa >= 1: rare with the
    closed-form metric, so forced here) are refused at construction, not silently."""
    from rnnofrnns import stability

    monkeypatch.setattr(stability, "feedback_norm_budget", lambda alpha, rate, kappa: -0.01)
    with pytest.raises(ValueError, match="guarantee=True cannot hold at alpha=1.0"):
        ModularRNN(2, (3, 8), alpha=1.0, feedback_step="euler", generator=gen(11))
    ModularRNN(2, (3, 8), alpha=1.0, guarantee=False, generator=gen(11))  # (an euler-only setting: the euler step)  # allowed without the guarantee


# --- dtypes and autocast ----------------------------------------------------------------------

def _dtype_models():
    from rnnofrnns.models import GatedLinearNetwork, RNNEnsemble, SmallRNN
    torch.manual_seed(0)
    return [
        ("gw-default", GlobalWorkspaceNet(3, 4, num_areas=3, area_size=4, areas="svd", feedback_step="cayley",
                                          learn_timescales=True, alpha=0.5), (5, 6, 3)),
        ("scn-euler", SparseComboNet(3, 4, num_areas=3, area_size=4), (5, 6, 3)),
        ("small-rnn", SmallRNN(3, 2, variant="relu"), (5, 6, 3)),
        ("ensemble", RNNEnsemble(2, 3, 2), (5, 6, 3)),
        ("gated", GatedLinearNetwork(3, 4, 2, gate_shape="neuron"), (5, 3)),
    ]


@pytest.mark.parametrize("index", range(5), ids=[m[0] for m in _dtype_models()])
def test_models_run_under_bfloat16_autocast_with_the_recurrence_in_float32(index):
    """As torch.nn.RNN on the CPU: autocast does not reach the recurrence, which runs in the
    weights' dtype; the fused ops never see a bfloat16 tensor, and gradients flow."""
    _, net, shape = _dtype_models()[index]
    x = torch.randn(*shape)
    plain = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        out_bf16_input = net(x.to(torch.bfloat16))
    assert out.isfinite().all()
    torch.testing.assert_close(out.float(), plain, rtol=0.05, atol=0.05)  # (a bf16 readout at most)
    torch.testing.assert_close(out_bf16_input.float(), plain, rtol=0.1, atol=0.1)
    out.float().sum().backward()
    assert all(p.grad is None or p.grad.isfinite().all() for p in net.parameters())
    if isinstance(net, SparseComboNet):  # the recurrence itself: exactly the float32 one
        with torch.autocast("cpu", dtype=torch.bfloat16):
            states, _ = net.rnn(x)
        assert states.dtype == torch.float32 and torch.equal(states, net.rnn(x)[0])


@pytest.mark.parametrize("index", range(5), ids=[m[0] for m in _dtype_models()])
def test_a_wrong_input_or_model_dtype_names_x_and_the_model_dtype(index):
    _, net, shape = _dtype_models()[index]
    for dtype in (torch.float16, torch.float64, torch.int64):
        with pytest.raises(ValueError, match=f"x must have the model's dtype torch.float32, got {dtype}"):
            net(torch.zeros(*shape, dtype=dtype))
    net = net.to(torch.float16)
    with pytest.raises(ValueError, match="runs in float32 or float64, its parameters are torch.float16"):
        net(torch.zeros(*shape, dtype=torch.float16))
    net = net.to(torch.float64)
    assert net(torch.zeros(*shape, dtype=torch.float64)).dtype == torch.float64


def test_the_cayley_form_of_a_model():
    """cayley_form chooses the map a non-star topology runs: the product of its stars ("auto"
    here) or the Cayley map itself ("exact"); feedback_map() is the map that runs."""
    a = SparseComboNet(2, 3, num_areas=5, area_size=4, topology="random-pairs:4", generator=gen(1))
    b = SparseComboNet(2, 3, num_areas=5, area_size=4, topology="random-pairs:4", generator=gen(1),
                       cayley_form="exact")
    assert (a.rnn._feedback_plan.step, b.rnn._feedback_plan.step) == ("star", "dense")
    assert "cayley_form='exact'" in repr(b.rnn) and "cayley_form" not in repr(a.rnn)
    with torch.no_grad():
        a.rnn.B.mul_(20.0)  # strong feedback: the two maps part
        b.load_state_dict(a.state_dict())
    Ca, Cb = a.rnn.feedback_map(), b.rnn.feedback_map()
    assert Ca.shape == (20, 20) and (Ca - Cb).abs().max() > 1e-3
    x = torch.randn(3, 6, 2)
    assert not torch.allclose(a(x), b(x))
    with pytest.raises(ValueError, match=r"cayley_form must be one of \('auto', 'exact', 'stars', 'dense'\)"):
        SparseComboNet(2, 3, num_areas=3, area_size=4, cayley_form="pairs")
    euler = SparseComboNet(2, 3, num_areas=3, area_size=4, feedback_step="euler")
    with pytest.raises(ValueError, match="the euler step has no feedback map"):
        euler.rnn.feedback_map()
