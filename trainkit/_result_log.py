"""The metrics writer shared by Train (one per run) and Tune (one per trial).

Each report goes to three files in the run folder, flushed before :meth:`ResultLog.append`
returns, so a crashed run keeps everything it reported:

- ``result.json``: one JSON object per line, nested dicts kept nested.
- ``progress.csv``: a header, then one row per report, nested keys flattened with ``/``. A key
  not seen before rewrites the file with the union of the columns.
- ``events.out.tfevents.*``: TensorBoard scalars, tag = flattened key. The protobuf and the
  TFRecord framing are encoded here by hand, because importing tensorboard costs ~0.45 s.

Values JSON cannot hold become plain scalars (numpy scalars, size-1 arrays and tensors) or their
``repr()``. A reopened run folder is appended to, after dropping a line cut short by a crash.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import operator
import os
import socket
import struct
import time
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    import pandas  # type: ignore[import-untyped]  # no pandas-stubs in the venv

__all__ = ["ResultLog", "count_results", "flatten_metrics", "read_results", "trim_results"]

RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.csv"

_file_counter = itertools.count()


class ResultLog:
    """Writes one run's reports to result.json, progress.csv and TensorBoard events.

    One ResultLog is used from one thread; it holds no lock.

    Args:
        run_dir: The run folder, created if missing. Existing ``result.json`` and
            ``progress.csv`` are continued (a resumed run); the TensorBoard events go to a new
            file per ResultLog.
        tensorboard: Whether to write TensorBoard events at all.

    Example::

        with ResultLog(tmp_dir) as log:
            log.append({"loss": 0.25, "eval": {"acc": 0.9}}, step=1)
        read_results(tmp_dir)["eval/acc"][0]  # 0.9
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, tensorboard: bool = True) -> None:
        self._dir = Path(run_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._closed = False
        json_path = self._dir / RESULT_FILE
        _trim_partial_line(json_path)
        self._json = open(json_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._csv_path = self._dir / PROGRESS_FILE
        self._columns = self._recover_csv()
        self._column_set = set(self._columns)
        self._csv = open(self._csv_path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        self._events: io.BufferedWriter | None = None
        if tensorboard:
            name = (
                f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
                f".{os.getpid()}.{next(_file_counter)}"
            )
            self._events = open(self._dir / name, "wb")  # noqa: SIM115
            self._events.write(_record(_event(time.time(), 0, file_version=b"brain.Event:2")))
            self._events.flush()

    def append(self, metrics: Mapping[str, Any], *, step: int) -> None:
        """Writes one report to every file and flushes them.

        Args:
            metrics: The report; values may be nested dicts, numbers, numpy values, tensors or
                any object (written as its ``repr()``).
            step: The TensorBoard step of the scalars; it is not added to the record.

        Raises:
            TypeError: ``step`` is not an int (``operator.index`` fails).
            ValueError: ``step`` does not fit in int64, or the log is closed.
        """
        step = operator.index(step)  # a TypeError for a float
        if not -(2**63) <= step < 2**63:
            raise ValueError(f"`step` is {step}, but must fit in int64")
        if self._closed:
            raise ValueError(f"the ResultLog of {self._dir} is closed")
        record = {str(key): _to_json(value) for key, value in metrics.items()}
        self._json.write(json.dumps(record) + "\n")
        self._json.flush()

        flat = flatten_metrics(record)
        new_columns = [key for key in flat if key not in self._column_set]
        if new_columns:
            self._extend_columns(new_columns)
        if self._columns:
            csv.writer(self._csv, lineterminator="\n").writerow(
                [_csv_cell(flat.get(column)) for column in self._columns]
            )
            self._csv.flush()

        scalars = [(k, v) for k, v in flat.items() if isinstance(v, (int, float))]
        if self._events is not None and scalars:
            self._events.write(_record(_event(time.time(), step, scalars=scalars)))
            self._events.flush()

    def append_summary(self, summary: bytes, *, step: int) -> None:
        """Writes one serialized TensorBoard ``Summary`` (plugin data such as HParams) as an
        event of its own; nothing goes to result.json or progress.csv."""
        if self._events is not None and not self._closed:
            event = _event(time.time(), step) + _field_bytes(5, summary)
            self._events.write(_record(event))
            self._events.flush()

    def close(self) -> None:
        """Closes the files; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._json.close()
        self._csv.close()
        if self._events is not None:
            self._events.close()

    def __enter__(self) -> ResultLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _recover_csv(self) -> list[str]:
        """Returns the existing header, first dropping a row cut short by a crash."""
        if not self._csv_path.exists() or self._csv_path.stat().st_size == 0:
            return []
        with open(self._csv_path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            complete = f.read(1) == b"\n"
        if complete:
            with open(self._csv_path, encoding="utf-8", newline="") as f:
                return next(csv.reader(f), [])
        # A quoted cell may hold a newline, so only the csv module knows where the last row starts.
        header, rows = _read_csv(self._csv_path)
        _write_csv(self._csv_path, header, rows[:-1])
        return header

    def _extend_columns(self, new_columns: list[str]) -> None:
        self._csv.close()
        _, rows = _read_csv(self._csv_path)
        self._columns += new_columns
        self._column_set.update(new_columns)
        _write_csv(self._csv_path, self._columns, rows)
        self._csv = open(self._csv_path, "a", encoding="utf-8", newline="")  # noqa: SIM115


def flatten_metrics(metrics: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Flattens nested mappings into one level, joining keys with ``sep``.

    Example::

        flatten_metrics({"a": {"b": 1}, "c": 2})  # {"a/b": 1, "c": 2}
    """
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in flatten_metrics(value, sep).items():
                flat[f"{key}{sep}{sub_key}"] = sub_value
        else:
            flat[str(key)] = value
    return flat


def read_results(run_dir: str | os.PathLike[str]) -> pandas.DataFrame:
    """Reads ``result.json`` of a run folder into a DataFrame, one row per report.

    Nested keys are flattened with ``/``; columns come in first-seen order. A last line cut
    short by a crash is skipped.

    Returns:
        The reports, or an empty DataFrame if there are none.

    Raises:
        ValueError: A line other than the last is not valid JSON.
    """
    import pandas

    path = Path(run_dir) / RESULT_FILE
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(flatten_metrics(json.loads(line)))
        except json.JSONDecodeError as e:
            if number < len(lines):
                raise ValueError(f"{path} line {number} is not valid JSON: {e}") from e
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return pandas.DataFrame(rows, columns=columns)


def count_results(run_dir: str | os.PathLike[str]) -> int:
    """How many reports ``result.json`` in ``run_dir`` holds (0 if there is none)."""
    try:
        with open(Path(run_dir) / RESULT_FILE, "rb") as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


def trim_results(run_dir: str | os.PathLike[str], last_iteration: int) -> None:
    """Drop the reports after ``training_iteration == last_iteration`` from ``result.json``
    and ``progress.csv`` (a run resumed from an earlier checkpoint reports them again).
    Each file is rewritten through a temporary file."""
    json_path = Path(run_dir) / RESULT_FILE
    if json_path.exists():
        kept = []
        with open(json_path, encoding="utf-8") as f:
            for line in f:
                try:
                    it = json.loads(line).get("training_iteration")
                except json.JSONDecodeError:
                    continue  # a line torn by a crash
                if isinstance(it, int) and it <= last_iteration:
                    kept.append(line if line.endswith("\n") else line + "\n")
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, json_path)
    csv_path = Path(run_dir) / PROGRESS_FILE
    if csv_path.exists():
        header, rows = _read_csv(csv_path)
        if "training_iteration" in header:
            col = header.index("training_iteration")
            _write_csv(csv_path, header, [r for r in rows if len(r) > col and r[col].isdigit()
                                          and int(r[col]) <= last_iteration])


def _to_json(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    for kind in (int, float, str):  # subclasses too: np.float64, IntEnum, np.str_
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, Mapping):
        return {str(key): _to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(item) for item in value]
    numel = getattr(value, "numel", None)  # torch.Tensor.size is a method
    size = numel() if callable(numel) else getattr(value, "size", None)
    if size == 1 and hasattr(value, "item"):
        try:
            item = value.item()
        except Exception:  # e.g. a tensor on the meta device
            item = None
        if isinstance(item, (bool, int, float, str)):
            return _to_json(item)
    return repr(value)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, list) else value


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return (rows[0], rows[1:]) if rows else ([], [])


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    # Through a temporary file, so a crash mid-rewrite leaves the old file whole.
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(row + [""] * (len(header) - len(row)) for row in rows)
    os.replace(tmp, path)


def _trim_partial_line(path: Path) -> None:
    """Cuts a file after its last newline (JSON lines never hold a raw newline)."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            found = f.read(pos - start).rfind(b"\n")
            if found >= 0:
                pos = start + found + 1
                break
            pos = start
        if pos != end:
            f.truncate(pos)


# --- TensorBoard: protobuf Event messages in TFRecord framing -------------------------------


def _crc32c_table_entry(crc: int) -> int:
    for _ in range(8):
        crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc


_CRC32C_TABLE = tuple(_crc32c_table_entry(byte) for byte in range(256))


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli); records are a few hundred bytes, so pure Python is fast enough."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc32c(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", _masked_crc32c(header))
        + data
        + struct.pack("<I", _masked_crc32c(data))
    )


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # int64 two's complement, as protobuf encodes negatives
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _float32(value: float) -> bytes:
    # Beyond float32 (or even float64, for a huge int) range: TensorBoard shows +-inf.
    try:
        return struct.pack("<f", float(value))
    except OverflowError:
        return struct.pack("<f", math.inf if value > 0 else -math.inf)


def _event(
    wall_time: float,
    step: int,
    *,
    file_version: bytes = b"",
    scalars: Sequence[tuple[str, float]] = (),
) -> bytes:
    """Encodes an ``Event``: wall_time=1 (double), step=2, file_version=3, summary=5."""
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version:
        out += _field_bytes(3, file_version)
    if scalars:
        values = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" + _float32(value))
            for tag, value in scalars
        )
        out += _field_bytes(5, values)
    return out
