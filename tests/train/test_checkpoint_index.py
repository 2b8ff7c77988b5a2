"""A damaged checkpoint index (issue 14): folders it names that are gone, and an index that is
truncated or corrupt. A rerun resumes from the newest intact checkpoint with a warning naming
what was wrong, and the index is repaired so the warning is not repeated."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings

import pytest

from trainkit import train
from trainkit.train import Checkpoint
from trainkit.train import CheckpointConfig
from trainkit.train import Result
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer
from trainkit.train._checkpoint_manager import CheckpointManager


def counting_loop(config: dict) -> None:
    """Reports steps start..n-1, each with a checkpoint holding its step."""
    ckpt = train.get_checkpoint()
    start = 0
    if ckpt is not None:
        with open(os.path.join(ckpt.path, "step")) as f:
            start = int(f.read()) + 1
    for step in range(start, config["n"]):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "step"), "w") as f:
                f.write(str(step))
            train.report({"step": step, "start": start}, checkpoint=Checkpoint.from_directory(d))


def _fit(tmp_path, n: int) -> Result:
    return Trainer(counting_loop, train_loop_config={"n": n},
                   scaling_config=ScalingConfig(num_workers=0),
                   run_config=RunConfig(name="run", storage_path=tmp_path, verbose=0)).fit()


def _index(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "checkpoints.json")) as f:
        return dict(json.load(f))


def test_missing_newest_folders_resume_from_the_newest_intact_one(tmp_path) -> None:
    first = _fit(tmp_path, 3)
    shutil.rmtree(os.path.join(first.path, "checkpoint_000003"))
    shutil.rmtree(os.path.join(first.path, "checkpoint_000002"))
    with pytest.warns(UserWarning, match=r"names \['checkpoint_000002', 'checkpoint_000003'\], "
                      r"but those folders are missing .*resuming from the newest intact one, "
                      r"checkpoint_000001"):
        second = _fit(tmp_path, 4)
    assert list(second.metrics_dataframe["start"])[3:] == [1, 1, 1]  # from checkpoint 1
    assert second.checkpoint is not None
    with open(os.path.join(second.checkpoint.path, "step")) as f:
        assert f.read() == "3"
    # The index was repaired, and numbers never reuse a lost folder's name.
    assert [c["dir"] for c in _index(second.path)["checkpoints"]] == \
        ["checkpoint_000001", "checkpoint_000004", "checkpoint_000005", "checkpoint_000006"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _fit(tmp_path, 4).metrics == {}  # nothing left to do, and no warning again


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_index_is_rebuilt_from_the_folders(tmp_path, damage: str) -> None:
    first = _fit(tmp_path, 3)
    path = os.path.join(first.path, "checkpoints.json")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage")
    pattern = (rf"checkpoint index {path} of the run folder {first.path} is unreadable .*"
               r"recovered \['checkpoint_000001', 'checkpoint_000002', 'checkpoint_000003'\]")
    with pytest.warns(UserWarning, match=pattern):
        read = Result.from_path(first.path)  # reading a run back recovers the same way
    assert read.checkpoint is not None and read.checkpoint.path.endswith("checkpoint_000003")
    assert read.best_checkpoints[0][1] == {"step": 0, "start": 0}  # metrics from result.json
    with pytest.warns(UserWarning, match=pattern):
        second = _fit(tmp_path, 4)
    assert list(second.metrics_dataframe["start"]) == [0, 0, 0, 3]
    assert [c["dir"] for c in _index(second.path)["checkpoints"]][-1] == "checkpoint_000004"


def test_corrupt_index_without_results_keeps_every_folder(tmp_path) -> None:
    for n in (1, 2):
        os.makedirs(tmp_path / f"checkpoint_00000{n}")
    (tmp_path / "checkpoints.json").write_text('{"next_number": 3, "checkpoints": [{"numb')
    with pytest.warns(UserWarning, match="unreadable"):
        manager = CheckpointManager(str(tmp_path), CheckpointConfig())
    assert [r.number for r in manager.records] == [1, 2] and manager.next_number == 3
    assert _index(str(tmp_path))["next_number"] == 3  # rewritten whole


def test_corrupt_index_and_no_folders_starts_afresh(tmp_path) -> None:
    (tmp_path / "checkpoints.json").write_text("{")
    with pytest.warns(UserWarning, match="found no checkpoint folder to recover"):
        manager = CheckpointManager(str(tmp_path), CheckpointConfig())
    assert manager.records == [] and manager.latest is None
