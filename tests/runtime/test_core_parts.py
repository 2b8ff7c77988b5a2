"""Unit tests of the core worker's pure parts: the ownership table, the task submitter and
the actor caller, on an ``Effects`` that stands for the transport (no process, no socket)."""

from __future__ import annotations

from typing import Any

import pytest

from trainkit.exceptions import ActorDiedError
from trainkit.exceptions import ObjectLostError
from trainkit.exceptions import TaskCancelledError
from trainkit.exceptions import WorkerCrashedError
from trainkit.runtime.core.actor_caller import ActorCall
from trainkit.runtime.core.actor_caller import ActorCaller
from trainkit.runtime.core.effects import Effects
from trainkit.runtime.core.ownership import OwnershipTable
from trainkit.runtime.core.refs import ObjectRef
from trainkit.runtime.core.requests import RequestTracker
from trainkit.runtime.core.task_submitter import TaskSpec
from trainkit.runtime.core.task_submitter import TaskSubmitter
from trainkit.runtime.core.values import INLINE
from trainkit.runtime.core.values import STORED
from trainkit.runtime.core.values import Value
from trainkit.runtime.core.values import error_value
from trainkit.runtime.wire.protocol import ActorStatus
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.protocol import new_id
from trainkit.runtime.wire.serialization import dumps
from trainkit.runtime.wire.serialization import inline_buffers
from trainkit.runtime.wire.serialization import loads

ME = "ipc://me"
NODE = "ipc://node"
CONTROL = "ipc://control"
PEER = "ipc://peer"


def _value(x: Any) -> Value:
    meta, buffers, _ = dumps(x)
    return (INLINE, meta, inline_buffers(buffers))


def _read(value: Value | None) -> Any:
    assert value is not None
    return loads(value[1], value[2])


def _ref(oid: bytes, owner: str = ME) -> ObjectRef:
    return ObjectRef(oid, owner, _add_ref=False)  # no runtime here: counts are explicit


def _sent(effects: Effects, kind: int | None = None) -> list[tuple[str, tuple[Any, ...]]]:
    """The messages recorded so far (all, or those of one kind), taken out."""
    sends = effects.take_sends()
    return [(addr, msg) for addr, msg in sends if kind is None or msg[0] == kind]


def _freed(effects: Effects) -> list[tuple[Any, ...]]:
    """The messages for this machine's object store recorded so far, taken out."""
    return effects.take_store_sends()


def _wake(effects: Effects) -> None:
    for waiter in effects.take_wakeups():
        waiter()


class _Parts:
    def __init__(self, cpus: float = 2.0) -> None:
        self.effects = Effects()
        self.forgotten: list[bytes] = []
        self.out_of_scope: list[bytes] = []
        self.table = OwnershipTable(ME, self.effects,
                                    forget_mapping=self.forgotten.append,
                                    on_actor_out_of_scope=self._out_of_scope)
        self.tasks = TaskSubmitter(self.table, self.effects, self_addr=ME,
                                   control_addr=CONTROL, cpus=cpus)
        self.calls = ActorCaller(self.table, self.effects, self_addr=ME, control_addr=CONTROL)

    def _out_of_scope(self, actor_id: bytes) -> None:
        self.out_of_scope.append(actor_id)
        self.calls.out_of_scope(actor_id)


@pytest.fixture
def parts() -> _Parts:
    return _Parts()


# ---------------------------------------------------------------------- ownership table


def test_an_owned_object_is_freed_with_its_last_local_ref(parts: _Parts) -> None:
    t = parts.table
    oid = new_id()
    t.own(oid, (STORED, "node-1", 100))
    t.add_ref(oid, ME)
    t.add_ref(oid, ME)
    t.remove_ref(oid, ME)
    assert oid in t.owned and not _sent(parts.effects)
    t.remove_ref(oid, ME)
    assert oid not in t.owned
    assert not _sent(parts.effects)
    assert _freed(parts.effects) == [(Msg.STORE_FREE, [oid], "node-1")]
    assert parts.forgotten == [oid]
    assert _read(t.lookup(_ref(oid))).__class__ is ObjectLostError


