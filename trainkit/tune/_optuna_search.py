"""``OptunaSearch``: optuna's samplers (TPE by default) behind the ``Searcher`` interface.

An in-memory optuna study, driven by ask-and-tell: ``suggest`` asks, ``on_trial_complete``
tells. Tune domains become optuna distributions, nested keys become ``"a/b"`` parameter
names. optuna is imported when an ``OptunaSearch`` is made or used, never by
``import trainkit.tune``.

Restore: ``get_state`` keeps each finished trial (params, distributions, values, state), the
in-flight trials' params, the points not yet asked and the pickled sampler; ``set_state``
replays the finished trials into a new study and asks the in-flight ones again with their
params, so their ends can still be told.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal

from trainkit.tune._search_space import Categorical
from trainkit.tune._search_space import ConfigPath
from trainkit.tune._search_space import Domain
from trainkit.tune._search_space import Float
from trainkit.tune._search_space import Function
from trainkit.tune._search_space import GridSearch
from trainkit.tune._search_space import Integer
from trainkit.tune._search_space import Normal
from trainkit.tune._search_space import iter_leaves
from trainkit.tune._search_space import set_path
from trainkit.tune._searcher import Searcher

if TYPE_CHECKING:
    import optuna

    DefineByRun = Callable[[optuna.Trial], Mapping[str, Any] | None]

logger = logging.getLogger(__name__)

_SEPARATOR = "/"
_MODES = ("min", "max")
_PRIMITIVES = (type(None), bool, int, float, str)


@dataclass(frozen=True, slots=True)
class _Param:
    """One optuna parameter and how its values map to the config's."""

    path: ConfigPath
    distribution: Any  # an optuna BaseDistribution
    categories: tuple[Any, ...] | None = None  # optuna sees indices into these
    quantize: Callable[[float], Any] | None = None  # a rounding optuna cannot do itself

    def to_config(self, value: Any) -> Any:
        if self.categories is not None:
            return copy.deepcopy(self.categories[value])
        if self.quantize is not None:
            return self.quantize(value)
        return value

    def to_optuna(self, value: Any) -> Any:
        if self.categories is None:
            return value
        for index, category in enumerate(self.categories):
            if category == value:
                return index
        raise ValueError(
            f"`{_SEPARATOR.join(self.path)}` is {value!r}, but must be one of "
            f"{list(self.categories)!r}"
        )


def _name(path: ConfigPath) -> str:
    for key in path:
        if not isinstance(key, str) or _SEPARATOR in key:
            raise ValueError(
                f"the key {key!r} (at `{path!r}`) must be a str without {_SEPARATOR!r}: "
                f"OptunaSearch names nested parameters by joining their keys with it"
            )
    return _SEPARATOR.join(path)


def _compile_domain(path: ConfigPath, domain: Domain | GridSearch) -> _Param:
    import optuna.distributions as od

    name = _SEPARATOR.join(path)
    if isinstance(domain, GridSearch):
        raise ValueError(
            f"`{name}` is {domain!r}, but OptunaSearch cannot search a grid: optuna chooses "
            f"every value itself. Use tune.choice({list(domain.values)!r}) to let optuna pick "
            f"among the values, or the BasicVariantGenerator (the default search_alg) to try "
            f"them all"
        )
    if isinstance(domain, Function):
        raise ValueError(
            f"`{name}` is {domain!r}, but OptunaSearch cannot sample a sample_from: optuna "
            f"must know every parameter's distribution. Pass a define-by-run function as "
            f"OptunaSearch(space=fn), where fn(trial) calls trial.suggest_*, or compute the "
            f"value in the trainable from the other values"
        )
    if isinstance(domain, Normal):
        raise ValueError(
            f"`{name}` is {domain!r}, but optuna cannot sample a normal distribution: use "
            f"tune.uniform or tune.quniform over a bounded range instead"
        )
    if isinstance(domain, Float):
        if domain.log and domain.q is not None:  # optuna has no log scale with a step
            floats = od.FloatDistribution(domain.lower, domain.upper, log=True)
            return _Param(path, floats, quantize=domain.quantize)
        return _Param(
            path, od.FloatDistribution(domain.lower, domain.upper, log=domain.log, step=domain.q)
        )
    if isinstance(domain, Integer):
        if domain.log and domain.step != 1:
            ints = od.IntDistribution(domain.low, domain.high, log=True)
            return _Param(path, ints, quantize=domain.quantize)
        return _Param(
            path, od.IntDistribution(domain.low, domain.high, log=domain.log, step=domain.step)
        )
    if isinstance(domain, Categorical):
        if all(type(c) in _PRIMITIVES for c in domain.categories):
            return _Param(path, od.CategoricalDistribution(domain.categories))
        indices = tuple(range(len(domain.categories)))
        return _Param(path, od.CategoricalDistribution(indices), categories=domain.categories)
    raise ValueError(f"`{name}` is {domain!r}, which OptunaSearch does not know how to sample")


