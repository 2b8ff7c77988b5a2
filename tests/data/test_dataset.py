"""Datasets end to end on the runtime: every transform against a plain Python reference,
consumption, splits, actor pools and failures."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

import trainkit as tk
from trainkit import data

pytestmark = pytest.mark.usefixtures("data_runtime")

ROWS = [{"a": i, "b": float(i) * 0.5, "s": f"r{i % 7}"} for i in range(1000)]


def _ds() -> data.Dataset:
    return data.from_items(ROWS, parallelism=7)


def _sorted(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["a"], r.get("k", 0)))


@pytest.mark.on_ray
def test_transforms_match_python() -> None:
    def double(batch: dict) -> dict:
        return {"a": batch["a"] * 2, "b": batch["b"]}

    got = _ds().map_batches(double, batch_size=64).take_all()
    assert got == [{"a": r["a"] * 2, "b": r["b"]} for r in ROWS]
    got = _ds().map(lambda r: {"a": r["a"] + 1}).take_all()
    assert got == [{"a": r["a"] + 1} for r in ROWS]
    got = _ds().filter(lambda r: r["a"] % 3 == 0).take_all()
    assert got == [r for r in ROWS if r["a"] % 3 == 0]
    got = _ds().flat_map(lambda r: [{"a": r["a"], "k": k} for k in range(r["a"] % 3)]).take_all()
    assert got == [{"a": r["a"], "k": k} for r in ROWS for k in range(r["a"] % 3)]
    got = _ds().add_column("c", lambda df: df["a"] * 10).take(3)
    assert [r["c"] for r in got] == [0, 10, 20]
    assert _ds().drop_columns(["s"]).columns() == ["a", "b"]
    assert _ds().select_columns(["s", "a"]).columns() == ["s", "a"]
    assert _ds().limit(13).count() == 13
    assert [r["a"] for r in _ds().limit(5).take_all()] == [0, 1, 2, 3, 4]


def test_all_to_all_ops() -> None:
    shuffled = _ds().random_shuffle(seed=0).take_all()
    assert _sorted(shuffled) == ROWS and shuffled != ROWS
    assert _ds().random_shuffle(seed=0).take_all() == shuffled  # seeded
    parts = _ds().repartition(4)
    assert parts.take_all() == ROWS
    both = _ds().union(_ds().limit(10))
    assert both.count() == 1010
    train, test = _ds().train_test_split(test_size=0.25)
    assert train.count() == 750 and test.count() == 250
    splits = _ds().split(3, equal=True)
    assert [s.count() for s in splits] == [333, 333, 333]
    m = _ds().map(lambda r: {"a": r["a"]}).materialize()
    assert m.count() == 1000 and m.take(2) == [{"a": 0}, {"a": 1}]


def test_consumption_apis() -> None:
    ds = data.range(1000, parallelism=5)
    assert ds.count() == 1000
    batches = list(ds.iter_batches(batch_size=300))
    assert [len(b["id"]) for b in batches] == [300, 300, 300, 100]
    assert np.concatenate([b["id"] for b in batches]).tolist() == list(range(1000))
    assert [len(b["id"]) for b in ds.iter_batches(batch_size=300, drop_last=True)] == [300] * 3
    shuffled = np.concatenate([b["id"] for b in ds.iter_batches(
        batch_size=100, local_shuffle_buffer_size=200, local_shuffle_seed=1)])
    assert sorted(shuffled.tolist()) == list(range(1000)) and shuffled.tolist() != list(range(1000))
    assert ds.take_batch(4)["id"].tolist() == [0, 1, 2, 3]
    assert len(ds.to_pandas()) == 1000
    assert ds.schema().names == ["id"]
    torch_batches = list(ds.iter_torch_batches(batch_size=500))
    assert [tuple(b["id"].shape) for b in torch_batches] == [(500,), (500,)]
    assert "ReadRange" in ds.stats() or "Range" in ds.stats()


def test_images_normalized_in_tasks() -> None:
    images = np.random.default_rng(0).integers(0, 255, (500, 8, 8, 3), dtype=np.uint8)
    ds = data.from_numpy(images).map_batches(
        lambda b: {"data": b["data"].astype(np.float32) / 255.0}, batch_size=128)
    out = np.concatenate([b["data"] for b in ds.iter_batches(batch_size=100)])
    assert out.shape == (500, 8, 8, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, images.astype(np.float32) / 255.0)


class AddGpuId:
    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.gpu = tk.get_gpu_ids()

    def __call__(self, batch: dict) -> dict:
        return {"id": batch["id"] + self.offset,
                "gpu": np.full(len(batch["id"]), self.gpu[0], dtype=np.int64),
                "pid": np.full(len(batch["id"]), os.getpid(), dtype=np.int64)}


def test_actor_pool_gets_distinct_gpus() -> None:
    ds = data.range(400, parallelism=8).map_batches(
        AddGpuId, fn_constructor_kwargs={"offset": 1}, concurrency=2, num_gpus=1,
        num_cpus=0, batch_size=50)
    rows = ds.take_all()
    assert sorted(r["id"] for r in rows) == list(range(1, 401))
    by_pid = {}
    for r in rows:
        by_pid.setdefault(r["pid"], set()).add(r["gpu"])
    assert len(by_pid) == 2  # two actors, each with one instance
    assert sorted(g for gpus in by_pid.values() for g in gpus) == [0, 1]


@pytest.mark.on_ray
def test_streaming_split_delivers_each_row_once_per_epoch() -> None:
    from concurrent.futures import ThreadPoolExecutor

    its = data.range(1201, parallelism=9).streaming_split(3, equal=True)

    def consume(it: data.DataIterator) -> list[int]:  # one epoch of one consumer
        return [int(i) for b in it.iter_batches(batch_size=64) for i in b["id"]]

    with ThreadPoolExecutor(3) as pool:  # consumers run side by side, as ranks do
        for _epoch in range(3):
            parts = list(pool.map(consume, its))
            assert [len(p) for p in parts] == [400, 400, 400]  # equal; 1 row left over
            seen = sorted(i for p in parts for i in p)
            assert len(set(seen)) == 1200 and set(seen) <= set(range(1201))


def flaky_batch(batch: dict, marker: str) -> dict:
    if batch["id"][0] == 500 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # the worker dies mid-epoch
    return batch


def test_a_killed_data_worker_loses_and_duplicates_nothing(tmp_path) -> None:
    marker = str(tmp_path / "died")
    ds = data.range(1000, parallelism=10).map_batches(
        flaky_batch, fn_kwargs={"marker": marker}, batch_size=None)
    ids = [int(i) for b in ds.iter_batches(batch_size=100) for i in b["id"]]
    assert os.path.exists(marker)
    assert ids == list(range(1000))


def test_bad_batches_name_the_operator() -> None:
    def bad(batch: dict) -> list:
        return [1, 2, 3]

    with pytest.raises(Exception, match=r"map_batches\(bad\).*list"):
        data.range(10).map_batches(bad).take_all()
    with pytest.raises(ValueError, match="batch_format"):
        data.range(10).map_batches(lambda b: b, batch_format="arrow")


def test_parquet_round_trip(tmp_path) -> None:
    rng = random.Random(0)
    rows = [{"x": rng.random(), "y": i} for i in range(300)]
    files = data.from_items(rows, parallelism=3).write_parquet(str(tmp_path / "out"))
    assert len(files) == 3
    # Blocks a filter empties make no file.
    some = data.from_items(rows, parallelism=3).filter(lambda r: r["y"] < 100)
    assert len(some.write_parquet(str(tmp_path / "some"))) == 1
    back = data.read_parquet(str(tmp_path / "out"))
    assert back.count() == 300
    assert sorted(back.take_all(), key=lambda r: r["y"]) == rows
    assert data.read_parquet(str(tmp_path / "out"), columns=["y"]).columns() == ["y"]


def test_udf_batches_are_writable_unless_zero_copy() -> None:
    def inplace(batch: dict) -> dict:
        batch["id"] += 1
        return batch

    assert [r["id"] for r in data.range(5).map_batches(inplace).take_all()] == [1, 2, 3, 4, 5]

    def readonly(batch: dict) -> dict:
        return {"w": np.array([batch["id"].flags.writeable] * len(batch["id"]))}

    rows = data.range(5).map_batches(readonly, zero_copy_batch=True).take_all()
    assert not any(r["w"] for r in rows)


def test_a_lagging_consumer_is_named() -> None:
    fast, _slow = data.range(2000, override_num_blocks=20).streaming_split(
        2, lag_timeout_s=1.0)
    with pytest.raises(Exception, match=r"ranks \[1\] have not taken their blocks"):
        for _ in fast.iter_batches(batch_size=10):
            pass
