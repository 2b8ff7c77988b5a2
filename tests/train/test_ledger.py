"""The run ledger and ``trainkit report``: a real 2-worker run with an injected rank failure,
the goodput arithmetic on hand-written events, remote (moto S3) ledgers, and paths that hold
no run."""

from __future__ import annotations

import json
import os
import re
import tempfile

import pytest

from trainkit import train
from trainkit.cli import main
from trainkit.train import Checkpoint
from trainkit.train import FailureConfig
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer
from trainkit.train._goodput import BADPUT_KEYS
from trainkit.train._goodput import summarize
from trainkit.train._ledger import LEDGER_FILE
from trainkit.train._ledger import RunLedger
from trainkit.train._ledger import read_ledger
from trainkit.train._storage import StorageLocation
from trainkit.train._storage import local_location


def _ev(seq: int, t: float, event: str, **fields: object) -> dict:
    return {"v": 1, "seq": seq, "t": t, "event": event, **fields}


# A run of two attempts: the first fails 3 s after its last committed checkpoint.
HAND_WRITTEN = [
    _ev(1, 100.0, "run_started", name="demo", kind="train", num_workers=2),
    _ev(2, 101.0, "attempt_started", attempt=0, world_size=2),
    _ev(3, 103.0, "workers_started", attempt=0),
    _ev(4, 104.0, "rendezvous_done", attempt=0),
    _ev(5, 106.0, "first_report", attempt=0),
    _ev(6, 106.0, "checkpoint_snapshotted", attempt=0, iteration=1, snapshot_s=0.5),
    _ev(7, 106.0, "report", attempt=0, iteration=1, step_s=2.0, checkpoint=True),
    _ev(8, 106.2, "checkpoint_committed", attempt=0, iteration=1, dir="checkpoint_000001"),
    _ev(9, 107.2, "report", attempt=0, iteration=2, step_s=1.2, checkpoint=False),
    _ev(10, 109.2, "rank_failed", attempt=0, rank=1, node="10.0.0.2", error_type="ValueError",
        message="boom"),
    _ev(11, 109.2, "attempt_failed", attempt=0, decision="restart", reason="1 of 1",
        message="a training worker failed"),
    _ev(12, 110.2, "attempt_started", attempt=1, world_size=2),
    _ev(13, 111.2, "workers_started", attempt=1),
    _ev(14, 111.7, "rendezvous_done", attempt=1),
    _ev(15, 113.7, "report", attempt=1, iteration=2, step_s=2.0, checkpoint=False),
    _ev(16, 114.7, "attempt_finished", attempt=1),
    _ev(17, 115.0, "run_finished", iterations=2),
]


def test_goodput_of_hand_written_events() -> None:
    s = summarize(HAND_WRITTEN)
    assert (s["kind"], s["name"], s["status"], s["wall_s"]) == ("train", "demo", "finished", 15.0)
    assert s["badput_s"] == {"startup": 3.0, "rendezvous": 1.5, "data_wait": 0.0,
                             "checkpoint": 0.5, "restart": 2.0, "lost_work": 3.0,
                             "shutdown": 0.3}
    # attempt 0 trained 5.2 s (0.5 s of it snapshotting, 3.0 s lost); attempt 1 trained 3.0 s
    assert s["productive_s"] == pytest.approx(4.7)
    assert s["productive_s"] + sum(s["badput_s"].values()) == pytest.approx(s["wall_s"])
    assert (s["attempts"], s["iterations"], s["checkpoints"]) == (2, 2, 1)
    assert s["failures"] == [{"attempt": 0, "rank": 1, "node": "10.0.0.2",
                              "error_type": "ValueError", "message": "boom",
                              "error": "ValueError: boom"}]


def test_goodput_of_a_run_that_crashed_and_was_rerun() -> None:
    # A session with no end (the driver died) counts up to its last event; the gap until the
    # rerun counts for nothing; a failure with no checkpoint loses all the attempt trained.
    events = [_ev(1, 0.0, "run_started", name="r"), _ev(2, 1.0, "attempt_started", attempt=0),
              _ev(3, 2.0, "rendezvous_done", attempt=0), _ev(4, 6.0, "report", iteration=1),
              _ev(5, 50.0, "run_started", name="r"), _ev(6, 51.0, "attempt_started", attempt=0),
              _ev(7, 52.0, "rendezvous_done", attempt=0),
              _ev(8, 54.0, "attempt_failed", attempt=0, decision="raise", message="x"),
              _ev(9, 55.0, "run_failed", error_type="TrainingFailedError", message="x")]
    s = summarize(events, damaged=1)
    assert (s["status"], s["wall_s"], s["productive_s"]) == ("failed", 11.0, 4.0)
    assert s["badput_s"]["startup"] == 4.0 and s["badput_s"]["lost_work"] == 2.0
    assert s["badput_s"]["shutdown"] == 1.0 and s["damaged_lines"] == 1
    assert s["failures"][0]["error"] == "x" and s["failures"][0]["rank"] is None