def _compile_space(space: Mapping[str, Any]) -> tuple[dict[str, _Param], dict[str, Any]]:
    """The optuna parameters of ``space`` by name, and its plain values (a nested dict)."""
    import optuna.distributions as od

    params: dict[str, _Param] = {}
    constants: dict[str, Any] = {}
    for path, value in iter_leaves(space):
        if isinstance(value, od.BaseDistribution):
            # Ray's flat form of a nested space, {"m/n": distribution}: config["m"]["n"]
            path = tuple(part for key in path for part in str(key).split(_SEPARATOR))
            params[_name(path)] = _Param(path, value)
        elif isinstance(value, (Domain, GridSearch)):
            params[_name(path)] = _compile_domain(path, value)
        else:
            set_path(constants, path, copy.deepcopy(value))
    return params, constants


def _has_domains(space: Mapping[str, Any]) -> bool:
    return any(isinstance(v, (Domain, GridSearch)) for _, v in iter_leaves(space))


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def _names(arg: str, value: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"`{arg}` is {value!r}, but must be a str, a non-empty list of str or None")


def _check_modes(mode: str | tuple[str, ...] | None) -> None:
    for m in (mode,) if isinstance(mode, str) else mode or ():
        if m not in _MODES:
            raise ValueError(f"`mode` is {mode!r}, but each mode must be 'min' or 'max'")


