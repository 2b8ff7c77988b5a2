"""Ray Data's surface (issue 16): iterator(), show(), schema(), concurrency= and compute
strategies, DataContext, random_sample, sort, groupby, add_column, repartition(shuffle=),
generator UDFs, zero-copy batches, rows without columns, and the errors for bad input."""

from __future__ import annotations

import os
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from trainkit import data
from trainkit.data._aggregate import Aggregation
from trainkit.data._aggregate import aggregate
from trainkit.data._aggregate import sample_mask
from trainkit.data._aggregate import split_groups
from trainkit.data._block import seal_block
from trainkit.data._block import unseal_block
from trainkit.data._compute import resolve_compute

ROWS = [{"k": i % 5, "x": float(i), "g": f"g{i % 3}"} for i in range(200)]
FRAME = pd.DataFrame(ROWS)


# --- pure parts -------------------------------------------------------------------------------


def test_aggregate_matches_pandas() -> None:
    table = pa.Table.from_pandas(FRAME, preserve_index=False)
    aggs = [Aggregation("count"), Aggregation("sum", "x"), Aggregation("min", "x"),
            Aggregation("max", "x"), Aggregation("mean", "x"), Aggregation("std", "x")]
    got = aggregate(table, ["k"], aggs, "groupby").to_pandas()
    want = FRAME.groupby("k")["x"].agg(["count", "sum", "min", "max", "mean", "std"])
    assert got.columns.tolist() == ["k", "count()", "sum(x)", "min(x)", "max(x)", "mean(x)",
                                    "std(x)"]
    assert got["k"].tolist() == want.index.tolist()
    for ours, theirs in zip(got.columns[1:], want.columns, strict=True):
        np.testing.assert_allclose(got[ours].to_numpy(), want[theirs].to_numpy())
    whole = aggregate(table, [], [Aggregation("count")], "groupby").to_pylist()
    assert whole == [{"count()": 200}]
    with pytest.raises(ValueError, match=r"no column 'nope'.*\['k', 'x', 'g'\]"):
        aggregate(table, ["nope"], aggs, "groupby")


def test_groups_are_never_cut_and_samples_are_seeded() -> None:
    table = pa.table({"k": sorted([i % 7 for i in range(100)])})
    parts = split_groups(table, ["k"], 3)
    assert sum(p.num_rows for p in parts) == 100
    starts = [p.column("k")[0].as_py() for p in parts]
    ends = [p.column("k")[-1].as_py() for p in parts]
    assert all(e < s for e, s in zip(ends, starts[1:], strict=False))  # no group in two parts
    assert (sample_mask(50, 0.5, 3, 1) == sample_mask(50, 0.5, 3, 1)).all()
    assert not (sample_mask(50, 0.5, 3, 1) == sample_mask(50, 0.5, 3, 2)).all()


def test_blocks_without_columns_keep_their_rows_through_pickle() -> None:
    import pickle

    empty = pa.table({"a": [1, 2, 3]}).drop_columns(["a"])
    back = unseal_block(pickle.loads(pickle.dumps(seal_block(empty))))
    assert back.num_rows == 3 and back.num_columns == 0 and back.schema.metadata is None


