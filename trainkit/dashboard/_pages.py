"""The dashboard's HTML (pure: page data in, markup out; every value escaped).

Each page is a *fragment* (what goes inside ``<main id="live">``) wrapped by ``layout``. The
layout's one small script fetches the page's fragment again every ``refresh_s`` seconds and
swaps it in, so a page follows a live run or cluster without reloading; nothing else runs in
the browser and nothing is fetched from elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from collections.abc import Sequence
from html import escape
from typing import Any
from typing import Final
from urllib.parse import quote

from trainkit.dashboard._model import Entry
from trainkit.dashboard._svg import line_chart
from trainkit.dashboard._svg import scatter_chart

_CSS: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:8px 16px}header a{color:#fff;margin-right:16px}
main{padding:12px 16px}table{border-collapse:collapse;margin:8px 0}
td,th{border-bottom:1px solid #ddd;padding:3px 10px;text-align:left;vertical-align:top}
th{background:#eceff1}.num{text-align:right;font-variant-numeric:tabular-nums}
.finished,.terminated{color:#2e7d32}.failed,.errored{color:#c62828}.running{color:#1565c0}
.paused,.pending{color:#6d4c41}.charts{display:flex;flex-wrap:wrap;gap:8px}
svg.chart{background:#fff;border:1px solid #ddd}svg .plot{fill:#fff;stroke:#bbb}
svg .grid{stroke:#eee}svg .tick{stroke:#999}svg text{font:11px sans-serif;fill:#444}
svg .title{font-weight:bold;font-size:12px}.err{color:#c62828;white-space:pre-wrap}
.note{color:#666}code{background:#eceff1;padding:0 3px}
"""
_SCRIPT: Final = """
(function(){var m=document.getElementById('live');var s=+m.getAttribute('data-refresh');
if(!s){return;}setInterval(function(){fetch(location.pathname+'?fragment=1',
{cache:'no-store'}).then(function(r){return r.ok?r.text():null;}).then(function(t){
if(t!==null){m.innerHTML=t;}}).catch(function(){});},s*1000);})();
"""


