"""train.torch helpers that need no process group."""

from __future__ import annotations

import pytest
import torch

from trainkit import train
from trainkit.train._session import Session
from trainkit.train._session import TrainContext
from trainkit.train._session import set_session


def _session(use_gpu: bool) -> Session:
    ctx = TrainContext(world_size=1, world_rank=0, local_rank=0, local_world_size=1,
                       node_rank=0, experiment_name="x", run_path="/tmp")
    return Session(ctx, None, {}, lambda m, c: None, use_gpu)


def test_a_cpu_run_trains_on_the_cpu_even_where_cuda_exists(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    set_session(_session(use_gpu=False))
    try:
        assert train.torch.get_device() == torch.device("cpu")
    finally:
        set_session(None)


def test_prepare_on_one_rank_keeps_model_and_batches() -> None:
    set_session(_session(use_gpu=False))
    try:
        model = torch.nn.Linear(2, 1)
        assert train.torch.prepare_model(model) is model  # one rank: no DDP wrapper
        loader = torch.utils.data.DataLoader(list(range(10)), batch_size=4)
        prepared = train.torch.prepare_data_loader(loader)
        assert len(prepared) == 3
        assert [b.tolist() for b in prepared] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        with pytest.raises(ValueError, match="parallel_strategy"):
            train.torch.prepare_model(model, parallel_strategy="fsdp")
    finally:
        set_session(None)
