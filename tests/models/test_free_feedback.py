"""skew_feedback=False, the control of "results contingent on stability": both blocks of every
pair trained freely. It starts at the tied network, its gradients reach both blocks, and its
certificates, computed from the weights, fail once the blocks leave the tie."""
from __future__ import annotations

import json

import pytest
import torch

from rnnofrnns import ModularRNN, SparseComboNet
from rnnofrnns.stability import negative_feedback
from run_cli import cli


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("settings", [dict(), dict(feedback_step="euler", guarantee=False)], ids=["cayley", "euler"])
def test_the_free_net_starts_at_the_tied_one(settings):
    tied = ModularRNN(2, (4, 5), topology="gw", generator=gen(), dtype=torch.float64, **settings)
    free = ModularRNN(2, (4, 5), topology="gw", generator=gen(), dtype=torch.float64, skew_feedback=False, **settings)
    x = torch.randn(3, 6, 2, dtype=torch.float64)
    torch.testing.assert_close(free(x)[0], tied(x)[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(free.raw_feedback_blocks(), tied.raw_feedback_blocks(), rtol=1e-12, atol=1e-15)
    assert free.num_feedback_parameters() == 2 * tied.num_feedback_parameters()
    assert set(dict(free.named_parameters())) - set(dict(tied.named_parameters())) == {"B_back"}
    assert tied.certify().holds == free.certify().holds


def test_off_the_tie_the_certificates_fail_and_both_blocks_learn():
    net = SparseComboNet(2, 3, num_areas=3, area_size=4, skew_feedback=False, generator=gen(1), dtype=torch.float64)
    rnn = net.rnn
    with torch.no_grad():
        rnn.B_back.add_(0.3 * torch.randn(rnn.B_back.shape, generator=gen(2), dtype=torch.float64))
    cert = net.certify()
    M = rnn.area_metric()
    tied = negative_feedback(rnn.B * rnn.feedback_mask, rnn.pairs, M)[len(rnn.pairs):]
    assert not cert.holds and not cert.discrete_holds and cert.worst_skew > 1e-3
    assert not torch.allclose(rnn.raw_feedback_blocks()[len(rnn.pairs):], tied)
    x = torch.randn(4, 5, 2, dtype=torch.float64)
    net(x).square().sum().backward()
    assert rnn.B.grad.abs().sum() > 0 and rnn.B_back.grad.abs().sum() > 0
    # the fused op runs the free blocks as the reference does (the op takes any blocks)
    ref = ModularRNN(2, (4, 4, 4), topology="all", skew_feedback=False, generator=gen(1), dtype=torch.float64,
                     backend="reference")
    ref.load_state_dict(rnn.state_dict())
    torch.testing.assert_close(ref(x)[0], rnn(x)[0], rtol=1e-10, atol=1e-12)
    ref(x)[0].square().sum().backward()  # and the gradients of both free blocks
    rnn.B.grad, rnn.B_back.grad = None, None
    rnn(x)[0].square().sum().backward()
    for name in ("B", "B_back"):
        torch.testing.assert_close(getattr(rnn, name).grad, getattr(ref, name).grad, rtol=1e-9, atol=1e-12)
    copy = SparseComboNet(2, 3, num_areas=3, area_size=4, skew_feedback=False, generator=gen(5), dtype=torch.float64)
    copy.load_state_dict(net.state_dict())
    assert torch.equal(copy(x), net(x))


def test_what_the_free_feedback_refuses():
    with pytest.raises(ValueError, match="skew_feedback=False needs guarantee=False"):
        ModularRNN(2, (4, 5), feedback_step="euler", skew_feedback=False)
    with pytest.raises(ValueError, match="skew_feedback must be True or False, got 'no'"):
        ModularRNN(2, (4, 5), skew_feedback="no")
    free = ModularRNN(2, (4, 4), skew_feedback=False, generator=gen())
    with pytest.raises(ValueError, match="combine: part 0 has skew_feedback=False"):
        ModularRNN.combine([free, ModularRNN(2, (4, 4), generator=gen(1))])
    assert "skew_feedback=False" in repr(free)


def test_the_cli_trains_the_control_and_reports_its_certificate(tmp_path):
    small = ["--task", "row-digits", "--epochs", "2", "--num-areas", "3", "--area-size", "4", "--threads", "1",
             "--no-progress"]
    out = tmp_path / "free"
    r = cli("train", "--model", "gw", *small, "--no-skew-feedback", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "config.json").read_text())["skew_feedback"] is False
    cert = json.loads((out / "metrics.json").read_text())["certificate"]
    assert cert["holds"] is False and cert["worst_skew"] > 0  # two epochs move the blocks off the tie
    r = cli("train", "--model", "gw", *small, "--no-skew-feedback", "--feedback-step", "euler",
            "--no-learn-timescales", "--no-input-timescales", "--out", str(tmp_path / "e"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: --no-skew-feedback needs --no-guarantee")
