"""The runner's one trial mutator: legal moves are journaled, an illegal one is a bug report;
a misconfigured sweep is a TuneError. No runtime: the runner is only constructed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainkit.exceptions import InvalidTransitionError
from trainkit.exceptions import TrainkitInternalError
from trainkit.exceptions import TuneError
from trainkit.train import RunConfig
from trainkit.tune import TuneConfig
from trainkit.tune._basic_variant import BasicVariantGenerator
from trainkit.tune._fifo import FIFOScheduler
from trainkit.tune._runner import Trial
from trainkit.tune._runner import TuneRunner
from trainkit.tune._trial import TrialState


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[TuneRunner]:
    runner = TuneRunner(blob=b"", kind="function", trainable_name="f", resources={"CPU": 1.0},
                        tune_config=TuneConfig(metric="loss", mode="min"),
                        run_config=RunConfig(verbose=0), exp_dir=str(tmp_path),
                        exp_name="sweep", searcher=BasicVariantGenerator(),
                        scheduler=FIFOScheduler(), trials=[], capacity=1)
    yield runner
    runner.journal.close()


def _trial(tmp_path: Path) -> Trial:
    return Trial("00000", "f_00000", {"lr": 0.1}, str(tmp_path / "f_00000"), {"CPU": 1.0})


def test_an_illegal_trial_move_names_the_trial_its_state_and_the_move(
        runner: TuneRunner, tmp_path: Path) -> None:
    trial = _trial(tmp_path)
    runner._set_state(trial, TrialState.RUNNING)
    runner._set_state(trial, TrialState.ERRORED, error="ValueError: boom\ntraceback")

    with pytest.raises(InvalidTransitionError) as info:
        runner._set_state(trial, TrialState.RUNNING)

    err = info.value
    assert isinstance(err, TrainkitInternalError)
    assert (err.machine, err.entity, err.state, err.event) == \
        ("Trial", "trial 00000", "ERRORED", "move to RUNNING")
    assert err.history == ("PENDING -> RUNNING", "RUNNING -> ERRORED (ValueError: boom)")
    assert trial.state is TrialState.ERRORED
    states = [json.loads(line)["state"] for line in
              (tmp_path / "experiment_state.jsonl").read_text().splitlines()]
    assert states == ["running", "errored"]  # the refused move was not journaled


def test_a_metric_no_trial_reports_is_a_tune_error(runner: TuneRunner) -> None:
    with pytest.raises(TuneError, match=r"TuneConfig\(metric='loss'\).*\['acc'\]"):
        runner._check_metric({"acc": 0.9, "training_iteration": 1})
