"""OptunaSearch on its own, as Ray's: set_search_properties, suggest, on_trial_result,
on_trial_complete, save/restore and convert_search_space; and its space against a Tuner's."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from trainkit import tune
from trainkit.tune.search import OptunaSearch

SPACE = {"x": tune.uniform(0, 10), "n": tune.randint(1, 5), "act": tune.choice(["a", "b"]),
         "fixed": 3}


def _run(searcher: OptunaSearch, ids: range) -> list[dict]:
    configs = []
    for i in ids:
        config = searcher.suggest(str(i))
        assert isinstance(config, dict)
        for step in (1, 2):
            searcher.on_trial_result(str(i), {"loss": config["x"] / step,
                                              "training_iteration": step})
        searcher.on_trial_complete(str(i), {"loss": config["x"] / 2, "training_iteration": 2})
        configs.append(config)
    return configs


def test_suggest_and_learn_without_a_tuner() -> None:
    searcher = OptunaSearch(space=SPACE, metric="loss", mode="min", seed=0)
    configs = _run(searcher, range(5))
    assert all(0 <= c["x"] <= 10 and 1 <= c["n"] <= 4 and c["act"] in "ab" and c["fixed"] == 3
               for c in configs)
    assert len({c["x"] for c in configs}) == 5


def test_set_search_properties_gives_the_space_metric_and_mode() -> None:
    searcher = OptunaSearch(seed=1)
    assert searcher.set_search_properties("loss", "min", SPACE) is True
    assert (searcher.metric, searcher.mode) == ("loss", "min")
    assert _run(searcher, range(2))[0]["fixed"] == 3
    # one with a space of its own says so, and keeps it
    own = OptunaSearch(space={"x": tune.uniform(0, 1)}, metric="loss", mode="max")
    assert own.set_search_properties(None, None, {"y": tune.uniform(5, 6)}) is False
    config = own.suggest("0")
    assert isinstance(config, dict) and set(config) == {"x"}


def test_save_and_restore_continue_the_study(tmp_path: Path) -> None:
    first = OptunaSearch(space=SPACE, metric="loss", mode="min", seed=2)
    _run(first, range(4))
    path = tmp_path / "searcher.pkl"
    first.save(path)
    again = OptunaSearch(space=SPACE, metric="loss", mode="min")
    again.restore(path)
    more = _run(again, range(4, 6))
    assert len(more) == 2
    study = again._ensure_study()
    assert len(study.trials) == 6
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 6
    with pytest.raises(IsADirectoryError, match="pass a file path"):
        first.save(tmp_path)
    other = tune.search.BasicVariantGenerator()
    other.save(tmp_path / "bvg.pkl")
    with pytest.raises(ValueError, match="holds the state of 'BasicVariantGenerator'"):
        again.restore(tmp_path / "bvg.pkl")


def test_convert_search_space() -> None:
    od = optuna.distributions
    converted = OptunaSearch.convert_search_space(
        {"x": tune.loguniform(1e-3, 1), "m": {"n": tune.qrandint(2, 10, 2)}, "c": "plain",
         "a": tune.choice([1, 2])})
    assert converted == {"x": od.FloatDistribution(1e-3, 1, log=True),
                         "m/n": od.IntDistribution(2, 10, step=2),
                         "a": od.CategoricalDistribution((1, 2))}
    with pytest.raises(ValueError, match=r"cannot search a grid.*tune\.choice"):
        OptunaSearch.convert_search_space({"g": tune.grid_search([1, 2])})
    # the converted space is a space OptunaSearch takes
    searcher = OptunaSearch(space=converted, metric="loss", mode="min", seed=3)
    config = searcher.suggest("0")
    assert isinstance(config, dict) and set(config) == {"x", "m", "a"}
    assert config["m"]["n"] in (2, 4, 6, 8, 10)


def test_own_space_and_param_space_conflict_fails_at_tuner() -> None:
    def trainable(config: dict) -> None:
        tune.report({"loss": 1.0})

    searcher = OptunaSearch(space={"x": tune.uniform(0, 1)}, metric="loss", mode="min")
    with pytest.raises(ValueError, match=r"OptunaSearch was given a search space of its own, "
                                         r"and the Tuner's param_space has search domains too "
                                         r"\(y\)"):
        tune.Tuner(trainable, param_space={"y": tune.uniform(0, 1), "c": 1},
                   tune_config=tune.TuneConfig(search_alg=searcher))
    # plain values alongside the searcher's own space are fine
    tune.Tuner(trainable, param_space={"c": 1}, tune_config=tune.TuneConfig(
        search_alg=OptunaSearch(space={"x": tune.uniform(0, 1)}, metric="loss", mode="min")))