def layout(title: str, fragment: str, *, refresh_s: float, cluster: bool) -> str:
    nav = '<a href="/">runs and sweeps</a>' + ('<a href="/cluster">cluster</a>' if cluster
                                               else "")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<title>{escape(title)} - trainkit</title><style>{_CSS}</style></head><body>'
            f'<header><b>trainkit</b> &nbsp; {nav}</header>'
            f'<main id="live" data-refresh="{refresh_s:g}">{fragment}</main>'
            f'<script>{_SCRIPT}</script></body></html>')


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _status(status: str) -> str:
    return f'<span class="{escape(status)}">{escape(status)}</span>'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """A table of already-escaped cells."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _s(seconds: float) -> str:
    return f"{seconds:,.3f} s" if abs(seconds) < 10 else f"{seconds:,.1f} s"


def _value(v: Any) -> str:
    return escape(f"{v:.6g}" if isinstance(v, float) else str(v))


def index_page(entries: Sequence[Entry], storage: str, unreadable: Sequence[str]) -> str:
    rows = [[f'<a href="/{"sweep" if e.kind == "tune" else "run"}/{quote(e.name)}">'
             f'{escape(e.name)}</a>', escape("sweep" if e.kind == "tune" else "run"),
             _status(e.status), escape(_when(e.started_t)), f'<span class="num">'
             f'{_s(e.wall_s)}</span>', escape(e.detail),
             str(e.failures) + (f' <span class="err">(ledger damaged: {e.damaged} line(s))'
                                '</span>' if e.damaged else "")]
            for e in sorted(entries, key=lambda e: -(e.started_t or 0))]
    parts = [f"<h2>Runs and sweeps in <code>{escape(storage)}</code></h2>"]
    if rows:
        parts.append(_table(["name", "kind", "status", "started", "wall", "progress",
                             "failures"], rows, "runs"))
    else:
        parts.append('<p class="note">No run or sweep here yet: a folder counts once its '
                     '<code>ledger.jsonl</code> records a start.</p>')
    for name in unreadable:
        parts.append(f'<p class="err">{escape(name)}</p>')
    return "".join(parts)


def _goodput(summary: Mapping[str, Any]) -> str:
    wall = float(summary["wall_s"]) or 1.0
    rows = [["productive", f'<span class="num">{_s(summary["productive_s"])}</span>',
             f'{100 * summary["productive_s"] / wall:.1f} %']]
    for key, value in summary["badput_s"].items():
        note = " (not measured)" if summary["measured"].get(key) is False else ""
        rows.append([escape(key + note), f'<span class="num">{_s(value)}</span>',
                     f"{100 * value / wall:.1f} %"])
    return _table(["where the time went", "seconds", "share of wall"], rows, "goodput")


def _failures(failures: Sequence[Mapping[str, Any]], sweep: bool) -> str:
    if not failures:
        return "<p>Failures: none.</p>"
    if sweep:
        rows = [[escape(str(f.get("name") or "the sweep")),
                 "retried" if f.get("retrying") else "final",
                 f'<span class="err">{escape(str(f["error"]))}</span>'] for f in failures]
        return "<h3>Failures</h3>" + _table(["trial", "", "error"], rows, "failures")
    rows = [[escape(str(f.get("attempt"))),
             escape("the group" if f.get("rank") is None else f"rank {f['rank']}"),
             escape(str(f.get("node") or "")),
             f'<span class="err">{escape(str(f["error"]))}</span>'] for f in failures]
    return "<h3>Failures</h3>" + _table(["attempt", "who", "node", "error"], rows, "failures")


def _curves(curves: Mapping[str, Sequence[tuple[float, float]]]) -> str:
    if not curves:
        return '<p class="note">No metrics reported yet.</p>'
    return '<div class="charts">' + "".join(
        line_chart(key, [(key, pts)]) for key, pts in curves.items()) + "</div>"


def run_page(name: str, summary: Mapping[str, Any],
             curves: Mapping[str, Sequence[tuple[float, float]]], results_damaged: int) -> str:
    parts = [f"<h2>Run {escape(name)}: {_status(summary['status'])}</h2>",
             f"<p>wall {_s(summary['wall_s'])}, {summary['attempts']} attempt(s), "
             f"{summary['iterations']} iteration(s), {summary['checkpoints']} checkpoint(s) "
             "committed</p>"]
    if summary["damaged_lines"]:
        parts.append(f'<p class="err">ledger damaged: {summary["damaged_lines"]} line(s) '
                     "could not be read and were skipped</p>")
    parts += ["<h3>Metrics</h3>", _curves(curves)]
    if results_damaged:
        parts.append(f'<p class="err">result.json: {results_damaged} line(s) could not be '
                     "read</p>")
    parts += [_goodput(summary), _failures(summary["failures"], sweep=False)]
    return "".join(parts)


def sweep_page(name: str, summary: Mapping[str, Any], metric: str | None,
               scatter: Mapping[str, Sequence[tuple[float, float, str]]],
               trial_curves: Sequence[tuple[str, Sequence[tuple[float, float]]]]) -> str:
    best = summary["best"]
    parts = [f"<h2>Sweep {escape(name)}: {_status(summary['status'])}</h2>",
             f"<p>wall {_s(summary['wall_s'])}; metric <code>{escape(str(metric))}</code> "
             f"({escape(str(summary.get('mode')))})</p>"]
    if best is not None:
        parts.append(f'<p class="best">best: <a href="/sweep/{quote(name)}/trial/'
                     f'{quote(str(best["name"]))}">{escape(str(best["name"]))}</a> '
                     f'{escape(str(best["metric"]))} = {_value(best["value"])} '
                     f'{escape(_params(best["params"]))}</p>')
    if summary["damaged_lines"]:
        parts.append(f'<p class="err">ledger damaged: {summary["damaged_lines"]} line(s) '
                     "could not be read and were skipped</p>")
    charts = [scatter_chart(f"{metric} vs {key}", pts, x_label=key, y_label=str(metric),
                            best=best["name"] if best else None)
              for key, pts in list(scatter.items())[:6]]
    if trial_curves and metric:
        charts.append(line_chart(f"{metric} per trial", trial_curves, y_label=metric))
    parts.append('<div class="charts">' + "".join(charts) + "</div>" if charts else
                 '<p class="note">No trial has reported the metric yet.</p>')
    rows = []
    for t in summary["trials"]:
        how = t["status"] + (f" (stopped by the {t['stopped_by']})" if t["stopped_by"] else "")
        rows.append([f'<a href="/sweep/{quote(name)}/trial/{quote(str(t["name"]))}">'
                     f'{escape(str(t["name"] or t["trial_id"]))}</a>',
                     f'<span class="{escape(t["status"])}">{escape(how)}</span>',
                     escape(_params(t["params"])), f'<span class="num">{t["iteration"]}</span>',
                     _value(t["metrics"].get(metric, "")) if metric else "",
                     f'<span class="err">{escape(str(t["error"]).splitlines()[0])}</span>'
                     if t["error"] else ""])
    parts += [f"<h3>Trials ({len(rows)})</h3>",
              _table(["trial", "status", "params", "iter", str(metric), "error"], rows,
                     "trials"),
              _goodput(summary), _failures(summary["failures"], sweep=True)]
    return "".join(parts)


def trial_page(sweep: str, trial: Mapping[str, Any],
               curves: Mapping[str, Sequence[tuple[float, float]]]) -> str:
    return (f'<h2>Trial {escape(str(trial["name"]))} of <a href="/sweep/{quote(sweep)}">'
            f'{escape(sweep)}</a>: {_status(trial["status"])}</h2>'
            f"<p>{escape(_params(trial['params']))}, {trial['iteration']} iteration(s)</p>"
            + (f'<p class="err">{escape(str(trial["error"]))}</p>' if trial["error"] else "")
            + _curves(curves))


def cluster_page(address: str, model: Mapping[str, Any] | None, error: str | None) -> str:
    parts = [f"<h2>Cluster at <code>{escape(address)}</code></h2>",
             f'<p class="note">updated {escape(time.strftime("%H:%M:%S"))}</p>']
    if error is not None:
        parts.append(f'<p class="err">{escape(error)}</p>')
    if model is None:
        return "".join(parts)
    parts.append("<h3>Resources (used / total)</h3>" + _table(
        ["resource", "used", "total"],
        [[escape(k), _amount(k, u), _amount(k, t)] for k, (u, t) in model["resources"].items()],
        "resources"))
    rows = [[escape(n["node_id"]), escape(n["address"]), "alive" if n["alive"] else
             '<span class="err">dead</span>',
             escape(", ".join(f"{k} {_amount(k, u)}/{_amount(k, t)}"
                              for k, (u, t) in n["resources"].items())),
             escape(", ".join(map(str, n["gpu_ids"])) or "-")] for n in model["nodes"]]
    parts.append(f"<h3>Nodes ({len(rows)})</h3>" + _table(
        ["node", "address", "state", "resources used/total", "GPU ids"], rows, "nodes"))
    rows = [[escape(a["name"]), escape(a["namespace"])] for a in model["actors"]]
    parts.append(f"<h3>Named actors ({len(rows)})</h3>" + (
        _table(["name", "namespace"], rows, "actors") if rows else "<p>none</p>")
        + '<p class="note">Actors without a name are not listed: the runtime\'s public API '
        "lists named actors only.</p>")
    rows = [[escape(g["id"]), escape(g["name"]), _status(g["state"].lower()),
             escape(g["strategy"]), escape(" ".join(f"[{_params(b)}]" for b in g["bundles"])),
             escape(", ".join(g["nodes"]))] for g in model["placement_groups"]]
    parts.append(f"<h3>Placement groups ({len(rows)})</h3>" + (
        _table(["id", "name", "state", "strategy", "bundles", "nodes"], rows, "groups")
        if rows else "<p>none</p>"))
    return "".join(parts)


def _amount(key: str, v: float) -> str:
    if "memory" in key:
        return escape(f"{v / 2**30:.1f} GiB" if v >= 2**30 else f"{v / 2**20:.0f} MiB")
    return escape(f"{v:g}")


def _params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items())


def error_page(message: str) -> str:
    return f'<h2>Not here</h2><p class="err">{escape(message)}</p><p><a href="/">back</a></p>'
