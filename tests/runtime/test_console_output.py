"""Workers' console output on the driver: progress bars (tqdm) drawn in place on a terminal
and thinned out elsewhere, never a line per refresh; no empty prefixed lines."""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import pytest

import trainkit as tk
from trainkit._console import Record
from trainkit._console import collapse_updates
from trainkit._console import split_records
from trainkit.runtime._log_printer import REDRAW_EVERY_S
from trainkit.runtime._log_printer import UPDATE_EVERY_S
from trainkit.runtime._log_printer import LogPrinter
from trainkit.runtime.core.worker_process import _PrefixedStream


def test_text_is_cut_into_lines_and_the_latest_update_of_a_redrawn_line() -> None:
    records, rest = split_records("a\n\r 10%\r 20%\r 30")
    assert records == [Record("a", False), Record(" 20%", True)] and rest == " 30"
    records, rest = split_records(b"\r 90%\r100%\ndone\n")
    assert records == [Record(b"100%", False), Record(b"done", False)] and rest == b""
    assert collapse_updates([Record("1", True), Record("2", True), Record("x", False),
                             Record("3", True)]) == [Record("x", False), Record("3", True)]


def _stream() -> tuple[_PrefixedStream, io.StringIO]:
    raw = io.StringIO()
    return _PrefixedStream(raw, ["f"]), raw


def test_a_worker_sends_a_bar_as_updates_and_its_end_as_one_line() -> None:
    stream, raw = _stream()
    for pct in (0, 50, 100):  # tqdm: "\r" + bar, then flush, at every refresh
        stream.write(f"\r{pct:3d}%|bar|")
        stream.flush()
    stream.write("\n")  # tqdm's close
    prefix = re.escape("(f pid=") + r"\d+\) "
    assert re.fullmatch(f"{prefix}  0%\\|bar\\|\r{prefix} 50%\\|bar\\|\r{prefix}100%\\|bar\\|\r"
                        f"{prefix}100%\\|bar\\|\n", raw.getvalue()), raw.getvalue()


def test_a_worker_keeps_plain_lines_and_sends_empty_ones_without_a_prefix() -> None:
    stream, raw = _stream()
    print("one", file=stream)
    print(file=stream)
    print("Loading...", end="", file=stream, flush=True)  # no "\r": a line at the flush
    lines = raw.getvalue().split("\n")
    assert re.fullmatch(r"\(f pid=\d+\) one", lines[0]) and lines[1] == ""
    assert re.fullmatch(r"\(f pid=\d+\) Loading...", lines[2])


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_on_a_terminal_updates_are_drawn_over_each_other_then_the_line_ends() -> None:
    clock = _Clock()
    printer = LogPrinter(clock)
    got = printer.render("stderr", "(f pid=1)  50%\r", in_place=True, terminal=True)
    clock.now += 0.01  # drawn at most every REDRAW_EVERY_S: this one is skipped
    got += printer.render("stderr", "(f pid=1)  60%\r", in_place=True, terminal=True)
    clock.now += REDRAW_EVERY_S
    got += printer.render("stderr", "(f pid=1)  70%\r", in_place=True, terminal=True)
    got += printer.render("stderr", "(f pid=1) 100%\r(f pid=1) 100%\n", in_place=True,
                          terminal=True)
    # (an update that a line follows in the same text is drawn over at once: not sent)
    assert got == "\r(f pid=1)  50%\x1b[K\r(f pid=1)  70%\x1b[K\r(f pid=1) 100%\x1b[K\n"
    assert printer.render("stderr", "(g pid=2) hi\n", in_place=True) == "(g pid=2) hi\n"


def test_elsewhere_a_bar_leaves_a_line_every_few_seconds_and_its_last_line() -> None:
    clock = _Clock()
    printer = LogPrinter(clock)
    out = []
    for step in range(1000):  # a bar refreshed 1,000 times over 30 s
        clock.now = step * 0.03
        out.append(printer.render("stderr", f"(f pid=1) {step}/1000\r", in_place=False))
    out.append(printer.render("stderr", "(f pid=1) 1000/1000\n", in_place=False))
    lines = "".join(out).splitlines()
    assert len(lines) == 30 / UPDATE_EVERY_S + 1  # one per period, and the last
    assert lines[0] == "(f pid=1) 0/1000" and lines[-1] == "(f pid=1) 1000/1000"
    # Another bar's first update shows at once, even within the period.
    assert printer.render("stderr", "(g pid=2) 1/9\r", in_place=False) == "(g pid=2) 1/9\n"


def test_a_tqdm_bar_in_a_task_reaches_the_driver_as_a_few_lines(
        runtime: Callable[..., None], capfd: pytest.CaptureFixture[str]) -> None:
    runtime()

    @tk.remote
    def loop() -> int:
        from tqdm import tqdm

        total = 0
        for i in tqdm(range(2000), mininterval=0, miniters=1, desc="steps"):
            total += i
        print()  # an empty line: it must not come out as a bare prefix
        print("done")
        return total

    assert tk.get(loop.remote()) == sum(range(2000))
    tk.shutdown()  # every line forwarded and printed before we read them
    err = capfd.readouterr()
    bars = [ln for ln in err.err.splitlines() if "steps:" in ln]
    assert 1 <= len(bars) <= 3, err.err[-2000:]  # not one per refresh (2,000)
    assert "2000/2000" in bars[-1] and "\r" not in bars[-1]
    assert re.search(r"loop pid=\d+\) done", err.out)
    assert not re.search(r"^\([^)]*loop pid=\d+\) *$", err.out + err.err, re.M)
