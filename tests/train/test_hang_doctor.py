"""The hang doctor, on by default: a silent rank fails the attempt with ``HangError`` naming
the rank that is stuck (not those waiting for it in a collective), its node and its file:line
in user code, also for a loop defined in a driver script; and the straggler in the progress
line. End to end on real processes (2 CPU ranks, gloo); the decisions are unit-tested pure."""

from __future__ import annotations

import io
import math
import os
import pickle
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import cloudpickle
import pytest

import trainkit as tk
from trainkit import train
from trainkit.exceptions import HangError
from trainkit.exceptions import TrainingFailedError
from trainkit.train import FailureConfig
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer
from trainkit.train._failure_policy import Frame
from trainkit.train._failure_policy import FrameKind
from trainkit.train._failure_policy import RankProbe
from trainkit.train._failure_policy import classify_frame
from trainkit.train._failure_policy import diagnose_hang
from trainkit.train._recorder import ProgressLine
from trainkit.train._recorder import Straggler
from trainkit.train._recorder import find_straggler
from trainkit.train._worker import code_origins
from trainkit.train._worker import restore_code_origins

HERE = os.path.abspath(__file__)


def _line_of(marker: str, text: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if marker in line
                and "_line_of" not in line)


# -- end to end ---------------------------------------------------------------------------------
def sleeps_forever() -> None:
    time.sleep(3600)  # the hang: rank 1 stops here


def collective_loop() -> None:
    import torch
    import torch.distributed as dist

    t = torch.ones(1)
    dist.all_reduce(t)  # both ranks meet once: the group works
    train.report({"sum": float(t.item())})
    if train.get_context().get_world_rank() == 1:
        sleeps_forever()
    dist.all_reduce(t)  # rank 0 waits here for rank 1, which never comes
    train.report({"sum": float(t.item())})


@pytest.mark.usefixtures("train_runtime")
def test_hang_names_the_stuck_rank_not_the_waiting_one(tmp_path) -> None:
    # Defaults only, but a short limit so the test takes seconds.
    config = FailureConfig(report_timeout_s=2.0)
    trainer = Trainer(collective_loop, scaling_config=ScalingConfig(num_workers=2),
                      run_config=RunConfig(name="hang", storage_path=tmp_path, verbose=0,
                                           failure_config=config))
    with pytest.raises(HangError) as info:
        trainer.fit()
    error = info.value
    assert isinstance(error, TrainingFailedError)
    line = _line_of("# the hang: rank 1 stops here", Path(HERE).read_text())
    assert error.rank == 1
    node = tk.get_node_ip_address()
    assert error.node == node
    assert error.frame == f"{HERE}:{line} in sleeps_forever"
    assert error.waiting == (0,)
    assert sorted(error.stacks) == [0, 1]
    assert "all_reduce" in error.stacks[0] and "sleeps_forever" in error.stacks[1]
    text = str(error)
    assert f"rank 1 on node {node} is stuck at {HERE}:{line} in sleeps_forever" in text
    assert "ranks [0] are waiting for it" in text
    assert "--- rank 0" in text and "--- rank 1" in text
    assert pickle.loads(pickle.dumps(error)).frame == error.frame  # it crosses processes


SCRIPT = textwrap.dedent("""
    import sys, time
    from trainkit import train
    from trainkit.exceptions import HangError
    from trainkit.train import FailureConfig, RunConfig, ScalingConfig, Trainer

    def helper():
        time.sleep(3600)  # HANG-HERE

    def loop():
        train.report({})
        if train.get_context().get_world_rank() == 1:
            helper()
        train.report({})

    if __name__ == "__main__":
        try:
            Trainer(loop, scaling_config=ScalingConfig(num_workers=2),
                    run_config=RunConfig(name="s", storage_path=sys.argv[1], verbose=0,
                                         failure_config=FailureConfig(report_timeout_s=1.0))
                    ).fit()
        except HangError as e:
            print("RANK", e.rank)
            print("FRAME", e.frame)
            print("STACK1", "dynamic-code" in e.stacks[1])
""")


def test_a_loop_defined_in_the_driver_script_shows_its_file_and_line(tmp_path) -> None:
    """The loop travels by value (cloudpickle names its code ``<dynamic-code>``): the stack
    shows the script's real path and the sleep's line."""
    script = tmp_path / "driver.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = _line_of("# HANG-HERE", SCRIPT)
    assert "RANK 1" in proc.stdout, proc.stdout
    assert f"FRAME {script}:{line} in helper" in proc.stdout, proc.stdout
    assert "STACK1 False" in proc.stdout


