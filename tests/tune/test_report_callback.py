"""TuneReportCallback: a Trainer run inside a function trainable reports to its trial (each
Trainer report is one trial result, its checkpoint the trial's); outside a trial it fails."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from trainkit import train
from trainkit import tune
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer
from trainkit.tune.integration.train import TuneReportCallback

pytestmark = pytest.mark.usefixtures("tune_runtime")

REPORTS = 4


def loop(config: dict) -> None:
    for step in range(1, REPORTS + 1):
        with tempfile.TemporaryDirectory() as d:
            Path(d, "step").write_text(str(step))
            train.report({"loss": config["a"] / step, "step": step},
                         checkpoint=train.Checkpoint.from_directory(d))


def trainable(config: dict) -> None:
    callback = TuneReportCallback({"score": "loss", "step": "step"})
    Trainer(loop, train_loop_config={"a": config["a"]},
            scaling_config=ScalingConfig(num_workers=config["workers"]),
            run_config=RunConfig(name=f"inner_{config['a']}", storage_path=config["storage"],
                                 verbose=0, callbacks=[callback])).fit()


@pytest.mark.parametrize("workers", [0, 1], ids=["local", "one-worker"])
def test_each_trainer_report_is_a_trial_result(tmp_path: Path, workers: int) -> None:
    grid = tune.Tuner(
        trainable,
        param_space={"a": tune.grid_search([1.0, 2.0]), "workers": workers,
                     "storage": str(tmp_path / "inner")},
        tune_config=tune.TuneConfig(metric="score", mode="min"),
        run_config=tune.RunConfig(name="outer", storage_path=tmp_path, verbose=0)).fit()
    assert len(grid) == 2 and grid.num_errors == 0
    for result in grid:
        rows = result.metrics_dataframe
        assert list(rows["training_iteration"]) == list(range(1, REPORTS + 1))
        assert list(rows["step"]) == list(range(1, REPORTS + 1))
        a = result.config["a"]
        assert list(rows["score"]) == [a / s for s in range(1, REPORTS + 1)]
        assert "loss" not in rows.columns  # only the metrics named
        assert result.checkpoint is not None  # the Trainer's last, copied into the trial's
        with result.checkpoint.as_directory() as d:
            assert Path(d, "step").read_text() == str(REPORTS)
    assert grid.get_best_result().config["a"] == 1.0


def test_a_stopped_trial_ends_its_trainer_at_that_report(tmp_path: Path) -> None:
    grid = tune.Tuner(
        trainable, param_space={"a": 1.0, "workers": 0, "storage": str(tmp_path / "inner")},
        run_config=tune.RunConfig(name="stop", storage_path=tmp_path, verbose=0,
                                  stop={"training_iteration": 2})).fit()
    assert grid.num_errors == 0
    rows = grid[0].metrics_dataframe
    assert list(rows["training_iteration"]) == [1, 2]
    inner = train.Result.from_path(str(tmp_path / "inner" / "inner_1.0"))
    assert list(inner.metrics_dataframe["step"]) == [1, 2]  # the Trainer stopped there too


def test_outside_a_trial_it_fails_naming_the_fix() -> None:
    with pytest.raises(tune.TuneError, match="inside the function trainable"):
        TuneReportCallback()


@pytest.mark.parametrize("metrics", [3, ["loss", 1], {"score": 2}])
def test_metrics_of_the_wrong_kind_fail(metrics: object) -> None:
    with pytest.raises(TypeError, match=r"a key, a list of keys, or a dict"):
        TuneReportCallback(metrics)  # type: ignore[arg-type]
