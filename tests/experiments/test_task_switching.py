"""GatedLinearNetwork, the teachers, the gradient-flow simulator, its metrics and the
task-switching command."""
from __future__ import annotations

import json
import os

import pytest
import torch

from rnnofrnns import GatedLinearNetwork, gated_paths_reference
from rnnofrnns.__main__ import main
from rnnofrnns.experiments.task_switching.experiment import (TaskSwitchingConfig, alignment, first_time_below,
                                                             gate_regulariser, specialisation)
from rnnofrnns.experiments.task_switching.run import run_task_switching
from rnnofrnns.experiments.task_switching.tasks import blocked_curriculum, compose_mean, compose_rows, teachers


def test_teachers_are_orthogonal_rotations():
    T = teachers(20, 10, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert T.shape == (2, 10, 20)
    rows = T.reshape(20, 20)
    torch.testing.assert_close(rows @ rows.T, torch.eye(20, dtype=torch.float64) / 20)
    with pytest.raises(ValueError, match=r"num_teachers \* d_out = 3 \* 10 must be <= d_in = 20"):
        teachers(20, 10, 3)


def test_curriculum_and_compositions():
    assert blocked_curriculum(5) == [0, 1, 0, 1, 0]
    T = teachers(8, 4, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(compose_mean(T), (T[0] + T[1]) / 2)
    R = compose_rows(T)
    torch.testing.assert_close(R[:2], T[0, :2])
    torch.testing.assert_close(R[2:], T[1, 2:])


def test_specialisation_does_not_reward_two_paths_on_one_teacher():
    T = teachers(20, 10, 2, generator=torch.Generator().manual_seed(0))
    both_on_A = torch.stack([T[0], 0.5 * T[0]])
    assert alignment(both_on_A, T)[:, 0].min() > 0.99
    assert abs(specialisation(alignment(both_on_A, T)) - 0.5) < 0.01
    swapped = torch.stack([T[1], -2 * T[0]])  # a path following -T_A counts (its gate can be negative)
    assert specialisation(alignment(swapped, T)) > 0.99


def test_first_time_below():
    losses = torch.tensor([0.5, 0.3, 0.09, 0.2, 0.05])
    assert first_time_below(losses, 0.1, 0.01) == pytest.approx(0.03)
    assert first_time_below(losses, 0.01, 0.01) is None


def test_a_threshold_relative_to_the_block_s_first_loss(tmp_path, capsys):
    from rnnofrnns.experiments.task_switching.experiment import TaskSwitchingConfig, block_threshold

    losses = torch.tensor([2.0, 0.5, 0.15, 0.1])
    assert block_threshold(TaskSwitchingConfig(), losses) == 0.1
    cfg = TaskSwitchingConfig(relative_threshold=0.1)
    assert block_threshold(cfg, losses) == pytest.approx(0.2)
    assert first_time_below(losses, block_threshold(cfg, losses), 0.01) == pytest.approx(0.03)
    out = tmp_path / "run"
    assert main(["task-switching", "--regime", "flexible", "--blocks", "2", "--dt", "0.01", "--batch", "50",
                 "--relative-threshold", "0.5", "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["relative_threshold"] == 0.5 and all(t is not None for t in m["time_to_threshold"])
    assert "time to loss<0.5x first" in capsys.readouterr().out
    assert main(["task-switching", "--relative-threshold", "1.5", "--out", str(tmp_path / "bad"),
                 "--no-progress"]) == 2
    assert "--relative-threshold must be a fraction in (0, 1) of a block's first loss, got 1.5" in capsys.readouterr().err


def test_gate_regulariser_values():
    c = torch.tensor([0.7, -0.2])
    # nonneg: 0.2; norm (k=1): |c|_1 = 0.9 -> 1/2 (0.1)^2 = 0.005
    assert float(gate_regulariser(c, 1.0, 1.0, 1)) == pytest.approx(0.2 + 0.005)
    neuron = torch.tensor([[0.5, 1.0], [0.5, 1.0]])  # norms per neuron 1 and 2
    assert float(gate_regulariser(neuron, 0.0, 2.0, 1)) == pytest.approx(1.0)


@pytest.mark.parametrize("gate_shape", ["path", "neuron"])
def test_gated_linear_network_forward_grads_state_dict(gate_shape):
    g = torch.Generator().manual_seed(0)
    net = GatedLinearNetwork(6, 4, 3, gate_shape, generator=g).double()
    assert net.c.shape == ((3,) if gate_shape == "path" else (3, 4))
    assert torch.all(net.c == 0.5)
    x = torch.randn(5, 6, dtype=torch.float64, generator=g)
    y = net(x)
    c = net.c if gate_shape == "path" else net.c.expand(5, 3, 4)
    ref = gated_paths_reference(x, net.W, c)
    torch.testing.assert_close(y, ref)
    grads = torch.autograd.grad(y.square().sum(), (net.W, net.c))
    ref_grads = torch.autograd.grad(ref.square().sum(), (net.W, net.c))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    other = GatedLinearNetwork(6, 4, 3, gate_shape).double()
    other.load_state_dict(net.state_dict())
    torch.testing.assert_close(other(x), y)
    with pytest.raises(ValueError, match=r"x must be \[B, d_in\] = \[B, 6\]"):
        net(torch.randn(5, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="gate_shape must be 'path' or 'neuron'"):
        GatedLinearNetwork(6, 4, 3, "sample")


def test_regimes_separate_in_the_expected_direction(tmp_path):
    """A shortened run (10 blocks, dt 4e-3, batch 100) of both regimes: the flexible
    network specialises and adapts fast after switches, the forgetful one does not."""
    res = {}
    for regime in ("flexible", "forgetful"):
        cfg = TaskSwitchingConfig(regime=regime, blocks=10, dt=4e-3, batch=100, out=str(tmp_path / regime),
                                  progress=False)
        res[regime] = run_task_switching(cfg, log=lambda s: None)
    flex, forget = res["flexible"], res["forgetful"]
    assert flex["config"]["tau_c"] == 0.03 and forget["config"]["tau_c"] == forget["config"]["tau_w"]
    assert forget["config"]["lambda_norm"] == 0.0
    t_flex, t_forget = flex["time_to_threshold"], forget["time_to_threshold"]
    assert t_flex[0] is not None and t_flex[0] > 0.6          # slow at first
    assert t_flex[-1] < 0.3 and t_flex[-1] < t_flex[0] / 3    # fast after the switches ...
    assert all(t is not None and t > 0.4 for t in t_forget[-4:])  # ... unlike the forgetful net
    assert flex["final_specialisation"] > 0.9
    assert forget["final_specialisation"] < 0.75
    for regime in res:
        assert os.path.getsize(tmp_path / regime / "task_switching.png") > 10_000


def test_cli_writes_metrics_plot_and_compose(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["task-switching", "--regime", "flexible", "--blocks", "2", "--dt", "0.01", "--batch", "50",
                 "--compose", "--compose-length", "0.2", "--out", str(out), "--no-progress"])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["blocks"]) == 2 and len(m["time_to_threshold"]) == 2
    assert set(m["compose"]) == {"mean", "rows"}
    assert {"final_specialisation", "final_loss", "final_gates", "final_alignment"} <= set(m)
    assert (out / "task_switching.png").exists() and (out / "network.pt").exists()
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    assert main(["task-switching", "--tau-w", "-1", "--out", str(tmp_path / "bad"), "--no-progress"]) == 2  # a bad argument, like argparse's
    assert "--tau-w must be a positive number, got -1.0" in capsys.readouterr().err


def test_neuron_specialisation_is_per_output_neuron():
    from rnnofrnns.experiments.task_switching.experiment import network_specialisation

    T = teachers(20, 10, 2, generator=torch.Generator().manual_seed(0))
    # neurons 0-4 route teacher A through path 1, neurons 5-9 through path 2
    W = torch.stack([torch.cat([T[0, :5], T[1, 5:]]), torch.cat([T[1, :5], T[0, 5:]])])
    assert network_specialisation(W, T, "neuron") > 0.99
    assert abs(network_specialisation(W, T, "path") - 0.5) < 0.01   # no path follows one teacher
    both_on_A = torch.stack([T[0], T[0]])
    assert abs(network_specialisation(both_on_A, T, "neuron") - 0.5) < 0.01


def test_neuron_gates_solve_the_row_composition_by_gates_alone(tmp_path):
    """Per-neuron gates with the flexible settings scaled per neuron (tau_c / 10,
    regulariser / d_out): they specialise, and the gates alone then solve the task whose rows
    come from two teachers, which path gates cannot."""
    cfg = TaskSwitchingConfig(regime="flexible", gate_shape="neuron", tau_c=0.003, lambda_norm=0.091,
                              lambda_nonneg=0.0091, blocks=8, batch=100, compose=True, compose_length=1.0,
                              out=str(tmp_path / "neuron"), progress=False)
    m = run_task_switching(cfg, log=lambda s: None)
    assert m["final_specialisation"] > 0.9
    rows = m["compose"]["rows"]
    assert rows["initial_loss"] > 0.15 and rows["time_to_threshold"] is not None and rows["final_loss"] < 0.05


def test_fc_network_flexible_and_forgetful_separate(tmp_path):
    """The two-layer fully-connected network (W2 with the gates' constraints and timescale):
    flexible switching becomes fast and the hidden units split between the teachers; the
    forgetful control stays slow with every unit on one teacher. Shortened: 10 blocks."""
    from rnnofrnns.experiments.task_switching.fc import selector_mass, unit_alignment

    res = {}
    for regime in ("flexible", "forgetful"):
        cfg = TaskSwitchingConfig(regime=regime, network="fc", blocks=10, out=str(tmp_path / regime), progress=False)
        res[regime] = run_task_switching(cfg, log=lambda s: None)
        assert (tmp_path / regime / "task_switching.png").exists() and (tmp_path / regime / "network.pt").exists()
    flex, forget = res["flexible"], res["forgetful"]
    late = lambda m: [t if t is not None else 1.0 for t in m["time_to_threshold"][-3:]]  # noqa: E731
    assert max(late(flex)) < 0.12 and min(late(forget)) > 0.25
    assert flex["time_to_threshold"][0] > 0.4  # it starts slow: the speed is learned
    assert flex["final_specialisation"] > 0.75 > forget["final_specialisation"]
    assert min(flex["units_per_teacher"]) >= 5 and max(forget["units_per_teacher"]) >= 18
    assert all(e["w2_mass_on_current_task"] > 0.5 for e in flex["blocks"][-4:])
    # the metrics on a constructed case: units 0-1 copy teacher rows, W2 puts its mass on unit 1
    T = torch.eye(4)[:, None, :].repeat(1, 1, 1)[:2]  # two teachers of one row each: e0 and e1
    W1 = torch.tensor([[2.0, 0, 0, 0], [0, -3.0, 0, 0]])
    assert torch.allclose(unit_alignment(W1, T), torch.eye(2))
    assert torch.allclose(selector_mass(torch.tensor([[1.0, 3.0]]), torch.tensor([0, 1]), 2), torch.tensor([0.25, 0.75]))


def test_image_network_flexible_and_forgetful_separate(tmp_path):
    """A gated readout of frozen CNN features of the bundled MNIST images: the extractor is
    trained (and saved) by the first run and reused by the second; flexible switching becomes
    fast with one path per task, the forgetful control relearns every switch. Shortened: 4
    blocks of 400 steps."""
    short = dict(network="image", blocks=4, block_length=40.0, progress=False)
    flex = run_task_switching(TaskSwitchingConfig(regime="flexible", out=str(tmp_path / "f"), **short),
                              log=lambda s: None)
    assert flex["feature_extractor"]["test_accuracy"] > 0.85 and (tmp_path / "f" / "features.pt").exists()
    forget = run_task_switching(TaskSwitchingConfig(regime="forgetful", out=str(tmp_path / "g"),
                                                    features=str(tmp_path / "f" / "features.pt"), **short),
                                log=lambda s: None)
    assert not (tmp_path / "g" / "features.pt").exists()  # reused, not retrained
    assert max(flex["steps_to_90_percent"][-2:]) <= 51 < min(forget["steps_to_90_percent"][-2:])
    assert flex["specialisation"] > 0.85 and forget["specialisation"] < 0.65
    g_last, g_prev = flex["blocks"][-1]["gates"], flex["blocks"][-2]["gates"]
    assert (g_last[0] - g_last[1]) * (g_prev[0] - g_prev[1]) < 0  # the gates select the other path
    assert abs(forget["final_gates"][0] - forget["final_gates"][1]) < 1e-3  # both paths learn alike
    assert (tmp_path / "f" / "task_switching.png").exists()


def test_image_network_refuses_a_bad_feature_file(tmp_path):
    from rnnofrnns.experiments.errors import RunError

    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match="--features .*bad.pt is not a feature extractor"):
        run_task_switching(TaskSwitchingConfig(network="image", blocks=1, block_length=1.0, progress=False,
                                               features=str(tmp_path / "bad.pt"), out=str(tmp_path / "o")))