def test_borrowers_keep_an_object_alive_until_they_release_it(parts: _Parts) -> None:
    t = parts.table
    oid = new_id()
    t.own(oid, _value(1))
    t.add_ref(oid, ME)
    t.borrowed_by(oid, PEER)
    t.borrowed_by(oid, PEER)  # two BORROWs (e.g. after a re-borrow): two RELEASEs end it
    t.remove_ref(oid, ME)
    t.released_by(oid, PEER)
    assert oid in t.owned
    t.released_by(oid, PEER)
    assert oid not in t.owned


def test_an_object_dropped_while_its_task_runs_is_freed_when_the_value_comes(
        parts: _Parts) -> None:
    t = parts.table
    oid = new_id()
    t.own(oid)
    t.add_ref(oid, ME)
    t.value_requested(oid, PEER)  # a process asked before the value existed
    t.remove_ref(oid, ME)
    assert oid in t.owned  # abandoned, not freed: the task may still write it
    t.set_result(oid, (STORED, "node-1", 10), holder="ipc://worker")
    sent = _sent(parts.effects)
    assert oid not in t.owned
    assert _freed(parts.effects) == [(Msg.STORE_FREE, [oid], "node-1")]
    assert ("ipc://worker", (Msg.RELEASE_CONTAINED, oid)) in sent
    (_, reply), = [s for s in sent if s[1][0] == Msg.OBJECT_VALUE]
    assert isinstance(_read(reply[2]), ObjectLostError)


def test_a_second_result_for_one_object_is_released_not_kept(parts: _Parts) -> None:
    t = parts.table
    oid = new_id()
    t.own(oid)
    t.set_result(oid, _value("first"))
    t.set_result(oid, _value("second"), holder="ipc://worker")
    assert _read(t.lookup(_ref(oid))) == "first"
    assert _sent(parts.effects) == [("ipc://worker", (Msg.RELEASE_CONTAINED, oid))]
    gone = new_id()
    t.set_result(gone, (STORED, "node-2", 5))  # freed before its result came
    assert _freed(parts.effects) == [(Msg.STORE_FREE, [gone], "node-2")]


def test_a_borrowed_object_is_borrowed_once_asked_for_once_and_released(
        parts: _Parts) -> None:
    t = parts.table
    oid = new_id()
    ref = _ref(oid, PEER)
    t.add_ref(oid, PEER)
    t.add_ref(oid, PEER)
    assert _sent(parts.effects) == [(PEER, (Msg.BORROW, oid, ME))]
    woken: list[int] = []
    assert not t.when_ready(ref, lambda: woken.append(1))
    assert not t.when_ready(ref, lambda: woken.append(2))
    assert _sent(parts.effects) == [(PEER, (Msg.GET_OBJECT, oid, ME))]
    t.value_arrived(oid, _value(42))
    _wake(parts.effects)
    assert woken == [1, 2] and _read(t.lookup(ref)) == 42
    assert t.when_ready(ref, lambda: woken.append(3))
    t.remove_ref(oid, PEER)
    t.remove_ref(oid, PEER)
    assert _sent(parts.effects) == [(PEER, (Msg.RELEASE, oid, ME))]
    assert oid not in t.borrowed and parts.forgotten == [oid]


def test_a_dead_process_releases_its_borrows_and_loses_what_it_owned(parts: _Parts) -> None:
    t = parts.table
    mine, theirs = new_id(), new_id()
    t.own(mine, _value("x"))
    t.borrowed_by(mine, PEER)
    t.add_ref(theirs, PEER)
    woken: list[bool] = []
    t.when_ready(_ref(theirs, PEER), lambda: woken.append(True))
    t.process_died(PEER, "SIGKILL")
    _wake(parts.effects)
    assert mine not in t.owned
    assert woken == [True]
    err = _read(t.lookup(_ref(theirs, PEER)))
    assert isinstance(err, ObjectLostError) and "SIGKILL" in str(err)


