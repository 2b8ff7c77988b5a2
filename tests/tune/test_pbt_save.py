"""PBT saves its top trials at their perturbation steps (as Ray does), so a class trainable
is exploited without ``CheckpointConfig(checkpoint_frequency=...)``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from trainkit import tune
from trainkit.tune.schedulers import PopulationBasedTraining

pytestmark = pytest.mark.usefixtures("tune_runtime")

LRS = [1, 2, 3, 4]  # integers: every value is exact, so states can be traced by value
STOP = 10
INTERVAL = 2
POPULATION = 4


def _step_together(sync_dir: str, step: int) -> None:
    """Record that this trial is at ``step``; after a perturbation step, wait (on the other
    trials' records, at most a minute) until every trial has reported that step, so the
    population is ranked together rather than one trial racing through its steps alone."""
    trial_id = tune.get_context().get_trial_id()
    Path(sync_dir, f"{trial_id}").write_text(str(step))
    if step % INTERVAL != 1 or step == 1:
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        steps = [int(p.read_text() or 0) for p in Path(sync_dir).iterdir()]
        if len(steps) == POPULATION and min(steps) >= step - 1:
            return
        time.sleep(0.01)


class Climber(tune.Trainable):
    """value grows by lr each step; only save_checkpoint/load_checkpoint carry it."""

    def setup(self, config: dict) -> None:
        self.value = 0

    def step(self) -> dict:
        steps = Path(self.config["sync_dir"], str(tune.get_context().get_trial_id()))
        _step_together(self.config["sync_dir"], int(steps.read_text()) + 1
                       if steps.exists() else 1)
        self.value += self.config["lr"]
        return {"value": self.value, "lr": self.config["lr"]}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        Path(checkpoint_dir, "value").write_text(str(self.value))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.value = int(Path(checkpoint_dir, "value").read_text())

    def reset_config(self, new_config: dict) -> bool:
        self.value = 0
        return True


def test_pbt_exploits_a_class_trainable_without_checkpoint_frequency(tmp_path: Path) -> None:
    sync_dir = tmp_path / "sync"
    sync_dir.mkdir()
    pbt = PopulationBasedTraining(perturbation_interval=INTERVAL, seed=0,
                                  hyperparam_mutations={"lr": LRS})
    grid = tune.Tuner(
        # half a CPU each: the whole population runs at once, so no trial pauses (a pause
        # commits a checkpoint); only the scheduler's saves can make donors
        tune.with_resources(Climber, {"cpu": 0.5}),
        param_space={"lr": tune.grid_search(LRS), "sync_dir": str(sync_dir)},
        tune_config=tune.TuneConfig(metric="value", mode="max", scheduler=pbt),
        run_config=tune.RunConfig(name="pbt-save", storage_path=tmp_path, verbose=0,
                                  stop={"training_iteration": STOP})).fit()
    assert len(grid) == POPULATION and grid.num_errors == 0
    assert pbt.history, "PBT never exploited"
    frames = {r.metrics["trial_id"]: r.metrics_dataframe for r in grid}
    for record in pbt.history:
        rows = frames[record.trial_id]
        after = rows[rows["training_iteration"] == record.time + 1]
        assert len(after) == 1, record
        # The first step after the exploit starts from a state the donor reported (and the
        # scheduler had it save), with the explored lr.
        start = int(after["value"].iloc[0]) - record.new_config["lr"]
        assert int(after["lr"].iloc[0]) == record.new_config["lr"]
        assert start in set(frames[record.donor_id]["value"]), (record, start)
        assert start > 0
    for result in grid:  # and every trial still stops exactly at the criterion
        assert result.metrics["training_iteration"] == STOP
