"""The workers' output as a driver prints it: lines as they come, progress drawn in place.

The node service forwards what workers write as lines (ending ``\\n``) and updates (the
latest text of a line redrawn in place, ending ``\\r``: a tqdm bar; see
``trainkit._console``). On a terminal or in a notebook an update is drawn over the last one
(at most every ``REDRAW_EVERY_S`` per writer: a notebook sends every byte to the browser);
elsewhere (a log file, a pipe, CI) it is printed as a line, at most once every
``UPDATE_EVERY_S`` per writer, and the line that ends the bar is printed whole: a 1,000-step
bar leaves a few lines, not 1,000.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from trainkit._console import Record
from trainkit._console import split_records

UPDATE_EVERY_S = 10.0
REDRAW_EVERY_S = 0.1  # in place: a bar refreshed faster is drawn at most this often
CLEAR_TO_END = "\x1b[K"  # a terminal's "erase the rest of the line"


def draws_in_place(out: TextIO) -> bool:
    """A terminal, or a Jupyter kernel's stream (its output area redraws on ``\\r``)."""
    try:
        if out.isatty():
            return True
    except Exception:
        pass
    return type(out).__module__.startswith("ipykernel")


def _writer(text: str) -> str:
    """The ``(name pid=N)`` a forwarded line starts with: who wrote it."""
    return text[:text.find(") ") + 1] if text.startswith("(") else ""


class LogPrinter:
    """Prints forwarded worker output on the driver's stdout and stderr (see module doc)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.open: dict[str, bool] = {}  # stream -> an update is drawn and its line not ended
        self.shown: dict[tuple[str, str], float] = {}  # (stream, writer) -> last update shown

    def __call__(self, stream: str, text: str) -> None:
        out = sys.stderr if stream == "stderr" else sys.stdout
        try:
            rendered = self.render(stream, text, draws_in_place(out),
                                   terminal=_isatty(out))
            if rendered:
                out.write(rendered)
                out.flush()
        except Exception:
            pass

    def render(self, stream: str, text: str, in_place: bool, terminal: bool = False) -> str:
        """What to write for ``text`` forwarded on ``stream``."""
        records, rest = split_records(text)
        if rest:  # forwarded text always ends a record; keep any tail as a line
            records.append(Record(rest, False))
        clear = CLEAR_TO_END if terminal else ""
        out = []
        for r in records:
            writer = (stream, _writer(r.text))
            if r.update:
                now = self.clock()
                last = self.shown.get(writer)
                if last is not None and now - last < (
                        REDRAW_EVERY_S if in_place else UPDATE_EVERY_S):
                    continue
                self.shown[writer] = now
                if in_place:
                    out.append(f"\r{r.text}{clear}")
                    self.open[stream] = True
                else:
                    out.append(r.text + "\n")
            else:
                self.shown.pop(writer, None)  # the bar ended: a new one shows at once
                if self.open.pop(stream, False) and in_place:
                    out.append(f"\r{r.text}{clear}\n")
                else:
                    out.append(r.text + "\n")
        return "".join(out)


def _isatty(out: TextIO) -> bool:
    try:
        return bool(out.isatty())
    except Exception:
        return False
