"""What workers write to their consoles, cut into records: lines, and in-place updates.

A progress bar (tqdm, a ``print(..., end="\\r")`` loop) redraws its line: it writes ``\\r``
and the new text, again and again, and ``\\n`` once at the end. Forwarded a line per redraw it
fills a console (a line per refresh); forwarded at each ``\\n`` only, the bar is not seen until
it ends. So the text is cut at both: a line ends with ``\\n``, an *update* (the line's latest
text, to be drawn in place) ends with ``\\r``. Of the updates in one piece of text only the
last is kept: the earlier ones were already drawn over. The same cut serves the worker's own
streams (``str``) and the node service reading its pipes (``bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AnyStr
from typing import Generic


@dataclass(frozen=True, slots=True)
class Record(Generic[AnyStr]):
    """One line (``update`` False) or the latest text of a line being redrawn."""

    text: AnyStr
    update: bool


def split_records(buf: AnyStr) -> tuple[list[Record[AnyStr]], AnyStr]:
    """The records that end in ``buf``, and what is left (the start of the next one).

    A line's text is what follows its last ``\\r`` (what a terminal would show). Updates
    that are followed by more text in ``buf`` are dropped, and so are empty ones (a bar's
    leading ``\\r``).
    """
    nl, cr = ("\n", "\r") if isinstance(buf, str) else (b"\n", b"\r")
    records: list[Record[AnyStr]] = []
    *lines, rest = buf.split(nl)
    for line in lines:
        records.append(Record(line.rsplit(cr, 1)[-1], False))  # type: ignore[arg-type]
    if cr in rest:
        head, _, rest = rest.rpartition(cr)
        latest = head.rsplit(cr, 1)[-1]
        if latest:
            records.append(Record(latest, True))
    return records, rest


def collapse_updates(records: list[Record[AnyStr]]) -> list[Record[AnyStr]]:
    """``records`` without the updates another record follows (it is drawn over them)."""
    return [r for i, r in enumerate(records) if not r.update or i == len(records) - 1]
