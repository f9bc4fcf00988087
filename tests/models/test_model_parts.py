"""Models built from parts: area kinds, feedback steps and readouts as objects. The keyword
forms build the same parts, so the same calls give bitwise the same networks, state-dict keys
and certificates."""
from __future__ import annotations

import pytest
import torch

from rnnofrnns import GlobalWorkspaceNet, ModularRNN, SparseComboNet, SVDComboNet
from rnnofrnns.models.areas import SparseAreas, SVDAreas
from rnnofrnns.models.feedback import CayleyStep, EulerStep
from rnnofrnns.models.readouts import LastStateReadout


def gen():
    return torch.Generator().manual_seed(3)


SAME = [
    (dict(areas="sparse", density=0.3, gamma=0.8, feedback_step="euler", guarantee=True, guarantee_margin=0.9),
     dict(areas=SparseAreas(density=0.3, gamma=0.8), feedback=EulerStep(guarantee=True, margin=0.9))),
    (dict(areas="svd", sigma_max=0.95, feedback_step="cayley", learn_timescales=True, alpha=0.3),
     dict(areas=SVDAreas(sigma_max=0.95), feedback=CayleyStep(), learn_timescales=True, alpha=0.3)),
    (dict(feedback_step="euler", guarantee=False, alpha=[0.2, 0.3, 0.4, 0.5]),
     dict(feedback=EulerStep(guarantee=False), alpha=[0.2, 0.3, 0.4, 0.5])),
]


@pytest.mark.parametrize("keywords,parts", SAME, ids=["sparse-euler", "svd-cayley", "euler-no-guarantee"])
def test_keywords_and_parts_build_the_same_network(keywords, parts):
    a = ModularRNN(3, (4, 5), topology="gw", generator=gen(), **keywords)
    b = ModularRNN(3, (4, 5), topology="gw", generator=gen(), **parts)
    assert a.areas == b.areas and a.feedback == b.feedback
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(2, 6, 3)
    assert torch.equal(a(x)[0], b(x)[0])
    assert str(a.certify()) == str(b.certify())


def test_the_state_dict_keys_of_today():
    """Checkpoints of earlier runs load (built with the settings they were trained with): the parts
    keep the names of their tensors."""
    sparse = SparseComboNet(3, 2, num_areas=3, area_size=4, feedback_step="euler", readout="last")
    assert {"rnn.W", "rnn.M", "rnn.B", "rnn.feedback_mask", "rnn.feedback_budget", "readout.weight",
            "readout.bias"} <= set(sparse.state_dict())
    svd = SVDComboNet(3, 2, num_areas=3, area_size=4, learn_timescales=True, alpha=0.4, readout="last",
                      input_timescales=False, sigma_max=0.99)
    assert {"rnn.area_rotation_u", "rnn.area_rotation_v", "rnn.area_singular_logit", "rnn.area_log_metric",
            "rnn.timescale_logit"} <= set(svd.state_dict())
    assert isinstance(svd.readout, LastStateReadout) and isinstance(svd.rnn.feedback, CayleyStep)
    assert (svd.rnn.area_kind, svd.rnn.feedback_step, svd.rnn.sigma_max) == ("svd", "cayley", 0.99)
    assert (sparse.rnn.area_kind, sparse.rnn.feedback_step, sparse.rnn.sigma_max) == ("sparse", "euler", None)


@pytest.mark.parametrize("kw,match", [
    (dict(areas=SVDAreas(), sigma_max=0.9), r"give sigma_max to SVDAreas\(...\)"),
    (dict(areas=SparseAreas(), gamma=0.5), r"give gamma to SparseAreas\(...\)"),
    (dict(feedback=EulerStep(), guarantee=False), r"give guarantee and guarantee_margin to EulerStep"),
    (dict(feedback=CayleyStep(), feedback_step="euler"), r"give the feedback step once"),
    (dict(feedback=EulerStep(), alpha=[0.2, 0.3, 0.4]), r"needs feedback_step='cayley'"),
])
def test_parts_and_keywords_that_contradict_each_other(kw, match):
    with pytest.raises(ValueError, match=match):
        ModularRNN(3, (3, 4), **kw)


def test_the_parts_check_their_settings():
    with pytest.raises(ValueError, match=r"sigma_max must be in \(0, 1\)"):
        SVDAreas(sigma_max=1.0)
    with pytest.raises(ValueError, match=r"guarantee_margin must be in \(0, 1\]"):
        EulerStep(margin=0.0)
    with pytest.raises(ValueError, match=r"areas='svd' needs areas of equal size"):
        ModularRNN(3, [4, 4, 5], areas=SVDAreas())


def test_the_readout_sees_the_last_state_in_either_layout():
    torch.manual_seed(0)
    net = GlobalWorkspaceNet(3, 2, num_areas=3, area_size=4)
    x = torch.randn(5, 7, 3)
    logits = net(x)
    net.rnn.batch_first = False
    torch.testing.assert_close(net(x.transpose(0, 1)), logits, rtol=0, atol=0)
    out, h_n = net.rnn(x.transpose(0, 1))
    torch.testing.assert_close(net.readout(out.transpose(0, 1)), net.readout(out.transpose(0, 1), h_n))
