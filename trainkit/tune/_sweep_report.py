"""Where a sweep's time went, and how its trials ended, from its ledger (pure: no I/O).

The events are ``_sweep_ledger``'s. The wall time of each session (``sweep_started`` to
``sweep_finished``/``sweep_failed``, or to the last event of a session that never ended) is
cut at every event, and each piece is shared equally among the trials running in it; each
share goes to the phase its trial was in:

```text
trial_started --startup (restart, after an error)--> first trial_result --productive--> end
```

A piece in which no trial runs is ``startup`` before the session's first trial starts,
``shutdown`` after its last trial ended, and ``idle`` in between (the sweep waited for
resources or its searcher). At a ``trial_errored``, the trial's productive time since its last
checkpoint moves to ``lost_work`` (a retry redoes it). Nothing is counted twice or dropped,
so ``productive_s`` plus the badput values equal ``wall_s`` (up to rounding). ``rendezvous``,
``data_wait`` and ``checkpoint`` stay 0: a function trial has no process group, and Tune does
not time data or checkpoint writes inside a trial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Final

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
            for tr in trials.values():  # what ran when the driver died runs no more
                if tr.phase is not None:
                    tr.phase, tr.status = None, "pending"
        elif not in_session:
            prev_t = t
            continue  # events outside a session (a torn ledger) count for nothing
        elif kind in ("sweep_finished", "sweep_failed"):
            status = "finished" if kind == "sweep_finished" else "failed"
            _close_session(seconds, idle_since, t)
            wall += t - start_t
            in_session, idle_since = False, None
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
    elif kind == "trial_config":
        tr.params = dict(e.get("params") or {})
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
