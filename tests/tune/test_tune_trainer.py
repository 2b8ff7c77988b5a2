"""A Trainer as trainable: each trial is a whole 2-worker DDP run, gang-scheduled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch._dynamo  # noqa: F401 - see tests/train/conftest.py: it sets an env var on import

from trainkit import train
from trainkit import tune
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer

pytestmark = pytest.mark.usefixtures("tune_runtime")


def loop(config: dict) -> None:
    ctx = train.get_context()
    for i in range(3):
        train.report({"score": config["a"] * (i + 1), "world": ctx.get_world_size()})


def test_each_trial_is_a_distributed_run(tmp_path: Path) -> None:
    trainer = Trainer(loop, train_loop_config={"a": 0},
                      scaling_config=ScalingConfig(num_workers=2))
    grid = tune.Tuner(
        trainer, param_space={"train_loop_config": {"a": tune.grid_search([1, 2])}},
        tune_config=tune.TuneConfig(metric="score", mode="max"),
        run_config=RunConfig(name="trainer", storage_path=tmp_path, verbose=0)).fit()
    assert grid.num_errors == 0, grid.errors
    assert sorted(r.metrics["score"] for r in grid) == [3, 6]
    assert all(r.metrics["world"] == 2 for r in grid)
    best = grid.get_best_result()
    assert best.config == {"train_loop_config": {"a": 2}}
    assert len(best.metrics_dataframe) == 3


def inner_loop() -> None:
    train.report({"inner": 1})


def test_a_local_trainer_inside_a_function_trial_leaves_the_trials_session(
        tmp_path: Path) -> None:
    """A Trainer with num_workers=0 runs in the trial's own thread: when it ends, the
    trial's session is back, so the trial's next report still reaches Tune."""

    def trial(config: dict) -> None:
        Trainer(inner_loop, scaling_config=ScalingConfig(num_workers=0),
                run_config=RunConfig(name="inner", storage_path=tmp_path / "inner",
                                     verbose=0)).fit()
        tune.report({"outer": config["x"]})

    grid = tune.Tuner(trial, param_space={"x": 2},
                      run_config=RunConfig(name="outer", storage_path=tmp_path / "outer",
                                           verbose=0)).fit()
    assert grid.num_errors == 0, grid.errors
    assert grid[0].metrics["outer"] == 2
