"""CheckpointManager: atomic commits, retention, and what a crash leaves behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trainkit.train import Checkpoint
from trainkit.train import CheckpointConfig
from trainkit.train._checkpoint_manager import INDEX_FILE
from trainkit.train._checkpoint_manager import CheckpointManager


def _stage(manager: CheckpointManager, key: str, content: str = "x") -> str:
    path = manager.staging_dir(key).path
    os.makedirs(path)
    with open(os.path.join(path, "state.txt"), "w") as f:
        f.write(content)
    return path


def _commit_losses(manager: CheckpointManager, losses: list[float]) -> None:
    for i, loss in enumerate(losses):
        manager.commit(_stage(manager, f"k{i}", str(loss)), {"loss": loss})


def _on_disk(run_dir) -> list[str]:
    return sorted(n for n in os.listdir(run_dir) if n.startswith("checkpoint_"))


def test_commit_numbers_and_index(tmp_path) -> None:
    m = CheckpointManager(str(tmp_path), CheckpointConfig())
    _commit_losses(m, [3.0, 2.0])
    assert _on_disk(tmp_path) == ["checkpoint_000001", "checkpoint_000002"]
    assert m.latest is not None and m.latest.metrics == {"loss": 2.0}
    with open(tmp_path / INDEX_FILE) as f:
        index = json.load(f)
    assert [c["dir"] for c in index["checkpoints"]] == _on_disk(tmp_path)
    assert not os.path.exists(m.staging_root.path) or not os.listdir(m.staging_root.path)


@pytest.mark.parametrize(("order", "kept"), [
    ("min", ["checkpoint_000002", "checkpoint_000004", "checkpoint_000005"]),
    ("max", ["checkpoint_000001", "checkpoint_000003", "checkpoint_000005"]),
])
def test_retention_by_score_keeps_the_best_and_the_latest(tmp_path, order, kept) -> None:
    config = CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="loss",
                              checkpoint_score_order=order)
    m = CheckpointManager(str(tmp_path), config)
    _commit_losses(m, [5.0, 1.0, 4.0, 2.0, 3.0])
    assert _on_disk(tmp_path) == kept
    assert [os.path.basename(c.path) for c, _ in m.best_checkpoints()] == kept


def test_retention_without_score_keeps_the_latest(tmp_path) -> None:
    m = CheckpointManager(str(tmp_path), CheckpointConfig(num_to_keep=2))
    _commit_losses(m, [1.0, 2.0, 3.0])
    assert _on_disk(tmp_path) == ["checkpoint_000002", "checkpoint_000003"]


def test_missing_score_ranks_last_with_a_warning(tmp_path) -> None:
    config = CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="acc")
    m = CheckpointManager(str(tmp_path), config)
    with pytest.warns(UserWarning, match="acc"):
        _commit_losses(m, [1.0, 2.0])
    assert _on_disk(tmp_path) == ["checkpoint_000002"]


def test_reopen_continues_and_drops_uncommitted(tmp_path) -> None:
    m = CheckpointManager(str(tmp_path), CheckpointConfig())
    _commit_losses(m, [1.0])
    # A crash after the rename but before the index write leaves an unindexed folder, and a
    # crash during a worker's copy leaves a staging folder.
    os.makedirs(tmp_path / "checkpoint_000002")
    _stage(m, "a0000-000002")
    again = CheckpointManager(str(tmp_path), CheckpointConfig())
    assert again.latest is not None and again.latest.number == 1
    assert _on_disk(tmp_path) == ["checkpoint_000001"]
    assert not os.path.exists(again.staging_root.path)
    again.commit(_stage(again, "k"), {})
    assert _on_disk(tmp_path) == ["checkpoint_000001", "checkpoint_000002"]


def test_checkpoint_object(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("hi")
    ckpt = Checkpoint.from_directory(tmp_path)
    with ckpt.as_directory() as d:
        assert Path(d, "a.txt").read_text() == "hi"
    copy = ckpt.to_directory(tmp_path / "copy")
    assert Path(copy, "a.txt").read_text() == "hi"
    assert os.fspath(ckpt) == str(tmp_path)
    with pytest.raises(ValueError, match="no such folder"):
        Checkpoint.from_directory(tmp_path / "nope")