# -- bad input and defaults ------------------------------------------------------------------
def test_hang_detection_is_on_by_default() -> None:
    assert FailureConfig().report_timeout_s == 300.0
    assert FailureConfig(report_timeout_s=None).report_timeout_s is None  # off, as in Ray


@pytest.mark.parametrize("bad", [0, 0.0, -1, -300.0, float("nan"), "300", True])
def test_bad_report_timeouts_fail_at_once(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        FailureConfig(report_timeout_s=bad)  # type: ignore[arg-type]
    text = str(info.value)
    assert f"`report_timeout_s` is {bad!r}" in text
    assert "> 0 or None (no limit), e.g. 300.0 (the default)" in text


# -- the diagnosis (pure) ----------------------------------------------------------------------
ROOTS = ("/usr/lib/python3.11/", "/venv/site-packages/", "/src/trainkit/")
LOOP = Frame("/usr/lib/python3.11/threading.py", 10, "run", FrameKind.LIBRARY)
USER = Frame("/home/me/train.py", 42, "loop", FrameKind.USER)


def _probe(*frames: Frame, reports: int = 1) -> RankProbe:
    return RankProbe(reports, (LOOP, *frames), "stack text")


def test_frames_are_classified_by_their_file() -> None:
    c10d = "/venv/site-packages/torch/distributed/distributed_c10d.py"
    assert classify_frame(c10d, ROOTS) is FrameKind.WAIT
    assert classify_frame("/venv/site-packages/torch/nn/parallel/distributed.py",
                          ROOTS) is FrameKind.WAIT
    assert classify_frame("/src/trainkit/train/_uploader.py", ROOTS) is FrameKind.WAIT
    assert classify_frame("/venv/site-packages/torch/nn/modules/linear.py",
                          ROOTS) is FrameKind.LIBRARY
    assert classify_frame("/usr/lib/python3.11/time.py", ROOTS) is FrameKind.LIBRARY
    assert classify_frame("<frozen importlib._bootstrap>", ROOTS) is FrameKind.LIBRARY
    assert classify_frame("/home/me/train.py", ROOTS) is FrameKind.USER
    assert classify_frame("/usr/lib/python3.11x/mine.py", ROOTS) is FrameKind.USER


def test_the_rank_in_user_code_is_stuck_and_the_one_in_a_collective_waits() -> None:
    wait = Frame("/venv/site-packages/torch/distributed/c10d_logger.py", 3, "wrapper",
                 FrameKind.WAIT)
    probes = {0: _probe(USER, wait), 1: _probe(USER)}
    d = diagnose_hang([0, 1], probes, {0: 1, 1: 1})
    assert d.stuck == (1,) and d.waiting == (0,) and d.alive == ()
    assert probes[1].user_frame == USER and probes[0].user_frame == USER


def test_a_rank_that_reported_since_is_alive_not_hung() -> None:
    probes = {0: _probe(USER, reports=5), 1: _probe(USER, reports=2)}
    d = diagnose_hang([0, 1], probes, {0: 2, 1: 2})
    assert d.alive == (0,) and d.stuck == (1,)
    assert diagnose_hang([0], probes, {0: 2}).stuck == ()  # only the uploader was silent


def test_when_every_rank_waits_all_are_named_and_a_silent_answerless_rank_is_stuck() -> None:
    wait = Frame("/venv/site-packages/torch/distributed/distributed_c10d.py", 9, "barrier",
                 FrameKind.WAIT)
    lib = Frame("/venv/site-packages/torch/nn/modules/linear.py", 5, "forward",
                FrameKind.LIBRARY)
    seen = {0: 1, 1: 1, 2: 1}
    assert diagnose_hang([0, 1], {0: _probe(wait), 1: _probe(wait)}, seen).stuck == (0, 1)
    # rank 2 did not answer; rank 0 is in a library, rank 1 in user code: 1 is named first
    d = diagnose_hang([0, 1, 2], {0: _probe(USER, lib), 1: _probe(USER)}, seen)
    assert d.stuck == (1, 0, 2)


def test_code_pickled_by_value_gets_its_file_back() -> None:
    source = "def outer():\n    def inner():\n        return 1 / 0\n    return inner()\n"
    main = types.ModuleType("__main__")
    main.__file__ = "/home/me/script.py"
    exec(compile(source, main.__file__, "exec"), vars(main))
    sent = cloudpickle.loads(cloudpickle.dumps(main.outer))  # by value: __module__ __main__
    assert sent.__code__.co_filename == "<dynamic-code>"
    restore_code_origins(sent, code_origins(main))
    assert sent.__code__.co_filename == "/home/me/script.py"
    with pytest.raises(ZeroDivisionError) as info:
        sent()
    tb = info.value.__traceback__
    frames = []
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    assert frames[-2:] == [("/home/me/script.py", 4), ("/home/me/script.py", 3)]


def test_a_notebook_cell_keeps_its_own_file() -> None:
    main = types.ModuleType("__main__")  # a kernel: no __file__, one file per cell
    exec(compile("def f():\n    pass\n", "/tmp/ipykernel_1/cell7.py", "exec"), vars(main))
    sent = cloudpickle.loads(cloudpickle.dumps(main.f))
    restore_code_origins(sent, code_origins(main))
    assert sent.__code__.co_filename == "/tmp/ipykernel_1/cell7.py"


# -- the straggler (pure) ----------------------------------------------------------------------
def _pace(periods: dict[int, float], n: int = 8, offsets: dict[int, float] | None = None
          ) -> list[dict[int, float]]:
    offsets = offsets or {}
    return [{r: (i + 1) * p + offsets.get(r, 0.0) for r, p in periods.items()}
            for i in range(n)]


def test_a_rank_at_half_the_pace_is_a_straggler() -> None:
    slow = find_straggler(_pace({0: 0.1, 1: 0.2, 2: 0.1}))
    assert slow is not None and slow.rank == 1 and slow.slowdown == pytest.approx(2.0)


def test_ranks_that_meet_every_report_the_late_one_is_the_straggler() -> None:
    # every 0.3 s all ranks report together, but rank 2 comes 0.2 s after the others:
    # they work 0.1 s and wait 0.2 s for it, so it is 3x slower
    arrivals = _pace({0: 0.3, 1: 0.3, 2: 0.3}, offsets={0: -0.2, 1: -0.2})
    slow = find_straggler(arrivals)
    assert slow is not None and slow.rank == 2
    assert slow.slowdown == pytest.approx(3.0) and slow.behind_s == pytest.approx(0.2)


def test_no_straggler_among_equals_nor_from_jitter_nor_too_early() -> None:
    assert find_straggler(_pace({0: 0.1, 1: 0.1})) is None
    assert find_straggler(_pace({0: 0.1, 1: 0.101})) is None  # 1 % slower: not "much"
    assert find_straggler(_pace({0: 0.001, 1: 0.002})) is None  # 2x, but 1 ms: jitter
    assert find_straggler(_pace({0: 0.1, 1: 0.2}, n=3)) is None  # too few iterations
    assert find_straggler(_pace({0: 0.1})) is None  # one rank


def test_one_slow_step_names_nobody() -> None:
    arrivals = _pace({0: 0.1, 1: 0.1})
    for a in arrivals[4:]:
        a[1] += 0.0  # same pace...
    arrivals[4][1] += 1.0  # ...but one checkpoint of rank 1 took a second
    assert find_straggler(arrivals) is None


def test_the_progress_line_names_the_straggler() -> None:
    stream = io.StringIO()
    line = ProgressLine("run", verbose=2, stream=stream)
    line.update(1, {"loss": 0.5})
    line.straggler = Straggler(1, 2.0, 0.1).describe("10.0.0.2")
    line.update(2, {"loss": 0.4})
    first, second = stream.getvalue().splitlines()
    assert "straggler" not in first
    assert second.endswith("; straggler: rank 1 (node 10.0.0.2) 2.0x slower, reports 0.10 s "
                           "after the others)")
    assert Straggler(3, math.inf, 4.0).describe(None) == "rank 3 reports 4.00 s after the others"
    assert Straggler(0, 120.0, 0.2).describe(None) == \
        "rank 0 over 10x slower, reports 0.20 s after the others"


def uneven_pace_loop() -> None:
    slow = train.get_context().get_world_rank() == 1
    for i in range(10):
        if slow:
            time.sleep(0.2)
        train.report({"i": i})


@pytest.mark.usefixtures("train_runtime")
def test_a_slow_rank_is_named_in_the_progress_line(tmp_path, capsys) -> None:
    Trainer(uneven_pace_loop, scaling_config=ScalingConfig(num_workers=2),
            run_config=RunConfig(name="slow", storage_path=tmp_path, verbose=2)).fit()
    lines = [line for line in capsys.readouterr().out.splitlines() if "iter " in line]
    assert len(lines) == 10
    assert "straggler" not in lines[0]  # too early to tell
    assert f"straggler: rank 1 (node {tk.get_node_ip_address()})" in lines[-1], lines[-1]
