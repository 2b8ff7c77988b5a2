"""The whole trainkit error tree.

Every error crosses process boundaries, so each keeps its structured fields in ``args``
(or defines ``__reduce__``) and survives pickle and cloudpickle.

```text
TrainkitError
  TaskError                      a remote exception; also an instance of the user's class
  GetTimeoutError                (also a builtin TimeoutError)
  InfeasibleError                (also ValueError) a request no node can ever satisfy
  OutOfMemoryError               (also MemoryError) object store full, nothing spillable
  TrainingFailedError            Trainer.fit() failed and the failure budget is spent
    HangError                    a rank was silent for longer than report_timeout_s
  CheckpointUploadError          a rank could not upload its checkpoint to the run's storage
  TuneError                      the sweep itself cannot go on (e.g. a metric no trial reports)
  RuntimeSystemError             the runtime itself failed
    ActorDiedError
    WorkerCrashedError
    ObjectLostError
    TaskCancelledError
    TransportClosedError
    TrainkitInternalError        a bug in trainkit: please report it
      InvalidTransitionError     a state machine was asked for a move its table does not allow
```

``InvalidTransitionError`` is the one error of every lifecycle table in trainkit (the Train
controller's ``ControllerState``, Tune's ``TrialState``, the runtime's actor states): it names
the machine, the entity, the state it was in and the event it was refused, with the recent
history, so a report can show how the entity got there.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Iterable
from typing import Any

__all__ = [
    "ActorDiedError",
    "CheckpointUploadError",
    "GetTimeoutError",
    "HangError",
    "InfeasibleError",
    "InvalidTransitionError",
    "ObjectLostError",
    "OutOfMemoryError",
    "RuntimeSystemError",
    "TaskCancelledError",
    "TaskError",
    "TrainingFailedError",
    "TrainkitError",
    "TrainkitInternalError",
    "TransportClosedError",
    "TuneError",
    "WorkerCrashedError",
]


class TrainkitError(Exception):
    """Base class of every error trainkit raises."""


class RuntimeSystemError(TrainkitError):
    """The runtime failed (a process died, an object was lost), not the user's code."""


class ActorDiedError(RuntimeSystemError):
    """The actor is dead: killed, crashed, or out of restarts.

    Args:
        actor_id: hex id of the actor.
        cause: why it died, in words.
    """

    def __init__(self, actor_id: str = "", cause: str = "") -> None:
        super().__init__(actor_id, cause)
        self.actor_id = actor_id
        self.cause = cause

    def __str__(self) -> str:
        return f"actor {self.actor_id} is dead: {self.cause}"


class WorkerCrashedError(RuntimeSystemError):
    """The worker process running a task died before the task finished."""

    def __init__(self, task: str = "", cause: str = "") -> None:
        super().__init__(task, cause)
        self.task = task
        self.cause = cause

    def __str__(self) -> str:
        return f"the worker running {self.task} died: {self.cause}"


class ObjectLostError(RuntimeSystemError):
    """An object's value can no longer be found (its owner or its node died)."""

    def __init__(self, object_id: str = "", cause: str = "") -> None:
        super().__init__(object_id, cause)
        self.object_id = object_id
        self.cause = cause

    def __str__(self) -> str:
        return f"object {self.object_id} is lost: {self.cause}"


class TaskCancelledError(RuntimeSystemError):
    """The task was cancelled with ``cancel()`` before it produced a value."""

    def __init__(self, task: str = "") -> None:
        super().__init__(task)
        self.task = task

    def __str__(self) -> str:
        return f"task {self.task} was cancelled"


class TransportClosedError(RuntimeSystemError):
    """A connection to another trainkit process was closed."""


class TrainkitInternalError(RuntimeSystemError):
    """A bug in trainkit itself: please report it with the traceback."""


_HISTORY_SHOWN = 10  # the last moves a message shows; the ``history`` field keeps them all


class InvalidTransitionError(TrainkitInternalError):
    """A state machine was asked for a move its transition table does not allow.

    That is always a bug in trainkit (the code that asked for the move), never the user's
    mistake. States may be given as Enum members; they are kept by name, so the error pickles
    without the enum's module.

    Args:
        machine: the state machine, e.g. ``"TrainController"`` or ``"Trial"``.
        entity: which one of its kind, e.g. ``"run exp"`` or ``"trial 00003"``.
        state: the state it was in.
        event: the move it was refused, e.g. ``"move to FINISHED"``.
        history: its earlier moves, oldest first, e.g. ``("PENDING -> RUNNING",)``.

    Example:
        >>> err = InvalidTransitionError("Trial", "trial 00003", TrialState.TERMINATED,
        ...                              "move to RUNNING", ["PENDING -> RUNNING"])
        >>> str(err)  # doctest: +ELLIPSIS
        'Trial trial 00003: move to RUNNING is not allowed in state TERMINATED (history: ...'
    """

    def __init__(self, machine: str = "", entity: str = "", state: object = "",
                 event: str = "", history: Iterable[object] = ()) -> None:
        state_name = _state_name(state)
        moves = tuple(str(move) for move in history)
        super().__init__(machine, entity, state_name, event, moves)
        self.machine = machine
        self.entity = entity
        self.state = state_name
        self.event = event
        self.history = moves

    def __str__(self) -> str:
        shown = self.history[-_HISTORY_SHOWN:]
        earlier = len(self.history) - len(shown)
        story = "; ".join(([f"{earlier} earlier moves"] if earlier else []) + list(shown))
        return (f"{self.machine} {self.entity}: {self.event} is not allowed in state "
                f"{self.state} (history: {story or 'none'}). This is a bug in trainkit: "
                "please report it with this message and the traceback")


