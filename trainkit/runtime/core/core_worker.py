"""The core worker's I/O shell: sockets, the I/O thread, the one lock, and the parts.

``CoreWorker`` lives in every driver and worker process. It holds the parts (see
``trainkit.runtime.core``), routes each message of its inbox to the part that owns the
state (``_handlers``: the whole list of what a process is told), and gives user threads
put/get/wait/submit. Every part runs under one re-entrant lock (``with self.guarded``): on
the way out the messages the parts recorded are sent, still under the lock, and the waiters
they woke run after it is released.

Message flow, seen from one process::

    user thread --put/submit/call--> parts --Effects--> shell --zmq--> node / peers
    peers --inbox--> I/O thread --_handlers--> parts --Effects--> shell
    get()/wait() block on events the parts wake (their values come from the owner:
    GET_OBJECT/OBJECT_VALUE for borrowed refs, TASK_DONE for task results).
"""

from __future__ import annotations

import pickle
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import ClassVar

import zmq

from trainkit.exceptions import GetTimeoutError
from trainkit.exceptions import ObjectLostError
from trainkit.exceptions import RuntimeSystemError
from trainkit.runtime.core.actor_caller import ActorCall
from trainkit.runtime.core.actor_caller import ActorCaller
from trainkit.runtime.core.actor_caller import ActorClient
from trainkit.runtime.core.effects import Effects
from trainkit.runtime.core.effects import Waiter
from trainkit.runtime.core.ownership import OwnershipTable
from trainkit.runtime.core.refs import ObjectRef
from trainkit.runtime.core.requests import Callback
from trainkit.runtime.core.requests import RequestTracker
from trainkit.runtime.core.requests import no_answer
from trainkit.runtime.core.store_client import StoreClient
from trainkit.runtime.core.task_submitter import TaskSpec
from trainkit.runtime.core.task_submitter import TaskSubmitter
from trainkit.runtime.core.values import ReturnId
from trainkit.runtime.core.values import Value
from trainkit.runtime.wire.auth import FrameAuth
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.protocol import new_id
from trainkit.runtime.wire.serialization import INLINE_THRESHOLD_BYTES
from trainkit.runtime.wire.serialization import buffers_size
from trainkit.runtime.wire.serialization import dumps
from trainkit.runtime.wire.serialization import inline_buffers
from trainkit.runtime.wire.serialization import loads
from trainkit.runtime.wire.transport import Inbox
from trainkit.runtime.wire.transport import Outbox
from trainkit.runtime.wire.transport import endpoint
from trainkit.runtime.wire.transport import make_context

# How long a request to the node service may take before the caller gets an error that
# names it. Generous: a busy 2-core machine under test can stall for seconds.
NODE_REQUEST_TIMEOUT_S = 60.0
# How often a worker blocked in get() looks for tasks queued behind its own (see on_blocked).
BLOCKED_POLL_S = 0.05