def failing_loop(config: dict) -> None:
    """Four checkpointed steps; rank 1 raises once, at step 2 of the first attempt."""
    rank = train.get_context().get_world_rank()
    ckpt = train.get_checkpoint()
    start = 0
    if ckpt is not None:
        with open(os.path.join(ckpt.path, "state.json")) as f:
            start = json.load(f)["step"] + 1
    for step in range(start, 4):
        marker = os.path.join(config["dir"], "failed-once")
        if rank == 1 and step == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            raise ValueError("injected: rank 1 fails at step 2")
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                with open(os.path.join(d, "state.json"), "w") as f:
                    json.dump({"step": step}, f)
            train.report({"step": step}, checkpoint=Checkpoint.from_directory(d))


def _report(path: str, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    """The exit code and what ``trainkit report`` printed (stdout, then stderr)."""
    capsys.readouterr()  # drop what the run printed (the workers' lines)
    code = main(["report", path, *flags])
    out, err = capsys.readouterr()
    return code, out if "--json" in flags and code == 0 else out + err


def _text_numbers(text: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"^  (\w+)\s+([\d.]+) s", text, re.M)}


@pytest.mark.usefixtures("train_runtime")
def test_two_workers_with_a_rank_failure(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    result = Trainer(failing_loop, train_loop_config={"dir": str(tmp_path)},
                     scaling_config=ScalingConfig(num_workers=2),
                     run_config=RunConfig(name="flaky", storage_path=str(tmp_path), verbose=0,
                                          failure_config=FailureConfig(max_failures=1))).fit()
    assert result.metrics == {"step": 3}
    run = os.path.join(tmp_path, "flaky")
    found = read_ledger(local_location(run))
    assert found is not None
    events, damaged = found
    assert damaged == 0
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert [(e["attempt"], e["world_size"]) for e in events
            if e["event"] == "attempt_started"] == [(0, 2), (1, 2)]
    for attempt in (0, 1):  # attempt 0 may fail before any report reached the driver
        mine = [e["event"] for e in events if e.get("attempt") == attempt]
        assert mine[:3] == ["attempt_started", "workers_started", "rendezvous_done"]
        assert mine[3] in ("first_report", "rank_failed")
    assert "first_report" in [e["event"] for e in events if e.get("attempt") == 1]
    failed = [e for e in events if e["event"] == "rank_failed"]
    assert [(e["attempt"], e["rank"], e["error_type"]) for e in failed] == [(0, 1, "ValueError")]
    assert "injected: rank 1 fails at step 2" in failed[0]["message"] and failed[0]["node"]
    assert [e["decision"] for e in events if e["event"] == "attempt_failed"] == ["restart"]
    committed = [e["iteration"] for e in events if e["event"] == "checkpoint_committed"]
    assert committed == list(range(1, len(committed) + 1)) and len(committed) >= 4
    assert all(e["step_s"] >= 0 for e in events if e["event"] == "report")

    code, text = _report(run, capsys)
    assert code == 0
    code, out = _report(run, capsys, "--json")
    assert code == 0
    s = json.loads(out)
    assert (s["kind"], s["name"], s["status"], s["attempts"]) == ("train", "flaky", "finished", 2)
    assert set(BADPUT_KEYS) <= set(s["badput_s"])
    assert s["wall_s"] == pytest.approx(events[-1]["t"] - events[0]["t"], abs=2e-3)
    total = s["productive_s"] + sum(s["badput_s"].values())
    assert abs(total - s["wall_s"]) <= 0.02 * s["wall_s"]
    assert s["badput_s"]["restart"] > 0 and s["badput_s"]["lost_work"] >= 0
    assert [(f["rank"], f["error_type"]) for f in s["failures"]] == [(1, "ValueError")]
    # The text says the same numbers.
    shown = _text_numbers(text)
    assert shown["wall"] == s["wall_s"] and shown["productive"] == s["productive_s"]
    assert {k: shown[k] for k in s["badput_s"]} == s["badput_s"]
    assert "train run 'flaky': finished" in text
    assert "attempt 0: rank 1 on " in text and "ValueError: injected" in text


def test_report_of_a_path_that_is_not_a_run(tmp_path, capsys) -> None:
    (tmp_path / "result.json").write_text("{}\n")  # files of a run, but no ledger
    for path in (str(tmp_path), str(tmp_path / "missing"), str(tmp_path / "result.json")):
        code, text = _report(path, capsys)
        assert code == 2
        assert text.count("\n") == 1 and "is not a run" in text and path in text
    (tmp_path / LEDGER_FILE).write_text('{"torn": \n')
    code, text = _report(str(tmp_path), capsys, "--json")
    assert code == 2 and "records no run_started or sweep_started event (1 damaged line(s))" \
        in text


def test_torn_line_is_skipped_and_the_ledger_continues(tmp_path, capsys) -> None:
    run = local_location(tmp_path)
    ledger = RunLedger(run)
    ledger.append("run_started", name="torn")
    with open(tmp_path / LEDGER_FILE, "ab") as f:
        f.write(b'{"v": 1, "seq": 2, "t": 1')  # a crash mid-write
    again = RunLedger(run)
    again.append("run_started", name="torn")
    again.append("run_finished")
    events, damaged = read_ledger(run) or ([], 0)
    assert damaged == 1 and [e["seq"] for e in events] == [1, 2, 3]
    code, text = _report(str(tmp_path), capsys)
    assert code == 0 and "1 damaged line(s) skipped" in text


def test_report_reads_a_ledger_on_s3(s3, monkeypatch, capsys) -> None:
    run = StorageLocation(s3.fs, f"{s3.bucket}/ledger/remote", f"s3://{s3.bucket}/ledger/remote")
    ledger = RunLedger(run, flush_interval_s=3600.0)
    for e in HAND_WRITTEN[:9]:
        ledger.append(e["event"], **{k: v for k, v in e.items()
                                     if k not in ("v", "seq", "event")})
    assert s3.keys("ledger/remote") == [LEDGER_FILE]  # flushed at the commit, one object
    ledger.flush()
    reopened = RunLedger(run)  # a rerun continues the whole-file rewrite
    for e in HAND_WRITTEN[9:]:
        reopened.append(e["event"], **{k: v for k, v in e.items()
                                       if k not in ("v", "seq", "event")})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    uri = f"s3://{s3.bucket}/ledger/remote?endpoint_override={s3.endpoint}&scheme=http" \
          "&region=us-east-1"
    code, out = _report(uri, capsys, "--json")
    assert code == 0, out
    s = json.loads(out)
    assert s == summarize(HAND_WRITTEN) | {"path": f"s3://{s3.bucket}/ledger/remote"}
    code, out = _report(uri.replace("/remote?", "/nothing?"), capsys)
    assert code == 2 and f"s3://{s3.bucket}/ledger/nothing is not a run" in out


def sparse_checkpoints_loop(config: dict) -> None:
    for step in range(config["reports"]):
        if step % 10:
            train.report({"step": step})
            continue
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, f"rank{train.get_context().get_world_rank()}"), "w") as f:
                f.write(str(step))
            train.report({"step": step}, checkpoint=Checkpoint.from_directory(d))


