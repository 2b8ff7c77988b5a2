"""An experiment's state on disk, so ``Tuner.restore`` can continue after the driver died.

``experiment_state.jsonl`` is a journal: one JSON line per event that changes a trial
(added, state changed, result, config changed by PBT), appended and flushed as it happens, so
a crash loses at most the line being written (a torn last line is skipped on replay).
``search_state.pkl`` holds the searcher's ``get_state()`` and the scheduler (written
atomically at each trial start and end); ``tuner.pkl`` holds the sweep's definition
(param_space, TuneConfig, RunConfig), written once; ``fingerprint`` the hash of that
definition (see ``_fingerprint``), which decides whether a rerun continues the experiment.
An experiment whose definition changed goes to ``<name>-2`` (``-3``, ...), its *family*.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from trainkit._atomic import write_atomic
from trainkit.train.hosting import StorageLocation
from trainkit.train.hosting import list_dir
from trainkit.train.hosting import numbered_folders
from trainkit.train.hosting import read_file

JOURNAL = "experiment_state.jsonl"
SEARCH_STATE = "search_state.pkl"
TUNER_STATE = "tuner.pkl"
FINGERPRINT = "fingerprint"


@dataclass
class TrialRecord:
    """A trial as the journal last described it."""

    trial_id: str
    name: str
    config: dict[str, Any]
    trial_dir: str
    resources: dict[str, float]
    state: str = "pending"
    last_result: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    error: str | None = None
    failures: int = 0


class Journal:
    """Appends events to the experiment's journal. Used from the driver's runner thread."""

    def __init__(self, exp_dir: str) -> None:
        self.path = os.path.join(exp_dir, JOURNAL)
        self.file = open(self.path, "a")  # noqa: SIM115 - open for the sweep's whole life

    def append(self, **event: Any) -> None:
        self.file.write(json.dumps(event, default=repr) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def replay(exp_dir: str) -> dict[str, TrialRecord]:
    """Every trial of the experiment, in creation order, as the journal leaves it."""
    trials: dict[str, TrialRecord] = {}
    try:
        f = open(os.path.join(exp_dir, JOURNAL))  # noqa: SIM115
    except FileNotFoundError:
        return trials
    with f:
        for line in f:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash
            kind, tid = ev.pop("e"), ev.get("id")
            if kind == "add":
                trials[tid] = TrialRecord(tid, ev["name"], ev["config"], ev["dir"], ev["res"])
                continue
            rec = trials.get(tid)
            if rec is None:
                continue
            if kind == "state":
                rec.state = ev["state"]
                rec.error = ev.get("error")
                rec.failures = ev.get("failures", rec.failures)
            elif kind == "result":
                rec.last_result = ev["result"]
                rec.checkpoint = ev.get("ckpt") or rec.checkpoint
            elif kind == "ckpt":
                rec.checkpoint = ev["ckpt"]
            elif kind == "config":
                rec.config = ev["config"]
                rec.checkpoint = ev.get("ckpt")
    return trials


def save_search_state(exp_dir: str, searcher: Any, scheduler: Any) -> None:
    data = cloudpickle.dumps((searcher.get_state(), scheduler))
    write_atomic(os.path.join(exp_dir, SEARCH_STATE), data)


def load_search_state(exp_dir: str) -> tuple[Any, Any] | None:
    try:
        with open(os.path.join(exp_dir, SEARCH_STATE), "rb") as f:
            state: tuple[Any, Any] = cloudpickle.load(f)
            return state
    except FileNotFoundError:
        return None


def write_fingerprint(exp_dir: str, digest: str) -> None:
    write_atomic(os.path.join(exp_dir, FINGERPRINT), digest.encode())


def read_fingerprint(exp: StorageLocation) -> str | None:
    data = read_file(exp.join(FINGERPRINT))
    return data.decode().strip() if data is not None else None


def is_experiment(exp: StorageLocation) -> bool:
    names = {name for name, _ in list_dir(exp)}
    return JOURNAL in names and TUNER_STATE in names


def experiment_family(storage: StorageLocation, name: str) -> list[StorageLocation]:
    """The experiments ``<name>``, ``<name>-2``, ``<name>-3``, ... that exist in ``storage``."""
    out = []
    for folder in numbered_folders(storage, name):
        if not list_dir(folder):
            break
        if is_experiment(folder):
            out.append(folder)
    return out


def next_free_folder(storage: StorageLocation, name: str) -> StorageLocation:
    """The first folder of the family that holds no experiment."""
    for folder in numbered_folders(storage, name):
        if not is_experiment(folder):
            return folder
    raise AssertionError("unreachable")

