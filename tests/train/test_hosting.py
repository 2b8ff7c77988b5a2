"""The seam Train offers a host that runs a training loop outside a Trainer
(``trainkit.train.hosting``): what a hosted loop sees, what the host gets back, and the
checkpoint commits. No runtime: everything runs in this thread."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from trainkit import train
from trainkit.train import Checkpoint
from trainkit.train import CheckpointConfig
from trainkit.train import TrainContext
from trainkit.train.hosting import RunCheckpoints
from trainkit.train.hosting import hosted_loop
from trainkit.train.hosting import run_loop


def _context(run_path: str = "/tmp/run") -> TrainContext:
    return TrainContext(world_size=1, world_rank=0, local_rank=0, local_world_size=1,
                        node_rank=0, experiment_name="sweep", run_path=run_path,
                        trial_id="00007", trial_name="f_00007")


def _write_file(name: str, text: str) -> Any:
    def write(folder: str) -> None:
        Path(folder, name).write_text(text)
    return write


def test_a_hosted_function_reports_and_gets_its_checkpoint(tmp_path: Path) -> None:
    start = tmp_path / "start"
    start.mkdir()
    (start / "state.txt").write_text("3")
    reports: list[tuple[dict[str, Any], str | None]] = []

    def sink(metrics: dict[str, Any], checkpoint: Checkpoint | None) -> None:
        reports.append((metrics, Path(checkpoint.path, "state.txt").read_text()
                        if checkpoint else None))

    def loop(config: dict[str, Any]) -> str:
        ckpt = train.get_checkpoint()
        assert ckpt is not None
        step = int(Path(ckpt.path, "state.txt").read_text())
        ctx = train.get_context()
        assert (ctx.get_world_size(), ctx.get_trial_id()) == (1, "00007")
        out = tmp_path / "out"
        out.mkdir()
        (out / "state.txt").write_text(str(step + 1))
        train.report({"step": step, "lr": config["lr"]})
        train.report({"step": step + 1}, checkpoint=Checkpoint.from_directory(str(out)))
        return "done"

    returned = run_loop(loop, {"lr": 0.1}, context=_context(), on_report=sink,
                        checkpoint=Checkpoint(str(start)))

    assert returned == "done"
    assert reports == [({"step": 3, "lr": 0.1}, None), ({"step": 4}, "4")]
    with pytest.raises(RuntimeError, match="outside a training loop"):
        train.report({"late": 1})  # the session ends with the loop


def test_the_sink_can_end_the_loop_and_the_session_still_ends() -> None:
    class Stop(BaseException):
        pass

    def sink(metrics: dict[str, Any], checkpoint: Checkpoint | None) -> None:
        raise Stop

    def loop(config: dict[str, Any]) -> None:
        train.report({"x": 1})
        raise AssertionError("report() should have raised the sink's error")

    with pytest.raises(Stop):
        run_loop(loop, {}, context=_context(), on_report=sink)
    with pytest.raises(RuntimeError, match="outside a training loop"):
        train.get_context()


def test_hosted_loops_nest_and_restore_the_outer_session() -> None:
    outer: list[dict[str, Any]] = []
    inner: list[dict[str, Any]] = []
    with hosted_loop(_context("/outer"), on_report=lambda m, c: outer.append(m)):
        with hosted_loop(_context("/inner"), on_report=lambda m, c: inner.append(m),
                         dataset_shards={"train": [1, 2]}):
            assert train.get_dataset_shard("train") == [1, 2]
            train.report({"where": "inner"})
        assert train.get_context().get_storage_path() == "/outer"
        assert train.get_checkpoint() is None
        train.report({"where": "outer"})
    assert (outer, inner) == ([{"where": "outer"}], [{"where": "inner"}])


def test_run_checkpoints_commit_list_and_retain(tmp_path: Path) -> None:
    run = str(tmp_path / "trial")
    checkpoints = RunCheckpoints(run, CheckpointConfig(num_to_keep=2))
    assert checkpoints.latest is None and checkpoints.records == ()
    assert checkpoints.next_dir_name == "checkpoint_000001"

    for i in range(3):
        record = checkpoints.commit(_write_file("i.txt", str(i)), {"training_iteration": i})
        assert os.path.basename(record.path) == f"checkpoint_{i + 1:06d}"

    assert [r.number for r in checkpoints.records] == [2, 3]  # num_to_keep=2
    assert not os.path.exists(os.path.join(run, "checkpoint_000001"))
    latest = checkpoints.latest
    assert latest is not None and latest.metrics == {"training_iteration": 2}
    assert Path(latest.checkpoint.path, "i.txt").read_text() == "2"
    assert checkpoints.next_dir_name == "checkpoint_000004"

    reopened = RunCheckpoints(run, CheckpointConfig(num_to_keep=2))
    assert [(r.number, r.metrics) for r in reopened.records] == \
        [(r.number, r.metrics) for r in checkpoints.records]


def test_a_write_that_raises_commits_nothing(tmp_path: Path) -> None:
    checkpoints = RunCheckpoints(str(tmp_path), CheckpointConfig())

    def broken(folder: str) -> None:
        Path(folder, "half.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoints.commit(broken, {"training_iteration": 1})
    assert checkpoints.latest is None

    record = checkpoints.commit(_write_file("whole.txt", "ok"), {"training_iteration": 1})
    assert record.number == 1
    assert sorted(os.listdir(record.path)) == ["whole.txt"]  # nothing of the broken write


@pytest.mark.parametrize(("path", "number"), [
    ("/runs/t/checkpoint_000012", 12), ("/runs/t/checkpoint_000012/", 12),
    ("/runs/t/exploit_0001", None), ("/runs/t/checkpoint_latest", None), ("checkpoint_", None),
])
def test_number_of(path: str, number: int | None) -> None:
    assert RunCheckpoints.number_of(path) == number
