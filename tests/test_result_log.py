"""Tests of trainkit._result_log: result.json, progress.csv and hand-encoded TensorBoard events."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from trainkit._result_log import ResultLog
from trainkit._result_log import _crc32c
from trainkit._result_log import flatten_metrics
from trainkit._result_log import read_results


def _json_lines(run_dir: Path) -> list[dict[str, object]]:
    lines = (run_dir / "result.json").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _csv_rows(run_dir: Path) -> list[list[str]]:
    with open(run_dir / "progress.csv", newline="") as f:
        return list(csv.reader(f))


def _event_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("events.out.tfevents.*"))


def test_flatten_metrics() -> None:
    assert flatten_metrics({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a/b": 1, "a/c/d": 2, "e": 3}
    assert flatten_metrics({"a": {"b": 1}}, sep=".") == {"a.b": 1}


def test_json_lines_round_trip_numpy_and_nested(tmp_path: Path) -> None:
    big = np.arange(4).reshape(2, 2)
    with ResultLog(tmp_path, tensorboard=False) as log:
        log.append(
            {
                "f32": np.float32(0.5),
                "i64": np.int64(7),
                "flag": np.bool_(True),
                "one": np.array([2.5]),
                "zero_d": np.array(3),
                "big": big,
                "nested": {"acc": np.float64(0.75), "deeper": {"n": 1}},
                "lst": [np.int64(1), 2.0],
                "nan": float("nan"),
                "inf": float("inf"),
                "obj": object,
                "none": None,
            },
            step=1,
        )
    (record,) = _json_lines(tmp_path)
    assert record["f32"] == 0.5 and record["i64"] == 7 and record["flag"] is True
    assert record["one"] == 2.5 and record["zero_d"] == 3
    assert record["big"] == repr(big)
    assert record["nested"] == {"acc": 0.75, "deeper": {"n": 1}}
    assert record["lst"] == [1, 2.0]
    assert math.isnan(record["nan"]) and record["inf"] == math.inf  # type: ignore[arg-type]
    assert record["obj"] == repr(object) and record["none"] is None

    frame = read_results(tmp_path)
    assert list(frame.columns[:7]) == ["f32", "i64", "flag", "one", "zero_d", "big", "nested/acc"]
    assert frame["nested/deeper/n"][0] == 1


def test_torch_tensor_of_size_one_becomes_a_scalar(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    with ResultLog(tmp_path, tensorboard=False) as log:
        log.append({"loss": torch.tensor(1.5), "vec": torch.ones(3)}, step=0)
    (record,) = _json_lines(tmp_path)
    assert record["loss"] == 1.5
    assert isinstance(record["vec"], str) and record["vec"].startswith("tensor(")


def test_csv_header_union_rewrite(tmp_path: Path) -> None:
    with ResultLog(tmp_path, tensorboard=False) as log:
        log.append({"a": 1, "b": {"c": 2}}, step=0)
        log.append({"a": 3, "d": "x,y\nz"}, step=1)
        log.append({"b": {"c": 4}}, step=2)
    assert _csv_rows(tmp_path) == [
        ["a", "b/c", "d"],
        ["1", "2", ""],
        ["3", "", "x,y\nz"],
        ["", "4", ""],
    ]
    assert not (tmp_path / "progress.csv.tmp").exists()


def test_reopen_appends_and_keeps_earlier_rows(tmp_path: Path) -> None:
    with ResultLog(tmp_path) as log:
        log.append({"a": 1}, step=0)
    with ResultLog(tmp_path) as log:
        log.append({"a": 2, "b": 5}, step=1)
    assert _json_lines(tmp_path) == [{"a": 1}, {"a": 2, "b": 5}]
    assert _csv_rows(tmp_path) == [["a", "b"], ["1", ""], ["2", "5"]]
    assert len(_event_files(tmp_path)) == 2
    assert read_results(tmp_path)["a"].tolist() == [1, 2]


def test_truncated_last_line_is_skipped_and_repaired_on_reopen(tmp_path: Path) -> None:
    with ResultLog(tmp_path, tensorboard=False) as log:
        log.append({"a": 10}, step=0)
        log.append({"a": 20}, step=1)
    for name in ("result.json", "progress.csv"):
        path = tmp_path / name
        path.write_bytes(path.read_bytes()[:-2])  # a crash mid-write: ends in '{"a": 2' and '2'
    assert read_results(tmp_path)["a"].tolist() == [10]

    with ResultLog(tmp_path, tensorboard=False) as log:
        log.append({"a": 30}, step=2)
    assert read_results(tmp_path)["a"].tolist() == [10, 30]
    assert _csv_rows(tmp_path) == [["a"], ["10"], ["30"]]


def test_read_results_missing_or_empty_and_corrupt_middle(tmp_path: Path) -> None:
    assert read_results(tmp_path / "nope").empty
    (tmp_path / "result.json").write_text("")
    assert read_results(tmp_path).empty
    (tmp_path / "result.json").write_text('{"a": 1\n{"a": 2}\n')
    with pytest.raises(ValueError, match="line 1"):
        read_results(tmp_path)


def test_tensorboard_reads_back_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with ResultLog(tmp_path) as log:
        log.append({"loss": 0.1, "eval": {"acc": np.float32(0.9)}, "note": "hi"}, step=3)
        log.append({"loss": 1e40, "flag": True, "big": -(10**400)}, step=-1)
        log.append({"loss": 0.05}, step=2**40)

    (path,) = _event_files(tmp_path)
    accumulator = EventAccumulator(str(path))
    accumulator.Reload()
    assert sorted(accumulator.Tags()["scalars"]) == ["big", "eval/acc", "flag", "loss"]
    loss = accumulator.Scalars("loss")
    assert [event.step for event in loss] == [3, -1, 2**40]
    assert [event.value for event in loss] == [np.float32(0.1), math.inf, np.float32(0.05)]
    assert accumulator.Scalars("eval/acc")[0].value == np.float32(0.9)
    assert accumulator.Scalars("flag")[0].value == 1.0
    assert accumulator.Scalars("big")[0].value == -math.inf


def test_crc32c_known_answer() -> None:
    assert _crc32c(b"123456789") == 0xE3069283
    assert _crc32c(b"") == 0


def test_step_and_closed_errors(tmp_path: Path) -> None:
    log = ResultLog(tmp_path)
    with pytest.raises(TypeError, match="float"):
        log.append({"a": 1}, step=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int64"):
        log.append({"a": 1}, step=2**63)
    log.close()
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.append({"a": 1}, step=0)


def test_writing_imports_no_tensorboard_torch_or_pandas(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from trainkit._result_log import ResultLog
        with ResultLog(sys.argv[1]) as log:
            log.append({"loss": 0.5, "nested": {"x": 1}}, step=1)
        heavy = ("tensorboard", "torch", "google.protobuf", "pandas")
        heavy = [name for name in heavy if name in sys.modules]
        assert not heavy, heavy
        """
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60)
    assert len(_event_files(tmp_path)) == 1


def test_trim_results_drops_reports_after_an_iteration(tmp_path: Path) -> None:
    from trainkit._result_log import count_results
    from trainkit._result_log import trim_results

    with ResultLog(tmp_path) as log:
        for i in range(1, 6):
            log.append({"loss": float(i), "training_iteration": i}, step=i)
    trim_results(tmp_path, 3)
    assert count_results(tmp_path) == 3
    assert list(read_results(tmp_path)["training_iteration"]) == [1, 2, 3]
    assert (tmp_path / "progress.csv").read_text().count("\n") == 4  # header + 3 rows
    with ResultLog(tmp_path) as log:  # appending continues after the kept rows
        log.append({"loss": 9.0, "training_iteration": 4}, step=4)
    assert list(read_results(tmp_path)["training_iteration"]) == [1, 2, 3, 4]
