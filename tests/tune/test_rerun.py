"""Reruns with the same experiment name: the same definition continues, an edited one starts
a new experiment in a new folder (and says which), and ``resume=`` forces either."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from trainkit import tune
from trainkit.train import RunConfig
from trainkit.tune._fingerprint import fingerprint

pytestmark = pytest.mark.usefixtures("tune_runtime")

CELL = """
from trainkit import tune

def objective(config):
    for i in range(2):
        tune.report({"loss": config["x"] * OFFSET + i})
"""


def cell(offset: int) -> Any:
    """An objective as a notebook cell defines it (no source file: compared by bytecode)."""
    ns: dict[str, Any] = {"OFFSET": offset}
    exec(compile(CELL.replace("OFFSET", str(offset)), "<cell>", "exec"), ns)
    return ns["objective"]


def helper(x: float) -> float:
    return x + 1


def with_helper(config: dict) -> None:
    tune.report({"loss": helper(config["x"])})


def tuner(tmp_path: Path, objective: Any, space: dict | None = None, **kwargs: Any) -> tune.Tuner:
    return tune.Tuner(objective, param_space=space or {"x": tune.grid_search([1, 2])},
                      run_config=RunConfig(name="exp", storage_path=tmp_path, verbose=1),
                      **kwargs)


def test_same_definition_continues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = tuner(tmp_path, cell(1)).fit()
    again = tuner(tmp_path, cell(1)).fit()  # the cell run again: a new but equal function
    out = capsys.readouterr().out
    assert "resuming experiment 'exp'" in out and "new experiment" not in out
    assert again.experiment_path == first.experiment_path == str(tmp_path / "exp")
    assert all(len(r.metrics_dataframe) == 2 for r in again)  # nothing ran twice


def test_edited_objective_starts_a_new_experiment(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    first = tuner(tmp_path, cell(1)).fit()
    capsys.readouterr()
    edited = tuner(tmp_path, cell(10)).fit()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "new experiment" in ln]
    assert len(lines) == 1 and str(tmp_path / "exp-2") in lines[0]
    assert edited.experiment_path == str(tmp_path / "exp-2")
    assert sorted(r.metrics["loss"] for r in edited) == [11, 21]
    assert sorted(r.metrics["loss"] for r in first) == [2, 3]  # the old one is untouched
    # Rerunning the edited cell continues exp-2; going back to the first continues exp.
    assert tuner(tmp_path, cell(10)).fit().experiment_path == str(tmp_path / "exp-2")
    assert tuner(tmp_path, cell(1)).fit().experiment_path == str(tmp_path / "exp")
    assert not (tmp_path / "exp-3").exists()


def test_edited_search_space_starts_a_new_experiment(tmp_path: Path) -> None:
    tuner(tmp_path, cell(1)).fit()
    grid = tuner(tmp_path, cell(1), space={"x": tune.grid_search([1, 2, 3])}).fit()
    assert grid.experiment_path == str(tmp_path / "exp-2") and len(grid) == 3


def test_resume_true_continues_an_edited_experiment(tmp_path: Path) -> None:
    tuner(tmp_path, cell(1)).fit()
    forced = tuner(tmp_path, cell(10), resume=True).fit()
    assert forced.experiment_path == str(tmp_path / "exp")
    assert sorted(r.metrics["loss"] for r in forced) == [2, 3]  # the finished trials kept
    # The forced definition is now the experiment's: a plain rerun of it continues there.
    assert tuner(tmp_path, cell(10)).fit().experiment_path == str(tmp_path / "exp")


def test_resume_true_without_an_experiment_fails(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"resume=True, but .*exp holds no experiment"):
        tuner(tmp_path, cell(1), resume=True).fit()


def test_resume_false_always_starts_anew(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    tuner(tmp_path, cell(1), resume=False).fit()
    assert tuner(tmp_path, cell(1), resume=False).fit().experiment_path == \
        str(tmp_path / "exp-2")
    assert "starting a new experiment in " + str(tmp_path / "exp-2") + " (resume=False" in \
        capsys.readouterr().out


def test_tune_run_follows_the_same_rules(tmp_path: Path) -> None:
    def go(objective: Any, resume: Any) -> str:
        return str(tune.run(objective, config={"x": tune.grid_search([1])}, name="r",
                            storage_path=str(tmp_path), verbose=0,
                            resume=resume).experiment_path)

    assert go(cell(1), False) == str(tmp_path / "r")
    assert go(cell(1), "AUTO") == str(tmp_path / "r")
    assert go(cell(2), "AUTO") == str(tmp_path / "r-2")
    assert go(cell(3), True) == str(tmp_path / "r")
    assert go(cell(1), False) == str(tmp_path / "r-3")
    with pytest.raises(ValueError, match="needs the experiment's name"):
        tune.run(cell(1), config={"x": 1}, resume=True)


# -- the fingerprint alone -------------------------------------------------------------------

def test_fingerprint_sees_code_helpers_and_space_not_addresses() -> None:
    tc = tune.TuneConfig()
    space = {"x": tune.uniform(0, 1), "f": tune.sample_from(lambda spec: 1), "o": object()}
    assert fingerprint(with_helper, space, tc) == fingerprint(with_helper, dict(space), tc)
    assert fingerprint(cell(1), {}, tc) == fingerprint(cell(1), {}, tc)
    assert fingerprint(cell(1), {}, tc) != fingerprint(cell(2), {}, tc)
    assert fingerprint(with_helper, {"x": tune.uniform(0, 1)}, tc) != \
        fingerprint(with_helper, {"x": tune.uniform(0, 2)}, tc)
    assert fingerprint(with_helper, {}, tc) != \
        fingerprint(with_helper, {}, tune.TuneConfig(metric="loss", mode="min"))
    before = fingerprint(with_helper, {}, tc)
    global helper
    original = helper
    try:
        def helper(x: float) -> float:  # an edited helper is an edited objective
            return x + 2
        assert fingerprint(with_helper, {}, tc) != before
    finally:
        helper = original
    assert os.sep not in fingerprint(with_helper, {}, tc)