def test_objects_stored_on_a_dead_node_are_lost(parts: _Parts) -> None:
    t = parts.table
    there, here = new_id(), new_id()
    t.own(there, (STORED, "node-dead", 1))
    t.own(here, (STORED, "node-alive", 1))
    t.node_died("node-dead", "heartbeats stopped")
    assert isinstance(_read(t.lookup(_ref(there))), ObjectLostError)
    assert t.lookup(_ref(here)) == (STORED, "node-alive", 1)


def test_a_value_asked_for_before_it_exists_is_sent_when_it_does(parts: _Parts) -> None:
    t = parts.table
    oid = new_id()
    t.own(oid)
    t.add_ref(oid, ME)
    t.value_requested(oid, PEER)
    assert not _sent(parts.effects)
    t.set_result(oid, _value("v"))
    (addr, msg), = _sent(parts.effects)
    assert addr == PEER and msg[:2] == (Msg.OBJECT_VALUE, oid) and _read(msg[2]) == "v"
    t.value_requested(new_id(), PEER)  # unknown: freed long ago
    (_, msg), = _sent(parts.effects)
    assert isinstance(_read(msg[2]), ObjectLostError)


def test_an_actor_leaves_scope_with_its_last_handle_unless_pinned(parts: _Parts) -> None:
    t = parts.table
    actor, named = new_id(), new_id()
    t.own_actor(actor, pinned=False)
    t.own_actor(named, pinned=True)
    t.add_ref(actor, ME)
    t.add_ref(named, ME)
    t.remove_ref(actor, ME)
    t.remove_ref(named, ME)
    assert parts.out_of_scope == [actor] and named in t.owned


def test_refs_held_for_a_caller_are_kept_until_it_frees_the_value(parts: _Parts) -> None:
    t = parts.table
    oid = new_id()
    assert not t.holds_anything()
    t.hold_for_caller(oid, ["a ref"])
    assert t.holds_anything()
    t.caller_released(oid)
    assert not t.holds_anything()


# ---------------------------------------------------------------------- task submitter


def _spec(arg_refs: list[ObjectRef] | None = None, retries: int = 0,
          retry_exceptions: bool | tuple[type[BaseException], ...] = False,
          fn_id: bytes = b"fn") -> TaskSpec:
    return TaskSpec(new_id(), "task", fn_id, b"blob", (b"", []), arg_refs or [], [],
                    new_id(), (("CPU", 1.0),), {"CPU": 1.0}, None, retries, retry_exceptions)


def _submit(parts: _Parts, spec: TaskSpec) -> TaskSpec:
    parts.table.own(spec.return_id)  # type: ignore[arg-type]
    parts.tasks.submit(spec)
    return spec


def _grant(parts: _Parts, worker: bytes = b"w1") -> tuple[bytes, tuple[Any, ...] | None]:
    """Grant the oldest lease request; the EXEC_TASK it led to, if any."""
    requests = _sent(parts.effects, Msg.REQUEST_LEASE)
    assert requests, "no lease was requested"
    lease_id = requests[0][1][1]
    parts.tasks.lease_granted(lease_id, worker, "ipc://exec-" + worker.decode(),
                              "ipc://ctl-" + worker.decode(), ())
    execs = _sent(parts.effects, Msg.EXEC_TASK)
    return lease_id, execs[0][1] if execs else None


def test_a_task_gets_a_lease_runs_and_returns_it(parts: _Parts) -> None:
    spec = _submit(parts, _spec())
    lease_id, run = _grant(parts)
    assert run is not None and run[1] == spec.task_id and run[4] == b"blob"
    parts.tasks.task_done(spec.task_id, spec.return_id, _value(7), None)
    assert _sent(parts.effects) == [(CONTROL, (Msg.RETURN_LEASE, lease_id))]
    assert _read(parts.table.lookup(_ref(spec.return_id))) == 7  # type: ignore[arg-type]


