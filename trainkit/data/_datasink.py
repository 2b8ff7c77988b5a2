"""Sinks: write blocks as files in a folder, one file per block.

:func:`write_block` is the primitive a remote task runs for one block. A file appears
atomically: it is written under a hidden temporary name (``.part-000003.parquet.<hex>.tmp``,
which readers skip) and renamed when complete. Files are named
``{filename_prefix}{index:06d}.{ext}``; writing again with the same prefix and index replaces
a file.
"""

from __future__ import annotations

import os
import uuid
from typing import Literal
from typing import get_args

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.csv as pcsv  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from trainkit.data._block import to_batch
from trainkit.data._block import unseal_block

FileFormat = Literal["parquet", "csv", "json"]
FILE_FORMATS: tuple[str, ...] = get_args(FileFormat)
DEFAULT_FILENAME_PREFIX = "part-"

_EXTENSIONS = {"parquet": "parquet", "csv": "csv", "json": "json"}


def write_block(
    block: pa.Table,
    path: str | os.PathLike[str],
    fmt: str,
    index: int,
    *,
    filename_prefix: str = DEFAULT_FILENAME_PREFIX,
) -> str:
    """Write ``block`` as file number ``index`` of format ``fmt`` into the folder ``path``.

    The folder is created if needed. JSON is JSON lines (one object per row; tensor columns
    as nested lists). Returns the file's path.

    Raises:
        ValueError: ``fmt`` is unknown, or (CSV) a column is not a scalar column.
    """
    if fmt not in _EXTENSIONS:
        raise ValueError(f"fmt is {fmt!r}, but must be one of {list(FILE_FORMATS)}")
    block = unseal_block(block)  # no internal metadata in users' files
    folder = os.fspath(path)
    os.makedirs(folder, exist_ok=True)
    name = f"{filename_prefix}{index:06d}.{_EXTENSIONS[fmt]}"
    final = os.path.join(folder, name)
    temp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        if fmt == "parquet":
            pq.write_table(block, temp)
        elif fmt == "csv":
            _check_csv_columns(block)
            pcsv.write_csv(block, temp)
        else:
            to_batch(block, "pandas").to_json(
                temp, orient="records", lines=True, date_format="iso"
            )
        os.replace(temp, final)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    return final


def _check_csv_columns(block: pa.Table) -> None:
    for field in block.schema:
        t = field.type
        if pa.types.is_nested(t) or isinstance(t, pa.BaseExtensionType):
            raise ValueError(
                f"write_csv: column {field.name!r} has type {t}; CSV holds only scalar "
                "columns (write Parquet, or JSON lines, instead)"
            )