class _ArgRef:
    """Placeholder for a top-level ObjectRef argument: the worker passes its value."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (_ArgRef, (self.index,))


_NO_ARGS: tuple[Any, ...] = (pickle.dumps(((), {}), protocol=5), [])


class _Guarded:
    """``with core.guarded:`` holds the core's lock; leaving it sends what the parts
    decided (still under the lock) and, leaving the outermost one, wakes their waiters."""

    __slots__ = ("core",)

    def __init__(self, core: CoreWorker) -> None:
        self.core = core

    def __enter__(self) -> None:
        core = self.core
        core.lock.acquire()
        core._depth += 1

    def __exit__(self, *exc: object) -> None:
        for waiter in self.core._leave():
            waiter()


class CoreWorker:
    """Runtime state of one process (driver or worker)."""

    # Every message a process can be told: the part that handles it ("" for the shell), its
    # method, and whether it runs under ``guarded``. tests/runtime/test_wire.py holds each
    # method's parameters to the kind's FIELDS.
    HANDLERS: ClassVar[dict[int, tuple[str, str, bool]]] = {
        Msg.REPLY: ("requests", "reply", False),
        Msg.TASK_DONE: ("", "_task_done", True),
        Msg.LEASE_GRANTED: ("tasks", "lease_granted", True),
        Msg.LEASE_FAILED: ("tasks", "lease_failed", True),
        Msg.WORKER_DIED: ("tasks", "worker_died", True),
        Msg.CANCEL_REF: ("tasks", "cancel", True),
        Msg.TASK_BOUNCED: ("tasks", "task_bounced", True),
        Msg.ACTOR_STATE: ("calls", "actor_state", True),
        Msg.GET_OBJECT: ("table", "value_requested", True),
        Msg.OBJECT_VALUE: ("table", "value_arrived", True),
        Msg.BORROW: ("table", "borrowed_by", True),
        Msg.RELEASE: ("table", "released_by", True),
        Msg.RELEASE_CONTAINED: ("table", "caller_released", True),
        Msg.NODE_DIED: ("table", "node_died", True),
        Msg.PROCESS_DIED: ("", "_process_died", False),
        Msg.LOG: ("", "_log", False),
    }

    def __init__(
        self,
        *,
        session: str,
        node_addr: str,
        node_id: str,
        arena_path: str,
        arena_capacity: int,
        name: str,
        cluster_resources: dict[str, float],
        control_addr: str | None = None,
        host: str | None = None,
        auth: FrameAuth | None = None,
        store_socket: str = "",
    ) -> None:
        self.session = session
        self.node_addr = node_addr
        # Where leases, actors and placement groups are decided: this node's service in
        # embedded mode, the head in a cluster.
        self.control_addr = control_addr or node_addr
        self.node_id = node_id
        self.ctx = make_context()
        self.inbox = Inbox(self.ctx, endpoint(session, f"{name}.ctl", host), auth)
        self.ctl_addr: str = self.inbox.address
        self.out = Outbox(self.ctx, auth)
        self.lock = threading.RLock()
        self._depth = 0
        self.guarded = _Guarded(self)
        self.effects = Effects()
        self.requests = RequestTracker()
        self.store = StoreClient(
            node_id=node_id, arena_path=arena_path, arena_capacity=arena_capacity,
            store_socket=store_socket, requests=self.requests, request_node=self.request_node,
            send_node=lambda msg: self.out.send(self.node_addr, msg), lock=self.lock,
            is_held=self._holds, session=session)
        self.table = OwnershipTable(self.ctl_addr, self.effects,
                                    forget_mapping=self.store.forget_mapping,
                                    on_actor_out_of_scope=self._actor_out_of_scope)
        self.tasks = TaskSubmitter(self.table, self.effects, self_addr=self.ctl_addr,
                                   control_addr=self.control_addr,
                                   cpus=cluster_resources.get("CPU", 1.0), guard=self._guard)
        self.calls = ActorCaller(self.table, self.effects, self_addr=self.ctl_addr,
                                 control_addr=self.control_addr, guard=self._guard,
                                 forget_peer=self.out.forget)
        self._cluster_resources = dict(cluster_resources)
        self.log_sink: Callable[[str, str], None] | None = None
        # Workers tell the node when a task blocks in get()/wait() so its CPUs are lent out.
        self.blocked_msg: tuple[tuple[Any, ...], tuple[Any, ...]] | None = None
        # A worker's: called on the thread that blocks in get()/wait(), when it blocks and
        # every BLOCKED_POLL_S while it stays blocked (it sends back queued tasks).
        self.on_blocked: Callable[[], None] | None = None
        self._blocked_depth = 0
        self._closed = False
        self._io = threading.Thread(target=self._io_loop, name="trainkit-io", daemon=True)
        self._handlers: dict[int, Callable[..., None]] = {}
        for kind, (part, method, guarded) in self.HANDLERS.items():
            fn = getattr(getattr(self, part) if part else self, method)
            self._handlers[kind] = self._locked(fn) if guarded else fn
        # Kinds only some processes get (a worker's CANCEL_TASK, a driver's NODE_READY).
        self.extra_handlers: dict[int, Callable[..., None]] = {}

    # ------------------------------------------------------------------ plumbing
    def _locked(self, fn: Callable[..., None]) -> Callable[..., None]:
        """``fn`` run as ``with self.guarded`` would (spelled out: it wraps every handler)."""
        lock = self.lock

        def run(*args: Any) -> None:
            lock.acquire()
            self._depth += 1
            try:
                fn(*args)
            finally:
                wakeups = self._leave()
            for waiter in wakeups:
                waiter()

        return run

    def _leave(self) -> list[Waiter]:
        """The end of a guarded block (the caller holds the lock once more than before it):
        send what the parts decided, still under the lock, then release it; the waiters to
        wake once the outermost block is left."""
        effects = self.effects
        wakeups: list[Waiter] = []
        try:
            sends = effects.sends
            if sends:
                effects.sends = []
                send = self.send_quiet
                for addr, msg in sends:
                    send(addr, msg)
            if effects.store_sends:
                self._send_effects()
        finally:
            self._depth -= 1
            if self._depth == 0 and effects.wakeups:
                wakeups = effects.take_wakeups()
            self.lock.release()
        return wakeups

    def _guard(self, waiter: Waiter) -> Waiter:
        run: Waiter = self._locked(waiter)
        return run

    def _holds(self, oid: bytes) -> bool:
        return oid in self.table.owned or oid in self.table.borrowed

    def _actor_out_of_scope(self, actor_id: bytes) -> None:
        self.calls.out_of_scope(actor_id)

    def send_quiet(self, addr: str, msg: tuple[Any, ...]) -> None:
        if self._closed:
            return
        try:
            self.out.send(addr, msg)
        except Exception:
            pass

    @property
    def arena_path(self) -> str:
        return self.store.arena_path

    @arena_path.setter
    def arena_path(self, path: str) -> None:
        """The node tells its driver where its arena is once it made it."""
        self.store.arena_path = path

    @property
    def cluster_resources(self) -> dict[str, float]:
        return self._cluster_resources

    @cluster_resources.setter
    def cluster_resources(self, total: dict[str, float]) -> None:
        self._cluster_resources = dict(total)
        self.tasks.cpus = total.get("CPU", 1.0)

    def attach_store(self, node_addr: str, node_id: str, arena_path: str, arena_capacity: int,
                     store_socket: str) -> None:
        """A cluster driver found the node on its machine: use that node and its store."""
        old = self.store
        self.node_addr = node_addr
        self.node_id = node_id
        self.store = StoreClient(
            node_id=node_id, arena_path=arena_path, arena_capacity=arena_capacity,
            store_socket=store_socket, requests=self.requests, request_node=self.request_node,
            send_node=lambda msg: self.out.send(self.node_addr, msg), lock=self.lock,
            is_held=self._holds, session=self.session)
        self.table.forget_mapping = self.store.forget_mapping
        self.store.start()
        old.close()

    # ------------------------------------------------------------------ lifecycle
    def start(self, copy_threads: bool = True) -> None:
        self.out.connect(self.ctl_addr)  # connected early: close() wakes the I/O thread
        self._io.start()
        self.store.start(copy_threads)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.out.send(self.ctl_addr, (Msg.EXIT,))
        except Exception:
            pass
        if self._io.is_alive() and threading.current_thread() is not self._io:
            self._io.join(timeout=5)
        self.out.close()
        self.inbox.close()
        self.ctx.term()
        self.store.close()
        self.requests.fail_all(RuntimeSystemError("the runtime shut down"))

    def _io_loop(self) -> None:
        handlers = self._handlers
        while True:
            try:
                msg = self.inbox.recv()
            except zmq.ContextTerminated:
                return
            kind = msg[0]
            if kind == Msg.EXIT:
                return
            handler = handlers.get(kind) or self.extra_handlers.get(kind)
            if handler is None:
                print(f"trainkit: ignoring unknown message {kind!r}", file=sys.stderr)
                continue
            try:
                handler(*msg[1:])
            except Exception:  # a bug must not kill the I/O thread silently
                import traceback

                print("trainkit internal error in the I/O thread:", file=sys.stderr)
                traceback.print_exc()

    # ------------------------------------------------------------------ handlers
    def _task_done(self, task_id: bytes, return_id: ReturnId, value: Any,
                   holder: str | None) -> None:
        if task_id in self.calls.call_owner:
            self.calls.call_done(task_id, return_id, value, holder)
        else:
            self.tasks.task_done(task_id, return_id, value, holder)

    def _process_died(self, addr: str, cause: str) -> None:
        """Another process died: drop its borrows, fail what we waited for from it."""
        self.out.forget(addr)
        with self.guarded:
            self.table.process_died(addr, cause)
        self.requests.fail_target(addr, ObjectLostError("", f"the process died ({cause})"))

    def _log(self, stream: str, text: str) -> None:
        sink = self.log_sink
        if sink is not None:
            sink(stream, text)

    # ------------------------------------------------------------------ requests
    def request(self, target: str, kind: int, *fields: Any, what: str,
                timeout: float | None = NODE_REQUEST_TIMEOUT_S) -> Any:
        """Send a request carrying an id and wait for its REPLY (or a named timeout)."""
        req_id, pending = self.requests.open(target, what)
        self.out.send(target, (kind, req_id, self.ctl_addr, *fields))
        if not pending.event.wait(timeout):
            self.requests.abandon(req_id)
            raise no_answer(what, timeout, self.session)
        return pending.value()

    def request_async(self, target: str, kind: int, *fields: Any, what: str,
                      callback: Callback) -> None:
        """Send a request; ``callback(ok, payload)`` runs on the I/O thread with the reply."""
        req_id, _ = self.requests.open(target, what, callback)
        self.out.send(target, (kind, req_id, self.ctl_addr, *fields))

    def request_node(self, kind: int, *fields: Any, what: str,
                     timeout: float | None = NODE_REQUEST_TIMEOUT_S) -> Any:
        return self.request(self.node_addr, kind, *fields, what=what, timeout=timeout)

    def request_control(self, kind: int, *fields: Any, what: str,
                        timeout: float | None = NODE_REQUEST_TIMEOUT_S) -> Any:
        return self.request(self.control_addr, kind, *fields, what=what, timeout=timeout)

    def request_store(self, kind: int, *fields: Any, what: str,
                      timeout: float | None = NODE_REQUEST_TIMEOUT_S) -> Any:
        return self.store.request(kind, *fields, what=what, timeout=timeout)

    def reply(self, addr: str, req_id: int, ok: bool, payload: Any) -> None:
        self.out.send(addr, (Msg.REPLY, req_id, ok, payload))

    # ------------------------------------------------------------------ references
    # The two hottest calls (every ObjectRef made and dropped): they only ever send, never
    # wake a waiter, so they skip ``guarded``'s bookkeeping.
    def add_ref(self, oid: bytes, owner: str) -> None:
        with self.lock:
            self.table.add_ref(oid, owner)
            if self.effects.sends or self.effects.store_sends:
                self._send_effects()

    def remove_ref(self, oid: bytes, owner: str) -> None:
        with self.lock:
            self.table.remove_ref(oid, owner)
            if self.effects.sends or self.effects.store_sends:
                self._send_effects()

    def _send_effects(self) -> None:
        effects = self.effects
        for addr, msg in effects.take_sends():
            self.send_quiet(addr, msg)
        if effects.store_sends and not self._closed:
            for msg in effects.take_store_sends():
                try:
                    self.store.send(msg)
                except Exception:
                    pass

    def new_owned(self, value: Value | None = None) -> bytes:
        oid = new_id()
        with self.lock:
            self.table.own(oid, value)
        return oid

    def set_result(self, oid: bytes, value: Value) -> None:
        with self.guarded:
            self.table.set_result(oid, value)

    def hold_for_caller(self, oid: bytes, refs: list[Any]) -> None:
        with self.lock:
            self.table.hold_for_caller(oid, refs)

    def holds_anything(self) -> bool:
        with self.lock:
            return self.table.holds_anything()

    # ------------------------------------------------------------------ values
    def store_value(self, oid: bytes, meta: bytes, buffers: list[Any],
                    owner: str | None = None) -> Value:
        """The value of a serialized object: inline, or written to the store."""
        return self.store.store_value(oid, meta, buffers, owner or self.ctl_addr,
                                      NODE_REQUEST_TIMEOUT_S)

    def put(self, value: Any) -> ObjectRef:
        return self._put_serialized(*dumps(value, "the value passed to put()"))

    def _put_serialized(self, meta: bytes, buffers: list[Any], refs: list[Any]) -> ObjectRef:
        """Own a serialized value; the refs inside it stay alive as long as it does."""
        oid = new_id()
        with self.lock:
            entry = self.table.own(oid, contained=refs)
        entry.value = self.store.store_value(oid, meta, buffers, self.ctl_addr,
                                             NODE_REQUEST_TIMEOUT_S)
        return ObjectRef(oid, self.ctl_addr)

    def _lookup(self, ref: ObjectRef) -> Value | None:
        with self.lock:
            return self.table.lookup(ref)

    def get_one(self, ref: ObjectRef, timeout: float | None) -> Any:
        with self.lock:
            value = self.table.lookup(ref)
        if value is None:
            ev = threading.Event()
            with self.guarded:
                ready = self.table.when_ready(ref, ev.set)
            if not ready:
                self._blocking(True)
                try:
                    ready = self._wait_blocked(ev.wait, timeout)
                finally:
                    self._blocking(False)
            if not ready:
                raise GetTimeoutError(
                    f"get() timed out after {timeout} s waiting for {ref!r}; the task that "
                    "makes it is still queued or running")
            value = self._lookup(ref)
        assert value is not None
        return self.store.materialize(ref.id, value)

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        if len(refs) == 1:
            return [self.get_one(refs[0], timeout)]
        ready = self.wait_refs(refs, len(refs), timeout)
        if not all(ready):
            missing = [r for r, ok in zip(refs, ready, strict=False) if not ok]
            raise GetTimeoutError(
                f"get() timed out after {timeout} s: {len(missing)} of {len(refs)} objects "
                f"are not ready (first: {missing[0]!r})")
        out = []
        for ref in refs:
            value = self._lookup(ref)
            assert value is not None
            out.append(self.store.materialize(ref.id, value))
        return out

    def wait_refs(self, refs: Sequence[ObjectRef], num_returns: int,
                  timeout: float | None) -> list[bool]:
        """Block until ``num_returns`` of ``refs`` have values; return which are ready."""
        ready = [False] * len(refs)
        cond = threading.Condition(threading.Lock())
        count = [0]

        def make_cb(i: int) -> Waiter:
            def cb() -> None:
                with cond:
                    if not ready[i]:
                        ready[i] = True
                        count[0] += 1
                        if count[0] == num_returns:  # one wake-up, not one per value
                            cond.notify()
            return cb

        with self.guarded:
            known = [i for i, ref in enumerate(refs) if self.table.when_ready(ref, make_cb(i))]
        with cond:
            for i in known:
                if not ready[i]:
                    ready[i] = True
                    count[0] += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        with cond:
            if count[0] >= num_returns:
                return list(ready)
        def enough(step: float | None) -> bool:
            with cond:
                return cond.wait_for(lambda: count[0] >= num_returns, step)

        self._blocking(True)
        try:
            self._wait_blocked(enough, None if deadline is None
                               else max(0.0, deadline - time.monotonic()))
            with cond:
                return list(ready)
        finally:
            self._blocking(False)

    def _wait_blocked(self, wait: Callable[[float | None], bool], timeout: float | None
                      ) -> bool:
        """``wait(timeout)``, calling ``on_blocked`` first and every BLOCKED_POLL_S."""
        hook = self.on_blocked
        if hook is None:
            return wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            hook()
            step = BLOCKED_POLL_S if deadline is None else min(
                BLOCKED_POLL_S, deadline - time.monotonic())
            if step <= 0:
                return wait(0)
            if wait(step):
                return True

    def _blocking(self, blocked: bool) -> None:
        if self.blocked_msg is None:
            return
        with self.lock:
            self._blocked_depth += 1 if blocked else -1
            edge = self._blocked_depth == (1 if blocked else 0)
        if edge:
            self.send_quiet(self.control_addr, self.blocked_msg[0 if blocked else 1])

    # ------------------------------------------------------------------ arguments
    def encode_args(self, args: tuple[Any, ...], kwargs: dict[str, Any], what: str
                    ) -> tuple[tuple[Any, ...], list[ObjectRef], list[ObjectRef]]:
        """Serialize call arguments.

        Returns (payload, top-level refs, refs nested in the arguments).
        Top-level refs are replaced by placeholders and passed as values; large
        arguments go to the object store once (the payload then names the stored copy).
        """
        arg_refs: list[ObjectRef] = []

        def swap(v: Any) -> Any:
            if isinstance(v, ObjectRef):
                arg_refs.append(v)
                return _ArgRef(len(arg_refs) - 1)
            return v

        if not args and not kwargs:
            return _NO_ARGS, [], []
        if args:
            args = tuple(swap(a) for a in args)
        if kwargs:
            kwargs = {k: swap(v) for k, v in kwargs.items()}
        meta, buffers, nested = dumps((args, kwargs), what)
        if len(meta) + buffers_size(buffers) < INLINE_THRESHOLD_BYTES:
            payload: tuple[Any, ...] = (meta, inline_buffers(buffers))
        else:
            # Large arguments: store once, owned by the caller, freed with the spec. The
            # payload names the stored copy itself, so the worker reads it straight from the
            # store: asking the owner would be a round trip during which the worker counts as
            # blocked and lends its CPU (with a few calls in flight, that started workers).
            ref = self._put_serialized(meta, buffers, nested)
            nested = [ref]
            with self.lock:
                stored = self.table.owned[ref.id].value
            payload = (None, ref.id, stored)
        return payload, arg_refs, nested

    def describe_arg_refs(self, arg_refs: list[ObjectRef]) -> list[tuple[Any, ...]]:
        """For each top-level ref argument: (id, owner, value if already known here)."""
        if not arg_refs:
            return []
        with self.lock:
            return self.table.describe(arg_refs)

    def resolve_args(self, payload: tuple[Any, ...], descs: list[tuple[Any, ...]]
                     ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Worker side: rebuild (args, kwargs), fetching the values of ref arguments."""
        meta = payload[0]
        if meta is None:
            args, kwargs = self.store.materialize(payload[1], payload[2])
        else:
            args, kwargs = loads(meta, payload[1])
        if not descs:
            return args, kwargs
        values = []
        for oid, owner, value in descs:
            if value is None:
                values.append(self.get_one(ObjectRef(oid, owner), None))
            else:
                values.append(self.store.materialize(oid, value))

        def sub(v: Any) -> Any:
            return values[v.index] if isinstance(v, _ArgRef) else v

        return tuple(sub(a) for a in args), {k: sub(v) for k, v in kwargs.items()}

    # ------------------------------------------------------------------ tasks and actors
    def submit_task(self, spec: TaskSpec) -> None:
        with self.guarded:
            self.tasks.submit(spec)

    def cancel(self, ref: ObjectRef, force: bool) -> None:
        with self.guarded:
            self.tasks.cancel(ref.id, force)

    def actor_client(self, actor_id: bytes, name: str, owner: str,
                     max_task_retries: int) -> ActorClient:
        with self.guarded:
            return self.calls.client(actor_id, name, owner, max_task_retries)

    def own_actor(self, actor_id: bytes, *, pinned: bool) -> None:
        with self.lock:
            self.table.own_actor(actor_id, pinned=pinned)

    def forget_actor(self, actor_id: bytes) -> None:
        """The actor could not be created: forget it without telling anyone."""
        with self.lock:
            self.table.disown(actor_id)
            self.calls.forget(actor_id)

    def call_actor(self, client: ActorClient, call: ActorCall) -> None:
        with self.guarded:
            self.calls.call(client, call)

    def mark_killed(self, client: ActorClient) -> None:
        with self.guarded:
            self.calls.mark_killed(client)