class Doubler:
    def __call__(self, batch: dict) -> dict:
        return {"id": batch["id"] * 2}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"concurrency": 0}, r"concurrency is 0, but must be an int >= 1"),
    ({"concurrency": (3, 1)}, r"concurrency is \(3, 1\), but min 3 is more than max 1.*\(1, 3\)"),
    ({"concurrency": (1, 2), "compute": data.ActorPoolStrategy(size=2)}, r"give one"),
    ({"max_concurrency": 0}, r"max_concurrency is 0"),
    ({"concurrency": "2"}, r"concurrency is '2'"),
])
def test_bad_concurrency_fails_at_the_call(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_compute("map_batches(Doubler)", Doubler, is_class=True,
                        **{"concurrency": None, "compute": None, "max_concurrency": None,
                           **kwargs})


def test_compute_strategies_resolve() -> None:
    how = resolve_compute("m", Doubler, concurrency=(1, 4), compute=None, max_concurrency=2,
                          is_class=True)
    assert (how.actors, how.min_size, how.max_size, how.max_concurrency) == (True, 1, 4, 2)
    how = resolve_compute("m", len, concurrency=3, compute=None, max_concurrency=None,
                          is_class=False)
    assert (how.actors, how.task_limit) == (False, 3)
    how = resolve_compute("m", len, concurrency=None, max_concurrency=None, is_class=False,
                          compute=data.ActorPoolStrategy(min_size=2, max_size=3))
    assert (how.actors, how.min_size, how.max_size) == (True, 2, 3)
    with pytest.raises(ValueError, match="min_size 3 is more than max_size 1"):
        data.ActorPoolStrategy(min_size=3, max_size=1)
    with pytest.raises(ValueError, match="give size for a fixed pool"):
        data.ActorPoolStrategy(size=2, max_size=3)
    with pytest.raises(ValueError, match=r"autoscaled range.*callable classes"):
        resolve_compute("m", len, concurrency=(1, 2), compute=None, max_concurrency=None,
                        is_class=False)


def test_data_context_is_one_per_process() -> None:
    ctx = data.DataContext.get_current()
    assert ctx is data.DataContext.get_current()
    assert ctx.execution_options.preserve_order is True
    assert ctx.execution_options.resource_limits.object_store_memory is None
    with pytest.raises(ValueError, match="object_store_memory is -1"):
        data.ExecutionResources(object_store_memory=-1)


# --- end to end -------------------------------------------------------------------------------


def _ds() -> data.Dataset:
    return data.from_items(ROWS, override_num_blocks=4)


@pytest.mark.usefixtures("data_runtime")
def test_iterator_show_and_schema(capsys: pytest.CaptureFixture[str]) -> None:
    ds = data.range(100, override_num_blocks=5).map_batches(lambda b: b)
    it = ds.iterator()
    assert isinstance(it, data.DataIterator)
    for _epoch in range(2):  # each call is one pass
        got = np.concatenate([b["id"] for b in it.iter_batches(batch_size=30)])
        assert got.tolist() == list(range(100))
    assert [r["id"] for r in it.iter_rows()] == list(range(100))
    assert sum(len(b["id"]) for b in it.iter_torch_batches(batch_size=40)) == 100
    m = it.materialize()
    assert isinstance(m, data.Dataset) and m.count() == 100 and m.take(2) == [{"id": 0},
                                                                             {"id": 1}]
    schema = ds.schema()
    assert schema.names == ["id"] and schema.metadata is None  # no trainkit.cpu_s
    assert it.schema().metadata is None and m.schema().metadata is None
    assert ds.to_arrow().schema.metadata is None
    data.range(3).show()
    data.range(30).show(limit=2)
    assert capsys.readouterr().out == "{'id': 0}\n{'id': 1}\n{'id': 2}\n{'id': 0}\n{'id': 1}\n"


class AddPid:
    def __init__(self, offset: int = 0) -> None:
        self.offset = offset

    def __call__(self, row: dict) -> dict:
        return {**row, "x": row["x"] + self.offset, "pid": os.getpid()}


class Slow:
    """Holds each batch until two calls run at once on one actor (max_concurrency=2)."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=30)

    def __call__(self, batch: dict) -> dict:
        self.barrier.wait()
        return {"id": batch["id"], "pid": np.full(len(batch["id"]), os.getpid())}


@pytest.mark.usefixtures("data_runtime")
def test_concurrency_and_compute_strategies() -> None:
    rows = _ds().map(AddPid, fn_constructor_kwargs={"offset": 1}, concurrency=2,
                     num_cpus=0.5).take_all()
    assert [r["x"] for r in rows] == [r["x"] + 1 for r in ROWS]
    assert len({r["pid"] for r in rows}) == 2
    kept = _ds().filter(lambda r: r["k"] == 1, concurrency=1).take_all()
    assert kept == [r for r in ROWS if r["k"] == 1]
    flat = _ds().flat_map(lambda r: [r, r], concurrency=2).count()
    assert flat == 400
    auto = data.range(64, override_num_blocks=8).map_batches(
        Doubler, concurrency=(1, 2), num_cpus=0.5, batch_size=None).take_all()
    assert [r["id"] for r in auto] == [2 * i for i in range(64)]
    on_pool = data.range(20, override_num_blocks=4).map_batches(
        lambda b: {"id": b["id"] + 1}, compute=data.ActorPoolStrategy(size=1), num_cpus=0.5)
    assert [r["id"] for r in on_pool.take_all()] == list(range(1, 21))
    # Two blocks wait for each other inside one actor: only max_concurrency=2 lets them meet.
    both = data.range(2, override_num_blocks=2).map_batches(
        Slow, concurrency=1, max_concurrency=2, num_cpus=0.5, batch_size=None).take_all()
    assert sorted(r["id"] for r in both) == [0, 1] and len({r["pid"] for r in both}) == 1
    with pytest.raises(ValueError, match=r"concurrency is 0, but must be an int >= 1"):
        data.range(4).map(lambda r: r, concurrency=0)
    with pytest.raises(ValueError, match=r"min 3 is more than max 1"):
        data.range(4).map_batches(Doubler, concurrency=(3, 1))


@pytest.mark.usefixtures("data_runtime")
def test_data_context_order_and_memory_limit() -> None:
    ctx = data.DataContext.get_current()
    try:
        ctx.execution_options.preserve_order = False
        ctx.execution_options.resource_limits.object_store_memory = 64 * 1024
        ds = data.range(2000, override_num_blocks=20).map_batches(lambda b: b)
        assert sorted(r["id"] for r in ds.take_all()) == list(range(2000))
        its = ds.streaming_split(2, equal=False)  # the coordinator gets the driver's context
        got = [int(i) for it in its for b in it.iter_batches() for i in b["id"]]
        assert sorted(got) == list(range(2000))
    finally:
        data.DataContext._set_current(None)
    assert data.DataContext.get_current().execution_options.preserve_order is True


@pytest.mark.usefixtures("data_runtime")
def test_sample_sort_groupby_match_pandas() -> None:
    sample = _ds().random_sample(0.3, seed=7).take_all()
    assert sample == _ds().random_sample(0.3, seed=7).take_all()  # seeded
    assert 20 < len(sample) < 110 and all(r in ROWS for r in sample)
    assert _ds().random_sample(0.0).count() == 0 and _ds().random_sample(1).count() == 200
    got = _ds().sort(["k", "x"], descending=[True, False]).to_pandas()
    want = FRAME.sort_values(["k", "x"], ascending=[False, True]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    assert [r["x"] for r in _ds().sort("x", descending=True).take(3)] == [199.0, 198.0, 197.0]
    counts = _ds().groupby("g").count().to_pandas()
    assert counts.to_dict("list") == {"g": ["g0", "g1", "g2"],
                                      "count()": FRAME.groupby("g").size().tolist()}
    for fn in ("sum", "min", "max", "mean", "std"):
        got_fn = getattr(_ds().groupby("k"), fn)("x").to_pandas()
        np.testing.assert_allclose(got_fn[f"{fn}(x)"], getattr(FRAME.groupby("k")["x"], fn)())
    assert _ds().groupby(None).count().take_all() == [{"count()": 200}]

    def spread(group: dict) -> dict:
        return {"k": group["k"][:1], "spread": [group["x"].max() - group["x"].min()]}

    spreads = _ds().groupby("k").map_groups(spread).to_pandas()
    want_spread = FRAME.groupby("k")["x"].agg(lambda s: s.max() - s.min())
    assert spreads["k"].tolist() == [0, 1, 2, 3, 4]
    assert spreads["spread"].tolist() == want_spread.tolist()
    with pytest.raises(Exception, match=r"no column 'nope'.*\['k', 'x', 'g'\]"):
        _ds().sort("nope").take_all()
    with pytest.raises(Exception, match=r"no column 'nope'"):
        _ds().groupby("nope").count().take_all()
    with pytest.raises(ValueError, match=r"fraction is 1.5, but must be a number in \[0, 1\]"):
        _ds().random_sample(1.5)


@pytest.mark.usefixtures("data_runtime")
def test_add_column_repartition_and_dropping_every_column() -> None:
    got = _ds().add_column("y", lambda df: df["x"] * 2).to_pandas()
    assert got["y"].tolist() == (FRAME["x"] * 2).tolist()
    parts = _ds().repartition(3, shuffle=True)
    shuffled = parts.take_all()
    assert shuffled != ROWS and sorted(shuffled, key=lambda r: r["x"]) == ROWS
    assert _ds().repartition(5).take_all() == ROWS
    bare = _ds().drop_columns(["k", "x", "g"])
    assert bare.count() == 200 and bare.take(2) == [{}, {}]
    assert bare.map_batches(lambda b: b).count() == 200
    assert bare.materialize().count() == 200


@pytest.mark.usefixtures("data_runtime")
def test_generators_zero_copy_and_clear_errors() -> None:
    def halves(batch: dict):  # type: ignore[no-untyped-def]
        n = len(batch["id"]) // 2
        yield {"id": batch["id"][:n]}
        yield {"id": batch["id"][n:]}

    out = list(data.range(40, override_num_blocks=2).map_batches(halves, batch_size=10)
               .iter_batches(batch_size=None))
    assert np.concatenate([b["id"] for b in out]).tolist() == list(range(40))

    def yields_int(batch: dict):  # type: ignore[no-untyped-def]
        yield 3

    with pytest.raises(Exception, match=r"map_batches\(yields_int\).*yield #0 was a builtins.int"
                                        r" \(3\); each yield must be one batch"):
        data.range(4).map_batches(yields_int).take_all()

    def writable(batch: dict) -> dict:
        return {"w": np.array([batch["s"].flags.writeable] * len(batch["s"]))}

    strings = data.from_items([{"s": "a"}, {"s": "b"}])
    assert not any(r["w"] for r in strings.map_batches(writable, zero_copy_batch=True)
                   .take_all())
    assert all(r["w"] for r in strings.map_batches(writable).take_all())

    def wrong_key(batch: dict) -> dict:
        return {"y": batch["nope"]}

    with pytest.raises(Exception, match=r"looked up 'nope', but the batch's columns are "
                                        r"\['k', 'x', 'g'\]"):
        _ds().map_batches(wrong_key).take_all()
    with pytest.raises(Exception, match=r"looked up 'nope', but the row's columns are"):
        _ds().map(lambda r: {"y": r["nope"]}).take_all()


@pytest.mark.usefixtures("data_runtime")
def test_a_bad_csv_names_the_file_and_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow.csv as pcsv

    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3,4\n5,6,7\n")
    with pytest.raises(Exception, match=r"ragged.csv, line 4: .*Expected 2 columns, got 3"):
        data.read_csv(str(ragged)).take_all()
    typed = tmp_path / "typed.csv"
    typed.write_text("a,b\n1,2\n3,x\n")
    options = pcsv.ConvertOptions(column_types={"b": pa.int64()})
    with pytest.raises(Exception, match=r"typed.csv, line 3: .*invalid value 'x'"):
        data.read_csv(str(typed), convert_options=options).take_all()
    assert data.read_csv(str(typed)).take_all() == [{"a": 1, "b": "2"}, {"a": 3, "b": "x"}]