def test_a_leased_worker_runs_queued_tasks_in_turn_and_gets_each_function_once(
        parts: _Parts) -> None:
    first, second = _submit(parts, _spec()), _submit(parts, _spec())
    requests = _sent(parts.effects, Msg.REQUEST_LEASE)
    assert len(requests) == 2
    parts.tasks.lease_granted(requests[0][1][1], b"w1", "ipc://exec", "ipc://ctl", ())
    (_, run), = _sent(parts.effects, Msg.EXEC_TASK)
    assert run[1] == first.task_id
    parts.tasks.task_done(first.task_id, first.return_id, _value(1), None)
    (_, run), = _sent(parts.effects, Msg.EXEC_TASK)
    assert run[1] == second.task_id and run[4] is None  # the worker has the function
    parts.tasks.lease_granted(requests[1][1][1], b"w2", "ipc://exec2", "ipc://ctl2", ())
    assert _sent(parts.effects) == [(CONTROL, (Msg.RETURN_LEASE, requests[1][1][1]))]


def test_lease_requests_per_shape_are_capped_at_twice_the_cpus() -> None:
    parts = _Parts(cpus=2)
    for _ in range(10):
        _submit(parts, _spec())
    assert len(_sent(parts.effects, Msg.REQUEST_LEASE)) == 4


def _backlog(n: int) -> tuple[_Parts, list[TaskSpec], list[tuple[str, tuple[Any, ...]]]]:
    """One CPU (two lease requests out at most) and ``n`` tasks queued; the requests."""
    parts = _Parts(cpus=1)
    specs = [_submit(parts, _spec()) for _ in range(n)]
    requests = _sent(parts.effects, Msg.REQUEST_LEASE)
    assert len(requests) == 2
    return parts, specs, requests


def _run_ids(parts: _Parts) -> list[bytes]:
    return [msg[1] for _, msg in _sent(parts.effects, Msg.EXEC_TASK)]


def test_with_a_backlog_a_lease_gets_its_next_task_before_the_first_is_done() -> None:
    parts, specs, requests = _backlog(5)
    parts.tasks.lease_granted(requests[0][1][1], b"w1", "ipc://exec", "ipc://ctl", ())
    assert _run_ids(parts) == [specs[0].task_id, specs[1].task_id]  # two in flight
    parts.tasks.task_done(specs[0].task_id, specs[0].return_id, _value(0), None)
    assert _run_ids(parts) == [specs[2].task_id]  # and two again
    assert _read(parts.table.lookup(_ref(specs[0].return_id))) == 0  # type: ignore[arg-type]


def test_no_task_goes_ahead_while_the_leases_asked_for_could_take_the_queue() -> None:
    parts, specs, requests = _backlog(2)
    parts.tasks.lease_granted(requests[0][1][1], b"w1", "ipc://exec", "ipc://ctl", ())
    assert _run_ids(parts) == [specs[0].task_id]  # the second waits for its own worker
    parts.tasks.lease_granted(requests[1][1][1], b"w2", "ipc://exec2", "ipc://ctl2", ())
    assert _run_ids(parts) == [specs[1].task_id]


def test_tasks_a_blocked_worker_sends_back_run_elsewhere_unstarted_and_none_go_ahead() -> None:
    parts, specs, requests = _backlog(5)
    parts.tasks.lease_granted(requests[0][1][1], b"w1", "ipc://exec", "ipc://ctl", ())
    assert _run_ids(parts) == [specs[0].task_id, specs[1].task_id]
    parts.tasks.task_bounced([specs[1].task_id])  # the first blocked in get()
    # Nothing more goes to w1 while its task is blocked; the CPU it lends can be used.
    assert [msg[0] for _, msg in _sent(parts.effects)] == [Msg.REQUEST_LEASE]
    parts.tasks.lease_granted(requests[1][1][1], b"w2", "ipc://exec2", "ipc://ctl2", ())
    (_, first), (_, second) = _sent(parts.effects, Msg.EXEC_TASK)
    assert first[1] == specs[1].task_id and first[10] == 0  # the same attempt, not a retry
    assert second[1] == specs[2].task_id
    parts.tasks.task_done(specs[0].task_id, specs[0].return_id, _value(0), None)
    assert _run_ids(parts) == [specs[3].task_id]  # w1 unblocked gets work again


