"""Errors cross process boundaries: every public error survives pickle and cloudpickle."""

from __future__ import annotations

import enum
import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import trainkit.exceptions as exc

REPO = Path(__file__).resolve().parents[1]
REMOTE_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "train.py", line 12, in step\n'
    "    raise ValueError('bad batch')\n"
    "ValueError: bad batch\n"
)

# Sample constructor arguments for the errors that take structured fields; every other class is
# built from one message string.
SAMPLE_ARGS: dict[str, tuple[Any, ...]] = {
    "ActorDiedError": ("a1b2c3d4", "killed with kill()"),
    "WorkerCrashedError": ("step()", "SIGKILL"),
    "ObjectLostError": ("0f0f0f0f", "its owner died"),
    "TaskCancelledError": ("step()",),
    "TaskError": ("step", REMOTE_TRACEBACK, ValueError("bad batch"), 4242),
    "InvalidTransitionError": ("Trial", "trial 00003", "TERMINATED", "move to RUNNING",
                               ("PENDING -> RUNNING", "RUNNING -> TERMINATED")),
}

ROUND_TRIPS: dict[str, Callable[[BaseException], BaseException]] = {
    "pickle": lambda e: pickle.loads(pickle.dumps(e, protocol=pickle.HIGHEST_PROTOCOL)),
    "cloudpickle": lambda e: cloudpickle.loads(cloudpickle.dumps(e)),
}


def _comparable(value: Any) -> Any:
    """Exceptions compare by identity; compare them by class and args instead."""
    if isinstance(value, BaseException):
        return (type(value), tuple(_comparable(a) for a in value.args))
    if isinstance(value, tuple | list):
        return type(value)(_comparable(v) for v in value)
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return value


def _make_task_error() -> exc.TaskError:
    return exc.TaskError("step", REMOTE_TRACEBACK, ValueError("bad batch"), 4242)


def test_all_names_are_exceptions() -> None:
    assert sorted(exc.__all__) == sorted(set(exc.__all__)), "duplicate names in __all__"
    for name in exc.__all__:
        cls = getattr(exc, name)
        assert isinstance(cls, type), name
        assert issubclass(cls, exc.TrainkitError), f"{name} does not subclass TrainkitError"
    assert not set(SAMPLE_ARGS) - set(exc.__all__), "SAMPLE_ARGS names an unknown error"


@pytest.mark.parametrize("how", sorted(ROUND_TRIPS))
@pytest.mark.parametrize("name", sorted(exc.__all__))
def test_round_trip(name: str, how: str) -> None:
    cls = getattr(exc, name)
    original = cls(*SAMPLE_ARGS.get(name, ("something went wrong",)))

    restored = ROUND_TRIPS[how](original)

    assert type(restored) is cls
    assert _comparable(restored.args) == _comparable(original.args)
    assert _comparable(vars(restored)) == _comparable(vars(original))
    assert str(restored) == str(original)


def test_task_error_is_also_the_cause_class() -> None:
    err = _make_task_error().as_instanceof_cause()

    assert isinstance(err, exc.TaskError)
    assert isinstance(err, ValueError)
    assert REMOTE_TRACEBACK.strip() in str(err)
    with pytest.raises(ValueError, match="bad batch"):
        raise err


@pytest.mark.parametrize("how", sorted(ROUND_TRIPS))
def test_task_error_as_cause_round_trip(how: str) -> None:
    original = _make_task_error().as_instanceof_cause()

    restored = ROUND_TRIPS[how](original)

    assert isinstance(restored, exc.TaskError)
    assert isinstance(restored, ValueError)
    assert REMOTE_TRACEBACK.strip() in str(restored)
    assert restored.function_name == "step"
    assert restored.pid == 4242
    assert _comparable(restored.cause) == _comparable(ValueError("bad batch"))


def test_task_error_as_cause_unpickles_in_a_fresh_process() -> None:
    # The dual class is made at run time; a process that never made it must still rebuild it.
    payload = pickle.dumps(_make_task_error().as_instanceof_cause())
    code = (
        "import pickle, sys\n"
        "from trainkit.exceptions import TaskError\n"
        "err = pickle.loads(sys.stdin.buffer.read())\n"
        "assert isinstance(err, TaskError) and isinstance(err, ValueError), type(err).__mro__\n"
        "assert 'ValueError: bad batch' in str(err), str(err)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, input=payload, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode()


def _drawn_tree() -> list[tuple[str, str | None]]:
    """(name, parent) for every class the module docstring draws, parents by indentation."""
    doc = exc.__doc__ or ""
    drawing = doc.split("```text\n", 1)[1].split("```", 1)[0]
    pairs: list[tuple[str, str | None]] = []
    stack: list[tuple[int, str]] = []
    for line in drawing.splitlines():
        match = re.match(r"( *)([A-Za-z]\w*)", line)
        if match is None:
            continue
        depth, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        pairs.append((name, stack[-1][1] if stack else None))
        stack.append((depth, name))
    return pairs


def test_the_drawn_tree_is_the_class_tree() -> None:
    drawn = _drawn_tree()
    assert sorted(name for name, _ in drawn) == sorted(exc.__all__)
    for name, parent in drawn:
        cls = getattr(exc, name)
        if parent is None:
            assert cls is exc.TrainkitError
        else:
            assert getattr(exc, parent) in cls.__bases__, f"{name} is drawn under {parent}"


def test_invalid_transition_is_a_bug_report_naming_machine_state_and_event() -> None:
    class Light(enum.Enum):
        RED = "red"
        GREEN = "green"

    err = exc.InvalidTransitionError("TrafficLight", "light 7", Light.RED, "move to BLUE",
                                     [f"{Light.GREEN.name} -> {Light.RED.name}"])

    assert isinstance(err, exc.TrainkitInternalError)
    assert not isinstance(err, ValueError | TypeError)  # a bug in trainkit, not the user's
    assert (err.machine, err.entity, err.state, err.event) == \
        ("TrafficLight", "light 7", "RED", "move to BLUE")  # enum members kept by name
    assert err.history == ("GREEN -> RED",)
    text = str(err)
    assert "TrafficLight light 7: move to BLUE is not allowed in state RED" in text
    assert "GREEN -> RED" in text and "bug in trainkit" in text


def test_invalid_transition_message_shows_only_the_recent_history() -> None:
    moves = [f"move {i}" for i in range(25)]
    err = exc.InvalidTransitionError("Trial", "trial 1", "PAUSED", "move to RUNNING", moves)

    assert err.history == tuple(moves)
    assert "15 earlier moves; move 15;" in str(err) and "move 14;" not in str(err)


def test_tune_error_is_public_in_tune_too() -> None:
    from trainkit import tune

    assert tune.TuneError is exc.TuneError
    assert issubclass(exc.TuneError, exc.TrainkitError)