@pytest.mark.usefixtures("train_runtime")
def test_clean_run_with_a_checkpoint_every_tenth_report(tmp_path, capsys) -> None:
    # Many reports between checkpoints once paired reports of different steps (two long polls
    # of a rank answering out of order) and piled up polls that delayed every ack.
    Trainer(sparse_checkpoints_loop, train_loop_config={"reports": 60},
            scaling_config=ScalingConfig(num_workers=2),
            run_config=RunConfig(name="clean", storage_path=str(tmp_path), verbose=0)).fit()
    events, damaged = read_ledger(local_location(tmp_path / "clean")) or ([], 1)
    assert damaged == 0
    assert [e["iteration"] for e in events if e["event"] == "checkpoint_committed"] == \
        [1, 11, 21, 31, 41, 51]
    assert [e["iteration"] for e in events if e["event"] == "report"] == list(range(1, 61))
    assert not [e for e in events if e["event"] in ("rank_failed", "attempt_failed")]
    code, out = _report(str(tmp_path / "clean"), capsys, "--json")
    s = json.loads(out)
    assert code == 0 and (s["status"], s["attempts"], s["iterations"]) == ("finished", 1, 60)
    assert s["badput_s"]["lost_work"] == 0 and s["badput_s"]["restart"] == 0
    total = s["productive_s"] + sum(s["badput_s"].values())
    assert abs(total - s["wall_s"]) <= 0.02 * s["wall_s"]
