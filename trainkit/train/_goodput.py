"""Where a run's time went, from its ledger's events (pure: no I/O).

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
"""

from __future__ import annotations

from collections.abc import Sequence
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
