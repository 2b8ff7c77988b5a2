"""Rerunning a named Trainer run: the same loop continues the run, an edited loop starts a
new one (and says so), and ``resume=`` forces either."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from trainkit import train
from trainkit.train import Checkpoint
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer


def _steps(config: dict[str, Any]) -> None:
    start = 0
    ckpt = train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start = int(Path(d, "step").read_text()) + 1
    for step in range(start, config["steps"]):
        d = Path(os.getcwd(), f"c{step}")
        d.mkdir(exist_ok=True)
        (d / "step").write_text(str(step))
        train.report({"step": step, "start": start}, checkpoint=Checkpoint.from_directory(d))


def _edited(config: dict[str, Any]) -> None:  # another loop: a new run, not a resume
    for step in range(config["steps"]):
        train.report({"step": step, "start": -1})


def _fit(loop: Any, tmp_path: Path, steps: int, **kwargs: Any) -> Any:
    return Trainer(loop, train_loop_config={"steps": steps},
                   scaling_config=ScalingConfig(num_workers=0),
                   run_config=RunConfig(name="job", storage_path=str(tmp_path / "runs")),
                   **kwargs).fit()


def test_the_same_loop_continues_an_edited_one_starts_a_new_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = _fit(_steps, tmp_path, 2)
    assert first.path.endswith("/runs/job") and first.metrics["start"] == 0
    again = _fit(_steps, tmp_path, 4)  # more steps, same loop: it continues
    assert again.path == first.path and again.metrics == {"step": 3, "start": 2}
    capsys.readouterr()

    edited = _fit(_edited, tmp_path, 3)
    out = capsys.readouterr().out
    assert edited.path.endswith("/runs/job-2") and edited.metrics["start"] == -1
    assert "starting a new run in" in out and "job-2" in out
    assert "the training loop's code changed" in out and "Trainer(resume=True)" in out
    assert _fit(_edited, tmp_path, 3).path == edited.path  # the edited loop again: job-2
    assert _fit(_steps, tmp_path, 5).metrics == {"step": 4, "start": 4}  # and job continues


def test_resume_true_continues_whatever_changed_and_false_starts_afresh(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = _fit(_steps, tmp_path, 2)
    forced = _fit(_edited, tmp_path, 3, resume=True)
    assert forced.path == first.path
    fresh = _fit(_steps, tmp_path, 2, resume=False)
    assert fresh.path.endswith("/runs/job-2") and fresh.metrics["start"] == 0


def test_a_bad_resume_value_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"`resume` is 'always', but must be 'auto' "
                                         r"\(continue only the same run\)"):
        Trainer(_steps, resume="always")