def _state_name(state: object) -> str:
    return state.name if isinstance(state, enum.Enum) else str(state)


class CheckpointUploadError(TrainkitError):
    """A rank could not upload its checkpoint files to the run's storage; the attempt fails
    as it does for a rank's error (the message names the storage path and the cause)."""


class TuneError(TrainkitError):
    """The sweep itself cannot go on: a misconfiguration found while it runs, such as a
    ``TuneConfig(metric=...)`` that no trial reports (a trial's own error is in its result)."""


class GetTimeoutError(TrainkitError, builtins.TimeoutError):
    """``get``/``wait``/a runtime request did not finish within its timeout."""


class InfeasibleError(TrainkitError, ValueError):
    """A resource request that no node can ever satisfy."""


class OutOfMemoryError(TrainkitError, MemoryError):
    """The object store is full and nothing in it can be spilled."""


class TaskError(TrainkitError):
    """A remote task or actor method raised an exception.

    The raised object is also an instance of the user's exception class (see
    :meth:`as_instanceof_cause`), so ``except ValueError`` works across processes.

    Args:
        function_name: the task or method that raised.
        traceback_str: the formatted remote traceback.
        cause: the original exception (or None if it could not be pickled).
        pid: the process the task ran in.
    """

    def __init__(
        self,
        function_name: str = "",
        traceback_str: str = "",
        cause: BaseException | None = None,
        pid: int = 0,
    ) -> None:
        # Not super(): in a dual class (see as_instanceof_cause) the next __init__ in the
        # MRO is the cause's, whose signature is its own.
        Exception.__init__(self, function_name, traceback_str, cause, pid)
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid

    def __str__(self) -> str:
        return (
            f"{self.function_name} (pid={self.pid}) raised "
            f"{type(self.cause).__name__ if self.cause is not None else 'an error'}:\n"
            f"{self.traceback_str.rstrip()}"
        )

    def as_instanceof_cause(self) -> TaskError:
        """Return a copy that is an instance of both TaskError and the cause's class."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or isinstance(self, cause_cls) or issubclass(cause_cls, TaskError):
            return self
        try:
            cls = _dual_class(cause_cls)
            err: TaskError = cls.__new__(cls)
        except TypeError:  # e.g. the cause's class has an incompatible layout
            return self
        TaskError.__init__(err, self.function_name, self.traceback_str, self.cause, self.pid)
        return err


_DUAL_CLASSES: dict[type, type] = {}


def _dual_class(cause_cls: type) -> type[TaskError]:
    cls = _DUAL_CLASSES.get(cause_cls)
    if cls is None:

        def __reduce__(self: TaskError) -> tuple[Any, ...]:
            fields = (self.function_name, self.traceback_str, self.cause, self.pid)
            return (_rebuild_task_error, fields)

        cls = type(
            f"TaskError({cause_cls.__name__})",
            (TaskError, cause_cls),
            {"__reduce__": __reduce__, "__str__": TaskError.__str__, "__module__": __name__},
        )
        _DUAL_CLASSES[cause_cls] = cls
    return cls


def _rebuild_task_error(
    function_name: str, traceback_str: str, cause: BaseException | None, pid: int
) -> TaskError:
    return TaskError(function_name, traceback_str, cause, pid).as_instanceof_cause()


class TrainingFailedError(TrainkitError):
    """``Trainer.fit()`` failed: a worker raised or died, and ``FailureConfig.max_failures``
    is spent (or a non-retryable error occurred).

    Args:
        message: what happened, with every rank's error grouped and how to resume.
        errors: the last attempt's errors by world rank.
        cause: the first of them (also ``__cause__`` when raised).
        path: the run's folder (run the script again to resume from its latest checkpoint).
    """

    def __init__(self, message: str = "", errors: dict[int, BaseException] | None = None,
                 cause: BaseException | None = None, path: str = "") -> None:
        super().__init__(message, errors or {}, cause, path)
        self.message = message
        self.errors = errors or {}
        self.cause = cause
        self.path = path

    def __str__(self) -> str:
        return self.message


class HangError(TrainingFailedError):
    """A rank was silent (no ``report()``) for longer than ``FailureConfig.report_timeout_s``.

    It names the rank that is stuck, not the ranks merely waiting for it in a collective: a
    hang in one rank shows up as every rank going silent, and only the stacks tell them apart.

    Args:
        message: what happened: the stuck rank, its node, its innermost frame in user code,
            then every rank's Python stack.
        errors, cause, path: as in :class:`TrainingFailedError`.
        rank: the stuck rank (the first of them when several are; -1: none could be told).
        node: that rank's node (its IP address).
        frame: its innermost frame in user code, ``"path/to/file.py:LINE in function"``.
        stacks: every rank's Python stack (all its threads), by world rank.
        waiting: the ranks found waiting for others (in a collective, barrier or store).
    """

    def __init__(self, message: str = "", errors: dict[int, BaseException] | None = None,
                 cause: BaseException | None = None, path: str = "", rank: int = -1,
                 node: str = "", frame: str = "", stacks: dict[int, str] | None = None,
                 waiting: tuple[int, ...] = ()) -> None:
        super().__init__(message, errors, cause, path)
        self.rank = rank
        self.node = node
        self.frame = frame
        self.stacks = dict(stacks or {})
        self.waiting = tuple(waiting)
        self.args = (message, self.errors, cause, path, rank, node, frame, self.stacks,
                     self.waiting)
