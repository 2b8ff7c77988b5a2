"""A function trial that starts a Trainer: refused with what to reserve when the Trainer's
workers can never fit next to the trial, and working with Ray's pattern (the workers'
bundles reserved with tune.PlacementGroupFactory).

The runtime lends a blocked trial's CPUs to the groups it waits on, so CPUs alone never
deadlock; an accelerator-like custom resource ("accel", 2 of them) does, as GPUs would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch._dynamo  # noqa: F401 - see tests/train/conftest.py: it sets an env var on import

from trainkit import train
from trainkit import tune
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer

pytestmark = pytest.mark.usefixtures("tune_runtime")
ACCEL = {"CPU": 1.0, "accel": 1.0}


@pytest.fixture(scope="module")
def tune_runtime(runtime_backend: str, start_backend: Any) -> Iterator[None]:
    with start_backend(runtime_backend, num_cpus=2, num_gpus=0, resources={"accel": 2}):
        yield


def loop(config: dict) -> None:
    train.report({"score": config["a"] * 10})


def trial_with_trainer(config: dict) -> None:
    trainer = Trainer(loop, train_loop_config={"a": config["a"]},
                      scaling_config=ScalingConfig(num_workers=config["workers"],
                                                   resources_per_worker={"accel": 1}),
                      run_config=RunConfig(name=f"inner_{config['a']}",
                                           storage_path=config["storage"], verbose=0))
    result = trainer.fit()
    tune.report({"score": result.metrics["score"]})


def test_a_trainer_that_cannot_fit_next_to_its_trial_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 2 accels: the trial holds 1, its Trainer asks for 2 workers x 1: never both.
    grid = tune.Tuner(
        tune.with_resources(trial_with_trainer, ACCEL),
        param_space={"a": 1, "workers": 2, "storage": str(tmp_path)},
        run_config=RunConfig(name="refused", storage_path=tmp_path, verbose=1)).fit()
    assert grid.num_errors == 1
    error = str(grid.errors[0])
    bundles = "[{'CPU': 1.0, 'accel': 1.0}] * 2"
    assert bundles in error and "wait forever" in error
    assert f"tune.PlacementGroupFactory([{ACCEL}] + {bundles})" in error
    assert "wait forever" in capsys.readouterr().err  # said in the progress display too


def test_two_trials_each_holding_what_the_others_trainer_needs_are_refused(
        tmp_path: Path) -> None:
    grid = tune.Tuner(
        tune.with_resources(trial_with_trainer, {"cpu": 0.5, "accel": 1}),
        param_space={"a": tune.grid_search([1, 2]), "workers": 1, "storage": str(tmp_path)},
        run_config=RunConfig(name="both", storage_path=tmp_path, verbose=0)).fit()
    assert grid.num_errors == 2
    assert all("tune.PlacementGroupFactory(" in str(e) for e in grid.errors)


def test_reserved_bundles_let_the_trainer_run(tmp_path: Path) -> None:
    pgf = tune.PlacementGroupFactory([{"cpu": 0.5, "accel": 1}, {"CPU": 1, "accel": 1}])
    assert pgf.required_resources == {"CPU": 1.5, "accel": 2.0}
    grid = tune.Tuner(
        tune.with_resources(trial_with_trainer, pgf),
        param_space={"a": tune.grid_search([1, 2]), "workers": 1, "storage": str(tmp_path)},
        tune_config=tune.TuneConfig(metric="score", mode="max"),
        run_config=RunConfig(name="reserved", storage_path=tmp_path, verbose=0)).fit()
    assert grid.num_errors == 0, grid.errors
    assert sorted(r.metrics["score"] for r in grid) == [10, 20]


def test_placement_group_factory_bad_input() -> None:
    with pytest.raises(ValueError, match="non-empty list of dicts"):
        tune.PlacementGroupFactory([])
    with pytest.raises(TypeError, match="PlacementGroupFactory"):
        tune.with_resources(trial_with_trainer, 2)  # type: ignore[arg-type]
