"""Blocks and batches: conversions, tensor columns, rows, concatenation, slicing."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from trainkit.data._block import BATCH_FORMATS
from trainkit.data._block import RaggedTensorType
from trainkit.data._block import block_bytes
from trainkit.data._block import block_rows
from trainkit.data._block import block_to_rows
from trainkit.data._block import compact_block
from trainkit.data._block import concat_blocks
from trainkit.data._block import empty_block
from trainkit.data._block import rows_to_block
from trainkit.data._block import slice_block
from trainkit.data._block import to_batch
from trainkit.data._block import to_block

WHERE = "map_batches(normalize)"


def images(n: int = 4) -> np.ndarray:
    return np.arange(n * 32 * 32 * 3, dtype=np.uint8).reshape(n, 32, 32, 3)


def test_rows_and_bytes() -> None:
    block = to_block({"x": np.arange(10, dtype=np.int64)}, where=WHERE)
    assert block_rows(block) == 10
    assert block_bytes(block) == 80
    assert block_bytes(slice_block(block, 0, 5)) == 40


def test_batch_formats() -> None:
    assert set(BATCH_FORMATS) == {"default", "numpy", "pyarrow", "pandas"}


# --- tensor columns ---------------------------------------------------------------------------


def test_tensor_column_zero_copy_both_ways() -> None:
    img = images()
    block = to_block({"image": img, "label": np.arange(4)}, where=WHERE)
    assert isinstance(block.schema.field("image").type, pa.FixedShapeTensorType)
    assert block.schema.field("image").type.shape == [32, 32, 3]
    batch = to_batch(block, "numpy")
    assert batch["image"].shape == (4, 32, 32, 3)
    assert batch["image"].dtype == np.uint8
    assert np.shares_memory(batch["image"], img)
    assert np.shares_memory(batch["label"], to_batch(block, "default")["label"])
    np.testing.assert_array_equal(batch["image"], img)


def test_zero_copy_batches_are_read_only_unless_asked() -> None:
    block = to_block({"image": images(), "x": np.arange(4.0)}, where=WHERE)
    shared = to_batch(block, "numpy")
    assert not shared["image"].flags.writeable
    own = to_batch(block, "numpy", zero_copy=False)
    own["image"][0] = 0
    own["x"][0] = -1.0
    assert not np.shares_memory(own["image"], shared["image"])
    assert to_batch(block, "numpy")["x"][0] == 0.0


def test_non_contiguous_arrays_are_copied() -> None:
    img = images()[:, ::2]  # a strided view
    block = to_block({"image": img}, where=WHERE)
    np.testing.assert_array_equal(to_batch(block, "numpy")["image"], img)


def test_list_of_same_shape_arrays_is_a_tensor_column() -> None:
    block = to_block({"v": [np.ones(3, np.float32), np.zeros(3, np.float32)]}, where=WHERE)
    assert isinstance(block.schema.field("v").type, pa.FixedShapeTensorType)
    assert to_batch(block, "numpy")["v"].shape == (2, 3)


def test_ragged_arrays_round_trip() -> None:
    arrays = [np.zeros((2, 3)), np.ones((4, 1)), None, np.arange(5.0)]
    block = to_block({"r": arrays}, where=WHERE)
    assert isinstance(block.schema.field("r").type, RaggedTensorType)
    for block_ in (block, pickle.loads(pickle.dumps(block))):
        out = to_batch(block_, "numpy")["r"]
        assert out.dtype == object and out[2] is None
        for got, want in zip(out, arrays, strict=True):
            if want is not None:
                np.testing.assert_array_equal(got, want)
                assert got.shape == want.shape
    rows = list(block_to_rows(block))
    assert rows[1]["r"].shape == (4, 1)


def test_ragged_arrays_survive_ipc() -> None:
    block = to_block({"r": [np.zeros((2, 2), np.int32), np.ones(3, np.int32)]}, where=WHERE)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, block.schema) as writer:
        writer.write_table(block)
    back = pa.ipc.open_stream(sink.getvalue()).read_all()
    assert isinstance(back.schema.field("r").type, RaggedTensorType)
    assert back.equals(block)


def test_empty_block_with_tensor_columns() -> None:
    schema = to_block({"t": images(2), "r": [np.zeros(1), np.zeros(2)]}, where=WHERE).schema
    empty = empty_block(schema)
    assert empty.num_rows == 0 and empty.schema == schema
    assert to_batch(empty, "numpy")["t"].shape == (0, 32, 32, 3)


# --- other formats ----------------------------------------------------------------------------


def test_pandas_round_trip_keeps_the_schema() -> None:
    block = to_block(
        {"image": images(), "id": np.arange(4), "name": ["a", "b", "c", "d"]}, where=WHERE
    )
    df = to_batch(block, "pandas")
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["image", "id", "name"]
    assert df["image"].iloc[1].shape == (32, 32, 3)
    back = to_block(df, where=WHERE)
    assert back.equals(block)
    assert concat_blocks([block, back]).num_rows == 8


def test_pyarrow_format_is_the_block_and_tables_pass_through() -> None:
    table = pa.table({"a": [1, 2]})
    assert to_batch(table, "pyarrow") is table
    assert to_block(table, where=WHERE) is table
    batch = pa.RecordBatch.from_pydict({"a": [1, 2]})
    assert to_block(batch, where=WHERE).equals(table)


def test_dict_of_lists_and_arrow_arrays() -> None:
    block = to_block({"s": ["x", "y"], "a": pa.array([1, 2]), "n": (1.5, None)}, where=WHERE)
    assert block.column("s").to_pylist() == ["x", "y"]
    assert block.column("n").to_pylist() == [1.5, None]


def test_unknown_batch_format() -> None:
    with pytest.raises(ValueError, match=r"'torch'.*\['default', 'numpy', 'pyarrow', 'pandas'\]"):
        to_batch(pa.table({"a": [1]}), "torch")


# --- bad batches ------------------------------------------------------------------------------


def test_dict_of_scalars_is_not_a_batch() -> None:
    with pytest.raises(TypeError, match=r"map_batches\(normalize\).*'x'.*dict of scalars"):
        to_block({"x": np.float32(1.0)}, where=WHERE)
    with pytest.raises(TypeError, match="'y' is a single int"):
        to_block({"y": 3}, where=WHERE)


def test_list_of_dicts_is_not_a_batch() -> None:
    with pytest.raises(TypeError, match=r"normalize\) returned a builtins\.list.*list of rows"):
        to_block([{"x": 1}], where=WHERE)


def test_other_types_are_not_batches() -> None:
    with pytest.raises(TypeError, match=r"map_batches\(normalize\) returned a numpy\.ndarray"):
        to_block(np.arange(3), where=WHERE)
    with pytest.raises(TypeError, match="column names must be str"):
        to_block({1: [1]}, where=WHERE)


def test_ragged_column_lengths() -> None:
    with pytest.raises(ValueError, match=r"map_batches\(normalize\).*\{'a': 3, 'b': 2\}"):
        to_block({"a": np.arange(3), "b": np.arange(2)}, where=WHERE)


# --- rows -------------------------------------------------------------------------------------


def test_rows_round_trip_with_tensors() -> None:
    rows = [{"id": i, "image": images(1)[0] + i, "name": f"n{i}"} for i in range(3)]
    block = rows_to_block(rows, where="map(f)")
    assert isinstance(block.schema.field("image").type, pa.FixedShapeTensorType)
    back = list(block_to_rows(block))
    assert [r["id"] for r in back] == [0, 1, 2]
    assert [r["name"] for r in back] == ["n0", "n1", "n2"]
    np.testing.assert_array_equal(back[2]["image"], rows[2]["image"])


def test_rows_with_missing_keys_and_numpy_scalars() -> None:
    block = rows_to_block([{"a": np.float32(1.0)}, {"b": "x"}], where="map(f)")
    assert block.to_pydict() == {"a": [1.0, None], "b": [None, "x"]}


def test_rows_must_be_dicts() -> None:
    with pytest.raises(TypeError, match=r"flat_map\(f\) returned a row of type int"):
        rows_to_block([1], where="flat_map(f)")


def test_no_rows() -> None:
    assert rows_to_block([], where="map(f)").num_rows == 0
    assert rows_to_block([{}, {}], where="map(f)").num_rows == 2


# --- whole blocks -----------------------------------------------------------------------------


def test_concat_unifies_schemas() -> None:
    a = pa.table({"x": [1, 2]})
    b = pa.table({"x": [3], "y": ["z"]})
    both = concat_blocks([a, pa.table({}), b])
    assert both.to_pydict() == {"x": [1, 2, 3], "y": [None, None, "z"]}
    assert concat_blocks([a]) is a
    assert concat_blocks([]).num_rows == 0
    assert concat_blocks([pa.table({"x": [1]}), pa.table({"x": [0.5]})]).column("x").type == (
        pa.float64()
    )


def test_concat_incompatible_schemas() -> None:
    with pytest.raises(ValueError, match="incompatible schemas"):
        concat_blocks([pa.table({"x": [1]}), pa.table({"x": [[1]]})])


def test_concat_tensor_blocks() -> None:
    a = to_block({"image": images(2)}, where=WHERE)
    b = to_block({"image": images(3)}, where=WHERE)
    both = to_batch(concat_blocks([a, b]), "numpy")["image"]
    assert both.shape == (5, 32, 32, 3)


def test_slice_is_zero_copy_and_compact_copies_only_small_slices() -> None:
    img = images(100)
    block = to_block({"image": img, "id": np.arange(100)}, where=WHERE)
    part = slice_block(block, 10, 5)
    assert part.num_rows == 5
    assert np.shares_memory(to_batch(part, "numpy")["image"], img)
    np.testing.assert_array_equal(to_batch(part, "numpy")["image"], img[10:15])
    # Pickling a slice ships the whole buffers; a compacted slice ships its rows.
    compacted = compact_block(part)
    assert compacted.equals(part)
    assert len(pickle.dumps(compacted)) < len(pickle.dumps(part)) / 10
    assert compact_block(block) is block


def test_tensors_of_other_dtypes_are_ragged_but_round_trip() -> None:
    for values in (
        np.arange(12).reshape(3, 2, 2) % 2 == 0,
        np.arange(6).reshape(3, 2).astype("datetime64[s]"),
    ):
        block = to_block({"t": values}, where=WHERE)
        assert isinstance(block.schema.field("t").type, RaggedTensorType)
        out = to_batch(block, "numpy")["t"]
        assert out.dtype == values.dtype
        np.testing.assert_array_equal(out, values)


def test_empty_and_zero_size_tensors() -> None:
    block = to_block({"t": np.zeros((0, 2, 3), np.float32)}, where=WHERE)
    assert to_batch(block, "numpy")["t"].shape == (0, 2, 3)
    with pytest.raises(TypeError, match=r"map_batches\(normalize\): column 't'.*row shape \(0,\)"):
        to_block({"t": np.zeros((3, 0))}, where=WHERE)


def test_concat_blocks_that_disagree_on_a_tensor_shape() -> None:
    small = to_block({"t": np.zeros((2, 3, 3))}, where=WHERE)
    big = to_block({"t": np.ones((1, 4, 4))}, where=WHERE)
    both = concat_blocks([small, big])
    assert isinstance(both.schema.field("t").type, RaggedTensorType)
    assert [a.shape for a in to_batch(both, "numpy")["t"]] == [(3, 3), (3, 3), (4, 4)]
    # A ragged block whose rows share a shape gives one array.
    assert to_batch(slice_block(both, 0, 2), "numpy")["t"].shape == (2, 3, 3)


def test_slices_of_ragged_columns() -> None:
    arrays = [np.full(i + 1, i) for i in range(5)] + [None]
    block = to_block({"r": arrays}, where=WHERE)
    for start in range(5):
        part = slice_block(block, start, 2)
        for block_ in (part, compact_block(part), pickle.loads(pickle.dumps(part))):
            got = to_batch(block_, "numpy")["r"]
            for i, want in enumerate(arrays[start : start + 2]):
                if want is None:
                    assert got[i] is None
                else:
                    np.testing.assert_array_equal(got[i], want)
