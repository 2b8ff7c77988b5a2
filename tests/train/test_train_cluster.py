"""Trainer on a cluster: a DDP worker group spread over two nodes of a LocalCluster."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

from trainkit import train
from trainkit.testing import LocalCluster
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer

pytestmark = pytest.mark.leaking("processes")  # idle pool workers, stopped with the cluster


def spread_loop(config: dict) -> None:
    torch.manual_seed(0)
    model = train.torch.prepare_model(nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.ones(8, 4) * (train.get_context().get_world_rank() + 1)
    for _ in range(2):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    gathered: list = [None, None]
    dist.all_gather_object(gathered, (os.environ["TRAINKIT_NODE_ID"],
                                      model.module.weight.detach().flatten().tolist()))
    train.report({"nodes": [g[0] for g in gathered], "weights": [g[1] for g in gathered]})


def test_ddp_over_two_nodes(tmp_path) -> None:
    with LocalCluster(num_cpus=1) as cluster:
        a = cluster.add_node(num_cpus=1, resources={"trainer": 1})
        b = cluster.add_node(num_cpus=1, resources={"trainer": 1})
        cluster.connect()
        result = Trainer(
            spread_loop,
            scaling_config=ScalingConfig(num_workers=2, placement_strategy="STRICT_SPREAD",
                                         resources_per_worker={"CPU": 1, "trainer": 1}),
            run_config=RunConfig(name="spread", storage_path=tmp_path)).fit()
    assert result.error is None
    assert sorted(result.metrics["nodes"]) == sorted([a, b])
    w0, w1 = result.metrics["weights"]
    assert w0 == w1  # gradients were averaged across the two nodes
