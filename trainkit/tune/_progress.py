"""The sweep's console output: one compact table of trials, refreshed in place on a terminal
(and in a notebook), a summary line now and then elsewhere. ``RunConfig(verbose=...)``: 0
prints nothing, 1 the table (default), 2 also a line per trial state change."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any
from typing import TextIO

from trainkit._display import Text
from trainkit._display import notebook_handle
from trainkit._result_log import flatten_metrics
from trainkit.tune._trial import TrialState

_MAX_ROWS = 12


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 12 else text[:11] + "~"


class TrialTable:
    def __init__(self, name: str, verbose: int, metric: str | None, mode: str | None,
                 stream: TextIO | None = None) -> None:
        self.name = name
        self.verbose = verbose
        self.metric = metric
        self.mode = mode
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.notebook = notebook_handle() if verbose else None
        self.lines_shown = 0
        self.last = 0.0
        self.start = time.monotonic()

    def _best(self, trials: list[Any]) -> Any:
        if not self.metric:
            return None
        scored = [t for t in trials if isinstance(t.last_result.get(self.metric), (int, float))]
        if not scored:
            return None
        pick = min if self.mode == "min" else max
        return pick(scored, key=lambda t: t.last_result[self.metric])

    def render(self, trials: Iterable[Any]) -> list[str]:
        trials = list(trials)
        counts = Counter(t.state.value for t in trials)
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        elapsed = time.monotonic() - self.start
        lines = [f"[trainkit] {self.name}: {summary or 'no trials'} ({elapsed:.0f} s)"]
        best = self._best(trials)
        if best is not None:
            lines[0] += f" | best {best.name}: {self.metric}={_fmt(best.last_result[self.metric])}"
        order = {TrialState.RUNNING: 0, TrialState.PENDING: 1, TrialState.PAUSED: 2,
                 TrialState.ERRORED: 3, TrialState.TERMINATED: 4}
        shown = sorted(trials, key=lambda t: (order[t.state], t.trial_id))[:_MAX_ROWS]
        keys = list(flatten_metrics(shown[0].config))[:4] if shown else []
        header = ["trial", "status", "iter", *keys] + ([self.metric] if self.metric else [])
        rows = [header]
        for t in shown:
            flat = flatten_metrics(t.config)
            row = [t.name, t.state.value, str(t.iteration), *(_fmt(flat.get(k, "")) for k in keys)]
            if self.metric:
                row.append(_fmt(t.last_result.get(self.metric, "")))
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                  for r in rows]
        if len(trials) > _MAX_ROWS:
            lines.append(f"  ... and {len(trials) - _MAX_ROWS} more")
        return lines

    def refresh(self, trials: Iterable[Any], force: bool = False) -> None:
        if not self.verbose:
            return
        now = time.monotonic()
        period = 0.5 if (self.tty or self.notebook is not None) else 30.0
        if not force and now - self.last < period:
            return
        self.last = now
        lines = self.render(trials)
        if self.notebook is not None:
            self.notebook.update(Text("\n".join(lines)))
        elif self.tty:
            up = f"\x1b[{self.lines_shown}F\x1b[J" if self.lines_shown else ""
            self.stream.write(up + "\n".join(lines) + "\n")
            self.lines_shown = len(lines)
        else:
            self.stream.write(lines[0] + "\n")
        self.stream.flush()

    def say(self, message: str) -> None:
        if self.verbose:
            self.stream.write(f"[trainkit] {message}\n")
            self.stream.flush()
            self.lines_shown = 0

    def finish(self, trials: Iterable[Any]) -> None:
        if not self.verbose:
            return
        trials = list(trials)
        if self.tty or self.notebook is not None:
            self.refresh(trials, force=True)
        else:
            self.stream.write("\n".join(self.render(trials)) + "\n")
            self.stream.flush()
