"""Sources: functions that plan a dataset's reads as :class:`ReadTask` s.

Planning happens in the caller (the driver): paths are listed, Parquet footers and ``.npy``
headers read, columns checked, so a missing file or column fails at the call, not in a
worker. Each task's ``read`` runs later in a worker process and returns its blocks.

File sources take a file, a folder (searched recursively for files of the format's
extensions; names starting with ``.`` or ``_`` are skipped) or a list of them. Under a
folder, Hive-style directories ``key=value/`` add a string column ``key`` (CSV, JSON and
Parquet; not ``.npy``; a column of the files of that name wins). Parquet files are split into
runs of whole row groups, ``.npy`` files into row ranges, where the block count needs it or
a file is bigger than :data:`TARGET_BLOCK_BYTES`.

How many tasks: ``override_num_blocks`` (or Ray's older ``parallelism``) if given, else
:func:`default_num_blocks`, Ray's rule: about two blocks per CPU, more (up to 200) when the
data is bigger than 1 MiB a block, and never blocks much bigger than ``TARGET_BLOCK_BYTES``.
File pieces (files, row-group runs) are packed into that many tasks when there are more of
them; in-memory data is sliced into that many blocks (a list of arrays, tables or frames
keeps one block per element). The data of in-memory sources lives in the task's closure.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import functools
import itertools
import math
import os
import urllib.parse
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.csv as pcsv  # type: ignore[import-untyped]
import pyarrow.fs as pafs  # type: ignore[import-untyped]
import pyarrow.json as pjson  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from trainkit.data._block import compact_block
from trainkit.data._block import concat_blocks
from trainkit.data._block import empty_block
from trainkit.data._block import rows_to_block
from trainkit.data._block import slice_block
from trainkit.data._block import tensor_array
from trainkit.data._block import to_block

TARGET_BLOCK_BYTES = 128 * 1024 * 1024
"""Reads aim at blocks of at most this many (in-memory) bytes."""
MIN_BLOCK_BYTES = 16 * 1024 * 1024
"""Data is split into more blocks than CPUs only while blocks stay at least this big (Ray
uses 1 MiB; here a task costs a few ms, so 16 MiB blocks keep that under 1 % of the work)."""
MAX_DEFAULT_BLOCKS = 200
"""The most blocks the size rule asks for (bigger data gets bigger blocks instead)."""

PARQUET_EXTENSIONS = (".parquet", ".parq")
CSV_EXTENSIONS = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst", ".csv.lz4")
JSON_EXTENSIONS = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".json.bz2", ".jsonl.bz2")
NUMPY_EXTENSIONS = (".npy",)

_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_METADATA_THREADS = 16
_CSV_ARGS = frozenset({"read_options", "parse_options", "convert_options"})
_JSON_ARGS = frozenset({"read_options", "parse_options"})

PathArg = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadTask:
    """One read: ``read()`` (cloudpickle-able; runs in a worker) returns the blocks.

    ``num_rows`` and ``size_bytes`` (in memory) are known before reading where the format
    allows (Parquet footers, ``.npy`` headers, in-memory data), else ``None``. ``schema`` is
    the blocks' schema where known before reading.
    """

    read: Callable[[], list[pa.Table]]
    num_rows: int | None
    size_bytes: int | None
    name: str
    schema: pa.Schema | None = None


def default_num_blocks(num_rows: int, size_bytes: int) -> int:
    """Ray's default block count for data of ``num_rows`` rows and ``size_bytes`` bytes."""
    by_size = max(min(MAX_DEFAULT_BLOCKS, size_bytes // MIN_BLOCK_BYTES), 2 * _num_cpus())
    n = max(by_size, -(-size_bytes // TARGET_BLOCK_BYTES))
    return max(1, min(n, num_rows))


def _num_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _num_blocks(
    where: str,
    parallelism: int,
    override_num_blocks: int | None,
    num_rows: int,
    size_bytes: int,
) -> int:
    chosen = override_num_blocks if override_num_blocks is not None else parallelism
    for name, value in (("override_num_blocks", override_num_blocks), ("parallelism", parallelism)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{where}: {name} is {value!r}, but must be an int")
    if chosen == -1:
        return default_num_blocks(num_rows, size_bytes)
    if chosen < 1:
        name = "override_num_blocks" if override_num_blocks is not None else "parallelism"
        raise ValueError(
            f"{where}: {name} is {chosen}, but must be >= 1 (or -1 for the default)"
        )
    return max(1, min(chosen, num_rows))


# --- paths ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _File:
    path: str
    partitions: tuple[tuple[str, str | None], ...]


def _path_list(paths: PathArg, where: str) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        items: list[Any] = [paths]
    elif isinstance(paths, Sequence):
        items = list(paths)
    else:
        raise TypeError(f"{where}: paths is a {type(paths).__name__}; give a path or a list")
    if not items:
        raise ValueError(f"{where}: paths is empty")
    out = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"{where}: a path is a {type(item).__name__}: {item!r}")
        out.append(os.path.expanduser(os.fspath(item)))
    return out


def _hive_partitions(relative_dir: str) -> tuple[tuple[str, str | None], ...]:
    parts = []
    for part in relative_dir.split(os.sep):
        key, sep, value = part.partition("=")
        if sep and key:
            decoded = urllib.parse.unquote(value)
            parts.append((urllib.parse.unquote(key), None if decoded == _HIVE_NULL else decoded))
    return tuple(parts)


def _list_files(paths: PathArg, extensions: tuple[str, ...], where: str) -> list[_File]:
    """The files named by ``paths``, folders searched recursively in sorted order."""
    files: list[_File] = []
    for path in _path_list(paths, where):
        if os.path.isfile(path):
            files.append(_File(path, ()))
            continue
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{where}: no such file or folder: {path!r}")
        found = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
            partitions = _hive_partitions(os.path.relpath(root, path))
            for name in sorted(names):
                if name.startswith((".", "_")) or not name.lower().endswith(extensions):
                    continue
                found.append(_File(os.path.join(root, name), partitions))
        if not found:
            raise FileNotFoundError(
                f"{where}: the folder {path!r} holds no files ending in {', '.join(extensions)}"
            )
        files.extend(found)
    return files


def _partition_keys(files: Sequence[_File]) -> list[str]:
    return list(dict.fromkeys(key for f in files for key, _ in f.partitions))


def _with_partitions(table: pa.Table, partitions: dict[str, str | None]) -> pa.Table:
    for key, value in partitions.items():
        if key not in table.column_names:
            table = table.append_column(
                pa.field(key, pa.string()), pa.repeat(pa.scalar(value, pa.string()), len(table))
            )
    return table


def _pack(sizes: Sequence[int], num_tasks: int) -> list[list[int]]:
    """Indices of consecutive pieces in at most ``num_tasks`` groups of about equal size."""
    if len(sizes) <= num_tasks:
        return [[i] for i in builtins.range(len(sizes))]
    per_task = max(1, sum(sizes)) / num_tasks
    groups: list[list[int]] = [[]]
    filled = 0
    for i, size in enumerate(sizes):
        if groups[-1] and filled >= per_task * len(groups) and len(groups) < num_tasks:
            groups.append([])
        groups[-1].append(i)
        filled += size
    return groups


def _task_name(kind: str, first_path: str, count: int) -> str:
    more = f" +{count - 1}" if count > 1 else ""
    return f"{kind}({os.path.basename(first_path)}{more})"


def _read_pieces(read_one: Callable[[Any], pa.Table], pieces: Sequence[Any]) -> list[pa.Table]:
    return [_one_chunk_each(concat_blocks([read_one(piece) for piece in pieces]))]


# --- Parquet ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ParquetPiece:
    path: str
    row_groups: tuple[int, ...] | None  # None: the whole file
    partitions: tuple[tuple[str, str | None], ...]


def _pyarrow_dataset() -> Any:
    """``pyarrow.dataset``, imported on first use: it imports pandas (over half a second)."""
    import pyarrow.dataset  # type: ignore[import-untyped]

    return pyarrow.dataset


def _partition_expression(partitions: Iterable[tuple[str, str | None]]) -> Any:
    expression = pc.scalar(True)
    for key, value in partitions:
        field = pc.field(key)
        expression = expression & (field.is_null() if value is None else field == value)
    return expression


def _read_parquet_pieces(
    schema: pa.Schema, columns: list[str] | None, filter_: Any, pieces: Sequence[_ParquetPiece]
) -> list[pa.Table]:
    """One task's read: its pieces as one dataset, so Arrow reads them concurrently."""
    pds = _pyarrow_dataset()
    parquet = pds.ParquetFileFormat()
    filesystem = pafs.LocalFileSystem(use_mmap=True)
    fragments = [
        parquet.make_fragment(
            piece.path,
            filesystem=filesystem,
            partition_expression=_partition_expression(piece.partitions),
            row_groups=list(piece.row_groups) if piece.row_groups is not None else None,
        )
        for piece in pieces
    ]
    dataset = pds.FileSystemDataset(fragments, schema, parquet, filesystem)
    table = dataset.to_table(columns=columns, filter=filter_, use_threads=True)
    return [_one_chunk_each(table)]


def _one_chunk_each(table: pa.Table) -> pa.Table:
    """``table`` with each column in one chunk, so numpy batches of it need no copy."""
    if all(column.num_chunks <= 1 for column in table.columns):
        return table
    try:
        return table.combine_chunks()
    except pa.ArrowInvalid:  # a string column over 2 GiB: it stays in chunks
        return table


def read_parquet(
    paths: PathArg,
    *,
    columns: list[str] | None = None,
    filter: Any = None,  # Ray's name, shadowing the builtin
    override_num_blocks: int | None = None,
) -> list[ReadTask]:
    """Plan reading Parquet files: a task per file, per row-group run of a big file, or per
    pack of small files (when there are more files than blocks).

    ``columns`` selects columns (partition keys included); ``filter`` is a
    ``pyarrow.compute`` expression (``pc.field("x") > 0``), pushed down into the reads.
    Row counts come from the footers, so counting reads no data (unless there is a filter).

    Raises:
        FileNotFoundError: a path does not exist (or a folder holds no Parquet files).
        ValueError: a column (or a column in ``filter``) is in no file, or files disagree.
    """
    where = "read_parquet"
    files = _list_files(paths, PARQUET_EXTENSIONS, where)
    metadata = _read_footers([f.path for f in files])
    schema, partition_keys = _unified_schema(files, metadata, where)
    if columns is not None:
        if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
            raise TypeError(f"{where}: columns is {columns!r}, but must be a list of str")
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ValueError(
                f"{where}: column(s) {missing} are in none of the files (first: "
                f"{files[0].path!r}); the columns are {schema.names}"
            )
        columns = list(columns)
    if filter is not None:
        _check_filter(filter, schema, where)
    selected = columns if columns is not None else schema.names
    out_schema = pa.schema([schema.field(c) for c in selected])

    row_groups = [_row_group_sizes(meta, set(selected)) for meta in metadata]
    total_rows = sum(n for groups in row_groups for _, n, _ in groups)
    total_bytes = sum(size for groups in row_groups for _, _, size in groups)
    num_tasks = _num_blocks(where, -1, override_num_blocks, max(1, total_rows), total_bytes)
    # Big files are split into runs of row groups, as many as it takes for num_tasks tasks.
    piece_bytes = min(TARGET_BLOCK_BYTES, -(-total_bytes // num_tasks))
    pieces: list[_ParquetPiece] = []
    rows: list[int] = []
    sizes: list[int] = []
    for file, groups in zip(files, row_groups, strict=True):
        partitions = tuple((k, v) for k, v in file.partitions if k in partition_keys)
        for run, n, size in _row_group_runs(groups, piece_bytes):
            pieces.append(_ParquetPiece(file.path, run, partitions))
            rows.append(n)
            sizes.append(size)
    if not pieces:  # every file is empty: read one, for the schema
        partitions = tuple((k, v) for k, v in files[0].partitions if k in partition_keys)
        pieces, rows, sizes = [_ParquetPiece(files[0].path, None, partitions)], [0], [0]
    read = functools.partial(_read_parquet_pieces, schema, columns, filter)
    return [
        ReadTask(
            read=functools.partial(read, [pieces[i] for i in group]),
            num_rows=sum(rows[i] for i in group) if filter is None else None,
            size_bytes=sum(sizes[i] for i in group),
            name=_task_name("ReadParquet", pieces[group[0]].path, len(group)),
            schema=out_schema,
        )
        for group in _pack(sizes, num_tasks)
    ]


def _read_footers(paths: list[str]) -> list[Any]:
    if len(paths) <= 4:
        return [pq.read_metadata(p) for p in paths]
    with concurrent.futures.ThreadPoolExecutor(min(_METADATA_THREADS, len(paths))) as pool:
        return list(pool.map(pq.read_metadata, paths))


def _unified_schema(
    files: Sequence[_File], metadata: Sequence[Any], where: str
) -> tuple[pa.Schema, set[str]]:
    """The files' unified schema, partition columns last; and those partition keys."""
    schemas = [m.schema.to_arrow_schema().remove_metadata() for m in metadata]
    try:
        schema = pa.unify_schemas(schemas)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(
            f"{where}: the files' schemas do not agree ({files[0].path!r} and others): {e}"
        ) from e
    partition_keys = {key for key in _partition_keys(files) if key not in schema.names}
    for key in _partition_keys(files):
        if key in partition_keys:
            schema = schema.append(pa.field(key, pa.string()))
    return schema, partition_keys


def _check_filter(filter_: Any, schema: pa.Schema, where: str) -> None:
    if not isinstance(filter_, pc.Expression):
        raise TypeError(
            f"{where}: filter is a {type(filter_).__name__}, but must be a pyarrow.compute "
            'expression such as pc.field("x") > 0'
        )
    try:
        _pyarrow_dataset().dataset(empty_block(schema)).to_table(filter=filter_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        reason = str(e).splitlines()[0]
        raise ValueError(
            f"{where}: filter {filter_} does not apply to the columns {schema.names}: {reason}"
        ) from e


def _row_group_sizes(meta: Any, selected: set[str]) -> list[tuple[int, int, int]]:
    """(index, rows, uncompressed bytes of the selected columns) of each non-empty row group."""
    groups = []
    for i in builtins.range(meta.num_row_groups):
        rg = meta.row_group(i)
        if rg.num_rows == 0:
            continue
        size = sum(
            rg.column(j).total_uncompressed_size
            for j in builtins.range(rg.num_columns)
            if rg.column(j).path_in_schema.split(".")[0] in selected
        )
        groups.append((i, int(rg.num_rows), int(size)))
    return groups


def _row_group_runs(
    groups: list[tuple[int, int, int]], max_bytes: int
) -> list[tuple[tuple[int, ...] | None, int, int]]:
    """A file's pieces: (row groups, or None for the whole file; rows; bytes)."""
    if not groups:
        return []
    total = sum(size for _, _, size in groups)
    if total <= max_bytes or len(groups) == 1:
        return [(None, sum(n for _, n, _ in groups), total)]
    runs: list[tuple[tuple[int, ...] | None, int, int]] = []
    run: list[int] = []
    run_rows = run_bytes = 0
    for i, n, size in groups:
        if run and run_bytes + size > max_bytes:
            runs.append((tuple(run), run_rows, run_bytes))
            run, run_rows, run_bytes = [], 0, 0
        run.append(i)
        run_rows += n
        run_bytes += size
    runs.append((tuple(run), run_rows, run_bytes))
    return runs


# --- CSV and JSON lines -------------------------------------------------------------------------


def _read_csv_file(options: dict[str, Any], file: _File) -> pa.Table:
    try:
        table = pcsv.read_csv(file.path, **options)
    except pa.ArrowInvalid as e:
        line = _csv_error_line(file.path, options, str(e))
        where = f"{file.path}, line {line}" if line is not None else file.path
        raise ValueError(f"read_csv: {where}: {e} (fix the file, or pass "
                         "parse_options/convert_options)") from e
    return _with_partitions(table, dict(file.partitions))


def _csv_error_line(path: str, options: dict[str, Any], message: str) -> int | None:
    """The line of ``path`` that made pyarrow fail with ``message`` (None if not found).

    pyarrow's own message has no line number: a parse error is read again, in one thread,
    with a row handler that learns it; a conversion error names the bad value, which is
    looked up cell by cell.
    """
    if "conversion error" not in message:
        rows: list[Any] = []

        def handler(row: Any) -> str:
            rows.append(row)
            return "error"

        parse = options.get("parse_options") or pcsv.ParseOptions()
        read = options.get("read_options") or pcsv.ReadOptions()
        try:
            pcsv.read_csv(path, read_options=pcsv.ReadOptions(
                use_threads=False, skip_rows=read.skip_rows, column_names=read.column_names,
                autogenerate_column_names=read.autogenerate_column_names,
                encoding=read.encoding), parse_options=pcsv.ParseOptions(
                delimiter=parse.delimiter, quote_char=parse.quote_char,
                double_quote=parse.double_quote, escape_char=parse.escape_char,
                newlines_in_values=parse.newlines_in_values,
                ignore_empty_lines=parse.ignore_empty_lines, invalid_row_handler=handler))
        except (pa.ArrowInvalid, OSError):
            pass
        return int(rows[0].number) if rows and rows[0].number is not None else None
    value = message.rsplit("invalid value ", 1)[-1].strip().strip("'\"")
    import csv
    import io

    with pa.input_stream(path) as raw, io.TextIOWrapper(raw, encoding="utf-8",
                                                        errors="replace") as text:
        reader = csv.reader(text)
        for cells in reader:
            if value in cells:
                return reader.line_num
    return None


def _read_json_file(options: dict[str, Any], file: _File) -> pa.Table:
    return _with_partitions(pjson.read_json(file.path, **options), dict(file.partitions))


def _file_tasks(
    files: list[_File],
    read_one: Callable[[_File], pa.Table],
    kind: str,
    override_num_blocks: int | None,
) -> list[ReadTask]:
    sizes = [os.path.getsize(f.path) for f in files]
    num_tasks = _num_blocks(kind, -1, override_num_blocks, len(files), sum(sizes))
    return [
        ReadTask(
            read=functools.partial(_read_pieces, read_one, [files[i] for i in group]),
            num_rows=None,
            size_bytes=sum(sizes[i] for i in group),
            name=_task_name(kind, files[group[0]].path, len(group)),
        )
        for group in _pack(sizes, num_tasks)
    ]


def _check_options(options: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"{where}: unknown options {unknown}; the options are {sorted(allowed)}")


def read_csv(
    paths: PathArg, *, override_num_blocks: int | None = None, **arrow_csv_args: Any
) -> list[ReadTask]:
    """Plan reading CSV files (also ``.csv.gz`` and the like) with ``pyarrow.csv.read_csv``.

    ``arrow_csv_args`` are its ``read_options``, ``parse_options`` and ``convert_options``.
    Each file's column types are inferred on its own (fix them with ``convert_options``).
    """
    _check_options(arrow_csv_args, _CSV_ARGS, "read_csv")
    files = _list_files(paths, CSV_EXTENSIONS, "read_csv")
    read_one = functools.partial(_read_csv_file, arrow_csv_args)
    return _file_tasks(files, read_one, "ReadCSV", override_num_blocks)


def read_json(
    paths: PathArg, *, override_num_blocks: int | None = None, **arrow_json_args: Any
) -> list[ReadTask]:
    """Plan reading JSON lines files (one object per line) with ``pyarrow.json.read_json``.

    ``arrow_json_args`` are its ``read_options`` and ``parse_options``.
    """
    _check_options(arrow_json_args, _JSON_ARGS, "read_json")
    files = _list_files(paths, JSON_EXTENSIONS, "read_json")
    read_one = functools.partial(_read_json_file, arrow_json_args)
    return _file_tasks(files, read_one, "ReadJSON", override_num_blocks)


# --- .npy -------------------------------------------------------------------------------------


def _array_block(values: np.ndarray, column: str) -> pa.Table:
    if not values.dtype.isnative:
        values = values.astype(values.dtype.newbyteorder("="))
    array = tensor_array(values) if values.ndim > 1 else pa.array(values)
    return pa.table({column: array})


def _read_npy_rows(column: str, piece: tuple[str, int, int]) -> pa.Table:
    path, start, stop = piece
    return _array_block(np.load(path, mmap_mode="r")[start:stop], column)


def read_numpy(
    paths: PathArg, *, column: str = "data", override_num_blocks: int | None = None
) -> list[ReadTask]:
    """Plan reading ``.npy`` files: the first axis is rows; ``ndim > 1`` gives a tensor column.

    Files are memory-mapped; a big file is read as several row ranges (as many as it takes
    for the block count, of at most ``TARGET_BLOCK_BYTES``).
    """
    where = "read_numpy"
    files = _list_files(paths, NUMPY_EXTENSIONS, where)
    shapes: list[tuple[int, int]] = []  # (rows, bytes a row) per file
    for file in files:
        try:
            header = np.load(file.path, mmap_mode="r")  # reads the header only
        except ValueError as e:  # object arrays cannot be memory-mapped (nor safely loaded)
            raise ValueError(f"{where}: cannot read {file.path!r}: {e}") from e
        if header.ndim == 0:
            raise ValueError(f"{where}: {file.path!r} holds a scalar, not an array of rows")
        shapes.append((header.shape[0], header.itemsize * math.prod(header.shape[1:])))
        del header
    total_rows = sum(n for n, _ in shapes)
    total_bytes = sum(n * row_bytes for n, row_bytes in shapes)
    num_tasks = _num_blocks(where, -1, override_num_blocks, max(1, total_rows), total_bytes)
    piece_bytes = min(TARGET_BLOCK_BYTES, -(-total_bytes // num_tasks))
    pieces: list[tuple[str, int, int]] = []
    sizes: list[int] = []
    for file, (num_rows, row_bytes) in zip(files, shapes, strict=True):
        num_pieces = max(1, -(-num_rows * row_bytes // max(1, piece_bytes)))
        step = max(1, -(-num_rows // num_pieces))
        for start in builtins.range(0, max(num_rows, 1), step):
            stop = min(num_rows, start + step)
            pieces.append((file.path, start, stop))
            sizes.append((stop - start) * row_bytes)
    rows = [stop - start for _, start, stop in pieces]
    read_one = functools.partial(_read_npy_rows, column)
    return [
        ReadTask(
            read=functools.partial(_read_pieces, read_one, [pieces[i] for i in group]),
            num_rows=sum(rows[i] for i in group),
            size_bytes=sum(sizes[i] for i in group),
            name=_task_name("ReadNumpy", pieces[group[0]][0], len(group)),
        )
        for group in _pack(sizes, num_tasks)
    ]


# --- in-memory data -----------------------------------------------------------------------------


def _blocks_of(blocks: tuple[pa.Table, ...]) -> list[pa.Table]:
    return list(blocks)


def _memory_task(block: pa.Table, name: str) -> ReadTask:
    return ReadTask(
        read=functools.partial(_blocks_of, (block,)),
        num_rows=int(block.num_rows),
        size_bytes=int(block.nbytes),
        name=name,
        schema=block.schema,
    )


def _split_tasks(block: pa.Table, num_blocks: int, name: str) -> list[ReadTask]:
    """``block`` in ``num_blocks`` slices of near-equal rows, each compacted."""
    bounds = np.linspace(0, block.num_rows, num_blocks + 1).astype(np.int64)
    return [
        _memory_task(compact_block(slice_block(block, int(a), int(b - a))), name)
        for a, b in itertools.pairwise(bounds)
    ]


def _split_one_or_many(
    blocks: list[pa.Table], many: bool, where: str, name: str, override_num_blocks: int | None
) -> list[ReadTask]:
    if many:
        return [_memory_task(b, name) for b in blocks]
    (block,) = blocks
    n = _num_blocks(where, -1, override_num_blocks, max(1, block.num_rows), int(block.nbytes))
    return _split_tasks(block, n, name)


def from_items(
    items: list[Any], *, parallelism: int = -1, override_num_blocks: int | None = None
) -> list[ReadTask]:
    """Plan a dataset of ``items``: dicts are rows; any other value ``v`` is ``{"item": v}``."""
    where = "from_items"
    if not isinstance(items, list):
        raise TypeError(f"{where}: items is a {type(items).__name__}, but must be a list")
    rows = [item if isinstance(item, dict) else {"item": item} for item in items]
    block = rows_to_block(rows, where=where)
    n = _num_blocks(where, parallelism, override_num_blocks, max(1, len(rows)), block.nbytes)
    return _split_tasks(block, n, "FromItems")


def from_numpy(
    ndarrays: np.ndarray | list[np.ndarray],
    *,
    column: str = "data",
    override_num_blocks: int | None = None,
) -> list[ReadTask]:
    """Plan a dataset of one column: the arrays' first axis is rows (``ndim > 1``: tensors).

    One array is split into blocks of whole rows (views, not copies); a list keeps one block
    per array.
    """
    where = "from_numpy"
    many = isinstance(ndarrays, list)
    arrays = ndarrays if isinstance(ndarrays, list) else [ndarrays]
    for a in arrays:
        if not isinstance(a, np.ndarray) or a.ndim == 0:
            raise TypeError(
                f"{where}: expected numpy arrays of ndim >= 1, got {type(a).__name__}"
                + (f" of shape {a.shape}" if isinstance(a, np.ndarray) else "")
            )
    if many:
        return [_memory_task(to_block({column: a}, where=where), "FromNumpy") for a in arrays]
    (array,) = arrays
    n = _num_blocks(where, -1, override_num_blocks, max(1, len(array)), int(array.nbytes))
    bounds = np.linspace(0, len(array), n + 1).astype(np.int64)
    return [
        _memory_task(to_block({column: array[a:b]}, where=where), "FromNumpy")
        for a, b in itertools.pairwise(bounds)
    ]


def from_arrow(
    tables: pa.Table | pa.RecordBatch | list[pa.Table | pa.RecordBatch],
    *,
    override_num_blocks: int | None = None,
) -> list[ReadTask]:
    """Plan a dataset of Arrow tables: one is split into blocks; a list is a block each."""
    many = isinstance(tables, list)
    items = tables if many else [tables]
    for t in items:
        if not isinstance(t, (pa.Table, pa.RecordBatch)):
            raise TypeError(f"from_arrow: expected pyarrow Tables, got {type(t).__name__}")
    blocks = [to_block(t, where="from_arrow") for t in items]
    return _split_one_or_many(blocks, many, "from_arrow", "FromArrow", override_num_blocks)


def from_pandas(dfs: Any, *, override_num_blocks: int | None = None) -> list[ReadTask]:
    """Plan a dataset of DataFrames (the index is dropped): one is split; a list, a block each.

    A column of numpy arrays becomes a tensor column.
    """
    many = isinstance(dfs, list)
    items = dfs if many else [dfs]
    blocks = []
    for df in items:
        if type(df).__name__ != "DataFrame":
            raise TypeError(f"from_pandas: expected pandas DataFrames, got {type(df).__name__}")
        blocks.append(to_block(df, where="from_pandas"))
    return _split_one_or_many(blocks, many, "from_pandas", "FromPandas", override_num_blocks)


def _range_block(start: int, stop: int, shape: tuple[int, ...] | None) -> list[pa.Table]:
    ids = np.arange(start, stop, dtype=np.int64)
    if shape is None:
        return [pa.table({"id": ids})]
    values = np.broadcast_to(ids.reshape((-1,) + (1,) * len(shape)), (len(ids), *shape))
    return [pa.table({"data": tensor_array(np.ascontiguousarray(values))})]


def _range_tasks(
    n: int,
    shape: tuple[int, ...] | None,
    parallelism: int,
    override_num_blocks: int | None,
    where: str,
) -> list[ReadTask]:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{where}: n is {n!r}, but must be an int")
    if n < 0:
        raise ValueError(f"{where}: n is {n}, but must be >= 0")
    row_bytes = 8 * (math.prod(shape) if shape is not None else 1)
    schema = _range_block(0, 0, shape)[0].schema
    num = _num_blocks(where, parallelism, override_num_blocks, max(1, n), n * row_bytes)
    bounds = np.linspace(0, n, num + 1).astype(np.int64)
    name = "Range" if shape is None else "RangeTensor"
    return [
        ReadTask(
            read=functools.partial(_range_block, int(a), int(b), shape),
            num_rows=int(b - a),
            size_bytes=int(b - a) * row_bytes,
            name=f"{name}({a}..{b})",
            schema=schema,
        )
        for a, b in itertools.pairwise(bounds)
    ]


def range(  # Ray's name; this module uses builtins.range
    n: int, *, parallelism: int = -1, override_num_blocks: int | None = None
) -> list[ReadTask]:
    """Plan a dataset of the int64 column ``"id"``: ``0, 1, ..., n - 1``."""
    return _range_tasks(n, None, parallelism, override_num_blocks, "range")


def range_tensor(
    n: int,
    *,
    shape: tuple[int, ...] = (1,),
    parallelism: int = -1,
    override_num_blocks: int | None = None,
) -> list[ReadTask]:
    """Plan a dataset of the int64 tensor column ``"data"``: row ``i`` is ``shape`` full of i."""
    shape = tuple(shape)
    if not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise ValueError(f"range_tensor: shape is {shape!r}, but must be a tuple of ints >= 1")
    return _range_tasks(n, shape, parallelism, override_num_blocks, "range_tensor")
