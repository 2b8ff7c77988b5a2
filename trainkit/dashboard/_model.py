"""What the dashboard's pages show, from ledgers and result files (pure: bytes in, data out).

The ledger is the one source of a run's or sweep's story (``trainkit report`` reads it the
same way: ``summarize`` for a run, ``summarize_sweep`` for a sweep); ``result.json`` (one JSON
object a report) is where the metric curves come from. Nothing here reads a file, so each
function is tested with hand-written events and lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from typing import Final

from trainkit.train._goodput import summarize
from trainkit.train._goodput import summarize_sweep

# Metrics every report carries that are not worth a curve.
_NOT_CURVES: Final = frozenset({"training_iteration", "timestamp", "time_this_iter_s",
                                "trial_id", "done", "epoch", "checkpoint_dir_name"})
MAX_CURVES: Final = 12


@dataclass(frozen=True, slots=True)
class Entry:
    """One run or sweep of the index page."""

    name: str
    kind: str  # "train" or "tune"
    status: str
    wall_s: float
    started_t: float | None  # wall-clock seconds of its first event
    detail: str  # "9 iterations, 1 checkpoint" or "7 trials: 6 terminated, 1 errored"
    failures: int
    damaged: int


def summary_of(events: Sequence[dict[str, Any]], damaged: int) -> dict[str, Any] | None:
    """The report of a run or sweep (as ``trainkit report --json``), None if it is neither."""
    kinds = {e["event"] for e in events}
    if "run_started" in kinds:
        return summarize(events, damaged=damaged)
    if "sweep_started" in kinds:
        return summarize_sweep(events, damaged=damaged)
    return None


def entry_of(name: str, summary: Mapping[str, Any],
             events: Sequence[dict[str, Any]]) -> Entry:
    if summary["kind"] == "tune":
        counts = summary["counts"]
        n = sum(counts.values())
        detail = f"{n} trial{'s' if n != 1 else ''}" + (
            ": " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) if n else "")
    else:
        detail = (f"{summary['iterations']} iterations, {summary['checkpoints']} "
                  f"checkpoint{'s' if summary['checkpoints'] != 1 else ''}, "
                  f"{summary['attempts']} attempt{'s' if summary['attempts'] != 1 else ''}")
    started = float(events[0]["t"]) if events else None
    return Entry(name, str(summary["kind"]), str(summary["status"]), float(summary["wall_s"]),
                 started, detail, len(summary["failures"]), int(summary["damaged_lines"]))


def parse_results(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The rows of a ``result.json`` and how many lines could not be read (a torn line)."""
    rows: list[dict[str, Any]] = []
    damaged = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            damaged += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            damaged += 1
    return rows, damaged


def curves_of(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Each numeric metric's (training_iteration, value) points, in report order; nested
    metrics are flattened with ``/``. At most ``MAX_CURVES`` metrics, in first-seen order."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for i, row in enumerate(rows, start=1):
        x = _number(row.get("training_iteration"))
        x = float(i) if x is None else x
        for key, value in _flat(row):
            y = _number(value)
            if y is None or key in _NOT_CURVES:
                continue
            if key not in curves:
                if len(curves) >= MAX_CURVES:
                    continue
                curves[key] = []
            curves[key].append((x, y))
    return curves


def scatter_of(trials: Sequence[Mapping[str, Any]], metric: str | None
               ) -> dict[str, list[tuple[float, float, str]]]:
    """For each numeric parameter: (parameter value, last metric value, trial name) of every
    trial that reported the metric."""
    points: dict[str, list[tuple[float, float, str]]] = {}
    if metric is None:
        return points
    for t in trials:
        y = _number(t["metrics"].get(metric))
        if y is None:
            continue
        for key, value in _flat(t["params"]):
            x = _number(value)
            if x is not None:
                points.setdefault(key, []).append((x, y, str(t["name"] or t["trial_id"])))
    return points


def sweep_metric(summary: Mapping[str, Any]) -> str | None:
    """The sweep's metric (the first, for several), else the first metric a trial reported."""
    metric = summary.get("metric")
    if isinstance(metric, (list, tuple)):
        metric = metric[0] if metric else None
    if isinstance(metric, str):
        return metric
    for t in summary["trials"]:
        for key in t["metrics"]:
            if key != "time_total_s":
                return str(key)
    return None


def cluster_model(nodes: Sequence[Mapping[str, Any]], groups: Mapping[str, Mapping[str, Any]],
                  actors: Sequence[Mapping[str, Any]], total: Mapping[str, float],
                  available: Mapping[str, float]) -> dict[str, Any]:
    """The cluster page's data from the runtime's public answers (``nodes()``,
    ``placement_group_table()``, ``list_named_actors(all_namespaces=True)``,
    ``cluster_resources()``, ``available_resources()``)."""
    return {
        "nodes": [{"node_id": str(n.get("NodeID", "")), "alive": bool(n.get("Alive", False)),
                   "address": str(n.get("NodeManagerAddress", "")),
                   "resources": _used_of(n.get("Resources") or {}, n.get("Available") or {}),
                   "gpu_ids": list(n.get("GPUIds") or [])} for n in nodes],
        "placement_groups": [{"id": str(pid), "name": str(g.get("name") or ""),
                              "state": str(g.get("state", "")),
                              "strategy": str(g.get("strategy", "")),
                              "bundles": [dict(b) for _, b in sorted(
                                  (g.get("bundles") or {}).items())],
                              "nodes": sorted({str(v) for v in
                                               (g.get("bundles_to_node_id") or {}).values()})}
                             for pid, g in groups.items()],
        "actors": [{"name": str(a.get("name", "")), "namespace": str(a.get("namespace", ""))}
                   for a in actors],
        "resources": _used_of(total, available),
    }


def _used_of(total: Mapping[str, Any], available: Mapping[str, Any]) -> dict[str, list[float]]:
    """``{name: [used, total]}``, memory-like amounts in bytes as they come."""
    out: dict[str, list[float]] = {}
    for key, amount in sorted(total.items()):
        if key.startswith("node:") or not isinstance(amount, (int, float)):
            continue
        free = available.get(key, amount)
        out[key] = [float(amount) - float(free if isinstance(free, (int, float)) else amount),
                    float(amount)]
    return out


def _flat(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += _flat(value, name + "/")
        else:
            out.append((name, value))
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None
