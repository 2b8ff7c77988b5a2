"""``TrainController``: drives worker groups through one run, as an explicit state machine.

```text
INITIALIZING --group up--> RUNNING --all ranks done--> FINISHED
     |                        |
     +--------failure---------+--> RESTARTING --budget left--> INITIALIZING (next attempt)
                                       |
                                       +--budget spent--> ERRORED
```

``step()`` does one unit of work and returns a ``StepResult``; ``run()`` steps until a
terminal state. A failure is any rank raising or dying, the process group not forming, a rank
silent for longer than ``FailureConfig.report_timeout_s`` (on by default: the hang doctor
asks every rank where it is, names the rank that is stuck rather than those waiting for it in
a collective, and fails the attempt with ``HangError``), or ranks disagreeing on how many
times they reported. Each restart tears the group down and resumes every rank from the
latest persisted checkpoint. A rank much slower than the others is named in the progress
line.

Datasets resume with it: every report carries each rank's shard positions; the driver merges
them with the position the attempt started from and writes the result into the checkpoint it
commits (``.trainkit_data_positions.json``), and each attempt restarts the splits from the
latest checkpoint's positions (``restore_datasets``), so the epoch continues where the
committed steps left it, on any number of workers.
"""

from __future__ import annotations

import collections
import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from typing import Final

from trainkit.exceptions import HangError
from trainkit.exceptions import InvalidTransitionError
from trainkit.exceptions import TaskError
from trainkit.exceptions import TrainingFailedError
from trainkit.train._checkpoint import Checkpoint
from trainkit.train._checkpoint_manager import write_data_positions
from trainkit.train._config import RunConfig
from trainkit.train._config import ScalingConfig
from trainkit.train._constants import FAILURE_GRACE_S
from trainkit.train._failure_policy import FailureDecision
from trainkit.train._failure_policy import FailurePolicy
from trainkit.train._failure_policy import RankProbe
from trainkit.train._failure_policy import diagnose_hang
from trainkit.train._ledger import RunLedger
from trainkit.train._ledger import error_fields
from trainkit.train._recorder import STRAGGLER_WINDOW
from trainkit.train._recorder import RunRecorder
from trainkit.train._recorder import find_straggler
from trainkit.train._session import DATA_POSITIONS_KEY
from trainkit.train._storage import StorageLocation
from trainkit.train._uploader import Report
from trainkit.train._worker import code_origins
from trainkit.train._worker_group import WorkerGroup
from trainkit.train._worker_group import WorkerGroupError

_TICK_S = 1.0  # how often a running group is checked for silent ranks


class ControllerState(enum.Enum):
    """The life of one run; see the module docstring."""

    INITIALIZING = "initializing"
    RUNNING = "running"
    RESTARTING = "restarting"
    FINISHED = "finished"
    ERRORED = "errored"

    @property
    def is_terminal(self) -> bool:
        return self in (ControllerState.FINISHED, ControllerState.ERRORED)


