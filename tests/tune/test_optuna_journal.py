"""optuna.journal: Optuna's view of a sweep, read with optuna.load_study during and after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from trainkit import tune
from trainkit.train import RunConfig
from trainkit.tune.schedulers import ASHAScheduler

pytestmark = pytest.mark.usefixtures("tune_runtime")


def objective(config: dict) -> None:
    if config["x"] == 13:
        raise ValueError("unlucky")
    for i in range(1, 5):
        tune.report({"loss": config["x"] * 10 + i})


def load(path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name,
                             storage=JournalStorage(JournalFileBackend(str(path))))


def test_the_journal_during_and_after_a_sweep(tmp_path: Path) -> None:
    journal = tmp_path / "opt" / "optuna.journal"
    seen: list[tuple[int, int]] = []

    def stop(trial_id: str, result: dict[str, Any]) -> bool:  # the driver, mid-sweep
        if result["training_iteration"] == 2:
            study = load(journal, "opt")
            running = [t for t in study.trials if t.user_attrs["tune_trial_id"] == trial_id]
            assert running[0].state is optuna.trial.TrialState.RUNNING
            seen.append((len(running[0].intermediate_values), len(study.trials)))
        return False

    grid = tune.Tuner(
        objective,
        param_space={"x": tune.grid_search([1, 2, 3, 4, 13]), "lr": tune.loguniform(1e-3, 1)},
        tune_config=tune.TuneConfig(
            metric="loss", mode="min", max_concurrent_trials=2,
            scheduler=ASHAScheduler(max_t=4, grace_period=1, reduction_factor=2)),
        run_config=RunConfig(name="opt", storage_path=tmp_path, verbose=0, stop=stop)).fit()
    assert len(grid) == 5 and grid.num_errors == 1
    assert seen and all(n == 2 for n, _ in seen)  # the report was there before stop() saw it

    study = load(journal, "opt")
    assert study.direction is optuna.study.StudyDirection.MINIMIZE
    by_x = {t.params["x"]: t for t in study.trials}
    assert sorted(by_x) == [1, 2, 3, 4, 13] and len(study.trials) == 5
    states = {x: t.state.name for x, t in by_x.items()}
    assert states[13] == "FAIL" and states[1] == "COMPLETE"
    pruned = [x for x, s in states.items() if s == "PRUNED"]
    assert pruned, states  # ASHA stopped some early
    for x, t in by_x.items():
        result = next(r for r in grid if r.config["x"] == x)
        iters = int(result.metrics.get("training_iteration", 0))
        assert t.intermediate_values == {i: x * 10.0 + i for i in range(1, iters + 1)}
        assert 1e-3 <= t.params["lr"] <= 1
        if t.state.name == "COMPLETE":
            assert t.value == result.metrics["loss"]
    assert study.best_trial.params["x"] == 1


def test_a_rerun_continues_the_same_study(tmp_path: Path) -> None:
    def make() -> tune.Tuner:
        return tune.Tuner(objective, param_space={"x": tune.grid_search([1, 2])},
                          tune_config=tune.TuneConfig(metric="loss", mode="max"),
                          run_config=RunConfig(name="again", storage_path=tmp_path, verbose=0))

    make().fit()
    make().fit()
    study = load(tmp_path / "again" / "optuna.journal", "again")
    assert study.direction is optuna.study.StudyDirection.MAXIMIZE
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert sorted(t.value for t in study.trials) == [14, 24]
