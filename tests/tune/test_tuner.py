"""Tuner end to end on the runtime: function and class trainables, searchers, schedulers,
stop criteria, retries, restore, and the errors users meet."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

import pytest

from trainkit import tune
from trainkit.exceptions import InfeasibleError
from trainkit.train import Checkpoint
from trainkit.train import FailureConfig
from trainkit.train import RunConfig
from trainkit.tune.schedulers import ASHAScheduler
from trainkit.tune.schedulers import PopulationBasedTraining
from trainkit.tune.search import OptunaSearch

pytestmark = pytest.mark.usefixtures("tune_runtime")


def quadratic(config: dict) -> None:
    """Loss falls with the iterations towards (x - 3)^2."""
    for i in range(1, config.get("iters", 5) + 1):
        tune.report({"loss": (config["x"] - 3) ** 2 + 10.0 / i, "x": config["x"]})


@pytest.mark.on_ray
def test_grid_and_samples_with_per_trial_files(tmp_path: Path) -> None:
    tuner = tune.Tuner(
        quadratic, param_space={"x": tune.grid_search([1, 3, 5]), "y": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=2),
        run_config=RunConfig(name="grid", storage_path=tmp_path, verbose=0,
                             stop={"training_iteration": 3}))
    grid = tuner.fit()
    assert len(grid) == 6 and grid.num_errors == 0
    assert sorted(r.config["x"] for r in grid) == [1, 1, 3, 3, 5, 5]
    assert all(r.metrics["training_iteration"] == 3 for r in grid)  # the stop dict
    best = grid.get_best_result()
    assert best.config["x"] == 3
    trial_dir = Path(best.path)
    assert json.loads((trial_dir / "params.json").read_text())["x"] == 3
    assert len(best.metrics_dataframe) == 3
    assert (trial_dir / "progress.csv").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in trial_dir.iterdir())
    df = grid.get_dataframe()
    assert len(df) == 6 and "config/x" in df and "loss" in df


def test_asha_with_optuna_stops_bad_trials_early(tmp_path: Path) -> None:
    tuner = tune.Tuner(
        quadratic, param_space={"x": tune.uniform(-10, 10), "iters": 9},
        tune_config=tune.TuneConfig(
            metric="loss", mode="min", num_samples=12, search_alg=OptunaSearch(seed=0),
            scheduler=ASHAScheduler(max_t=9, grace_period=1, reduction_factor=3)),
        run_config=RunConfig(name="asha", storage_path=tmp_path, verbose=0))
    grid = tuner.fit()
    iterations = sorted(r.metrics["training_iteration"] for r in grid)
    assert len(grid) == 12 and grid.num_errors == 0
    assert iterations[0] < 9 and iterations[-1] == 9  # some stopped early, some ran out
    best = grid.get_best_result()
    assert best.metrics["training_iteration"] == 9
    assert abs(best.config["x"] - 3) < 3


def checkpointing_trainable(config: dict) -> None:
    step, value = 0, 0.0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        state = json.loads(Path(ckpt.path, "state.json").read_text())
        step, value = state["step"], state["value"]
    while step < 8:
        step += 1
        value += config["lr"]
        with tempfile.TemporaryDirectory() as d:
            Path(d, "state.json").write_text(json.dumps({"step": step, "value": value}))
            tune.report({"value": value, "lr": config["lr"]},
                        checkpoint=Checkpoint.from_directory(d))


def test_pbt_clones_checkpoints_of_the_best(tmp_path: Path) -> None:
    pbt = PopulationBasedTraining(perturbation_interval=2, quantile_fraction=0.5, synch=True,
                                  hyperparam_mutations={"lr": [0.1, 0.5, 1.0, 2.0]}, seed=0)
    tuner = tune.Tuner(
        checkpointing_trainable, param_space={"lr": tune.grid_search([0.1, 2.0])},
        tune_config=tune.TuneConfig(metric="value", mode="max", scheduler=pbt),
        run_config=RunConfig(name="pbt", storage_path=tmp_path, verbose=0))
    grid = tuner.fit()
    assert grid.num_errors == 0
    assert pbt.history, "PBT never exploited"
    # The weak trial continued from the strong one's state: its value jumped past what its
    # own lr could reach in 8 steps.
    weak = next(r for r in grid if r.path.endswith("00000"))
    assert weak.metrics["value"] > 8 * 0.1 + 1e-9


def flaky(config: dict) -> None:
    marker = Path(config["dir"], "failed-once")
    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        start = int(Path(ckpt.path, "i").read_text())
    for i in range(start + 1, 5):
        if i == 3 and not marker.exists():
            marker.write_text("")
            raise RuntimeError("flaky failure at step 3")
        with tempfile.TemporaryDirectory() as d:
            Path(d, "i").write_text(str(i))
            tune.report({"i": i, "start": start}, checkpoint=Checkpoint.from_directory(d))


@pytest.mark.on_ray
def test_a_failed_trial_retries_from_its_checkpoint(tmp_path: Path) -> None:
    tuner = tune.Tuner(flaky, param_space={"dir": str(tmp_path)},
                       run_config=RunConfig(name="retry", storage_path=tmp_path, verbose=0,
                                            failure_config=FailureConfig(max_failures=1)))
    [result] = list(tuner.fit())
    assert result.error is None
    assert list(result.metrics_dataframe["start"]) == [0, 0, 2, 2]  # resumed after step 2


def test_a_trial_out_of_retries_is_an_error(tmp_path: Path) -> None:
    def always(config: dict) -> None:
        tune.report({"a": 1})
        raise ValueError("broken trainable")

    grid = tune.Tuner(always, tune_config=tune.TuneConfig(num_samples=2),
                      run_config=RunConfig(name="err", storage_path=tmp_path, verbose=0)).fit()
    assert grid.num_errors == 2
    assert "ValueError: broken trainable" in str(grid.errors[0])


class Counter(tune.Trainable):
    def setup(self, config: dict) -> None:
        self.total = 0.0

    def step(self) -> dict:
        self.total += self.config["inc"]
        return {"total": self.total, "done": self.total >= 3 * self.config["inc"]}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        Path(checkpoint_dir, "total").write_text(str(self.total))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.total = float(Path(checkpoint_dir, "total").read_text())


def test_class_trainable(tmp_path: Path) -> None:
    grid = tune.Tuner(Counter, param_space={"inc": tune.grid_search([1.0, 2.0])},
                      tune_config=tune.TuneConfig(metric="total", mode="max"),
                      run_config=RunConfig(name="cls", storage_path=tmp_path, verbose=0)).fit()
    assert sorted(r.metrics["total"] for r in grid) == [3.0, 6.0]
    best = grid.get_best_result()
    assert best.checkpoint is not None  # checkpoint_at_end
    assert Path(best.checkpoint.path, "total").read_text() == "6.0"


def test_with_parameters_and_resources(tmp_path: Path) -> None:
    big = list(range(100_000))

    def uses_data(config: dict, data: list) -> None:
        tune.report({"n": len(data), "cpus": len(os.sched_getaffinity(0)) > 0})

    trainable = tune.with_resources(tune.with_parameters(uses_data, data=big), {"cpu": 2})
    grid = tune.Tuner(trainable, tune_config=tune.TuneConfig(num_samples=2),
                      run_config=RunConfig(name="params", storage_path=tmp_path,
                                           verbose=0)).fit()
    assert [r.metrics["n"] for r in grid] == [100_000, 100_000]


@pytest.mark.on_ray
def test_rerun_with_the_same_name_resumes(tmp_path: Path, capsys) -> None:
    def make() -> tune.Tuner:
        return tune.Tuner(quadratic, param_space={"x": tune.grid_search([1, 2])},
                          run_config=RunConfig(name="again", storage_path=tmp_path, verbose=1))

    first = make().fit()
    second = make().fit()
    assert "resuming experiment 'again'" in capsys.readouterr().out
    assert len(second) == len(first) == 2
    assert all(len(r.metrics_dataframe) == 5 for r in second)  # nothing ran twice
    assert tune.Tuner.can_restore(first.experiment_path)
    assert not tune.Tuner.can_restore(tmp_path)


# -- bad input -------------------------------------------------------------------------------

def test_metric_never_reported(tmp_path: Path) -> None:
    tuner = tune.Tuner(quadratic, param_space={"x": 1},
                       tune_config=tune.TuneConfig(metric="accuracy", mode="max"),
                       run_config=RunConfig(name="m", storage_path=tmp_path, verbose=0))
    with pytest.raises(Exception, match=r"metric='accuracy'.*\['loss', 'x'\]"):
        tuner.fit()


def test_grid_search_with_optuna_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="`x` is grid_search"):
        tune.Tuner(quadratic, param_space={"x": tune.grid_search([1, 2])},
                   tune_config=tune.TuneConfig(metric="loss", mode="min",
                                               search_alg=OptunaSearch()))


def test_trial_larger_than_the_cluster(tmp_path: Path) -> None:
    tuner = tune.Tuner(tune.with_resources(quadratic, {"cpu": 64}),
                       run_config=RunConfig(storage_path=tmp_path, verbose=0))
    with pytest.raises(InfeasibleError, match="64 CPU"):
        tuner.fit()


def test_unpicklable_trainable_suggests_with_parameters() -> None:
    lock = threading.Lock()

    def trainable(config: dict) -> None:
        with lock:
            pass

    with pytest.raises(TypeError, match=r"captures the variable 'lock'.*with_parameters"):
        tune.Tuner(trainable)


def test_hyperband_pauses_promotes_and_stops(tmp_path: Path) -> None:
    from trainkit.tune.schedulers import HyperBandScheduler

    grid = tune.Tuner(
        quadratic, param_space={"x": tune.grid_search([0, 1, 2, 3, 4, 5, 6, 7, 8]), "iters": 9},
        tune_config=tune.TuneConfig(metric="loss", mode="min",
                                    scheduler=HyperBandScheduler(max_t=9, reduction_factor=3)),
        run_config=RunConfig(name="hb", storage_path=tmp_path, verbose=0)).fit()
    assert len(grid) == 9 and grid.num_errors == 0
    iterations = sorted(r.metrics["training_iteration"] for r in grid)
    assert iterations[0] < 9 and iterations[-1] == 9
    assert grid.get_best_result().config["x"] == 3


def test_time_budget_and_infinite_samples(tmp_path: Path) -> None:
    import time

    def slow(config: dict) -> None:
        for i in range(1000):
            time.sleep(0.05)
            tune.report({"i": i})

    start = time.monotonic()
    grid = tune.Tuner(slow, tune_config=tune.TuneConfig(num_samples=-1, time_budget_s=1.5),
                      run_config=RunConfig(name="budget", storage_path=tmp_path,
                                           verbose=0)).fit()
    assert time.monotonic() - start < 10
    assert len(grid) == 2  # both CPUs ran a trial; those created ahead never started
    assert all(r.metrics["i"] < 100 for r in grid)


def test_tensorboard_hparams_per_trial(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams import plugin_data_pb2

    grid = tune.Tuner(quadratic, param_space={"x": tune.grid_search([1, 2]), "opt": "sgd"},
                      run_config=RunConfig(name="hp", storage_path=tmp_path, verbose=0)).fit()
    acc = EventAccumulator(grid[0].path)
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content[metadata.SESSION_START_INFO_TAG]).session_start_info
    assert start.hparams["x"].number_value == grid[0].config["x"]
    assert start.hparams["opt"].string_value == "sgd"
    assert metadata.SESSION_END_INFO_TAG in content
    assert acc.Scalars("loss")[-1].step == 5


def fails_first_time(config: dict) -> None:
    marker = Path(config["dir"], "failed")
    ckpt = tune.get_checkpoint()
    start = int(Path(ckpt.path, "i").read_text()) if ckpt else 0
    for i in range(start + 1, 4):
        if i == 2 and not marker.exists():
            marker.write_text("")
            raise RuntimeError("first run fails at 2")
        with tempfile.TemporaryDirectory() as d:
            Path(d, "i").write_text(str(i))
            tune.report({"i": i, "start": start}, checkpoint=Checkpoint.from_directory(d))


@pytest.mark.parametrize(("option", "starts"), [("resume_errored", [0, 1, 1]),
                                                ("restart_errored", [0, 0, 0])])
@pytest.mark.on_ray
def test_restore_errored_trials(tmp_path: Path, option: str, starts: list) -> None:
    grid = tune.Tuner(fails_first_time, param_space={"dir": str(tmp_path)},
                      run_config=RunConfig(name="e", storage_path=tmp_path, verbose=0)).fit()
    assert grid.num_errors == 1
    again = tune.Tuner.restore(grid.experiment_path, fails_first_time, **{option: True}).fit()
    assert again.num_errors == 0
    assert list(again[0].metrics_dataframe["start"]) == starts


class StopAfter(tune.Stopper):
    def __init__(self) -> None:
        self.results = 0

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.results += 1
        return False

    def stop_all(self) -> bool:
        return self.results >= 4


def test_stoppers(tmp_path: Path) -> None:
    by_function = tune.Tuner(quadratic, param_space={"x": tune.grid_search([1, 2])},
                             run_config=RunConfig(name="f", storage_path=tmp_path, verbose=0,
                                                  stop=lambda tid, r: r["loss"] < 8)).fit()
    assert all(r.metrics["loss"] < 8 for r in by_function)
    assert all(r.metrics["training_iteration"] < 5 for r in by_function)
    stopped = tune.Tuner(quadratic, param_space={"x": 1, "iters": 100},
                         tune_config=tune.TuneConfig(num_samples=3),
                         run_config=RunConfig(name="s", storage_path=tmp_path, verbose=0,
                                              stop=StopAfter())).fit()
    assert sum(len(r.metrics_dataframe) for r in stopped) <= 6
