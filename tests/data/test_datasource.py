"""Read tasks of every source, and the sinks: real files in tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from trainkit.data import _datasource
from trainkit.data._block import RaggedTensorType
from trainkit.data._block import concat_blocks
from trainkit.data._block import to_batch
from trainkit.data._block import to_block
from trainkit.data._datasink import write_block
from trainkit.data._datasource import ReadTask


def read_all(tasks: list[ReadTask]) -> pa.Table:
    """Run every task as a worker would: after a cloudpickle round trip."""
    blocks = []
    for task in tasks:
        clone = cloudpickle.loads(cloudpickle.dumps(task))
        blocks.extend(clone.read())
    return concat_blocks(blocks)


def write_parts(folder: Path, parts: int, rows: int) -> pa.Table:
    folder.mkdir(parents=True, exist_ok=True)
    tables = []
    for i in range(parts):
        ids = np.arange(i * rows, (i + 1) * rows)
        table = pa.table({"id": ids, "x": ids * 0.5, "s": [f"r{j}" for j in ids]})
        pq.write_table(table, folder / f"part-{i:03d}.parquet")
        tables.append(table)
    return pa.concat_tables(tables)


# --- in memory ------------------------------------------------------------------------------


def test_range() -> None:
    tasks = _datasource.range(1000, override_num_blocks=7)
    assert len(tasks) == 7
    assert sum(t.num_rows or 0 for t in tasks) == 1000
    assert all(t.schema == pa.schema([("id", pa.int64())]) for t in tasks)
    table = read_all(tasks)
    assert table.column("id").to_pylist() == list(range(1000))
    assert len(_datasource.range(10, parallelism=3)) == 3
    assert len(_datasource.range(3, override_num_blocks=50)) == 3


def test_range_empty_and_bad_arguments() -> None:
    (task,) = _datasource.range(0)
    assert task.num_rows == 0 and read_all([task]).num_rows == 0
    with pytest.raises(ValueError, match="range: n is -1"):
        _datasource.range(-1)
    with pytest.raises(TypeError, match=r"range: n is 2\.5"):
        _datasource.range(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="override_num_blocks is 0"):
        _datasource.range(5, override_num_blocks=0)


def test_default_num_blocks() -> None:
    assert _datasource.default_num_blocks(1, 8) == 1
    # Small data: 2 blocks per CPU (no fewer rows than blocks).
    cpus = len(os.sched_getaffinity(0))
    assert _datasource.default_num_blocks(100, 800) == min(100, 2 * cpus)
    # Big data: no more than 200 blocks of >= 1 MiB, unless blocks would pass 128 MiB.
    assert _datasource.default_num_blocks(10**9, 100 * 2**20) <= max(100, 2 * os.cpu_count())
    assert _datasource.default_num_blocks(10**9, 2**40) == 2**40 // (128 * 2**20)


def test_range_tensor() -> None:
    tasks = _datasource.range_tensor(10, shape=(2, 3), override_num_blocks=3)
    data = to_batch(read_all(tasks), "numpy")["data"]
    assert data.shape == (10, 2, 3) and data.dtype == np.int64
    np.testing.assert_array_equal(data[7], np.full((2, 3), 7))
    with pytest.raises(ValueError, match="shape"):
        _datasource.range_tensor(3, shape=(0,))


def test_from_items() -> None:
    items = [{"a": i, "b": str(i)} for i in range(20)]
    tasks = _datasource.from_items(items, override_num_blocks=4)
    assert len(tasks) == 4 and [t.num_rows for t in tasks] == [5, 5, 5, 5]
    assert read_all(tasks).to_pylist() == items
    plain = read_all(_datasource.from_items([1, 2, 3], parallelism=2))
    assert plain.to_pydict() == {"item": [1, 2, 3]}
    with pytest.raises(TypeError, match="from_items: items is a tuple"):
        _datasource.from_items((1, 2))  # type: ignore[arg-type]


def test_from_items_slices_ship_only_their_rows() -> None:
    items = [{"x": i} for i in range(100_000)]
    tasks = _datasource.from_items(items, override_num_blocks=10)
    pickled = len(cloudpickle.dumps(tasks[3]))
    assert pickled < 2 * 8 * 10_000 + 10_000


def test_from_numpy_splits_into_views() -> None:
    img = np.arange(8 * 32 * 32 * 3, dtype=np.uint8).reshape(8, 32, 32, 3)
    tasks = _datasource.from_numpy(img, override_num_blocks=4)
    assert [t.num_rows for t in tasks] == [2, 2, 2, 2]
    (block,) = tasks[1].read()
    first = to_batch(block, "numpy")["data"]
    assert np.shares_memory(first, img)
    np.testing.assert_array_equal(first, img[2:4])
    assert len(cloudpickle.dumps(tasks[1])) < 3 * first.nbytes
    np.testing.assert_array_equal(to_batch(read_all(tasks), "numpy")["data"], img)


def test_from_numpy_list_and_column() -> None:
    tasks = _datasource.from_numpy([np.arange(3), np.arange(3, 5)], column="v")
    assert len(tasks) == 2
    assert read_all(tasks).column("v").to_pylist() == [0, 1, 2, 3, 4]
    with pytest.raises(TypeError, match="ndim >= 1"):
        _datasource.from_numpy(np.float64(1.0))  # type: ignore[arg-type]


def test_from_arrow_and_pandas() -> None:
    table = pa.table({"a": np.arange(100_000), "b": np.arange(100_000) * 2.0})
    tasks = _datasource.from_arrow(table, override_num_blocks=5)
    assert len(tasks) == 5
    assert read_all(tasks).equals(table)
    assert len(cloudpickle.dumps(tasks[0])) < table.nbytes / 2
    assert len(_datasource.from_arrow([table, table])) == 2

    df = pd.DataFrame({"a": [1, 2, 3], "s": ["x", "y", "z"]})
    back = read_all(_datasource.from_pandas(df, override_num_blocks=2))
    pd.testing.assert_frame_equal(to_batch(back, "pandas"), df)
    assert len(_datasource.from_pandas([df, df])) == 2
    with pytest.raises(TypeError, match="from_pandas: expected pandas DataFrames"):
        _datasource.from_pandas({"a": [1]})


# --- Parquet ----------------------------------------------------------------------------------


def test_read_parquet_file_and_folder(tmp_path: Path) -> None:
    expected = write_parts(tmp_path / "ds", parts=3, rows=100)
    tasks = _datasource.read_parquet(tmp_path / "ds")
    assert len(tasks) == 3
    assert [t.num_rows for t in tasks] == [100, 100, 100]
    assert read_all(tasks).equals(expected)
    one = _datasource.read_parquet(str(tmp_path / "ds" / "part-001.parquet"))
    assert read_all(one).equals(expected.slice(100, 100))
    both = _datasource.read_parquet(
        [tmp_path / "ds" / "part-000.parquet", tmp_path / "ds" / "part-002.parquet"]
    )
    assert sum(t.num_rows or 0 for t in both) == 200


def test_read_parquet_columns(tmp_path: Path) -> None:
    write_parts(tmp_path, parts=2, rows=10)
    tasks = _datasource.read_parquet(tmp_path, columns=["s", "id"])
    table = read_all(tasks)
    assert table.column_names == ["s", "id"]
    assert tasks[0].schema == pa.schema([("s", pa.string()), ("id", pa.int64())])


def test_read_parquet_many_files_counts_from_metadata(tmp_path: Path) -> None:
    write_parts(tmp_path, parts=40, rows=25)
    tasks = _datasource.read_parquet(tmp_path, override_num_blocks=100)
    assert len(tasks) == 40
    assert sum(t.num_rows or 0 for t in tasks) == 1000  # no read needed
    packed = _datasource.read_parquet(tmp_path, override_num_blocks=8)
    assert len(packed) == 8
    assert sum(t.num_rows or 0 for t in packed) == 1000
    assert read_all(packed).column("id").to_pylist() == list(range(1000))


def test_read_parquet_splits_big_files_by_row_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = pa.table({"x": np.arange(10_000, dtype=np.int64)})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=1000)
    tasks = _datasource.read_parquet(tmp_path / "big.parquet", override_num_blocks=5)
    assert [t.num_rows for t in tasks] == [2000] * 5
    assert read_all(tasks).equals(table)
    assert len(_datasource.read_parquet(tmp_path, override_num_blocks=100)) == 10
    # With the default block count, no block is bigger than TARGET_BLOCK_BYTES.
    monkeypatch.setattr(_datasource, "TARGET_BLOCK_BYTES", 20_000)  # 2 row groups
    monkeypatch.setattr(_datasource, "_num_cpus", lambda: 1)
    tasks = _datasource.read_parquet(tmp_path)
    assert all(0 < (t.size_bytes or 0) <= 20_000 for t in tasks)
    assert read_all(tasks).equals(table)


def test_read_parquet_hive_partitions(tmp_path: Path) -> None:
    for year in (2020, 2021):
        for month in (1, 2):
            folder = tmp_path / f"year={year}" / f"month={month}"
            folder.mkdir(parents=True)
            ids = np.arange(3) + year * 100 + month * 10
            pq.write_table(pa.table({"id": ids}), folder / "data.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "year=2020" / ".hidden.parquet").write_text("not parquet")
    table = read_all(_datasource.read_parquet(tmp_path))
    assert table.column_names == ["id", "year", "month"]
    assert table.schema.field("year").type == pa.string()
    assert table.num_rows == 12
    assert set(zip(table["year"].to_pylist(), table["month"].to_pylist(), strict=True)) == {
        ("2020", "1"), ("2020", "2"), ("2021", "1"), ("2021", "2")
    }
    just = read_all(_datasource.read_parquet(tmp_path, columns=["month", "id"]))
    assert just.column_names == ["month", "id"]


def test_read_parquet_filter(tmp_path: Path) -> None:
    for year in (2020, 2021):
        folder = tmp_path / f"year={year}"
        folder.mkdir()
        pq.write_table(pa.table({"id": np.arange(10), "v": np.arange(10.0)}), folder / "a.parquet")
    tasks = _datasource.read_parquet(
        tmp_path, columns=["id"], filter=(pc.field("year") == "2021") & (pc.field("v") >= 7)
    )
    assert all(t.num_rows is None for t in tasks)  # unknown until read
    assert read_all(tasks).to_pydict() == {"id": [7, 8, 9]}
    with pytest.raises(ValueError, match=r"filter \(nope > 1\)"):
        _datasource.read_parquet(tmp_path, filter=pc.field("nope") > 1)
    with pytest.raises(TypeError, match="filter is a str"):
        _datasource.read_parquet(tmp_path, filter="v > 1")


def test_read_parquet_errors_at_planning(tmp_path: Path) -> None:
    write_parts(tmp_path, parts=1, rows=5)
    missing = tmp_path / "nope.parquet"
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet"):
        _datasource.read_parquet([tmp_path, missing])
    with pytest.raises(ValueError, match=r"\['missing'\].*\['id', 'x', 's'\]"):
        _datasource.read_parquet(tmp_path, columns=["id", "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no files ending in \.parquet"):
        _datasource.read_parquet(tmp_path / "empty")


def test_read_parquet_task_runs_in_a_fresh_interpreter(tmp_path: Path) -> None:
    expected = write_parts(tmp_path, parts=1, rows=50)
    (task,) = _datasource.read_parquet(tmp_path, columns=["id"])
    script = (
        "import sys, cloudpickle\n"
        "task = cloudpickle.loads(sys.stdin.buffer.read())\n"
        "print(sum(b.num_rows for b in task.read()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=cloudpickle.dumps(task), capture_output=True,
        check=True, timeout=60,
    )
    assert done.stdout.decode().strip() == str(expected.num_rows)


# --- CSV, JSON, numpy ---------------------------------------------------------------------------


def test_read_csv(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,y\n1,a\n2,b\n")
    (tmp_path / "b.csv").write_text("x,y\n3,c\n")
    (tmp_path / "notes.txt").write_text("skipped")
    tasks = _datasource.read_csv(tmp_path)
    assert len(tasks) == 2 and tasks[0].num_rows is None
    assert read_all(tasks).to_pydict() == {"x": [1, 2, 3], "y": ["a", "b", "c"]}
    typed = _datasource.read_csv(
        tmp_path / "a.csv", convert_options=pcsv.ConvertOptions(column_types={"x": pa.float32()})
    )
    assert read_all(typed).schema.field("x").type == pa.float32()
    with pytest.raises(TypeError, match="unknown options"):
        _datasource.read_csv(tmp_path, delimiter=";")


def test_read_json_lines(tmp_path: Path) -> None:
    rows = [{"a": i, "b": [i, i + 1]} for i in range(5)]
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_all(_datasource.read_json(tmp_path)).to_pylist() == rows


def test_read_numpy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = np.arange(10 * 4 * 4 * 3, dtype=np.uint8).reshape(10, 4, 4, 3)
    np.save(tmp_path / "img.npy", img)
    np.save(tmp_path / "vec.npy", np.arange(5.0))
    tasks = _datasource.read_numpy(tmp_path / "img.npy", column="image")
    assert sum(t.num_rows or 0 for t in tasks) == 10
    np.testing.assert_array_equal(to_batch(read_all(tasks), "numpy")["image"], img)
    split = _datasource.read_numpy(tmp_path / "img.npy", override_num_blocks=4)
    assert [t.num_rows for t in split] == [3, 3, 3, 1]
    np.testing.assert_array_equal(to_batch(read_all(split), "numpy")["data"], img)
    monkeypatch.setattr(_datasource, "TARGET_BLOCK_BYTES", 2 * 48)  # two rows
    capped = _datasource.read_numpy(tmp_path / "img.npy", override_num_blocks=1)
    assert [t.num_rows for t in capped] == [10]  # pieces of two rows, packed into one task
    assert len(_datasource.read_numpy(tmp_path / "img.npy", override_num_blocks=100)) == 10
    vec = read_all(_datasource.read_numpy(tmp_path / "vec.npy"))
    assert vec.column("data").to_pylist() == [0.0, 1.0, 2.0, 3.0, 4.0]


# --- sinks --------------------------------------------------------------------------------------


def sample_blocks() -> list[pa.Table]:
    ids = np.arange(6)
    return [
        pa.table({"id": ids[:3], "name": ["a", "b", "c"]}),
        pa.table({"id": ids[3:], "name": ["d", "e", "f"]}),
    ]


def write_all(blocks: list[pa.Table], path: Path, fmt: str, **kwargs: str) -> list[str]:
    return [write_block(b, path, fmt, i, **kwargs) for i, b in enumerate(blocks)]


def test_write_parquet_then_read(tmp_path: Path) -> None:
    files = write_all(sample_blocks(), tmp_path / "out", "parquet")
    assert [os.path.basename(f) for f in files] == ["part-000000.parquet", "part-000001.parquet"]
    assert sorted(os.listdir(tmp_path / "out")) == ["part-000000.parquet", "part-000001.parquet"]
    assert read_all(_datasource.read_parquet(tmp_path / "out")).equals(
        concat_blocks(sample_blocks())
    )


def test_write_parquet_keeps_tensor_columns(tmp_path: Path) -> None:
    img = np.arange(6 * 8 * 8 * 3, dtype=np.uint8).reshape(6, 8, 8, 3)
    block = to_block({"image": img, "r": [np.zeros((i + 1, 2)) for i in range(6)]}, where="t")
    write_block(block, tmp_path, "parquet", 0, filename_prefix="x-")
    back = read_all(_datasource.read_parquet(tmp_path))
    assert isinstance(back.schema.field("r").type, RaggedTensorType)
    np.testing.assert_array_equal(to_batch(back, "numpy")["image"], img)
    assert to_batch(back, "numpy")["r"][4].shape == (5, 2)


def test_write_csv_and_json_then_read(tmp_path: Path) -> None:
    expected = concat_blocks(sample_blocks())
    csv_files = write_all(sample_blocks(), tmp_path / "csv", "csv", filename_prefix="c-")
    assert [os.path.basename(f) for f in csv_files] == ["c-000000.csv", "c-000001.csv"]
    assert read_all(_datasource.read_csv(tmp_path / "csv")).equals(expected)
    json_files = write_all(sample_blocks(), tmp_path / "json", "json")
    assert len(json_files) == 2
    assert read_all(_datasource.read_json(tmp_path / "json")).equals(expected)


def test_write_json_tensor_columns_as_nested_lists(tmp_path: Path) -> None:
    block = to_block({"t": np.arange(8).reshape(2, 2, 2)}, where="t")
    path = write_block(block, tmp_path, "json", 3)
    assert path.endswith("part-000003.json")
    assert json.loads(Path(path).read_text().splitlines()[1]) == {"t": [[4, 5], [6, 7]]}


def test_write_errors_leave_no_files(tmp_path: Path) -> None:
    block = to_block({"t": np.zeros((2, 2))}, where="t")
    with pytest.raises(ValueError, match="write_csv: column 't'"):
        write_block(block, tmp_path, "csv", 0)
    with pytest.raises(ValueError, match="fmt is 'xml'"):
        write_block(block, tmp_path, "xml", 0)
    assert os.listdir(tmp_path) == []


def test_write_replaces_atomically(tmp_path: Path) -> None:
    first = write_block(pa.table({"a": [1]}), tmp_path, "parquet", 0)
    second = write_block(pa.table({"a": [2]}), tmp_path, "parquet", 0)
    assert first == second
    assert os.listdir(tmp_path) == ["part-000000.parquet"]
    assert pq.read_table(first).column("a").to_pylist() == [2]
