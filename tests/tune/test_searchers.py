"""BasicVariantGenerator, OptunaSearch and ConcurrencyLimiter, driven by hand (no runtime)."""

from __future__ import annotations

import pickle
import statistics
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from trainkit.tune._basic_variant import BasicVariantGenerator
from trainkit.tune._concurrency_limiter import ConcurrencyLimiter
from trainkit.tune._optuna_search import OptunaSearch
from trainkit.tune._search_space import choice
from trainkit.tune._search_space import flatten_space
from trainkit.tune._search_space import grid_search
from trainkit.tune._search_space import lograndint
from trainkit.tune._search_space import loguniform
from trainkit.tune._search_space import qlograndint
from trainkit.tune._search_space import qloguniform
from trainkit.tune._search_space import qrandint
from trainkit.tune._search_space import quniform
from trainkit.tune._search_space import randint
from trainkit.tune._search_space import randn
from trainkit.tune._search_space import sample_from
from trainkit.tune._search_space import uniform
from trainkit.tune._searcher import Searcher

REPO = Path(__file__).resolve().parents[2]
FINISHED = Searcher.FINISHED


@pytest.fixture(autouse=True)
def _quiet_optuna() -> Any:
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(verbosity)


def _bvg(space: Mapping[str, Any], num_samples: int = 1, **kwargs: Any) -> BasicVariantGenerator:
    searcher = BasicVariantGenerator(**kwargs)
    searcher.set_search_properties(None, None, space, num_samples=num_samples)
    return searcher


def _drain(searcher: Searcher, limit: int = 10_000, prefix: str = "t") -> list[dict[str, Any]]:
    """Suggest (completing each at once) until FINISHED."""
    configs = []
    for i in range(limit):
        config = searcher.suggest(f"{prefix}{i}")
        if config == FINISHED:
            return configs
        assert isinstance(config, dict)
        configs.append(config)
        searcher.on_trial_complete(f"{prefix}{i}", {})
    raise AssertionError(f"no FINISHED after {limit} suggestions")


def _quadratic(config: Mapping[str, Any]) -> float:
    return float((config["x"] - 3.0) ** 2)


def _run(searcher: Searcher, ids: range, loss: Any = _quadratic) -> list[dict[str, Any]]:
    """Suggest and complete one trial at a time, reporting ``loss(config)``."""
    configs = []
    for i in ids:
        config = searcher.suggest(f"t{i}")
        assert isinstance(config, dict), config
        searcher.on_trial_result(f"t{i}", {"loss": loss(config), "training_iteration": 1})
        searcher.on_trial_complete(f"t{i}", {"loss": loss(config)})
        configs.append(config)
    return configs


# --- BasicVariantGenerator ------------------------------------------------------------------


def test_total_is_grid_size_times_num_samples_each_pass_resampled() -> None:
    space = {"g": grid_search(["a", "b", "c"]), "x": uniform(0, 1), "const": [1]}
    searcher = _bvg(space, num_samples=4, random_state=0)
    assert searcher.total_samples == 12
    configs = _drain(searcher)
    assert [c["g"] for c in configs] == ["a", "b", "c"] * 4
    assert len({c["x"] for c in configs}) == 12  # every config draws afresh
    assert all(c["const"] == [1] for c in configs)
    assert searcher.suggest("again") == FINISHED
    assert searcher.is_finished and searcher.suggested == 12


def test_constant_grid_search_shares_the_draw_across_one_pass() -> None:
    space = {"g": grid_search([1, 2, 3]), "x": uniform(0, 1)}
    configs = _drain(_bvg(space, num_samples=2, random_state=0, constant_grid_search=True))
    xs = [c["x"] for c in configs]
    assert xs[0] == xs[1] == xs[2] != xs[3] == xs[4] == xs[5]