_TRANSITIONS: Final[Mapping[ControllerState, frozenset[ControllerState]]] = {
    ControllerState.INITIALIZING: frozenset({ControllerState.RUNNING,
                                             ControllerState.RESTARTING,
                                             ControllerState.ERRORED}),
    ControllerState.RUNNING: frozenset({ControllerState.RESTARTING, ControllerState.FINISHED,
                                        ControllerState.ERRORED}),
    ControllerState.RESTARTING: frozenset({ControllerState.INITIALIZING}),
    ControllerState.FINISHED: frozenset(),
    ControllerState.ERRORED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class StepResult:
    previous_state: ControllerState
    next_state: ControllerState


@dataclass(frozen=True, slots=True)
class _Hang:
    """What the hang doctor found, for ``HangError``'s fields."""

    rank: int
    node: str
    frame: str
    stacks: dict[int, str]
    waiting: tuple[int, ...]


class _Failure(Exception):
    def __init__(self, message: str, errors: dict[int, BaseException],
                 retryable: bool = True, hang: _Hang | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors
        self.retryable = retryable
        self.hang = hang


class TrainController:
    """Runs the loop on successive worker groups until it finishes or the budget is spent."""

    def __init__(self, *, fn_blob: bytes, config: Mapping[str, Any] | None,
                 scaling: ScalingConfig, run_config: RunConfig, backend: str,
                 recorder: RunRecorder, name: str, start_checkpoint: Checkpoint | None,
                 shards: list[dict[str, Any]], ledger: RunLedger | None = None) -> None:
        self.fn_blob = fn_blob
        self.config = config
        self.scaling = scaling
        self.run_config = run_config
        self.backend = backend
        self.recorder = recorder
        self.name = name
        self.start_checkpoint = start_checkpoint
        self.shards = shards
        self.policy = FailurePolicy(run_config.failure_config)
        self.state = ControllerState.INITIALIZING
        self.history: collections.deque[tuple[ControllerState, ControllerState, str]] = \
            collections.deque(maxlen=100)
        self.attempt = 0
        self.failures = 0
        self.group: WorkerGroup | None = None
        self.error: TrainingFailedError | None = None
        self.ledger = ledger
        self.data_bases: dict[str, Any] = {}  # name -> DataPosition this attempt started from
        self.origins = code_origins()  # the driver script's code, for the workers' stacks
        self._reset_attempt()

    def _reset_attempt(self) -> None:
        self.pending: dict[int, collections.deque[Report]] = {
            r: collections.deque() for r in range(self.scaling.num_workers)}
        self.last_active = [time.monotonic()] * self.scaling.num_workers
        self.seen = dict.fromkeys(range(self.scaling.num_workers), 0)  # rank -> reports seen
        self.arrived: dict[tuple[int, int], float] = {}  # (rank, seq) -> when it came
        self.arrivals: collections.deque[dict[int, float]] = \
            collections.deque(maxlen=STRAGGLER_WINDOW)
        self.done_seq = 0
        self.last_report = time.monotonic()

    def _emit(self, event: str, t: float | None = None, **fields: Any) -> None:
        if self.ledger is not None:
            self.ledger.append(event, t=t, attempt=self.attempt, **fields)

    def _transition(self, to: ControllerState, reason: str) -> None:
        if to not in _TRANSITIONS[self.state]:
            raise InvalidTransitionError(
                "TrainController", f"run {self.name}", self.state, f"move to {to.name} ({reason})",
                [f"{a.name} -> {b.name} ({r})" for a, b, r in self.history])
        self.history.append((self.state, to, reason))
        self.state = to

    # -- driving -------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self.state.is_terminal:
                self.step()
        finally:
            if self.group is not None:
                self.group.shutdown()
                self.group = None

    def step(self) -> StepResult:
        before = self.state
        try:
            if self.state is ControllerState.INITIALIZING:
                self._initialize()
            elif self.state is ControllerState.RUNNING:
                self._poll()
            elif self.state is ControllerState.RESTARTING:
                self._restart()
        except _Failure as f:
            self._fail(f)
        except WorkerGroupError as e:
            self._fail(_Failure(e.message, e.errors))
        return StepResult(before, self.state)

    def _initialize(self) -> None:
        checkpoints = self.recorder.checkpoints
        checkpoints.clear_staging()
        self.group = WorkerGroup(
            self.scaling, self.run_config.failure_config, attempt=self.attempt,
            staging_root=checkpoints.staging_root, experiment_name=self.name,
            run_path=self.recorder.run_dir, backend=self.backend)
        self._reset_attempt()
        self._emit("attempt_started", world_size=self.scaling.num_workers)
        self.group.start()
        if self.ledger is not None and self.group.started_at is not None:
            ago = time.monotonic() - self.group.started_at
            self._emit("workers_started", t=self.ledger.now() - ago)
        self._emit("rendezvous_done")
        latest = self.recorder.latest_checkpoint
        checkpoint = latest if latest else self.start_checkpoint
        self.data_bases = restore_datasets(self.shards, self.attempt,
                                           self.recorder.checkpoints.latest_data_positions())
        self.group.run(self.fn_blob, self.config, checkpoint, self.shards, self.origins)
        self.last_active = [time.monotonic()] * self.scaling.num_workers
        self.last_report = time.monotonic()
        self._transition(ControllerState.RUNNING, f"attempt {self.attempt} started")

    def _poll(self) -> None:
        assert self.group is not None
        events = self.group.events(_TICK_S)
        now = time.monotonic()
        for report in events.reports:
            queue = self.pending[report.rank]
            queue.append(report)
            if len(queue) > 1 and queue[-2].seq > report.seq:
                # Two long polls of one rank can answer out of order: keep each rank's
                # reports in report order, or iterations pair reports of different seqs.
                self.pending[report.rank] = collections.deque(sorted(queue,
                                                                     key=lambda r: r.seq))
            self.last_active[report.rank] = now
            self.seen[report.rank] = max(self.seen[report.rank], report.seq)
            self.arrived[(report.rank, report.seq)] = now
        if events.errors:
            errors = dict(events.errors)
            for rank, e in self.group.more_errors(FAILURE_GRACE_S).items():
                errors.setdefault(rank, e)
            raise _Failure("a training worker failed", errors)
        while all(q and q[0].seq == self.done_seq + 1 for q in self.pending.values()):
            self._complete_iteration()
        self._check_counts(events.finished)
        if len(events.finished) == self.scaling.num_workers:
            self._emit("attempt_finished")
            self._transition(ControllerState.FINISHED, "every rank finished its loop")
            self.group.shutdown()
            self.group = None
            return
        self._check_silent(events.finished)

    def _complete_iteration(self) -> None:
        assert self.group is not None
        heads = [self.pending[r].popleft() for r in range(self.scaling.num_workers)]
        seq = heads[0].seq
        staged = next((h.staged for h in heads if h.staged), None)
        states = [h.metrics.pop(DATA_POSITIONS_KEY, None) for h in heads]
        if staged is not None:
            save_data_positions(staged, self.data_bases, states)
        now = time.monotonic()
        iteration = self.recorder.iteration + 1
        if seq == 1:
            self._emit("first_report")
        self._watch_stragglers(seq)
        if staged is not None:
            self._emit("checkpoint_snapshotted", iteration=iteration,
                       snapshot_s=round(max(h.snapshot_s for h in heads), 6))
        self._emit("report", iteration=iteration, step_s=round(now - self.last_report, 6),
                   checkpoint=staged is not None)
        self.last_report = now
        saved = self.recorder.record(heads[0].metrics, staged)
        if saved is not None:
            self._emit("checkpoint_committed", iteration=iteration,
                       dir=saved.path.rstrip("/").rsplit("/", 1)[-1],
                       commit_s=round(time.monotonic() - now, 6))
        self.done_seq = seq
        self.group.ack(seq)
        self.last_active = [time.monotonic()] * self.scaling.num_workers

    def _check_counts(self, finished: frozenset[int]) -> None:
        waiting = [r for r, q in self.pending.items() if q]
        if finished and waiting:
            raise _Failure(
                f"ranks {sorted(finished)} finished their loop after {self.done_seq} reports, "
                f"but ranks {waiting} called report() again: every rank must call report() the "
                "same number of times", {}, retryable=False)

    def _watch_stragglers(self, seq: int) -> None:
        """Name a rank much slower than the others in the progress line (or clear it)."""
        assert self.group is not None
        times = {r: self.arrived.pop((r, seq)) for r in range(self.scaling.num_workers)
                 if (r, seq) in self.arrived}
        self.arrivals.append(times)
        slow = find_straggler(list(self.arrivals))
        nodes = self.group.nodes
        self.recorder.progress.straggler = slow.describe(
            nodes[slow.rank] if slow.rank < len(nodes) else None) if slow else None

    def _check_silent(self, finished: frozenset[int]) -> None:
        assert self.group is not None
        limit = self.run_config.failure_config.report_timeout_s
        if limit is None:
            return
        now = time.monotonic()
        silent = [r for r in range(self.scaling.num_workers) if r not in finished
                  and not self.pending[r] and now - self.last_active[r] > limit]
        if not silent:
            return
        answers = self.group.probe()
        probes = {r: p for r, p in answers.items() if isinstance(p, RankProbe)}
        diagnosis = diagnose_hang(silent, probes, self.seen)
        for rank in diagnosis.alive:  # reports made, still uploading: not hung (yet)
            self.last_active[rank] = now
        if not diagnosis.stuck:
            return
        raise _Failure(*hang_report(silent, limit, diagnosis.stuck, diagnosis.waiting,
                                    answers, self.group.pids, self.group.nodes))

    def _fail(self, failure: _Failure) -> None:
        nodes = self.group.nodes if self.group is not None else []
        for rank, e in sorted(failure.errors.items()):
            self._emit("rank_failed", rank=rank,
                       node=nodes[rank] if rank < len(nodes) else None, **error_fields(e))
        if self.group is not None:
            self.group.shutdown()
            self.group = None
        self.failures += 1
        decision, why = self.policy.decide(self.failures)
        if not failure.retryable:
            decision, why = FailureDecision.RAISE, "this error is not retryable"
        summary = describe_errors(failure.message, failure.errors)
        self._emit("attempt_failed", decision=decision.value, reason=why,
                   message=failure.message[:500])
        if decision is FailureDecision.RESTART:
            self.recorder.progress.say(f"{self.name}: attempt {self.attempt} failed ({why}); "
                                       f"restarting from the latest checkpoint.\n{summary}")
            for cb in self.run_config.callbacks:
                if hasattr(cb, "on_restart"):
                    cb.on_restart(self.attempt, failure.errors)
            self._transition(ControllerState.RESTARTING, why)
            return
        self.error = self._training_failed(failure, why, summary)
        self._transition(ControllerState.ERRORED, why)

    def _restart(self) -> None:
        self.attempt += 1
        self._transition(ControllerState.INITIALIZING, f"attempt {self.attempt}")

    def _training_failed(self, failure: _Failure, why: str, summary: str) -> TrainingFailedError:
        latest = self.recorder.latest_checkpoint
        run_dir = self.recorder.run_dir
        resume = (f"The latest checkpoint is {latest.path}; run the script again with the same "
                  f"RunConfig(name={self.name!r}, storage_path=...) to resume from it."
                  if latest else "No checkpoint was persisted, so a rerun starts from scratch.")
        message = (f"Training failed after {self.attempt + 1} attempt(s) ({why}).\n{summary}\n"
                   f"{resume}\nRun folder: {run_dir}")
        cause = next(iter(failure.errors.values()), None)
        if failure.hang is not None:
            h = failure.hang
            return HangError(message, failure.errors, cause, run_dir, rank=h.rank, node=h.node,
                             frame=h.frame, stacks=h.stacks, waiting=h.waiting)
        return TrainingFailedError(message, failure.errors, cause, run_dir)


def hang_report(silent: list[int], limit: float, stuck: tuple[int, ...],
                waiting: tuple[int, ...], answers: Mapping[int, RankProbe | str],
                pids: list[int], nodes: list[str]) -> tuple[str, dict[int, BaseException],
                                                            bool, _Hang]:
    """The ``_Failure`` arguments of a hang (pure): the stuck rank first, with its node and
    its innermost frame in user code, then who waits for it, then every rank's stack."""
    rank = stuck[0]
    node = nodes[rank] if rank < len(nodes) else "?"
    probe = answers.get(rank)
    frame = ""
    if isinstance(probe, RankProbe):
        user = probe.user_frame
        frame = str(user) if user is not None else \
            (str(probe.frames[-1]) if probe.frames else "")
    where = f" at {frame}" if frame else " (its loop's stack could not be read)"
    others = [r for r in stuck[1:]]
    also = f"; ranks {others} are stuck too" if others else ""
    waits = (f"; ranks {list(waiting)} are waiting for it (in a collective, barrier or "
             "report)") if waiting else ""
    stacks = {r: (p.text if isinstance(p, RankProbe) else p) for r, p in sorted(answers.items())}
    dump = "\n".join(f"--- rank {r} (pid {pids[r] if r < len(pids) else '?'}, node "
                     f"{nodes[r] if r < len(nodes) else '?'}) ---\n{text}"
                     for r, text in stacks.items())
    message = (f"ranks {silent} did not call report() for {limit} s "
               f"(FailureConfig.report_timeout_s): rank {rank} on node {node} is stuck{where}"
               f"{also}{waits}. Every rank's Python stack:\n{dump}")
    return message, {}, True, _Hang(rank, node, frame, stacks, waiting)


def restore_datasets(shards: list[dict[str, Any]], attempt: int,
                     saved: Mapping[str, Any] | None) -> dict[str, Any]:
    """Start attempt ``attempt`` of every resumable dataset split in ``shards`` (rank ->
    name -> shard) from ``saved`` (name -> position, from the latest checkpoint) or from
    the start; the positions the attempt starts from, by name. Lists split by rank are not
    resumable (they have no position) and are left as they are."""
    if not shards:
        return {}
    names = [name for name, shard in shards[0].items() if hasattr(shard, "_save_position")]
    if not names:
        return {}
    from trainkit.data._split import restore_split  # only runs with datasets need data

    saved = saved or {}
    return {name: restore_split([rank[name] for rank in shards], attempt, saved.get(name))
            for name in names}


def save_data_positions(staged: StorageLocation, bases: Mapping[str, Any],
                        states: list[Any]) -> None:
    """Write into the staged checkpoint where each dataset stands after this report: the
    attempt's starting position merged with every rank's (``states``: each rank's
    ``{name: state}`` as its report carried it; None for a rank that sent none)."""
    if not bases:
        return
    from trainkit.data._position import merge_positions

    merged = {name: merge_positions(base, [s[name] for s in states
                                           if isinstance(s, dict) and name in s]).to_json()
              for name, base in bases.items()}
    write_data_positions(staged, merged)


def _headline(error: BaseException) -> str:
    if isinstance(error, TaskError) and error.cause is not None:
        return f"{type(error.cause).__name__}: {error.cause}"
    return f"{type(error).__name__}: {error}"


def describe_errors(message: str, errors: Mapping[int, BaseException]) -> str:
    """``message``, then the ranks grouped by error, then the first error's traceback."""
    if not errors:
        return message
    groups: dict[str, list[int]] = {}
    for rank, error in sorted(errors.items()):
        groups.setdefault(_headline(error), []).append(rank)
    lines = [message + ":"]
    for headline, ranks in groups.items():
        who = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
        lines.append(f"  {who}: {headline}")
    first = next(iter(errors.values()))
    if isinstance(first, TaskError) and first.traceback_str:
        lines.append("First error's traceback:\n" + first.traceback_str.rstrip())
    return "\n".join(lines)
