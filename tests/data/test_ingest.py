"""Data into training: a 2-worker Trainer reads its shards of one streaming split, and a
dataset 5x larger than the object store streams through with bounded memory."""

from __future__ import annotations

import json
import os
import resource

import numpy as np
import pytest
import torch._dynamo  # noqa: F401 - see tests/train/conftest.py: it sets an env var on import

from trainkit import data
from trainkit import train
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer

pytestmark = pytest.mark.usefixtures("data_runtime")


def loop(config: dict) -> None:
    shard = train.get_dataset_shard("train")
    rank = train.get_context().get_world_rank()
    for epoch in range(config["epochs"]):
        ids = []
        for batch in shard.iter_torch_batches(batch_size=32):
            ids += batch["id"].tolist()
        with open(os.path.join(config["out"], f"e{epoch}-r{rank}.json"), "w") as f:
            json.dump(ids, f)
        train.report({"epoch": epoch, "ids": ids})


@pytest.mark.on_ray
def test_trainer_ranks_get_every_row_once_per_epoch(tmp_path) -> None:
    ds = data.range(640, parallelism=8).map(lambda r: {"id": r["id"]})
    # Half a CPU per rank leaves one CPU of the two for the data tasks.
    out = tmp_path / "ids"
    out.mkdir()
    result = Trainer(loop, train_loop_config={"epochs": 3, "out": str(out)},
                     datasets={"train": ds},
                     scaling_config=ScalingConfig(num_workers=2,
                                                  resources_per_worker={"CPU": 0.5}),
                     run_config=RunConfig(name="ingest", storage_path=tmp_path,
                                          verbose=0)).fit()
    df = result.metrics_dataframe
    assert list(df["epoch"]) == [0, 1, 2]
    for epoch in range(3):  # every row reached exactly one rank, the ranks equally
        parts = [json.loads((out / f"e{epoch}-r{r}.json").read_text()) for r in range(2)]
        assert [len(p) for p in parts] == [320, 320]
        assert sorted(parts[0] + parts[1]) == list(range(640))


def test_five_times_the_object_store_streams_through() -> None:
    store = 256 * 2**20
    rows = 5 * store // (64 * 1024)  # rows of 64 KiB
    ds = data.range_tensor(rows, shape=(8192,), parallelism=rows // 64).map_batches(
        lambda b: {"data": b["data"] * 2}, batch_size=None)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    total = 0
    for batch in ds.iter_batches(batch_size=256):
        total += len(batch["data"])
        assert batch["data"].dtype == np.int64
    peak_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert total == rows
    assert peak_growth_mb < store / 2**20  # the driver never held the dataset