def test_points_to_evaluate_come_first_and_count_as_samples() -> None:
    space = {"lr": loguniform(1e-4, 1e-1), "act": choice(["relu", "gelu"]), "m": {"k": 1}}
    points = [{"lr": 0.5}, {"lr": 0.25, "act": "tanh", "m": {"extra": True}}]
    configs = _drain(_bvg(space, num_samples=3, points_to_evaluate=points, random_state=0))
    assert len(configs) == 3
    assert configs[0]["lr"] == 0.5 and configs[0]["act"] in ("relu", "gelu")
    assert configs[1] == {"lr": 0.25, "act": "tanh", "m": {"k": 1, "extra": True}}
    assert 1e-4 <= configs[2]["lr"] < 1e-1


def test_a_point_that_fixes_a_grid_key_collapses_that_grid() -> None:
    space = {"g": grid_search([1, 2]), "h": grid_search(["a", "b"])}
    searcher = _bvg(space, num_samples=2, points_to_evaluate=[{"g": 9}], random_state=0)
    assert searcher.total_samples == 2 + 4
    configs = _drain(searcher)
    assert [(c["g"], c["h"]) for c in configs] == [
        (9, "a"), (9, "b"), (1, "a"), (2, "a"), (1, "b"), (2, "b"),
    ]


def test_num_samples_minus_one_never_finishes() -> None:
    searcher = _bvg({"g": grid_search([1, 2]), "x": uniform(0, 1)}, num_samples=-1)
    assert searcher.total_samples is None
    for i in range(500):
        config = searcher.suggest(str(i))
        assert isinstance(config, dict) and config["g"] == 1 + i % 2
        searcher.on_trial_complete(str(i))


def test_max_concurrent_holds_back_until_a_trial_ends() -> None:
    searcher = _bvg({"x": uniform(0, 1)}, num_samples=3, max_concurrent=2, random_state=0)
    first, second = searcher.suggest("a"), searcher.suggest("b")
    assert isinstance(first, dict) and isinstance(second, dict)
    assert searcher.suggest("c") is None
    assert searcher.suggest("a") == first  # asked again: the same config, nothing drawn
    searcher.on_trial_complete("a", {"loss": 1.0})
    assert isinstance(searcher.suggest("c"), dict)
    assert searcher.suggest("d") == FINISHED  # exhausted wins over "at the limit"


def test_seeded_generators_repeat_and_differ_by_seed() -> None:
    space = {"g": grid_search([1, 2]), "x": uniform(0, 1), "k": randint(0, 100)}
    runs = [_drain(_bvg(space, num_samples=5, random_state=seed)) for seed in (7, 7, 8)]
    assert runs[0] == runs[1] != runs[2]
    with_generator = _drain(_bvg(space, num_samples=5, random_state=np.random.default_rng(7)))
    assert with_generator == runs[0]


@pytest.mark.parametrize("constant_grid_search", [False, True])
@pytest.mark.parametrize("stop_after", [0, 1, 3, 4, 6, 7])
def test_restore_continues_with_the_next_config_exactly(
    constant_grid_search: bool, stop_after: int
) -> None:
    y = sample_from(lambda spec: spec.config.x)
    space = {"g": grid_search([1, 2, 3]), "x": uniform(0, 1), "y": y}
    kwargs = dict(
        num_samples=3,
        points_to_evaluate=[{"g": 0}, {"x": 0.5}],
        random_state=11,
        constant_grid_search=constant_grid_search,
    )
    expected = _drain(_bvg(space, **kwargs))
    assert len(expected) == 1 + 3 + 3  # {"g": 0} collapses the grid, {"x": 0.5} does not

    first = _bvg(space, **kwargs)
    head = [first.suggest(f"t{i}") for i in range(stop_after)]
    state = pickle.loads(pickle.dumps(first.get_state()))
    restored = _bvg(space, **{**kwargs, "random_state": 999})  # the state carries the rng
    restored.set_state(state)
    tail = _drain(restored, prefix="r")
    assert head + tail == expected