def test_a_bounced_task_that_carried_the_function_has_it_sent_again() -> None:
    parts = _Parts(cpus=1)
    first = _submit(parts, _spec(fn_id=b"f"))
    later = [_submit(parts, _spec(fn_id=b"g")) for _ in range(3)]
    requests = _sent(parts.effects, Msg.REQUEST_LEASE)
    parts.tasks.lease_granted(requests[0][1][1], b"w1", "ipc://exec", "ipc://ctl", ())
    (_, a), (_, b) = _sent(parts.effects, Msg.EXEC_TASK)
    assert (a[1], b[1], b[4]) == (first.task_id, later[0].task_id, b"blob")
    parts.tasks.task_bounced([later[0].task_id])
    parts.tasks.task_done(first.task_id, first.return_id, _value(0), None)
    runs = [msg for _, msg in _sent(parts.effects, Msg.EXEC_TASK)]
    assert runs[0][1] == later[0].task_id and runs[0][4] == b"blob"


def test_a_crash_retries_the_running_task_and_requeues_those_behind_it_for_free() -> None:
    parts, specs, requests = _backlog(4)
    parts.tasks.lease_granted(requests[0][1][1], b"w1", "ipc://exec", "ipc://ctl", ())
    _sent(parts.effects)
    parts.tasks.worker_died(requests[0][1][1], "SIGKILL")  # no retries: the first fails
    err = _read(parts.table.lookup(_ref(specs[0].return_id)))  # type: ignore[arg-type]
    assert isinstance(err, WorkerCrashedError)
    assert parts.table.lookup(_ref(specs[1].return_id)) is None  # type: ignore[arg-type]
    parts.tasks.lease_granted(requests[1][1][1], b"w2", "ipc://exec2", "ipc://ctl2", ())
    (_, run), *_ = _sent(parts.effects, Msg.EXEC_TASK)
    assert run[1] == specs[1].task_id and run[10] == 0  # it never started: no retry used


def test_cancel_of_a_task_queued_behind_a_running_one_never_kills_the_worker() -> None:
    parts, specs, requests = _backlog(5)
    parts.tasks.lease_granted(requests[0][1][1], b"w1", "ipc://exec", "ipc://ctl-w1", ())
    _sent(parts.effects)
    parts.tasks.cancel(specs[1].return_id, force=True)  # type: ignore[arg-type]
    assert _sent(parts.effects) == [("ipc://ctl-w1", (Msg.CANCEL_TASK, specs[1].task_id))]
    parts.tasks.task_done(specs[1].task_id, specs[1].return_id, _value("skipped"), None)
    err = _read(parts.table.lookup(_ref(specs[1].return_id)))  # type: ignore[arg-type]
    assert isinstance(err, TaskCancelledError)


def test_a_task_waits_for_its_owned_arguments(parts: _Parts) -> None:
    dep = new_id()
    parts.table.own(dep)
    _submit(parts, _spec([_ref(dep)]))
    assert not _sent(parts.effects, Msg.REQUEST_LEASE)
    parts.table.set_result(dep, _value(1))
    _wake(parts.effects)
    assert len(_sent(parts.effects, Msg.REQUEST_LEASE)) == 1


def test_a_failed_argument_is_the_result_without_running(parts: _Parts) -> None:
    dep = new_id()
    parts.table.own(dep)
    spec = _submit(parts, _spec([_ref(dep)]))
    parts.table.set_result(dep, error_value(ValueError("upstream broke")))
    _wake(parts.effects)
    assert not _sent(parts.effects, Msg.REQUEST_LEASE)
    err = _read(parts.table.lookup(_ref(spec.return_id)))  # type: ignore[arg-type]
    assert isinstance(err, ValueError) and "upstream broke" in str(err)


