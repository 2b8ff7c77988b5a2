"""Where a run's or a sweep's time went, from its ledger's events (pure: no I/O).

One format, one reader: a Train run's ledger starts with ``run_started`` (``summarize``), a
Tune sweep's with ``sweep_started`` (``summarize_sweep``; its events are written by
``trainkit.tune._sweep_ledger``, and this module imports nothing of Tune). Both live here so
that ``trainkit report`` and the dashboard read ledgers without importing Tune (or pyarrow).

## A run

The wall time of each session (``run_started`` to ``run_finished``/``run_failed``, or to the
last event of a session that never ended) is cut at every event, and each piece goes to the
phase the run was in:

```text
run_started --startup--> workers_started --rendezvous--> rendezvous_done --productive--> ...
   attempt_failed --restart--> attempt_started --restart--> workers_started --rendezvous--> ...
   attempt_finished --shutdown--> run_finished         (also: after a failure that ends the run)
```

Then two corrections move seconds out of ``productive``: each ``checkpoint_snapshotted``'s
``snapshot_s`` (the ranks were blocked in ``report()``) goes to ``checkpoint``, and at an
``attempt_failed`` the productive time since the attempt's last committed checkpoint (or since
it started training, if it committed none) goes to ``lost_work``: the next attempt redoes it.
Nothing is counted twice or dropped, so ``productive_s`` plus the badput values equal
``wall_s`` (up to rounding). ``data_wait`` stays 0: Train does not measure it yet.

## A sweep

The wall time of each session (``sweep_started`` to
``sweep_finished``/``sweep_failed``, or to the last event of a session that never ended) is
cut at every event, and each piece is shared equally among the trials running in it; each
share goes to the phase its trial was in:

```text
trial_started --startup (restart, after an error)--> first trial_result --productive--> end
```

A piece in which no trial runs is ``startup`` before the session's first trial starts,
``shutdown`` after its last trial ended, and ``idle`` in between (the sweep waited for
resources or its searcher). At a ``trial_errored``, and for each trial still running when a
session ends (Ctrl-C, or a driver that died), the trial's productive time since its last
checkpoint moves to ``lost_work`` (a retry or a resume redoes it). Nothing is counted twice
or dropped, so ``productive_s`` plus the badput values equal ``wall_s`` (up to rounding).
``rendezvous``, ``data_wait`` and ``checkpoint`` stay 0: a function trial has no process
group, and Tune does not time data or checkpoint writes inside a trial.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Final

BADPUT_KEYS: Final = ("startup", "rendezvous", "data_wait", "checkpoint", "restart",
                      "lost_work", "shutdown")
_TERMINAL: Final = {"run_finished": "finished", "run_failed": "failed"}


def summarize(events: Sequence[dict[str, Any]], *, damaged: int = 0) -> dict[str, Any]:
    """The report of a run (what ``trainkit report --json`` prints) from its events."""
    seconds = dict.fromkeys(("productive", *BADPUT_KEYS), 0.0)
    failures: list[dict[str, Any]] = []
    name, status, wall = "", "unknown", 0.0
    attempts = iterations = checkpoints = 0
    phase: str | None = None
    prev_t = start_t = 0.0
    since_commit = since_report = 0.0
    failed_in_session = False
    for e in events:
        kind, t = e["event"], float(e["t"])
        if phase is not None and kind != "run_started":
            gap = max(0.0, t - prev_t)
            seconds[phase] += gap
            if phase == "productive":
                since_commit += gap
                since_report += gap
        if kind == "run_started":
            if phase is not None:  # the previous session ended without a word (a crash)
                wall += prev_t - start_t
            name = str(e.get("name", name))
            status, phase, start_t, failed_in_session = "running", "startup", t, False
        elif phase is None:
            prev_t = t
            continue  # events outside a session (a torn ledger) count for nothing
        elif kind == "attempt_started":
            attempts += 1
            phase = "restart" if failed_in_session else "startup"
            since_commit = since_report = 0.0
        elif kind == "workers_started":
            phase = "rendezvous"
        elif kind == "rendezvous_done":
            phase = "productive"
        elif kind == "checkpoint_snapshotted":
            moved = min(float(e.get("snapshot_s", 0.0)), since_report)
            _move(seconds, "productive", "checkpoint", moved)
            since_commit -= moved
        elif kind == "report":
            iterations = max(iterations, int(e.get("iteration", 0)))
            since_report = 0.0
        elif kind == "checkpoint_committed":
            checkpoints += 1
            since_commit = 0.0
        elif kind == "rank_failed":
            failures.append({k: e.get(k) for k in ("attempt", "rank", "node", "error_type",
                                                   "message")}
                            | {"error": f"{e.get('error_type')}: {e.get('message')}"})
        elif kind == "attempt_failed":
            _move(seconds, "productive", "lost_work", since_commit)
            since_commit = since_report = 0.0
            failed_in_session = True
            phase = "restart" if e.get("decision") == "restart" else "shutdown"
            if not any(f.get("attempt") == e.get("attempt") for f in failures):
                failures.append({"attempt": e.get("attempt"), "rank": None, "node": None,
                                 "error_type": None, "message": e.get("message"),
                                 "error": str(e.get("message"))})
        elif kind == "attempt_finished":
            phase = "shutdown"
        elif kind in _TERMINAL:
            status = _TERMINAL[kind]
            wall += t - start_t
            phase = None
        prev_t = t
    if phase is not None:
        wall += prev_t - start_t
    productive = seconds.pop("productive")
    return {"kind": "train", "name": name, "status": status, "wall_s": round(wall, 3),
            "productive_s": round(productive, 3),
            "badput_s": {k: round(v, 3) for k, v in seconds.items()},
            "attempts": attempts, "iterations": iterations, "checkpoints": checkpoints,
            "failures": failures, "damaged_lines": damaged,
            "measured": {"data_wait": False}}


def _move(seconds: dict[str, float], source: str, dest: str, amount: float) -> None:
    amount = max(0.0, min(amount, seconds[source]))
    seconds[source] -= amount
    seconds[dest] += amount


def format_report(summary: dict[str, Any], where: str) -> str:
    """The text ``trainkit report`` prints: the same numbers as ``--json``, rounded alike."""
    wall = summary["wall_s"]

    def line(label: str, value: float) -> str:
        share = f"{100 * value / wall:5.1f} %" if wall > 0 else "    - "
        return f"  {label:<12}{value:10.3f} s  {share}"

    lines = [f"train run {summary['name']!r}: {summary['status']}  ({where})",
             f"  attempts {summary['attempts']}, iterations {summary['iterations']}, "
             f"checkpoints committed {summary['checkpoints']}",
             line("wall", wall), line("productive", summary["productive_s"]), "  badput:"]
    for key, value in summary["badput_s"].items():
        note = "   (not measured)" if not summary["measured"].get(key, True) else ""
        lines.append(line(key, value) + note)
    failures = summary["failures"]
    lines.append(f"  failures: {len(failures) or 'none'}")
    for f in failures:
        who = f"rank {f['rank']}" if f["rank"] is not None else "the group"
        node = f" on {f['node']}" if f.get("node") else ""
        lines.append(f"    attempt {f['attempt']}: {who}{node}: {f['error']}")
    if summary["damaged_lines"]:
        lines.append(f"  ledger: {summary['damaged_lines']} damaged line(s) skipped")
    return "\n".join(lines)


# --- a sweep ---------------------------------------------------------------------------------

SWEEP_BADPUT_KEYS: Final = ("startup", "rendezvous", "data_wait", "checkpoint", "restart",
                            "lost_work", "idle", "shutdown")
_ENDS: Final = {"trial_paused": "paused", "trial_stopped": "terminated",
                "trial_completed": "terminated", "trial_errored": "errored"}


@dataclass
class _Trial:
    trial_id: str
    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    status: str = "pending"
    iteration: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    stopped_by: str | None = None
    error: str | None = None
    failures: int = 0
    phase: str | None = None  # while running: startup, restart or productive
    since_checkpoint: float = 0.0


def summarize_sweep(events: Sequence[dict[str, Any]], *, damaged: int = 0) -> dict[str, Any]:
    """The report of a sweep (what ``trainkit report --json`` prints) from its events."""
    seconds = dict.fromkeys(("productive", *SWEEP_BADPUT_KEYS), 0.0)
    trials: dict[str, _Trial] = {}
    failures: list[dict[str, Any]] = []
    head: dict[str, Any] = {}
    status, wall = "unknown", 0.0
    in_session = False
    prev_t = start_t = 0.0
    started_in_session = False
    idle_since: float | None = None  # a run of pieces with nothing running, maybe trailing
    for e in events:
        kind, t = e["event"], float(e["t"])
        if in_session and kind != "sweep_started":
            gap = max(0.0, t - prev_t)
            running = [tr for tr in trials.values() if tr.phase is not None]
            if running:
                if idle_since is not None:
                    seconds["idle"] += prev_t - idle_since
                    idle_since = None
                for tr in running:
                    share = gap / len(running)
                    seconds[tr.phase or "startup"] += share
                    if tr.phase == "productive":
                        tr.since_checkpoint += share
            elif not started_in_session:
                seconds["startup"] += gap
            elif idle_since is None:
                idle_since = prev_t
        if kind == "sweep_started":
            if in_session:  # the previous session ended without a word (a crash)
                _close_session(seconds, idle_since, prev_t)
                wall += prev_t - start_t
            head = e
            status, in_session, start_t, started_in_session = "running", True, t, False
            idle_since = None
            _end_runs(trials.values(), seconds)  # what ran when the driver died runs no more
        elif not in_session:
            prev_t = t
            continue  # events outside a session (a torn ledger) count for nothing
        elif kind in ("sweep_finished", "sweep_failed"):
            status = "finished" if kind == "sweep_finished" else "failed"
            _close_session(seconds, idle_since, t)
            wall += t - start_t
            in_session, idle_since = False, None
            _end_runs(trials.values(), seconds)  # interrupted (Ctrl-C): resumed later
            if kind == "sweep_failed":
                failures.append({"trial_id": None, "name": None, "rank": None,
                                 "error_type": e.get("error_type"), "message": e.get("message"),
                                 "error": f"{e.get('error_type')}: {e.get('message')}",
                                 "retrying": False})
        else:
            tid = str(e.get("trial_id"))
            tr = trials.setdefault(tid, _Trial(tid))
            _apply(tr, kind, e, seconds, failures)
            if kind == "trial_started":
                started_in_session = True
        prev_t = t
    if in_session:
        _close_session(seconds, idle_since, prev_t)
        wall += prev_t - start_t
    productive = seconds.pop("productive")
    rows = [_row(tr) for tr in trials.values()]
    metric = head.get("metric")
    return {"kind": "tune", "name": str(head.get("name", "")), "status": status,
            "wall_s": round(wall, 3), "productive_s": round(productive, 3),
            "badput_s": {k: round(v, 3) for k, v in seconds.items()},
            "metric": metric, "mode": head.get("mode"),
            "trials": rows, "best": _best(rows, metric, head.get("mode")),
            "counts": _counts(rows), "failures": failures, "damaged_lines": damaged,
            "measured": {"rendezvous": False, "data_wait": False, "checkpoint": False}}


def _apply(tr: _Trial, kind: str, e: dict[str, Any], seconds: dict[str, float],
           failures: list[dict[str, Any]]) -> None:
    if kind == "trial_added":
        tr.name = str(e.get("name", ""))
        tr.params = dict(e.get("params") or {})
    elif kind == "trial_config":  # PBT: the trial's run ended, it restarts from a donor
        tr.params = dict(e.get("params") or {})
        tr.phase, tr.status = None, "pending"
    elif kind == "trial_started":
        tr.status, tr.stopped_by, tr.since_checkpoint = "running", None, 0.0
        tr.phase = "restart" if e.get("resumed") == "error" else "startup"
    elif kind == "trial_result":
        tr.phase = "productive" if tr.phase is not None else None
        if isinstance(e.get("iteration"), int):
            tr.iteration = e["iteration"]
        tr.metrics.update(e.get("metrics") or {})
        if e.get("checkpoint"):
            tr.since_checkpoint = 0.0
    elif kind in _ENDS:
        tr.phase, tr.status = None, _ENDS[kind]
        if isinstance(e.get("iteration"), int):
            tr.iteration = e["iteration"]
        if kind == "trial_stopped":
            tr.stopped_by = str(e.get("by"))
        elif kind == "trial_errored":
            lost = min(tr.since_checkpoint, seconds["productive"])
            seconds["productive"] -= lost
            seconds["lost_work"] += lost
            tr.since_checkpoint = 0.0
            tr.failures = int(e.get("failures") or tr.failures + 1)
            error = f"{e.get('error_type')}: {e.get('message')}"
            if e.get("retrying"):
                tr.status = "pending"
            else:
                tr.error = error
            failures.append({"trial_id": tr.trial_id, "name": tr.name, "rank": None,
                             "error_type": e.get("error_type"), "message": e.get("message"),
                             "error": error, "retrying": bool(e.get("retrying"))})


def _end_runs(trials: Iterable[_Trial], seconds: dict[str, float]) -> None:
    """The sweep ended (or its driver died) while these trials ran: each is pending again,
    and its productive time since its last checkpoint is lost (a resume redoes it)."""
    for tr in trials:
        if tr.phase is not None:
            lost = min(tr.since_checkpoint, seconds["productive"])
            seconds["productive"] -= lost
            seconds["lost_work"] += lost
            tr.phase, tr.status, tr.since_checkpoint = None, "pending", 0.0


def _close_session(seconds: dict[str, float], idle_since: float | None, end: float) -> None:
    """Put a trailing run of idle pieces (nothing ran until the end) into ``shutdown``."""
    if idle_since is not None:
        seconds["shutdown"] += end - idle_since


def _row(tr: _Trial) -> dict[str, Any]:
    return {"trial_id": tr.trial_id, "name": tr.name, "status": tr.status,
            "params": tr.params, "iteration": tr.iteration, "metrics": dict(tr.metrics),
            "stopped_by": tr.stopped_by, "failures": tr.failures, "error": tr.error}


def _best(rows: list[dict[str, Any]], metric: Any, mode: Any) -> dict[str, Any] | None:
    """The trial with the best last value of the sweep's (first) metric, as
    ``ResultGrid.get_best_result()`` picks it; None without a metric or any value."""
    if isinstance(metric, (list, tuple)):
        metric, mode = (metric[0] if metric else None), (mode[0] if mode else None)
    if not isinstance(metric, str):
        return None
    scored = [r for r in rows if isinstance(r["metrics"].get(metric), (int, float))
              and math.isfinite(r["metrics"][metric])]
    if not scored:
        return None
    sign = -1.0 if mode == "min" else 1.0
    top = max(scored, key=lambda r: sign * r["metrics"][metric])
    return {"trial_id": top["trial_id"], "name": top["name"], "metric": metric,
            "value": top["metrics"][metric], "params": top["params"],
            "iteration": top["iteration"]}


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


def format_sweep_report(summary: dict[str, Any], where: str) -> str:
    """The text ``trainkit report`` prints for a sweep: the numbers of ``--json``."""
    wall = summary["wall_s"]

    def line(label: str, value: float) -> str:
        share = f"{100 * value / wall:5.1f} %" if wall > 0 else "    - "
        return f"  {label:<12}{value:10.3f} s  {share}"

    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items())) or "none"
    lines = [f"tune sweep {summary['name']!r}: {summary['status']}  ({where})",
             f"  trials: {counts}",
             line("wall", wall), line("productive", summary["productive_s"]),
             "  badput (time shared among the running trials):"]
    for key, value in summary["badput_s"].items():
        note = "   (not measured)" if summary["measured"].get(key) is False else ""
        lines.append(line(key, value) + note)
    metric = summary["metric"]
    if summary["trials"]:
        lines.append("  trials:")
    for r in summary["trials"]:
        value = r["metrics"].get(metric) if isinstance(metric, str) else None
        shown = f"{metric}={value:.6g}" if isinstance(value, (int, float)) else ""
        how = r["status"] + (f" (stopped by the {r['stopped_by']})" if r["stopped_by"] else "")
        lines.append(f"    {r['name'] or r['trial_id']:<24} {how:<38} iter {r['iteration']:<5}"
                     f" {shown}  {_params_text(r['params'])}")
    best = summary["best"]
    if best is not None:
        lines.append(f"  best: {best['name'] or best['trial_id']} {best['metric']}="
                     f"{best['value']:.6g} ({summary['mode']}) {_params_text(best['params'])}")
    failures = summary["failures"]
    lines.append(f"  failures: {len(failures) or 'none'}")
    for f in failures:
        who = f"trial {f['name'] or f['trial_id']}" if f["trial_id"] else "the sweep"
        again = " (retried)" if f["retrying"] else ""
        lines.append(f"    {who}{again}: {f['error']}")
    if summary["damaged_lines"]:
        lines.append(f"  ledger damaged: {summary['damaged_lines']} line(s) could not be read "
                     "and were skipped (a write cut short?)")
    return "\n".join(lines)


def _params_text(params: dict[str, Any]) -> str:
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()]
    text = " ".join(parts)
    return text if len(text) <= 80 else text[:77] + "..."
