"""Stop criteria hold exactly under schedulers that pause, resume and exploit: PBT (class
and function trainables, populations 3-8, perturbation intervals 2-5) and HyperBand."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from trainkit import tune
from trainkit.tune.schedulers import HyperBandScheduler
from trainkit.tune.schedulers import PopulationBasedTraining

pytestmark = pytest.mark.usefixtures("tune_runtime")

HB_STOP = 3  # a HyperBand rung (max_t=9, eta=3): trials pause there


class Climber(tune.Trainable):
    """value grows by lr each step; the state is checkpointed, so exploits carry it."""

    def setup(self, config: dict) -> None:
        self.value = 0.0

    def step(self) -> dict:
        self.value += self.config["lr"]
        return {"value": self.value}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        Path(checkpoint_dir, "value").write_text(repr(self.value))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.value = float(Path(checkpoint_dir, "value").read_text())

    def reset_config(self, new_config: dict) -> bool:
        self.value = 0.0
        return True


def climber(config: dict) -> None:
    value = 0.0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        value = json.loads(Path(ckpt.path, "state.json").read_text())["value"]
    while True:  # only the stop criterion ends it
        value += config["lr"]
        with tempfile.TemporaryDirectory() as d:
            Path(d, "state.json").write_text(json.dumps({"value": value}))
            tune.report({"value": value}, checkpoint=tune.Checkpoint.from_directory(d))


def _assert_stopped_exactly(grid: tune.ResultGrid, population: int, stop: int) -> None:
    assert len(grid) == population and grid.num_errors == 0
    for result in grid:
        assert result.metrics["training_iteration"] == stop, result.path
        iterations = result.metrics_dataframe["training_iteration"]
        assert iterations.max() == stop, result.path


@pytest.mark.parametrize(("trainable", "population", "interval", "synch"), [
    (Climber, 3, 2, False),
    (Climber, 8, 5, True),
    (climber, 5, 3, False),
    (climber, 4, 2, True),
], ids=["class-3-2", "class-8-5-synch", "function-5-3", "function-4-2-synch"])
def test_pbt_stops_every_trial_at_the_criterion(tmp_path: Path, trainable, population: int,
                                                interval: int, synch: bool) -> None:
    # The criterion falls on a perturbation step, where PBT pauses or exploits trials.
    stop = interval * max(2, 6 // interval)
    pbt = PopulationBasedTraining(
        perturbation_interval=interval, quantile_fraction=0.5, synch=synch, seed=0,
        hyperparam_mutations={"lr": [0.1, 0.5, 1.0, 2.0]})
    grid = tune.Tuner(
        trainable, param_space={"lr": tune.choice([0.1, 0.5, 1.0, 2.0])},
        tune_config=tune.TuneConfig(metric="value", mode="max", scheduler=pbt,
                                    num_samples=population, seed=0),
        run_config=tune.RunConfig(
            name="pbt", storage_path=tmp_path, verbose=0, stop={"training_iteration": stop},
            # as Ray advises for class trainables: a checkpoint at each perturbation step
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=interval))).fit()
    _assert_stopped_exactly(grid, population, stop)
    if synch:  # without the barrier, whether a bottom trial reports at its step is timing
        assert pbt.history, "PBT never exploited: the test would not test exploits"


def test_hyperband_pauses_and_resumes_stop_at_the_criterion(tmp_path: Path) -> None:
    hb = HyperBandScheduler(max_t=9, reduction_factor=3)
    grid = tune.Tuner(
        Climber, param_space={"lr": tune.grid_search([0.1, 0.5, 1.0, 2.0, 0.2, 0.3])},
        tune_config=tune.TuneConfig(metric="value", mode="max", scheduler=hb),
        run_config=tune.RunConfig(name="hb", storage_path=tmp_path, verbose=0,
                                  stop={"training_iteration": HB_STOP})).fit()
    assert grid.num_errors == 0
    for result in grid:
        assert result.metrics["training_iteration"] <= HB_STOP
        assert result.metrics_dataframe["training_iteration"].max() <= HB_STOP
    assert max(r.metrics["training_iteration"] for r in grid) == HB_STOP