def _record(frozen: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A finished trial, as ``get_state`` keeps it."""
    return {
        "params": dict(frozen.params),
        "distributions": dict(frozen.distributions),
        "values": list(frozen.values) if frozen.values is not None else None,
        "state": frozen.state.name,
        "intermediate_values": dict(frozen.intermediate_values),
    }


def _replay(record: Mapping[str, Any]) -> optuna.trial.FrozenTrial:
    import optuna

    state = optuna.trial.TrialState[record["state"]]
    return optuna.trial.create_trial(
        state=state,
        values=record["values"] if state == optuna.trial.TrialState.COMPLETE else None,
        params=record["params"],
        distributions=record["distributions"],
        intermediate_values=record["intermediate_values"],
    )


class OptunaSearch(Searcher):
    """Searches with optuna (TPE by default), as Ray Tune's ``OptunaSearch``.

    Args:
        space: the search space, if not the Tuner's ``param_space``: a dict of Tune domains
            (and/or optuna distributions, and plain values), or a define-by-run function
            ``fn(trial)`` that calls ``trial.suggest_*`` and returns None or a dict of more
            (constant) values. Without it, the Tuner's ``param_space`` is used; it may not
            hold ``grid_search``, ``sample_from`` or ``randn``.
        metric: the metric to optimise, or a list of them (multi-objective search).
        mode: "min" or "max", or a list of them, one per metric.
        points_to_evaluate: configs to try first (partial ones: optuna samples the rest).
        sampler: any optuna sampler (default: ``TPESampler(seed=seed)``).
        seed: seeds the default sampler (pass a seeded ``sampler`` instead of both).
        evaluated_rewards: the metric value(s) already known for each of
            ``points_to_evaluate``: the points are then told to optuna, not run.

    Runs in the driver, in one thread, like every searcher. Never returns FINISHED: the
    runner stops after ``num_samples`` trials.
    """

    def __init__(
        self,
        space: Mapping[str, Any] | DefineByRun | None = None,
        metric: str | Sequence[str] | None = None,
        mode: str | Sequence[str] | None = None,
        points_to_evaluate: Sequence[Mapping[str, Any]] | None = None,
        sampler: optuna.samplers.BaseSampler | None = None,
        seed: int | None = None,
        evaluated_rewards: Sequence[float | Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        self._metric_arg = _names("metric", metric)
        self._mode_arg = _names("mode", mode)
        _check_modes(self._mode_arg)
        self._sync_metric_and_mode()

        self._define_by_run: DefineByRun | None = None
        self._params: dict[str, _Param] | None = None
        self._constants: dict[str, Any] = {}
        self._has_own_space = space is not None
        if isinstance(space, Mapping):
            self._params, self._constants = _compile_space(space)
        elif callable(space):
            self._define_by_run = space
        elif space is not None:
            raise TypeError(
                f"`space` is {space!r}, but must be a dict (a search space), a function of an "
                f"optuna trial (define-by-run) or None (use the Tuner's param_space)"
            )

        if sampler is not None:
            import optuna

            if not isinstance(sampler, optuna.samplers.BaseSampler):
                raise TypeError(f"`sampler` is {sampler!r}, but must be an optuna sampler")
            if seed is not None:
                raise ValueError(
                    f"`seed` is {seed!r}, but a `sampler` was given too: seed the sampler "
                    f"itself, e.g. optuna.samplers.TPESampler(seed={seed!r})"
                )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"`seed` is {seed!r}, but must be an int or None")
        self._sampler = sampler
        self._seed = seed

        points = [copy.deepcopy(dict(p)) for p in points_to_evaluate or []]
        rewards = list(evaluated_rewards) if evaluated_rewards is not None else None
        if rewards is not None and len(rewards) != len(points):
            raise ValueError(
                f"`evaluated_rewards` has {len(rewards)} values, but must have one per point "
                f"of `points_to_evaluate` ({len(points)})"
            )
        if rewards is not None and self._define_by_run is not None:
            raise ValueError(
                "`evaluated_rewards` needs a space of distributions, but `space` is a "
                "define-by-run function: pass points_to_evaluate alone to run them instead"
            )
        # Turned into `_finished` records (with rewards) or `_queue` at the first study.
        self._points: list[dict[str, Any]] | None = points
        self._rewards = rewards

        self._study: optuna.Study | None = None
        self._trials: dict[str, optuna.Trial] = {}  # in flight
        self._configs: dict[str, dict[str, Any]] = {}  # in flight
        self._finished: list[dict[str, Any]] = []  # records, for get_state
        self._queue: list[dict[str, Any]] = []  # points enqueued and not yet asked
        self._restored_in_flight: dict[str, dict[str, Any]] = {}

    @staticmethod
    def convert_search_space(spec: Mapping[str, Any]) -> dict[str, Any]:
        """The optuna distributions of a Tune search space, by "/"-joined path (Ray's
        ``OptunaSearch.convert_search_space``); plain values are left out. Raises ValueError,
        naming the key, for what optuna cannot sample (``grid_search``, ``sample_from``,
        ``randn``). A log-scale quantized domain comes back without its step, and a choice of
        non-primitive values as a choice of their indices (OptunaSearch maps them back)."""
        if not isinstance(spec, Mapping):
            raise TypeError(f"`spec` is {spec!r}, but must be a dict (a Tune search space)")
        params, _ = _compile_space(spec)
        return {name: param.distribution for name, param in params.items()}

    # --- metric and mode --------------------------------------------------------------------

    def _sync_metric_and_mode(self) -> None:
        """``.metric``/``.mode``: the single ones (None in multi-objective search)."""
        self.metric = self._metric_arg if isinstance(self._metric_arg, str) else None
        self.mode = self._mode_arg if isinstance(self._mode_arg, str) else None

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric optimised (one unless multi-objective)."""
        if self._metric_arg is None:
            return ()
        return (self._metric_arg,) if isinstance(self._metric_arg, str) else self._metric_arg

    def _directions(self) -> list[Literal["minimize", "maximize"]]:
        metric, mode = self._metric_arg, self._mode_arg
        if metric is None:
            raise ValueError(
                "OptunaSearch has no `metric`: pass metric= to OptunaSearch or to TuneConfig"
            )
        if mode is None:
            raise ValueError(
                f"OptunaSearch has `metric` {metric!r} but no `mode`: pass mode= ('min' or "
                f"'max') to OptunaSearch or to TuneConfig"
            )
        modes = (mode,) if isinstance(mode, str) else mode
        if len(modes) != len(self.metrics) or isinstance(metric, str) != isinstance(mode, str):
            raise ValueError(
                f"`mode` is {mode!r}, but must give one mode per metric of `metric` ({metric!r})"
            )
        return ["minimize" if m == "min" else "maximize" for m in modes]

    # --- Searcher ---------------------------------------------------------------------------

    def set_search_properties(
        self,
        metric: str | Sequence[str] | None,
        mode: str | Sequence[str] | None,
        config: Mapping[str, Any],
        *,
        num_samples: int = 1,
    ) -> bool:
        if self._metric_arg is None and metric:
            self._metric_arg = _names("metric", metric)
        if self._mode_arg is None and mode:
            self._mode_arg = _names("mode", mode)
            _check_modes(self._mode_arg)
        self._sync_metric_and_mode()
        if self._has_own_space:
            if not _has_domains(config):  # plain values of the param_space still count
                _deep_merge(self._constants, config)
            return False
        if self._study is not None:
            raise RuntimeError("OptunaSearch.set_search_properties came after the first suggest")
        self._params, self._constants = _compile_space(config)
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        study = self._ensure_study()
        if trial_id in self._configs:  # asked again (e.g. after a restore): the same config
            return copy.deepcopy(self._configs[trial_id])
        config = self._ask(study, trial_id)
        if self._queue:  # ask() took the oldest enqueued point, if any
            self._queue.pop(0)
        return copy.deepcopy(config)

    def on_trial_result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        if self._study is None or len(self.metrics) != 1:
            return  # optuna keeps no intermediate values in multi-objective studies
        trial = self._trials.get(trial_id)
        value: Any = result.get(self.metrics[0])
        step = result.get("training_iteration")
        if trial is None or not isinstance(step, int) or not _is_number(value):
            return
        trial.report(float(value), step)

    def on_trial_complete(
        self, trial_id: str, result: Mapping[str, Any] | None = None, error: bool = False
    ) -> None:
        if self._study is None and not self._restored_in_flight:
            return
        study = self._ensure_study()
        trial = self._trials.pop(trial_id, None)
        self._configs.pop(trial_id, None)
        if trial is None:
            return
        import optuna

        values = None if error else self._values_of(trial_id, result)
        if values is None:
            frozen = study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            frozen = study.tell(trial, values)
        self._finished.append(_record(frozen))

    def get_state(self) -> dict[str, Any]:
        in_flight = {tid: dict(t.params) for tid, t in self._trials.items()}
        in_flight.update(copy.deepcopy(self._restored_in_flight))  # if not rebuilt yet
        return {
            "finished": copy.deepcopy(self._finished),
            "in_flight": in_flight,
            "queue": copy.deepcopy(self._queue),
            "points_done": self._points is None,
            "sampler": self._pickled_sampler(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._finished = copy.deepcopy(state["finished"])
        self._restored_in_flight = copy.deepcopy(state["in_flight"])
        self._queue = copy.deepcopy(state["queue"])
        if state["points_done"]:
            self._points = None
        if state["sampler"] is not None:
            self._sampler = _cloudpickle().loads(state["sampler"])
        self._study = None
        self._trials, self._configs = {}, {}

    # --- the study --------------------------------------------------------------------------

    def _ensure_study(self) -> optuna.Study:
        if self._study is not None:
            return self._study
        if self._params is None and self._define_by_run is None:
            raise RuntimeError(
                "OptunaSearch has no search space: pass space= to it, or give the Tuner a "
                "param_space"
            )
        directions = self._directions()
        import optuna

        sampler = self._sampler or optuna.samplers.TPESampler(seed=self._seed)
        if optuna.logging.get_verbosity() == optuna.logging.INFO:  # optuna's default
            # One INFO line per trial duplicates the sweep's own table: stay quiet unless the
            # user asked optuna for more.
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            sampler=sampler, pruner=optuna.pruners.NopPruner(), directions=directions
        )
        if self._points is not None:
            self._take_points()
        for record in self._finished:
            study.add_trial(_replay(record))
        restored, self._restored_in_flight = self._restored_in_flight, {}
        for trial_id, params in restored.items():
            study.enqueue_trial(params)
            self._ask(study, trial_id)
        for point in self._queue:
            study.enqueue_trial(point)
        self._study = study
        return study

    def _take_points(self) -> None:
        """``points_to_evaluate`` as optuna params: told (with rewards) or enqueued."""
        points, self._points = self._points or [], None
        for i, point in enumerate(points):
            params = self._encode_point(i, point)
            if self._rewards is None:
                self._queue.append(params)
                continue
            record = {
                "params": params,
                "distributions": {n: p.distribution for n, p in (self._params or {}).items()},
                "values": self._reward_values(i, self._rewards[i]),
                "state": "COMPLETE",
                "intermediate_values": {},
            }
            try:
                _replay(record)
            except ValueError as e:
                raise ValueError(
                    f"`points_to_evaluate[{i}]` is {point!r}, which optuna cannot take with its "
                    f"reward: {e}"
                ) from e
            self._finished.append(record)

    def _encode_point(self, i: int, point: Mapping[str, Any]) -> dict[str, Any]:
        flat = {_name(path): value for path, value in iter_leaves(point)}
        if self._params is None:  # define-by-run: the names are the function's
            return flat
        unknown = sorted(set(flat) - set(self._params))
        if unknown:
            raise ValueError(
                f"`points_to_evaluate[{i}]` sets {unknown}, which the search space does not "
                f"sample (it samples {sorted(self._params)})"
            )
        missing = sorted(set(self._params) - set(flat))
        if missing and self._rewards is not None:
            raise ValueError(
                f"`points_to_evaluate[{i}]` lacks {missing}: with `evaluated_rewards`, every "
                f"point must set every parameter"
            )
        return {name: self._params[name].to_optuna(value) for name, value in flat.items()}

    def _reward_values(self, i: int, reward: float | Sequence[float]) -> list[float]:
        values: list[Any] = list(reward) if isinstance(reward, Sequence) else [reward]
        if len(values) != len(self.metrics) or not all(_is_number(v) for v in values):
            raise ValueError(
                f"`evaluated_rewards[{i}]` is {reward!r}, but must be one number per metric "
                f"({list(self.metrics)})"
            )
        return [float(v) for v in values]

    def _ask(self, study: optuna.Study, trial_id: str) -> dict[str, Any]:
        if self._define_by_run is not None:
            trial = study.ask()
        else:
            trial = study.ask({name: p.distribution for name, p in (self._params or {}).items()})
        try:
            config = self._config_of(trial)
        except BaseException:
            import optuna

            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        self._trials[trial_id] = trial
        self._configs[trial_id] = config
        return config

    def _config_of(self, trial: optuna.Trial) -> dict[str, Any]:
        config = copy.deepcopy(self._constants)
        if self._define_by_run is None:
            for name, param in (self._params or {}).items():
                set_path(config, param.path, param.to_config(trial.params[name]))
            return config
        extra = self._define_by_run(trial)
        if extra is not None and (
            not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra)
        ):
            raise TypeError(
                f"the define-by-run `space` returned {extra!r}, but must return None or a dict "
                f"with str keys (constant values to add to the config)"
            )
        for name, value in trial.params.items():
            set_path(config, tuple(name.split(_SEPARATOR)), value)
        if extra:
            _deep_merge(config, extra)
        return config

    def _values_of(self, trial_id: str, result: Mapping[str, Any] | None) -> list[float] | None:
        values: list[Any] = [None if result is None else result.get(m) for m in self.metrics]
        if not all(_is_number(v) for v in values):
            logger.warning(
                "trial %s ended without a number for every metric %s (got %s): optuna is told "
                "it failed",
                trial_id,
                list(self.metrics),
                values,
            )
            return None
        return [float(v) for v in values]

    def _pickled_sampler(self) -> bytes | None:
        sampler = self._study.sampler if self._study is not None else self._sampler
        if sampler is None:
            return None
        try:
            return bytes(_cloudpickle().dumps(sampler))
        except Exception as e:
            logger.warning(
                "OptunaSearch could not pickle its sampler (%s: %s): a restored experiment "
                "starts a fresh one",
                type(e).__name__,
                e,
            )
            return None


def _is_number(value: Any) -> bool:
    """A real number (numpy's too), not a bool, not NaN."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    return not math.isnan(float(value))


def _cloudpickle() -> Any:
    import cloudpickle  # type: ignore[import-untyped]

    return cloudpickle
