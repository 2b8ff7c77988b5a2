"""``optuna.journal``: Optuna's view of every sweep, written as it runs.

Each experiment folder holds an Optuna ``JournalStorage`` file with one study named after the
experiment: a trial per Tune trial (user attribute ``tune_trial_id``), its params (with the
distributions of the search space; other values as the ``config`` user attribute), one
intermediate value per report keyed by ``training_iteration``, and at its end its final value
(the last report's metric) and state: COMPLETE, PRUNED (a scheduler stopped it early) or FAIL.
So ``optuna-dashboard <folder>/optuna.journal`` shows the sweep live, and
``optuna.load_study(study_name=<name>, storage=JournalStorage(JournalFileBackend(path)))``
reads it. Written from the driver's runner thread only; a failure to write is said once
and turns the journal off, never the sweep.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from trainkit.tune._search_space import Categorical
from trainkit.tune._search_space import Float
from trainkit.tune._search_space import GridSearch
from trainkit.tune._search_space import Integer
from trainkit.tune._search_space import flatten_space
from trainkit.tune._search_space import iter_leaves

OPTUNA_JOURNAL = "optuna.journal"
_PRIMITIVE = (type(None), bool, int, float, str)


class OptunaJournal:
    """The sweep's Optuna study in ``<exp_dir>/optuna.journal``."""

    def __init__(self, exp_dir: str, exp_name: str, param_space: Mapping[str, Any],
                 metric: Any, mode: Any, say: Any) -> None:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        self.say = say
        self.metrics = [] if metric is None else \
            [metric] if isinstance(metric, str) else list(metric)
        modes = [] if mode is None else [mode] if isinstance(mode, str) else list(mode)
        directions = [optuna.study.StudyDirection.MAXIMIZE if m == "max"
                      else optuna.study.StudyDirection.MINIMIZE for m in modes] or \
            [optuna.study.StudyDirection.MINIMIZE]
        if optuna.logging.get_verbosity() == optuna.logging.INFO:  # optuna's default
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # as OptunaSearch does
        self.state = optuna.trial.TrialState
        self.path = os.path.join(exp_dir, OPTUNA_JOURNAL)
        self.storage = JournalStorage(_backend(JournalFileBackend, self.path))
        try:
            self.study_id = self.storage.get_study_id_from_name(exp_name)
        except KeyError:
            self.study_id = self.storage.create_new_study(directions, exp_name)
        self.distributions = _distributions(param_space)
        self.ids: dict[str, int] = {}
        for frozen in self.storage.get_all_trials(self.study_id, deepcopy=False):
            tid = frozen.user_attrs.get("tune_trial_id")
            if tid is not None and not frozen.state.is_finished():
                self.ids[str(tid)] = frozen._trial_id
        self.broken = False

    def _guard(self, what: str, fn: Any, *args: Any) -> None:
        if self.broken:
            return
        try:
            fn(*args)
        except Exception as e:  # the journal must never stop the sweep
            self.broken = True
            self.say(f"optuna.journal: could not record {what} ({type(e).__name__}: {e}); "
                     f"{self.path} is no longer written for this sweep")

    # -- events from the runner ----------------------------------------------------------
    def add(self, trial_id: str, config: Mapping[str, Any]) -> None:
        self._guard("a new trial", self._add, trial_id, config)

    def _add(self, trial_id: str, config: Mapping[str, Any]) -> None:
        if trial_id in self.ids:
            return
        number = self.storage.create_new_trial(self.study_id)
        self.ids[trial_id] = number
        self.storage.set_trial_user_attr(number, "tune_trial_id", trial_id)
        self._params(number, config)

    def _params(self, number: int, config: Mapping[str, Any]) -> None:
        for path, value in iter_leaves(config):
            name = "/".join(map(str, path))
            dist = self.distributions.get(name)
            if dist is None:
                continue
            try:
                internal = dist.to_internal_repr(value if isinstance(value, _PRIMITIVE)
                                                 else repr(value))
            except Exception:
                continue  # a value outside its distribution (a PBT mutation): in `config`
            self.storage.set_trial_param(number, name, internal, dist)
        self.storage.set_trial_user_attr(number, "config", _json_safe(config))

    def config(self, trial_id: str, config: Mapping[str, Any]) -> None:
        number = self.ids.get(trial_id)
        if number is not None:
            self._guard("a new config", self.storage.set_trial_user_attr, number, "config",
                        _json_safe(config))

    def result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        number = self.ids.get(trial_id)
        if number is None or not self.metrics:
            return
        value = _number(result.get(self.metrics[0]))
        step = result.get("training_iteration")
        if value is not None and isinstance(step, int):
            self._guard("a report", self.storage.set_trial_intermediate_value, number, step,
                        value)

    def end(self, trial_id: str, last_result: Mapping[str, Any], how: str) -> None:
        """``how``: "complete", "pruned" or "fail"."""
        number = self.ids.pop(trial_id, None)
        if number is None:
            return
        values = [_number(last_result.get(m)) for m in self.metrics]
        if how == "fail":
            state, vals = self.state.FAIL, None
        elif how == "pruned":
            state, vals = self.state.PRUNED, None
        elif values and all(v is not None for v in values):
            state, vals = self.state.COMPLETE, values
        else:
            state, vals = self.state.FAIL, None  # finished without its metric
        self._guard("a trial's end", self.storage.set_trial_state_values, number, state, vals)


def _backend(base: Any, path: str) -> Any:
    """Optuna's file backend, less the ``fsync`` per write (2/3 of a trial's cost in the
    driver): the lines are written and flushed, so readers see them at once; only an OS
    crash could lose the last ones, and the experiment's own journal is the record."""
    from optuna.storages.journal._file import get_lock_file

    class _Backend(base):  # type: ignore[misc]
        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
            with get_lock_file(self._lock), open(self._file_path, "ab") as f:
                f.write(text.encode("utf-8"))

    return _Backend(path)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _distributions(space: Mapping[str, Any]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution
    from optuna.distributions import FloatDistribution
    from optuna.distributions import IntDistribution

    out: dict[str, Any] = {}
    for path, domain in flatten_space(space).items():
        name = "/".join(map(str, path))
        try:
            if isinstance(domain, Float):
                out[name] = FloatDistribution(domain.lower, domain.upper, log=domain.log)
            elif isinstance(domain, Integer):
                out[name] = IntDistribution(domain.low, domain.high, log=domain.log)
            elif isinstance(domain, (Categorical, GridSearch)):
                values = domain.categories if isinstance(domain, Categorical) else domain.values
                choices = tuple(v if isinstance(v, _PRIMITIVE) else repr(v) for v in values)
                if len(set(choices)) == len(choices):
                    out[name] = CategoricalDistribution(choices)
        except Exception:
            continue  # a domain optuna has no distribution for: the value is in `config`
    return out


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))
