"""Ray Tune's names on trainkit: tune.RunConfig/CheckpointConfig/FailureConfig (fail_fast),
tune.run -> ExperimentAnalysis, tune.Experiment, the search-space classes of
tune.search.sample, boolean stop values, tune.get_context, and metric/mode conflicts."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from trainkit import train
from trainkit import tune
from trainkit.exceptions import TuneError
from trainkit.tune.schedulers import ASHAScheduler
from trainkit.tune.search import ConcurrencyLimiter
from trainkit.tune.search import OptunaSearch
from trainkit.tune.search.sample import Categorical
from trainkit.tune.search.sample import Float
from trainkit.tune.search.sample import Function
from trainkit.tune.search.sample import Integer


def descending(config: dict) -> None:
    """loss = x + 1/i, with a checkpoint at every report; done at the second report."""
    for i in range(1, 4):
        with tempfile.TemporaryDirectory() as d:
            Path(d, "i").write_text(str(i))
            tune.report({"loss": config["x"] + 1.0 / i, "done": i == 2},
                        checkpoint=tune.Checkpoint.from_directory(d))


def failing(config: dict) -> None:
    if config["x"] == 2:
        raise ValueError("x == 2 is bad")
    tune.report({"loss": float(config["x"])})


# --- pure parts -----------------------------------------------------------------------------


def test_names_are_the_same_objects_as_trains() -> None:
    assert tune.RunConfig is train.RunConfig
    assert tune.CheckpointConfig is train.CheckpointConfig
    assert issubclass(tune.FailureConfig, train.FailureConfig)
    run_config = tune.RunConfig(failure_config=tune.FailureConfig(fail_fast=True))
    assert run_config.failure_config.fail_fast is True  # type: ignore[attr-defined]


def test_fail_fast_checked() -> None:
    with pytest.raises(ValueError, match="`fail_fast` is 'sometimes'"):
        tune.FailureConfig(fail_fast="sometimes")
    with pytest.raises(ValueError, match=r"`max_failures` is 2.*max_failures=0"):
        tune.FailureConfig(fail_fast=True, max_failures=2)
    assert tune.FailureConfig(fail_fast="RAISE").fail_fast == "RAISE"


def test_domain_builders_and_sample_size() -> None:
    log = Float(1e-4, 1e-1).loguniform()
    assert log.log and log == tune.loguniform(1e-4, 1e-1)
    values = log.sample(size=50, random_state=0)
    assert len(values) == 50 and all(1e-4 <= v <= 1e-1 for v in values)
    assert Float(0, 1).uniform() == tune.uniform(0, 1)
    quantized = Float(0, 1).quantized(0.25)
    assert set(quantized.sample(size=200, random_state=1)) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    evens = Integer(1, 10).quantized(2).sample(size=200, random_state=2)
    assert set(evens) == {2, 4, 6, 8}
    assert Integer(1, 100).loguniform() == tune.lograndint(1, 100)
    assert Integer(3, 4).uniform().sample() == 3
    choices = tune.choice([1, 2]).sample(size=5)
    assert len(choices) == 5 and set(choices) <= {1, 2}
    assert Categorical(["a"]).uniform().sample() == "a"
    assert Function(lambda spec: spec.config.a * 2).sample({"a": 3}) == 6
    assert Function(lambda: 7).sample(size=2) == [7, 7]
    # the same seed draws the same values; a Generator works as the random_state
    assert Float(0, 1).sample(size=3, random_state=5) == Float(0, 1).sample(size=3,
                                                                           random_state=5)
    assert isinstance(Float(0, 1).sample(random_state=np.random.default_rng(0)), float)


def test_bad_domains_fail_at_once_naming_value_and_fix() -> None:
    with pytest.raises(ValueError, match=r"`lower` is 1, but must be < `upper` \(0\): pass the "
                                         "smaller bound first"):
        Float(1, 0)
    with pytest.raises(ValueError, match=r"`q` is 0, but must be > 0 \(the step.*e\.g\."):
        Float(0, 1).quantized(0)
    with pytest.raises(ValueError, match="`q` is 0, but must be an int > 0"):
        Integer(0, 10).quantized(0)
    with pytest.raises(ValueError, match="must be a multiple of `q`"):
        Float(0.1, 1).quantized(0.3)
    with pytest.raises(ValueError, match="must be > 0 for a log scale"):
        Float(0, 1).loguniform()
    with pytest.raises(ValueError, match="`size` is 0"):
        Float(0, 1).sample(size=0)


def test_bad_stop_values_fail_at_tuner() -> None:
    for bad in ({"done": "yes"}, {"training_iteration": None}):
        with pytest.raises(ValueError, match=r"stop=\{'.*True/False"):
            tune.Tuner(descending, run_config=tune.RunConfig(stop=bad))


def test_run_with_config_and_param_space_fails_naming_both() -> None:
    with pytest.raises(ValueError, match="both `config` and `param_space`"):
        tune.run(descending, config={"x": 1}, param_space={"x": 1})
    with pytest.raises(ValueError, match="`resume` is 'MAYBE'"):
        tune.run(descending, config={"x": 1}, resume="MAYBE")


@pytest.mark.parametrize("make", [
    lambda: ASHAScheduler(metric="acc", mode="max"),
    lambda: ASHAScheduler(metric="loss", mode="max"),
])
def test_scheduler_disagreeing_with_tune_config_fails_at_tuner(make) -> None:
    with pytest.raises(ValueError, match="disagrees with ASHAScheduler"):
        tune.Tuner(descending, tune_config=tune.TuneConfig(metric="loss", mode="min",
                                                           scheduler=make()))


def test_searcher_disagreeing_with_tune_config_fails_at_tuner() -> None:
    with pytest.raises(ValueError, match=r"TuneConfig\(metric='loss'\) disagrees with "
                                         r"OptunaSearch\(metric='acc'\)"):
        tune.Tuner(descending, param_space={"x": tune.uniform(0, 1)},
                   tune_config=tune.TuneConfig(metric="loss", mode="min",
                                               search_alg=OptunaSearch(metric="acc",
                                                                       mode="min")))
    with pytest.raises(ValueError, match="disagrees with OptunaSearch"):
        tune.Tuner(descending, param_space={"x": tune.uniform(0, 1)},
                   tune_config=tune.TuneConfig(
                       metric="loss", mode="min",
                       search_alg=ConcurrencyLimiter(OptunaSearch(metric="loss", mode="max"),
                                                     max_concurrent=1)))
    # the same values in both places, or each in one place, are fine
    tune.Tuner(descending, param_space={"x": tune.uniform(0, 1)},
               tune_config=tune.TuneConfig(metric="loss", mode="min",
                                           search_alg=OptunaSearch(metric="loss"),
                                           scheduler=ASHAScheduler(mode="min")))


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.usefixtures("tune_runtime")
def test_run_returns_an_experiment_analysis(tmp_path: Path) -> None:
    analysis = tune.run(descending, config={"x": tune.grid_search([3, 1, 2])}, metric="loss",
                        mode="min", stop={"done": True}, storage_path=tmp_path, name="run",
                        verbose=0)
    assert len(analysis.trials) == 3
    assert {t.status for t in analysis.trials} == {"TERMINATED"}
    # the boolean stop value stopped every trial at its second report
    assert all(t.last_result["training_iteration"] == 2 for t in analysis.trials)
    assert analysis.best_config == {"x": 1}
    assert analysis.best_result is not None and analysis.best_result["loss"] == 1.5
    best = analysis.best_checkpoint
    assert best is not None and Path(best.path, "i").read_text() == "2"
    df = analysis.results_df
    assert sorted(df.index) == sorted(t.trial_id for t in analysis.trials)
    assert sorted(df["config/x"]) == [1, 2, 3]
    worst = analysis.get_best_trial("loss", "max")
    assert worst is not None and worst.config == {"x": 3}
    assert analysis.get_best_config("loss", "max", scope="all") == {"x": 3}
    assert set(analysis.trial_dataframes) == {t.path for t in analysis.trials}
    assert analysis.get_best_trial("never_reported", "min") is None
    no_default = tune.ExperimentAnalysis(analysis.trials, analysis.experiment_path)
    with pytest.raises(ValueError, match=r"pass metric= and mode= to tune\.run"):
        no_default.best_config  # noqa: B018


@pytest.mark.usefixtures("tune_runtime")
def test_run_raises_on_failed_trials_unless_told(tmp_path: Path) -> None:
    space = {"x": tune.grid_search([1, 2, 3])}
    with pytest.raises(TuneError, match=r"1 trials did not complete.*x == 2 is bad"):
        tune.run(failing, config=space, storage_path=tmp_path, name="a", verbose=0)
    analysis = tune.run(failing, config=space, storage_path=tmp_path, name="b", verbose=0,
                        raise_on_failed_trial=False, metric="loss", mode="min")
    assert sorted(t.status for t in analysis.trials) == ["ERROR", "TERMINATED", "TERMINATED"]
    assert analysis.best_config == {"x": 1}


@pytest.mark.usefixtures("tune_runtime")
def test_experiment_runs_through_tune_run(tmp_path: Path) -> None:
    exp = tune.Experiment(name="exp", run=descending, config={"x": tune.grid_search([1, 2])},
                          stop={"training_iteration": 1}, storage_path=str(tmp_path))
    analysis = tune.run(exp, metric="loss", mode="min", verbose=0)
    assert analysis.experiment_path == str(tmp_path / "exp")
    assert [t.last_result["training_iteration"] for t in analysis.trials] == [1, 1]
    with pytest.raises(ValueError, match="`name` is ''"):
        tune.Experiment(name="", run=descending)


@pytest.mark.usefixtures("tune_runtime")
def test_fail_fast_ends_the_sweep(tmp_path: Path) -> None:
    space = {"x": tune.grid_search([2, 1, 3, 4, 5, 6])}
    grid = tune.Tuner(failing, param_space=space,
                      tune_config=tune.TuneConfig(max_concurrent_trials=1),
                      run_config=tune.RunConfig(
                          name="ff", storage_path=tmp_path, verbose=0,
                          failure_config=tune.FailureConfig(fail_fast=True))).fit()
    assert grid.num_errors == 1
    assert len(grid) < 6  # the trials after the error never ran
    with pytest.raises(ValueError, match="x == 2 is bad"):
        tune.Tuner(failing, param_space=space,
                   tune_config=tune.TuneConfig(max_concurrent_trials=1),
                   run_config=tune.RunConfig(
                       name="ffr", storage_path=tmp_path, verbose=0,
                       failure_config=tune.FailureConfig(fail_fast="raise"))).fit()


class Contextual(tune.Trainable):
    def setup(self, config: dict) -> None:
        self.ctx = tune.get_context()

    def step(self) -> dict:
        return {"trial_id": self.ctx.get_trial_id(), "name": self.ctx.get_trial_name(),
                "dir": self.ctx.get_trial_dir(), "exp": self.ctx.get_experiment_name(),
                "done": True}


def contextual(config: dict) -> None:
    ctx = tune.get_context()
    tune.report({"name": ctx.get_trial_name(), "dir": ctx.get_trial_dir(),
                 "exp": ctx.get_experiment_name()})


@pytest.mark.usefixtures("tune_runtime")
@pytest.mark.parametrize("trainable", [contextual, Contextual])
def test_get_context_in_function_and_class_trials(tmp_path: Path, trainable) -> None:
    grid = tune.Tuner(trainable, run_config=tune.RunConfig(name="ctx", storage_path=tmp_path,
                                                           verbose=0)).fit()
    (result,) = grid
    assert result.error is None
    assert result.metrics["exp"] == "ctx"
    assert result.metrics["dir"] == result.path
    assert result.path.endswith(result.metrics["name"])
