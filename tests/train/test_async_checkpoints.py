"""Asynchronous checkpoint uploads (issue 14): report() returns after the snapshot, uploads and
commits run in the background in report order, a bounded queue blocks the loop, an upload error
fails the attempt, and a rank SIGKILLed while uploads are in flight leaves only complete
checkpoints committed. Uploads are held open with the ``wait:<file>`` fault action, so each
test waits on events (a file appearing), never on time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time

import pytest

from trainkit import train
from trainkit.exceptions import TrainingFailedError
from trainkit.train import Checkpoint
from trainkit.train import FailureConfig
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer
from trainkit.train import _faults
from trainkit.train import _storage
from trainkit.train._uploader import MAX_PENDING_CHECKPOINTS
from trainkit.train._uploader import ReportQueue

pytestmark = pytest.mark.usefixtures("train_runtime")

_MB = 1 << 20


def _index(run_dir: str) -> list[str]:
    try:
        with open(os.path.join(run_dir, "checkpoints.json")) as f:
            return [c["dir"] for c in json.load(f)["checkpoints"]]
    except FileNotFoundError:
        return []


def _write_state(d: str, rank: int, tag: str, size: int) -> None:
    with open(os.path.join(d, f"a_rank{rank}"), "w") as f:
        f.write(tag)
    with open(os.path.join(d, f"b_rank{rank}"), "wb") as f:
        f.write(tag.encode() * (size // len(tag)))


def gated_loop(config: dict) -> None:
    """Report 1 async while every upload waits for the gate file; check nothing is committed,
    rewrite and delete the folder, open the gate, then report 2 in sync mode."""
    rank = train.get_context().get_world_rank()
    run_dir = train.get_context().get_storage_path()
    d = tempfile.mkdtemp()
    _write_state(d, rank, "one", 16 * _MB)
    copy_ref = tempfile.mkdtemp()
    t0 = time.perf_counter()
    shutil.copytree(d, copy_ref, dirs_exist_ok=True)  # the same-test reference
    copy_s = time.perf_counter() - t0
    shutil.rmtree(copy_ref)
    t0 = time.perf_counter()
    train.report({"i": 1}, checkpoint=Checkpoint.from_directory(d))
    report_s = time.perf_counter() - t0
    if rank == 0:  # the gate is still shut: returned before the upload, let alone the commit
        assert _index(run_dir) == []
    with open(os.path.join(d, f"a_rank{rank}"), "w") as f:
        f.write("overwritten in place")  # the snapshot is a copy, not a link
    shutil.rmtree(d)  # and the folder may go as soon as report() returns
    if rank == 0:
        with open(config["times"], "w") as f:
            json.dump({"copy_s": copy_s, "report_s": report_s}, f)
        open(config["gate"], "w").close()
    d = tempfile.mkdtemp()
    _write_state(d, rank, "two", _MB)
    train.report({"i": 2}, checkpoint=Checkpoint.from_directory(d),
                 checkpoint_upload_mode="sync")
    assert _index(run_dir) == ["checkpoint_000001", "checkpoint_000002"]
    shutil.rmtree(d)
    train.report({"i": 3})  # no checkpoint: committed in order after the uploads


def test_async_report_returns_before_the_upload_and_commits_in_order(tmp_path,
                                                                     monkeypatch) -> None:
    gate = tmp_path / "gate"
    monkeypatch.setenv("TRAINKIT_TEST_FAULTS", f"checkpoint_uploading@*:*=wait:{gate}")
    result = Trainer(gated_loop, train_loop_config={"gate": str(gate),
                                                    "times": str(tmp_path / "times.json")},
                     scaling_config=ScalingConfig(num_workers=2),
                     run_config=RunConfig(name="gated", storage_path=tmp_path / "runs",
                                          verbose=0)).fit()
    assert list(result.metrics_dataframe["i"]) == [1, 2, 3]
    assert _index(result.path) == ["checkpoint_000001", "checkpoint_000002"]
    for number, tag in ((1, "one"), (2, "two")):
        folder = os.path.join(result.path, f"checkpoint_00000{number}")
        assert sorted(os.listdir(folder)) == ["a_rank0", "a_rank1", "b_rank0", "b_rank1"]
        for rank in (0, 1):
            with open(os.path.join(folder, f"a_rank{rank}")) as f:
                assert f.read() == tag  # as reported, not as rewritten after report()
    assert not os.path.exists(os.path.join(result.path, ".staging"))
    with open(tmp_path / "times.json") as f:
        times = json.load(f)
    # report() cost a snapshot: about one local copy of the folder (generous: a shared CPU).
    assert times["report_s"] < 4 * times["copy_s"] + 0.5, times


def test_bad_upload_mode_names_the_value_and_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"checkpoint_upload_mode='later'.*'async'.*'sync'"):
        train.report({}, checkpoint_upload_mode="later")


def one_checkpoint(config: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        _write_state(d, train.get_context().get_world_rank(), "x", 1024)
        train.report({"i": 1}, checkpoint=Checkpoint.from_directory(d))


def test_upload_error_fails_the_attempt_with_the_path_and_cause(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRAINKIT_TEST_FAULTS", "checkpoint_uploading@1:*=raise")
    trainer = Trainer(one_checkpoint, train_loop_config={},
                      scaling_config=ScalingConfig(num_workers=2),
                      run_config=RunConfig(name="bad", storage_path=tmp_path, verbose=0,
                                           failure_config=FailureConfig(max_failures=0)))
    with pytest.raises(TrainingFailedError) as info:
        trainer.fit()
    text = str(info.value)
    assert "rank 1 could not upload its checkpoint of report 1 to" in text
    assert os.path.join(str(tmp_path), "bad", ".staging", "a0000-000001") in text
    assert "injected fault at checkpoint_uploading" in text
    assert "No checkpoint was persisted" in text


def killed_while_uploading(config: dict) -> None:
    """Rank 1, on the first attempt, reports 1 (sync), then 2 and 3 with their uploads held
    open by the gate, and SIGKILLs itself while both are in flight."""
    rank = train.get_context().get_world_rank()
    ckpt = train.get_checkpoint()
    start = 1
    if ckpt is not None:
        with open(os.path.join(ckpt.path, f"a_rank{rank}")) as f:
            start = int(f.read()) + 1
    first_attempt = not os.path.exists(config["marker"])
    for i in range(start, 5):
        if rank == 1 and first_attempt and i == 2:
            os.remove(config["gate"])  # uploads of rank 1 from here on wait for the gate
        with tempfile.TemporaryDirectory() as d:
            _write_state(d, rank, str(i), 4 * _MB)
            train.report({"i": i, "start": start}, checkpoint=Checkpoint.from_directory(d),
                         checkpoint_upload_mode="sync" if i == 1 else "async")
        if rank == 1 and first_attempt and i == 3:
            open(config["marker"], "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


def test_rank_sigkilled_during_uploads_resumes_from_a_complete_checkpoint(tmp_path,
                                                                           monkeypatch) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    monkeypatch.setenv("TRAINKIT_TEST_FAULTS", f"checkpoint_uploading@1:0=wait:{gate}")
    result = Trainer(killed_while_uploading,
                     train_loop_config={"gate": str(gate), "marker": str(tmp_path / "killed")},
                     scaling_config=ScalingConfig(num_workers=2),
                     run_config=RunConfig(name="kill", storage_path=tmp_path / "runs", verbose=0,
                                          failure_config=FailureConfig(max_failures=1))).fit()
    df = result.metrics_dataframe
    assert list(df["i"]) == [1, 2, 3, 4]
    assert list(df["start"]) == [1, 2, 2, 2]  # resumed from checkpoint 1, the last committed
    names = _index(result.path)
    assert names == ["checkpoint_000001", "checkpoint_000002", "checkpoint_000003",
                     "checkpoint_000004"]
    for n, name in enumerate(names, start=1):
        folder = os.path.join(result.path, name)
        assert sorted(os.listdir(folder)) == ["a_rank0", "a_rank1", "b_rank0", "b_rank1"]
        for rank in (0, 1):
            with open(os.path.join(folder, f"a_rank{rank}")) as f:
                assert f.read() == str(n)
            assert os.path.getsize(os.path.join(folder, f"b_rank{rank}")) == 4 * _MB
    assert not os.path.exists(os.path.join(result.path, ".staging"))


def test_queue_blocks_a_third_checkpoint_until_the_oldest_is_committed(tmp_path) -> None:
    gate = tmp_path / "gate"
    _faults.install(f"checkpoint_uploading@0:0=wait:{gate}")
    queue = ReportQueue(0, 0, _storage.local_location(tmp_path / "staging"))
    said = threading.Event()
    queue.say = lambda line: said.set()
    src = tmp_path / "src"
    src.mkdir()
    _write_state(str(src), 0, "s", 1024)
    try:
        for _ in range(MAX_PENDING_CHECKPOINTS):
            queue.put({}, Checkpoint.from_directory(src), "async")
        third = threading.Thread(target=queue.put, args=({}, Checkpoint.from_directory(src),
                                                         "async"))
        third.start()
        assert said.wait(30)  # the third report() blocks, and says why
        assert queue.seq == MAX_PENDING_CHECKPOINTS and third.is_alive()
        gate.touch()
        taken: list = []
        while len(taken) < MAX_PENDING_CHECKPOINTS:
            taken += queue.take(5.0)
        assert [r.seq for r in taken] == [1, 2]
        queue.ack(1)  # the driver committed report 1: a slot frees
        third.join(30)
        assert not third.is_alive() and queue.seq == 3
    finally:
        _faults.install(None)  # type: ignore[arg-type]
        queue.close()


def test_an_upload_cut_short_by_close_is_not_the_ranks_error(tmp_path, monkeypatch) -> None:
    """A rank that fails closes its queue, which removes the snapshots; the upload then in
    progress fails for that reason, and must not stand in for the rank's own error."""
    from trainkit.train import _uploader

    started, release = threading.Event(), threading.Event()

    def manifest_of_a_removed_snapshot(snapshot: str, rank: int) -> None:
        started.set()
        release.wait(30)
        raise FileNotFoundError(snapshot)

    monkeypatch.setattr(_uploader, "write_manifest", manifest_of_a_removed_snapshot)
    queue = ReportQueue(0, 0, _storage.local_location(tmp_path / "staging"))
    src = tmp_path / "src"
    src.mkdir()
    _write_state(str(src), 0, "s", 1024)
    queue.put({}, Checkpoint.from_directory(src), "async")
    assert started.wait(30)
    queue.close()
    release.set()
    assert queue._thread is not None
    queue._thread.join(30)
    assert not queue._thread.is_alive() and queue.error is None