def test_a_crashed_worker_retries_the_task_then_fails_it(parts: _Parts) -> None:
    spec = _submit(parts, _spec(retries=1))
    lease_id, _ = _grant(parts)
    parts.tasks.worker_died(lease_id, "SIGKILL")
    lease_id, run = _grant(parts, b"w2")
    assert run is not None and run[1] == spec.task_id and run[10] == 1  # attempt 1
    parts.tasks.worker_died(lease_id, "SIGKILL again")
    err = _read(parts.table.lookup(_ref(spec.return_id)))  # type: ignore[arg-type]
    assert isinstance(err, WorkerCrashedError) and "SIGKILL again" in str(err)


@pytest.mark.parametrize("retry_exceptions, retried", [
    (False, False), (True, True), ((KeyError,), True), ((TypeError,), False)])
def test_exceptions_are_retried_as_retry_exceptions_says(
        parts: _Parts, retry_exceptions: Any, retried: bool) -> None:
    spec = _submit(parts, _spec(retries=1, retry_exceptions=retry_exceptions))
    _grant(parts)
    parts.tasks.task_done(spec.task_id, spec.return_id, error_value(KeyError("k")), None)
    value = parts.table.lookup(_ref(spec.return_id))  # type: ignore[arg-type]
    if retried:
        assert value is None
        _, run = _grant(parts, b"w2")
        assert run is not None and run[1] == spec.task_id and run[10] == 1
    else:
        assert isinstance(_read(value), KeyError)


def test_cancel_of_a_queued_task_fails_it_and_of_a_running_one_interrupts_it(
        parts: _Parts) -> None:
    running, queued = _submit(parts, _spec()), _submit(parts, _spec())
    requests = _sent(parts.effects, Msg.REQUEST_LEASE)
    parts.tasks.lease_granted(requests[0][1][1], b"w1", "ipc://exec", "ipc://ctl-w1", ())
    _sent(parts.effects)
    parts.tasks.cancel(queued.return_id, force=False)  # type: ignore[arg-type]
    err = _read(parts.table.lookup(_ref(queued.return_id)))  # type: ignore[arg-type]
    assert isinstance(err, TaskCancelledError)
    parts.tasks.cancel(running.return_id, force=False)  # type: ignore[arg-type]
    assert _sent(parts.effects) == [("ipc://ctl-w1", (Msg.CANCEL_TASK, running.task_id))]
    parts.tasks.task_done(running.task_id, running.return_id, _value("finished anyway"), None)
    err = _read(parts.table.lookup(_ref(running.return_id)))  # type: ignore[arg-type]
    assert isinstance(err, TaskCancelledError)


def test_force_cancel_kills_the_worker_and_does_not_retry(parts: _Parts) -> None:
    spec = _submit(parts, _spec(retries=3))
    lease_id, _ = _grant(parts)
    parts.tasks.cancel(spec.return_id, force=True)  # type: ignore[arg-type]
    assert _sent(parts.effects) == [(CONTROL, (Msg.KILL_WORKER, b"w1"))]
    parts.tasks.worker_died(lease_id, "killed")
    assert not _sent(parts.effects, Msg.REQUEST_LEASE)
    err = _read(parts.table.lookup(_ref(spec.return_id)))  # type: ignore[arg-type]
    assert isinstance(err, TaskCancelledError)


def test_a_lease_that_cannot_be_granted_fails_the_queued_tasks(parts: _Parts) -> None:
    specs = [_submit(parts, _spec()) for _ in range(3)]
    (_, req), *_ = _sent(parts.effects, Msg.REQUEST_LEASE)
    parts.tasks.lease_failed(req[1], ValueError("no node has a GPU"))
    for spec in specs:
        err = _read(parts.table.lookup(_ref(spec.return_id)))  # type: ignore[arg-type]
        assert isinstance(err, ValueError) and "GPU" in str(err)


