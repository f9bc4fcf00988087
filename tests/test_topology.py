"""Topologies: pairs of areas, feedback index, block masks, their errors (rnnofrnns/topology.py)."""
from __future__ import annotations
import pytest
import torch
from rnnofrnns import topology


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_topology_pairs():
    assert len(topology.all_to_all(16)) == 120
    gw = topology.global_workspace(16)
    assert len(gw) == 15 and (gw[:, 0] == 15).all()
    assert (topology.global_workspace(5, workspace=2)[:, 0] == 2).all()
    adj = torch.zeros(4, 4, dtype=torch.bool)
    adj[0, 1] = adj[3, 2] = adj[1, 1] = True
    assert sorted(map(tuple, topology.from_adjacency(adj).tolist())) == [(1, 0), (3, 2)]
    r1 = topology.random_topology(10, 0.3, gen(1))
    assert torch.equal(r1, topology.random_topology(10, 0.3, gen(1)))
    assert 0 < len(r1) < 45
    idx = topology.feedback_index(gw)
    assert idx.shape == (30, 2) and torch.equal(idx[15:], gw.flip(1))


def test_block_mask_entries_are_exactly_zero_or_one():
    mask = topology.block_mask(15, 32, 0.8, gen(2))
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert 0.15 < mask.mean() < 0.25


@pytest.mark.parametrize("spec,match", [
    ("ring", "topology must be"), ("random:x", "needs a number"), (torch.tensor([[0, 5]]), "in \\[0, 3\\]"),
    (torch.tensor([[1, 1]]), "two different areas"), (torch.tensor([[0, 1], [1, 0]]), "unique"),
    (torch.ones(3, 3, dtype=torch.bool), "\\[4, 4\\]"),
])
def test_topology_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        topology.resolve(spec, 4)


def test_workspace_index_out_of_range():
    with pytest.raises(ValueError, match="workspace must be an area index"):
        topology.global_workspace(4, workspace=4)


def test_random_pairs_topology_has_exactly_that_many_pairs():
    from rnnofrnns import topology as topo

    g = torch.Generator().manual_seed(3)
    pairs = topo.resolve("random-pairs:15", 16, g)
    assert pairs.shape == (15, 2)
    key = {tuple(sorted(p)) for p in pairs.tolist()}
    assert len(key) == 15 and all(i != j for i, j in key)
    with pytest.raises(ValueError, match=r"count must be in \[0, 6\] for 4 areas, got 7"):
        topo.resolve("random-pairs:7", 4)
    with pytest.raises(ValueError, match="needs an integer"):
        topo.resolve("random-pairs:x", 4)
