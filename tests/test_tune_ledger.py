"""The sweep ledger and ``trainkit report`` for a sweep: a real small sweep (ASHA stopping
trials, one trial that raises), the report's JSON checked against the ResultGrid, the
time-sharing arithmetic on hand-written events, and a torn ledger."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trainkit import tune
from trainkit.cli import main
from trainkit.train import RunConfig
from trainkit.train._goodput import SWEEP_BADPUT_KEYS
from trainkit.train._goodput import summarize_sweep
from trainkit.train._ledger import LEDGER_FILE
from trainkit.train._ledger import read_ledger
from trainkit.train._storage import local_location
from trainkit.tune.schedulers import ASHAScheduler


@pytest.fixture(scope="module")
def runtime(start_backend: Any) -> Iterator[None]:
    with start_backend("builtin", num_cpus=2, num_gpus=0):
        yield


def curve(config: dict) -> None:
    """Loss falls towards x^2 over 9 iterations; x == 99 raises before its first report."""
    for i in range(1, 10):
        if config["x"] == 99:
            raise ValueError("x=99 is out of range")
        tune.report({"loss": config["x"] ** 2 + 1.0 / i})


def _report_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["report", str(path), "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_sweep_with_asha_and_an_error(runtime: None, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    xs = [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 99]
    grid = tune.Tuner(
        curve, param_space={"x": tune.grid_search(xs)},
        tune_config=tune.TuneConfig(metric="loss", mode="min", max_concurrent_trials=2,
                                    scheduler=ASHAScheduler(max_t=9, grace_period=1,
                                                            reduction_factor=3)),
        run_config=RunConfig(name="sweep", storage_path=tmp_path, verbose=0)).fit()
    assert len(grid) == 7 and grid.num_errors == 1

    s = _report_json(tmp_path / "sweep", capsys)
    assert (s["kind"], s["name"], s["status"]) == ("tune", "sweep", "finished")
    assert s["damaged_lines"] == 0
    assert set(s["badput_s"]) >= {"startup", "rendezvous", "data_wait", "checkpoint",
                                  "restart", "lost_work"}
    assert s["productive_s"] > 0
    assert s["productive_s"] + sum(s["badput_s"].values()) == pytest.approx(s["wall_s"],
                                                                             rel=0.02)
    by_x = {t["params"]["x"]: t for t in s["trials"]}
    assert sorted(by_x) == sorted(xs)
    # the ResultGrid and the report agree, trial by trial
    for r in grid:
        t = by_x[r.config["x"]]
        if r.error is None:
            assert t["status"] == "terminated"
            assert t["iteration"] == r.metrics["training_iteration"]
            assert t["metrics"]["loss"] == pytest.approx(r.metrics["loss"])
    stopped = [t for t in s["trials"] if t["stopped_by"] == "scheduler"]
    assert stopped and all(t["iteration"] < 9 for t in stopped)  # ASHA cut them short
    assert by_x[0.0]["iteration"] == 9 and by_x[0.0]["stopped_by"] is None
    assert by_x[99]["status"] == "errored" and "x=99 is out of range" in by_x[99]["error"]
    [failure] = s["failures"]
    assert failure["rank"] is None and failure["trial_id"] == by_x[99]["trial_id"]
    assert failure["error"] == "ValueError: x=99 is out of range"
    best = grid.get_best_result()
    assert s["best"]["params"] == {"x": 0.0} == best.config
    assert s["best"]["value"] == pytest.approx(best.metrics["loss"])

    # the events themselves: one start and one end per trial, results in between
    found = read_ledger(local_location(tmp_path / "sweep"))
    assert found is not None
    events, damaged = found
    names = [e["event"] for e in events]
    assert names[0] == "sweep_started" and names[-1] == "sweep_finished" and damaged == 0
    assert names.count("trial_added") == names.count("trial_started") == 7
    ends = [n for n in names if n in ("trial_stopped", "trial_completed", "trial_errored")]
    assert len(ends) == 7
    assert names.count("trial_result") == sum(t["iteration"] for t in s["trials"])
    assert events[-1]["best_trial_id"] == s["best"]["trial_id"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))

    # the text report says the same
    assert main(["report", str(tmp_path / "sweep")]) == 0
    text = capsys.readouterr().out
    assert "tune sweep 'sweep': finished" in text and "ValueError: x=99" in text
    assert "stopped by the scheduler" in text and "best:" in text


def _ev(seq: int, t: float, event: str, **fields: object) -> dict[str, Any]:
    return {"v": 1, "seq": seq, "t": t, "event": event, **fields}


HAND_WRITTEN = [
    _ev(1, 100.0, "sweep_started", name="hw", kind="tune", metric="loss", mode="min"),
    _ev(2, 100.0, "trial_added", trial_id="0", name="f_0", params={"x": 1}),
    _ev(3, 100.0, "trial_added", trial_id="1", name="f_1", params={"x": 2}),
    _ev(4, 101.0, "trial_started", trial_id="0", run=1, resumed=None),
    _ev(5, 101.0, "trial_started", trial_id="1", run=1, resumed=None),
    _ev(6, 103.0, "trial_result", trial_id="0", iteration=1, checkpoint=True,
        metrics={"loss": 5.0}),
    _ev(7, 105.0, "trial_result", trial_id="1", iteration=1, checkpoint=False,
        metrics={"loss": 3.0}),
    _ev(8, 107.0, "trial_errored", trial_id="1", error_type="OSError", message="disk",
        failures=1, retrying=True),
    _ev(9, 107.0, "trial_completed", trial_id="0", iteration=1),
    _ev(10, 109.0, "trial_started", trial_id="1", run=2, resumed="error"),
    _ev(11, 110.0, "trial_result", trial_id="1", iteration=2, checkpoint=False,
        metrics={"loss": 2.0}),
    _ev(12, 111.0, "trial_completed", trial_id="1", iteration=2),
    _ev(13, 112.0, "sweep_finished", trials={"terminated": 2}),
]


def test_time_shared_among_running_trials() -> None:
    s = summarize_sweep(HAND_WRITTEN)
    assert (s["kind"], s["status"], s["wall_s"]) == ("tune", "finished", 12.0)
    # 100-101 no trial yet: startup 1; 101-103 both starting: 2; 103-105 trial 0 productive
    # (1) and trial 1 starting (1); 105-107 both productive (1 + 1), trial 1's 1 s since its
    # checkpoint lost; 107-109 nothing runs (idle 2); 109-110 restart 1; 110-111 productive 1;
    # 111-112 nothing runs until the end: shutdown 1.
    assert s["badput_s"] == {"startup": 4.0, "rendezvous": 0.0, "data_wait": 0.0,
                             "checkpoint": 0.0, "restart": 1.0, "lost_work": 1.0,
                             "idle": 2.0, "shutdown": 1.0}
    assert s["productive_s"] == pytest.approx(3.0)
    assert tuple(s["badput_s"]) == SWEEP_BADPUT_KEYS
    assert [t["status"] for t in s["trials"]] == ["terminated", "terminated"]
    assert s["best"]["trial_id"] == "1" and s["best"]["value"] == 2.0
    assert s["failures"][0] | {} == {"trial_id": "1", "name": "f_1", "rank": None,
                                     "error_type": "OSError", "message": "disk",
                                     "error": "OSError: disk", "retrying": True}


def test_torn_sweep_ledger_reports_what_it_can(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    lines = [json.dumps(e) for e in HAND_WRITTEN[:7]]
    (tmp_path / LEDGER_FILE).write_text("\n".join(lines) + '\n{"v": 1, "seq": 8, "t": 10')
    s = _report_json(tmp_path, capsys)
    assert (s["kind"], s["status"], s["damaged_lines"]) == ("tune", "running", 1)
    assert s["wall_s"] == 5.0 and len(s["trials"]) == 2
    assert main(["report", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "1 line(s) could not be read" in captured.err
    assert "ledger damaged: 1 line(s)" in captured.out


def test_report_of_a_folder_that_is_not_a_run(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path) in err and "not a run or a sweep" in err


def test_sweep_ledger_on_s3_read_by_report_and_dashboard(
        runtime: None, s3: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from trainkit.dashboard._scan import StorageReader
    from trainkit.dashboard._scan import StoreFolder
    from trainkit.train._storage import StorageLocation

    grid = tune.Tuner(
        curve, param_space={"x": tune.grid_search([0.0, 99])},
        tune_config=tune.TuneConfig(metric="loss", mode="min"),
        run_config=RunConfig(name="remote", storage_path=f"s3://{s3.bucket}/tl",
                             storage_filesystem=s3.fs, verbose=0)).fit()
    assert grid.num_errors == 1
    assert "remote/ledger.jsonl" in s3.keys("tl")  # mirrored with the experiment's files
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    uri = (f"s3://{s3.bucket}/tl/remote?endpoint_override={s3.endpoint}&scheme=http"
           "&region=us-east-1")
    assert main(["report", uri, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["kind"], s["status"], len(s["trials"]), len(s["failures"])) == \
        ("tune", "finished", 2, 1)
    reader = StorageReader(StoreFolder(StorageLocation(s3.fs, f"{s3.bucket}/tl",
                                                       f"s3://{s3.bucket}/tl")))
    entries, problems = reader.entries()
    assert [(e.name, e.kind, e.status) for e in entries] == [("remote", "tune", "finished")]
    assert problems == []
    trial = next(t["name"] for t in s["trials"] if t["params"]["x"] == 0.0)
    rows, damaged = reader.results("remote", trial)
    assert len(rows) == 9 and damaged == 0


def test_best_changed_only_when_another_trial_leads(tmp_path: Path) -> None:
    from trainkit.tune._sweep_ledger import SweepLedger

    ledger = SweepLedger(str(tmp_path), "loss", "min")
    for trial_id, loss in [("a", 5.0), ("b", 7.0), ("a", 4.0), ("b", 3.0), ("b", 6.0),
                           ("a", 4.5)]:
        ledger.trial_result(trial_id, {"loss": loss, "training_iteration": 1}, False)
    ledger.close()
    found = read_ledger(local_location(tmp_path))
    assert found is not None
    best = [(e["trial_id"], e["value"]) for e in found[0] if e["event"] == "best_changed"]
    # a leads; b takes over at 3.0; b falls back to 6.0, so a (4.0) leads again
    assert best == [("a", 5.0), ("b", 3.0), ("a", 4.0)]
    assert next(e["metrics"] for e in found[0] if e["event"] == "trial_result") == {"loss": 5.0}


def stepping(config: dict) -> None:
    import tempfile as _tempfile

    from trainkit.train import Checkpoint

    step, value = 0, 0.0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        step, value = json.loads(Path(ckpt.path, "state.json").read_text())
    while step < 8:
        step += 1
        value += config["lr"]
        with _tempfile.TemporaryDirectory() as d:
            Path(d, "state.json").write_text(json.dumps([step, value]))
            tune.report({"value": value}, checkpoint=Checkpoint.from_directory(d))


def test_pbt_sweep_pauses_and_exploits_add_up(runtime: None, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from trainkit.tune.schedulers import PopulationBasedTraining

    pbt = PopulationBasedTraining(perturbation_interval=2, quantile_fraction=0.5, synch=True,
                                  hyperparam_mutations={"lr": [0.1, 0.5, 1.0, 2.0]}, seed=0)
    tune.Tuner(stepping, param_space={"lr": tune.grid_search([0.1, 2.0])},
               tune_config=tune.TuneConfig(metric="value", mode="max", scheduler=pbt),
               run_config=RunConfig(name="pbt", storage_path=tmp_path, verbose=0)).fit()
    assert pbt.history
    found = read_ledger(local_location(tmp_path / "pbt"))
    assert found is not None
    names = [e["event"] for e in found[0]]
    assert "trial_config" in names and names.count("trial_started") > 2  # restarted runs
    s = _report_json(tmp_path / "pbt", capsys)
    assert s["status"] == "finished" and [t["status"] for t in s["trials"]] == \
        ["terminated", "terminated"]
    assert s["productive_s"] + sum(s["badput_s"].values()) == pytest.approx(s["wall_s"],
                                                                             rel=0.02)
    assert all(t["iteration"] == 8 for t in s["trials"]) and s["best"] is not None


def test_a_sweep_whose_driver_died_and_was_resumed() -> None:
    # Session 1 ends without a word at t=104 (the driver died while trial 0 ran); the gap to
    # the resume counts for nothing; session 2 restarts trial 0 from its checkpoint.
    events = [
        _ev(1, 100.0, "sweep_started", name="r", kind="tune", metric="loss", mode="min"),
        _ev(2, 100.0, "trial_added", trial_id="0", name="f_0", params={"x": 1}),
        _ev(3, 101.0, "trial_started", trial_id="0", run=1, resumed=None),
        _ev(4, 102.0, "trial_result", trial_id="0", iteration=1, checkpoint=True,
            metrics={"loss": 2.0}),
        _ev(5, 104.0, "trial_result", trial_id="0", iteration=2, checkpoint=False,
            metrics={"loss": 1.5}),
        _ev(6, 200.0, "sweep_started", name="r", kind="tune", metric="loss", mode="min",
            resumed=True),
        _ev(7, 201.0, "trial_started", trial_id="0", run=1, resumed="checkpoint"),
        _ev(8, 202.0, "trial_result", trial_id="0", iteration=2, checkpoint=False,
            metrics={"loss": 1.2}),
        _ev(9, 203.0, "trial_result", trial_id="0", iteration=3, checkpoint=False,
            metrics={"loss": 1.0}),
        _ev(10, 203.0, "trial_completed", trial_id="0", iteration=3),
        _ev(11, 204.0, "sweep_finished", trials={"terminated": 1}),
    ]
    s = summarize_sweep(events)
    assert (s["status"], s["wall_s"]) == ("finished", 8.0)
    # session 1: startup 100-102, productive 102-104 but lost (no checkpoint after 102);
    # session 2: startup 200-202, productive 202-203, shutdown 203-204
    assert s["productive_s"] == pytest.approx(1.0)
    assert s["badput_s"] | {} == {"startup": 4.0, "rendezvous": 0.0, "data_wait": 0.0,
                                  "checkpoint": 0.0, "restart": 0.0, "lost_work": 2.0,
                                  "idle": 0.0, "shutdown": 1.0}
    assert [(t["status"], t["iteration"]) for t in s["trials"]] == [("terminated", 3)]
    assert s["best"]["value"] == 1.0