# ---------------------------------------------------------------------- actor caller


def _call(arg_refs: list[ObjectRef] | None = None, retries: int = 0) -> ActorCall:
    return ActorCall(new_id(), "m", (b"", []), arg_refs or [], [], new_id(), retries)


def _actor(parts: _Parts, owner: str = ME) -> tuple[bytes, Any]:
    actor_id = new_id()
    if owner == ME:
        parts.table.own_actor(actor_id, pinned=False)
    parts.table.add_ref(actor_id, owner)  # the handle
    client = parts.calls.client(actor_id, "A", owner, 0)
    _sent(parts.effects)
    return actor_id, client


def _make_call(parts: _Parts, client: Any, call: ActorCall) -> ActorCall:
    parts.table.own(call.return_id)  # type: ignore[arg-type]
    parts.calls.call(client, call)
    return call


def _alive(parts: _Parts, actor_id: bytes, addr: str = "ipc://actor") -> None:
    parts.calls.actor_state(actor_id, ActorStatus.ALIVE.value, addr, "")


def _calls_sent(parts: _Parts) -> list[bytes]:
    return [m[1] for _, m in _sent(parts.effects, Msg.ACTOR_CALL)]


def test_calls_wait_for_the_actor_and_go_in_order(parts: _Parts) -> None:
    actor_id, client = _actor(parts)
    calls = [_make_call(parts, client, _call()) for _ in range(3)]
    assert not _calls_sent(parts)
    _alive(parts, actor_id)
    assert _calls_sent(parts) == [c.task_id for c in calls]


def test_a_call_waiting_for_an_argument_holds_back_the_later_ones(parts: _Parts) -> None:
    actor_id, client = _actor(parts)
    _alive(parts, actor_id)
    dep = new_id()
    parts.table.own(dep)
    slow = _make_call(parts, client, _call([_ref(dep)]))
    after = _make_call(parts, client, _call())
    assert not _calls_sent(parts)
    parts.table.set_result(dep, _value(1))
    _wake(parts.effects)
    assert _calls_sent(parts) == [slow.task_id, after.task_id]


def test_an_actor_whose_last_handle_goes_exits_only_after_its_calls_are_answered(
        parts: _Parts) -> None:
    actor_id, client = _actor(parts)
    _alive(parts, actor_id)
    call = _make_call(parts, client, _call())
    _sent(parts.effects)
    parts.table.remove_ref(actor_id, ME)  # the user dropped the handle
    assert not _sent(parts.effects, Msg.ACTOR_EXIT) and not parts.out_of_scope
    parts.calls.call_done(call.task_id, call.return_id, _value("answer"), None)
    assert _sent(parts.effects, Msg.ACTOR_EXIT) == [("ipc://actor", (Msg.ACTOR_EXIT,))]
    assert _read(parts.table.lookup(_ref(call.return_id))) == "answer"  # type: ignore[arg-type]


def test_an_actor_out_of_scope_before_it_is_alive_exits_when_it_is(parts: _Parts) -> None:
    actor_id, _ = _actor(parts)
    parts.table.remove_ref(actor_id, ME)
    assert not _sent(parts.effects, Msg.ACTOR_EXIT)
    _alive(parts, actor_id)
    assert _sent(parts.effects, Msg.ACTOR_EXIT) == [("ipc://actor", (Msg.ACTOR_EXIT,))]


def test_a_borrower_releases_an_actor_only_after_its_calls_are_answered(
        parts: _Parts) -> None:
    actor_id, client = _actor(parts, owner=PEER)
    _alive(parts, actor_id)
    call = _make_call(parts, client, _call())
    _sent(parts.effects)
    parts.table.remove_ref(actor_id, PEER)
    assert not _sent(parts.effects, Msg.RELEASE)
    parts.table.add_ref(actor_id, PEER)  # a new handle meanwhile: no second BORROW
    assert not _sent(parts.effects, Msg.BORROW)
    parts.table.remove_ref(actor_id, PEER)
    parts.calls.call_done(call.task_id, call.return_id, _value(None), None)
    assert _sent(parts.effects, Msg.RELEASE) == [(PEER, (Msg.RELEASE, actor_id, ME))]