def test_restored_live_trials_still_count_and_are_asked_the_same() -> None:
    searcher = _bvg({"x": uniform(0, 1)}, num_samples=5, max_concurrent=1, random_state=0)
    config = searcher.suggest("a")
    restored = _bvg({"x": uniform(0, 1)}, num_samples=5, max_concurrent=1)
    restored.set_state(pickle.loads(pickle.dumps(searcher.get_state())))
    assert restored.suggest("b") is None
    assert restored.suggest("a") == config


@pytest.mark.parametrize(
    ("kwargs", "num_samples", "message"),
    [
        ({"max_concurrent": -1}, 1, "`max_concurrent` is -1, but must be >= 0"),
        ({}, 0, "`num_samples` is 0, but must be >= 1, or -1"),
        ({"points_to_evaluate": [3]}, 1, "`points_to_evaluate[0]` is 3, but must be a dict"),
        ({"random_state": "seed"}, 1, "`random_state` is 'seed'"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], num_samples: int, message: str) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        _bvg({"x": uniform(0, 1)}, num_samples=num_samples, **kwargs)
    assert message in str(info.value)


def test_suggest_before_the_space_is_given_says_what_is_missing() -> None:
    with pytest.raises(RuntimeError, match="no search space yet"):
        BasicVariantGenerator().suggest("a")


# --- ConcurrencyLimiter ---------------------------------------------------------------------


class _RecordingSearcher(Searcher):
    """Endless configs; records what it hears."""

    def __init__(self) -> None:
        super().__init__(metric="loss", mode="min")
        self.events: list[tuple[str, str]] = []
        self.count = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        self.count += 1
        return {"i": self.count}

    def on_trial_result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        self.events.append(("result", trial_id))

    def on_trial_complete(
        self, trial_id: str, result: Mapping[str, Any] | None = None, error: bool = False
    ) -> None:
        self.events.append(("error" if error else "complete", trial_id))

    def get_state(self) -> dict[str, Any]:
        return {"count": self.count}

    def set_state(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


def test_limiter_caps_live_trials_and_passes_events_through() -> None:
    inner = _RecordingSearcher()
    limiter = ConcurrencyLimiter(inner, max_concurrent=2)
    assert (limiter.metric, limiter.mode) == ("loss", "min")
    assert limiter.suggest("a") == {"i": 1} and limiter.suggest("b") == {"i": 2}
    assert limiter.suggest("c") is None and inner.count == 2  # not even asked
    limiter.on_trial_result("a", {"loss": 1.0})
    limiter.on_trial_complete("a", {"loss": 1.0})
    assert limiter.live_trials == {"b"}
    assert limiter.suggest("c") == {"i": 3}
    limiter.on_trial_complete("b", None, error=True)
    limiter.on_trial_complete("unknown", {})
    assert inner.events == [("result", "a"), ("complete", "a"), ("error", "b")]


def test_limiter_in_batch_mode_waits_for_the_whole_batch() -> None:
    inner = _RecordingSearcher()
    limiter = ConcurrencyLimiter(inner, max_concurrent=2, batch=True)
    limiter.suggest("a"), limiter.suggest("b")
    limiter.on_trial_complete("a", {"loss": 1.0})
    assert limiter.suggest("c") is None and inner.events == []
    limiter.on_trial_complete("b", {"loss": 2.0})
    assert inner.events == [("complete", "a"), ("complete", "b")]
    assert limiter.suggest("c") == {"i": 3}


def test_limiter_wraps_a_finite_searcher_and_restores() -> None:
    limiter = ConcurrencyLimiter(BasicVariantGenerator(random_state=0), max_concurrent=1)
    assert limiter.set_search_properties(None, None, {"x": uniform(0, 1)}, num_samples=3)
    first = limiter.suggest("a")
    assert limiter.suggest("b") is None
    state = pickle.loads(pickle.dumps(limiter.get_state()))
    restored = ConcurrencyLimiter(BasicVariantGenerator(), max_concurrent=1)
    restored.set_search_properties(None, None, {"x": uniform(0, 1)}, num_samples=3)
    restored.set_state(state)
    assert restored.suggest("b") is None
    restored.on_trial_complete("a", {})
    assert len(_drain(restored, prefix="r")) == 2
    assert isinstance(first, dict)


def test_limiter_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="`max_concurrent` is 0, but must be >= 1"):
        ConcurrencyLimiter(_RecordingSearcher(), max_concurrent=0)
    with pytest.raises(TypeError, match="`searcher` is 3"):
        ConcurrencyLimiter(3, max_concurrent=1)  # type: ignore[arg-type]


# --- OptunaSearch ---------------------------------------------------------------------------


def _optuna(space: Mapping[str, Any] | None = None, **kwargs: Any) -> OptunaSearch:
    searcher = OptunaSearch(**kwargs)
    if space is not None:
        searcher.set_search_properties("loss", "min", space)
    return searcher


def test_optuna_beats_random_search_on_a_quadratic_within_30_trials() -> None:
    space = {"x": uniform(-10, 10)}
    tpe = [_quadratic(c) for c in _run(_optuna(space, seed=0), range(30))]
    rand = [_quadratic(c) for c in _run(_bvg(space, num_samples=30, random_state=0), range(30))]
    assert min(tpe) < 0.05
    # once past its 10 random startup trials, TPE samples near the optimum; random does not
    assert statistics.median(tpe[-10:]) < statistics.median(rand[-10:]) / 2


def test_optuna_samples_every_tune_domain_within_bounds() -> None:
    space = {
        "f": {"u": uniform(-1, 1), "q": quniform(0, 1, 0.25), "log": loguniform(1e-4, 1e-1),
              "qlog": qloguniform(1e-3, 1, 1e-3)},
        "i": {"r": randint(0, 3), "q": qrandint(1, 20, 5), "log": lograndint(1, 100),
              "qlog": qlograndint(2, 64, 2)},
        "c": choice(["a", "b"]),
        "layers": choice([[32], [64, 64]]),  # not optuna-storable: searched by index
        "const": {"name": "run", "tags": [1, 2]},
    }
    domains = flatten_space(space)
    configs = _run(_optuna(space, seed=1), range(40), loss=lambda c: c["f"]["u"] ** 2)
    for config in configs:
        for path, domain in domains.items():
            value: Any = config
            for key in path:
                value = value[key]
            assert domain.is_valid(value), (path, value, domain)
        assert config["const"] == {"name": "run", "tags": [1, 2]}
    assert {tuple(c["layers"]) for c in configs} == {(32,), (64, 64)}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"model": {"depth": grid_search([2, 4])}},
         "`model/depth` is grid_search([2, 4]), but OptunaSearch cannot search a grid"),
        ({"b": sample_from(lambda spec: spec.config.a)},
         "`b` is sample_from(<lambda>), but OptunaSearch cannot sample a sample_from"),
        ({"noise": randn(0, 1)}, "`noise` is randn(0, 1), but optuna cannot sample a normal"),
        ({"a/b": uniform(0, 1)}, "must be a str without '/'"),
    ],
)
def test_optuna_refuses_what_it_cannot_sample_naming_the_key(
    space: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        OptunaSearch().set_search_properties("loss", "min", space)
    assert message in str(info.value)


def test_optuna_error_says_what_to_use_instead_of_a_grid() -> None:
    with pytest.raises(ValueError, match=r"tune\.choice\(\[2, 4\]\).*BasicVariantGenerator"):
        OptunaSearch(space={"depth": grid_search([2, 4])}, metric="loss", mode="min")


def test_optuna_runs_points_to_evaluate_first_and_samples_their_gaps() -> None:
    space = {"x": uniform(-10, 10), "m": {"act": choice(["relu", "tanh"]), "k": randint(0, 5)}}
    points = [{"x": 3.0, "m": {"act": "tanh"}}, {"x": -1.0, "m": {"act": "relu", "k": 4}}]
    configs = _run(_optuna(space, seed=0, points_to_evaluate=points), range(4))
    assert configs[0]["x"] == 3.0 and configs[0]["m"]["act"] == "tanh"
    assert configs[0]["m"]["k"] in range(5)
    assert configs[1] == {"x": -1.0, "m": {"act": "relu", "k": 4}}


def test_optuna_tells_evaluated_rewards_without_running_the_points() -> None:
    points = [{"x": 3.0}, {"x": -9.0}]
    searcher = _optuna({"x": uniform(-10, 10)}, seed=0, points_to_evaluate=points,
                       evaluated_rewards=[0.0, 144.0])
    config = searcher.suggest("t0")
    assert isinstance(config, dict) and config["x"] not in (3.0, -9.0)
    finished = searcher.get_state()["finished"]
    assert [(r["params"], r["values"]) for r in finished] == [
        ({"x": 3.0}, [0.0]), ({"x": -9.0}, [144.0]),
    ]


def test_optuna_unknown_point_keys_are_named() -> None:
    searcher = _optuna({"x": uniform(0, 1)}, points_to_evaluate=[{"y": 1}])
    with pytest.raises(ValueError, match=r"`points_to_evaluate\[0\]` sets \['y'\]"):
        searcher.suggest("t0")


def test_optuna_multi_objective_from_its_own_arguments_or_the_tuners() -> None:
    def losses(config: Mapping[str, Any]) -> dict[str, float]:
        return {"err": (config["x"] - 1) ** 2, "speed": config["x"]}

    for searcher in (
        _optuna_multi(metric=["err", "speed"], mode=["min", "max"]),
        _optuna_multi(tuner_metric=["err", "speed"], tuner_mode=["min", "max"]),
    ):
        assert searcher.metrics == ("err", "speed") and searcher.metric is None
        for i in range(12):
            config = searcher.suggest(f"t{i}")
            assert isinstance(config, dict)
            searcher.on_trial_result(f"t{i}", {**losses(config), "training_iteration": 1})
            searcher.on_trial_complete(f"t{i}", losses(config))
        finished = searcher.get_state()["finished"]
        assert len(finished) == 12
        assert all(r["state"] == "COMPLETE" and len(r["values"]) == 2 for r in finished)


def _optuna_multi(metric: Any = None, mode: Any = None, tuner_metric: Any = None,
                  tuner_mode: Any = None) -> OptunaSearch:
    searcher = OptunaSearch(metric=metric, mode=mode, seed=0)
    searcher.set_search_properties(tuner_metric, tuner_mode, {"x": uniform(0, 2)})
    return searcher


def test_optuna_mode_must_match_the_metrics() -> None:
    with pytest.raises(ValueError, match="`mode` is 'minimize', but each mode must be 'min'"):
        OptunaSearch(metric="loss", mode="minimize")
    searcher = OptunaSearch(metric=["a", "b"], mode=["min"])
    searcher.set_search_properties(None, None, {"x": uniform(0, 1)})
    with pytest.raises(ValueError, match="must give one mode per metric"):
        searcher.suggest("t0")
    searcher = OptunaSearch()
    searcher.set_search_properties(None, None, {"x": uniform(0, 1)})
    with pytest.raises(ValueError, match="OptunaSearch has no `metric`"):
        searcher.suggest("t0")


def test_optuna_define_by_run_space() -> None:
    def space(trial: optuna.Trial) -> dict[str, Any]:
        trial.suggest_float("x", -10, 10)
        kind = trial.suggest_categorical("opt/kind", ["sgd", "adam"])
        if kind == "sgd":
            trial.suggest_float("opt/momentum", 0.0, 0.99)
        return {"const": {"epochs": 3}}

    searcher = OptunaSearch(space=space, metric="loss", mode="min", seed=0,
                            points_to_evaluate=[{"x": 3.0, "opt": {"kind": "sgd"}}])
    assert searcher.set_search_properties(None, None, {"batch": 32}) is False  # its own space
    configs = _run(searcher, range(15))
    assert configs[0]["x"] == 3.0 and configs[0]["opt"]["kind"] == "sgd"
    for config in configs:
        assert config["const"] == {"epochs": 3} and config["batch"] == 32
        assert ("momentum" in config["opt"]) == (config["opt"]["kind"] == "sgd")


def test_optuna_define_by_run_must_return_none_or_a_dict() -> None:
    searcher = OptunaSearch(space=lambda trial: 3, metric="loss", mode="min")
    with pytest.raises(TypeError, match="must return None or a dict"):
        searcher.suggest("t0")


def test_optuna_own_space_takes_metric_and_mode_from_the_tuner() -> None:
    searcher = OptunaSearch(space={"x": uniform(-10, 10)}, seed=0)
    assert searcher.set_search_properties("loss", "min", {}) is False
    assert (searcher.metric, searcher.mode) == ("loss", "min")
    assert len(_run(searcher, range(3))) == 3


def test_optuna_fails_trials_that_errored_or_lack_the_metric() -> None:
    searcher = _optuna({"x": uniform(0, 1)}, seed=0)
    for i in range(3):
        searcher.suggest(f"t{i}")
    searcher.on_trial_complete("t0", {"loss": 1.0}, error=True)
    searcher.on_trial_complete("t1", {"other": 1.0})
    searcher.on_trial_complete("t2", None)
    searcher.on_trial_complete("t2", {"loss": 1.0})  # a second end is ignored
    assert [r["state"] for r in searcher.get_state()["finished"]] == ["FAIL"] * 3


def test_optuna_accepts_any_sampler_but_not_a_seed_beside_it() -> None:
    sampler = optuna.samplers.RandomSampler(seed=0)
    assert len(_run(_optuna({"x": uniform(0, 1)}, sampler=sampler), range(3))) == 3
    with pytest.raises(ValueError, match="seed the sampler itself"):
        OptunaSearch(sampler=optuna.samplers.RandomSampler(), seed=1)


@pytest.mark.parametrize("define_by_run", [False, True])
def test_optuna_restore_continues_exactly(define_by_run: bool) -> None:
    def space_fn(trial: optuna.Trial) -> None:
        trial.suggest_float("x", -10, 10)
        trial.suggest_categorical("m/c", [1, 2])

    def make() -> OptunaSearch:
        if define_by_run:
            return OptunaSearch(space=space_fn, metric="loss", mode="min", seed=1,
                                points_to_evaluate=[{"x": 0.0}, {"x": 1.0}, {"x": 2.0}])
        searcher = OptunaSearch(seed=1, points_to_evaluate=[{"x": 0.0}, {"x": 1.0}, {"x": 2.0}])
        searcher.set_search_properties("loss", "min", {"x": uniform(-10, 10),
                                                       "m": {"c": choice([1, 2])}})
        return searcher

    original = make()
    _run(original, range(1))
    in_flight = [original.suggest("t1"), original.suggest("t2")]  # t2 is a point
    state = pickle.loads(pickle.dumps(original.get_state()))
    restored = make()
    restored.set_state(state)
    # the in-flight trials keep their configs, and their ends can still be told
    assert [restored.suggest("t1"), restored.suggest("t2")] == in_flight
    for searcher in (original, restored):
        for i, config in zip((1, 2), in_flight, strict=True):
            searcher.on_trial_complete(f"t{i}", {"loss": _quadratic(config)})
    assert _run(restored, range(3, 16)) == _run(original, range(3, 16))
    assert _run(restored, range(3))[0]["x"] != 2.0  # the points are not run twice
    assert len(restored.get_state()["finished"]) == 19


def test_importing_tune_leaves_optuna_unloaded() -> None:
    code = (
        "import sys\n"
        "import trainkit.tune\n"
        "import trainkit.tune._optuna_search, trainkit.tune._basic_variant\n"
        "import trainkit.tune._concurrency_limiter, trainkit.tune._search_space\n"
        "sys.exit(3 if 'optuna' in sys.modules else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr or "optuna was imported"