def test_a_restart_resends_calls_with_retries_and_fails_the_others(parts: _Parts) -> None:
    actor_id, client = _actor(parts)
    _alive(parts, actor_id)
    retried = _make_call(parts, client, _call(retries=1))
    lost = _make_call(parts, client, _call(retries=0))
    _sent(parts.effects)
    parts.calls.actor_state(actor_id, ActorStatus.RESTARTING.value, None, "it crashed")
    err = _read(parts.table.lookup(_ref(lost.return_id)))  # type: ignore[arg-type]
    assert isinstance(err, ActorDiedError)
    _alive(parts, actor_id, "ipc://actor-2")
    assert _calls_sent(parts) == [retried.task_id]
    parts.calls.actor_state(actor_id, ActorStatus.DEAD.value, None, "gone for good")
    err = _read(parts.table.lookup(_ref(retried.return_id)))  # type: ignore[arg-type]
    assert isinstance(err, ActorDiedError) and "gone for good" in str(err)


def test_calls_after_kill_fail_at_once(parts: _Parts) -> None:
    _, client = _actor(parts)
    queued = _make_call(parts, client, _call())
    parts.calls.mark_killed(client)
    later = _make_call(parts, client, _call())
    for call in (queued, later):
        err = _read(parts.table.lookup(_ref(call.return_id)))  # type: ignore[arg-type]
        assert isinstance(err, ActorDiedError) and "kill()" in str(err)
    assert not _calls_sent(parts)


def test_an_argument_that_failed_fails_the_call_without_sending_it(parts: _Parts) -> None:
    actor_id, client = _actor(parts)
    _alive(parts, actor_id)
    dep = new_id()
    parts.table.own(dep, error_value(RuntimeError("bad input")))
    call = _make_call(parts, client, _call([_ref(dep)]))
    assert not _calls_sent(parts)
    err = _read(parts.table.lookup(_ref(call.return_id)))  # type: ignore[arg-type]
    assert isinstance(err, RuntimeError)


# ---------------------------------------------------------------------- request tracker


def test_requests_are_answered_by_id_and_fail_when_their_target_dies() -> None:
    tracker = RequestTracker()
    a_id, a = tracker.open(PEER, "asking the peer")
    b_id, b = tracker.open(NODE, "asking the node")
    got: list[tuple[bool, Any]] = []
    tracker.open(PEER, "async", callback=lambda ok, payload: got.append((ok, payload)))
    tracker.reply(b_id, True, "fine")
    assert b.event.is_set() and b.value() == "fine"
    tracker.fail_target(PEER, ObjectLostError("", "the process died"))
    assert a.event.is_set() and got and got[0][0] is False
    with pytest.raises(ObjectLostError):
        a.value()
    tracker.reply(a_id, True, "too late")  # dropped, no error
    c_id, c = tracker.open(NODE, "asking again")
    tracker.abandon(c_id)
    tracker.reply(c_id, True, "too late")
    assert not c.event.is_set()


def test_force_cancel_of_a_task_leased_to_its_own_owner_interrupts_it(parts: _Parts) -> None:
    spec = _submit(parts, _spec())
    (_, req), = _sent(parts.effects, Msg.REQUEST_LEASE)
    parts.tasks.lease_granted(req[1], b"me", "ipc://my-exec", ME, ())  # this very process
    _sent(parts.effects)
    parts.tasks.cancel(spec.return_id, force=True)  # type: ignore[arg-type]
    assert _sent(parts.effects) == [(ME, (Msg.CANCEL_TASK, spec.task_id))]
