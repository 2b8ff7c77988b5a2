"""Worker process: runs leased tasks, or hosts one actor, for the node service that started it.

``python -m trainkit.runtime.core.worker_process`` with the node's settings in the
environment. Normal tasks and actor calls arrive on the execution inbox and run in the main
thread (threaded actors use a pool, async actors an event loop thread); everything else
(object requests, replies, cancellation) is handled by the core worker's I/O thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import io
import json
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from typing import ClassVar

from trainkit._console import split_records
from trainkit.exceptions import ActorDiedError
from trainkit.exceptions import TaskCancelledError
from trainkit.runtime.core import context as _context
from trainkit.runtime.core.context import ActorExit
from trainkit.runtime.core.core_worker import CoreWorker
from trainkit.runtime.core.values import error_value
from trainkit.runtime.core.values import task_error_value
from trainkit.runtime.wire.auth import FrameAuth
from trainkit.runtime.wire.local_channel import store_socket_address
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.secret import SECRET_ENV
from trainkit.runtime.wire.serialization import dumps
from trainkit.runtime.wire.serialization import loads
from trainkit.runtime.wire.transport import Inbox
from trainkit.runtime.wire.transport import endpoint

# Ids of cancelled tasks kept for when they come up (a cancel can also come after its task).
MAX_CANCELLED_KEPT = 1024

def die_with_parent() -> None:
    """Ask Linux to SIGKILL us when the node service dies, whatever way it dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() == 1:
        os._exit(1)


class _PrefixedStream(io.TextIOBase):
    """sys.stdout/sys.stderr of a worker: each line is prefixed with the task and pid; a
    line redrawn with ``\\r`` (a progress bar) goes out as in-place updates, the latest at
    each flush (see ``trainkit._console``); an empty line goes out empty."""

    def __init__(self, raw: Any, label: list[str]) -> None:
        self._raw = raw
        self._label = label
        self._buf = ""
        self._in_redraw = False  # the text being written follows a "\r": it redraws a line
        self._last_update = ""  # the last update sent of that line
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def _prefix(self) -> str:
        name = getattr(_context.task_local, "name", None) or self._label[0]
        return f"({name} pid={os.getpid()}) "

    def _line(self, text: str) -> str:
        if not text and self._last_update:  # a bar's closing "\n": its last text, for good
            text = self._last_update
        self._in_redraw, self._last_update = False, ""
        return self._prefix() + text + "\n" if text else "\n"

    def _update(self, text: str) -> str:
        self._last_update = text
        return self._prefix() + text + "\r"

    def write(self, s: str) -> int:
        with self._lock:
            self._buf += s
            if "\n" in s or "\r" in s:
                records, self._buf = split_records(self._buf)
                out = "".join(self._update(r.text) if r.update else self._line(r.text)
                              for r in records)
                if "\r" in s.rpartition("\n")[2]:
                    self._in_redraw = True
                if out:
                    self._raw.write(out)
                    self._raw.flush()
        return len(s)

    def flush(self) -> None:
        with self._lock:
            if self._buf:
                self._raw.write(self._update(self._buf) if self._in_redraw
                                else self._line(self._buf))
                self._buf = ""
            self._raw.flush()

    def fileno(self) -> int:
        return int(self._raw.fileno())

    def isatty(self) -> bool:
        return False


class Worker:
    """A worker process's executor: tasks, or the one actor it hosts."""

    # What its execution inbox is told, and the method for each kind (EXIT ends the loop);
    # CORE_HANDLERS are added to its core worker's inbox. tests/runtime/test_wire.py holds
    # each method's parameters to the kind's FIELDS.
    HANDLERS: ClassVar[dict[int, str]] = {
        Msg.EXEC_TASK: "exec_task",
        Msg.BECOME_ACTOR: "become_actor",
        Msg.ACTOR_CALL: "actor_call",
        Msg.ACTOR_EXIT: "actor_exit",
        Msg.RETIRE: "retire",
    }
    CORE_HANDLERS: ClassVar[dict[int, str]] = {Msg.CANCEL_TASK: "_on_cancel"}

    def __init__(self, core: CoreWorker, worker_id: bytes, exec_inbox: Inbox) -> None:
        self.core = core
        self.worker_id = worker_id
        self.inbox = exec_inbox
        self.functions: dict[bytes, Any] = {}
        self.current_task: bytes | None = None
        self.label = ["worker"]
        self.actor: Any = None
        self.actor_id: bytes | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sem: asyncio.Semaphore | None = None
        self.exiting = False  # exit_actor() was called: leave after answering this call
        # Tasks cancelled while queued behind the running one (skipped when they come up),
        # oldest first, and what the exec inbox held when a blocked task sent its queue back.
        self.cancelled: dict[bytes, None] = {}
        self.deferred: deque[tuple[Any, ...]] = deque()
        self.exec_thread = threading.get_ident()
        core.on_blocked = self.bounce_queued
        for kind, name in self.CORE_HANDLERS.items():
            core.extra_handlers[kind] = getattr(self, name)

    # -------------------------------------------------------------- main loop
    def run(self) -> None:
        handlers: dict[int, Callable[..., None]] = {
            kind: getattr(self, name) for kind, name in self.HANDLERS.items()}
        self.exec_thread = threading.get_ident()
        while True:
            try:
                msg = self.deferred.popleft() if self.deferred else self.inbox.recv()
                if msg[0] == Msg.EXIT:
                    return
                handler = handlers.get(msg[0])
                if handler is None:
                    print(f"trainkit: ignoring unknown message {msg[0]!r}", file=sys.stderr)
                    continue
                handler(*msg[1:])
            except KeyboardInterrupt:
                continue  # a cancel that arrived just after its task finished

    def retire(self) -> None:
        if not self.core.holds_anything():
            _flush_and_exit(0)
        self.core.out.send(self.core.node_addr, (
            Msg.REGISTER_WORKER, self.worker_id, os.getpid(), self.inbox.address,
            self.core.ctl_addr, True))

    def _on_cancel(self, task_id: bytes) -> None:
        if self.current_task == task_id:
            os.kill(os.getpid(), signal.SIGINT)
            return
        self.cancelled[task_id] = None  # queued behind the running task (or already done)
        while len(self.cancelled) > MAX_CANCELLED_KEPT:
            del self.cancelled[next(iter(self.cancelled))]

    def bounce_queued(self) -> None:
        """The running task blocked in get(): the tasks its owner queued behind it here go
        back unstarted (TASK_BOUNCED), since one of them may be what it waits for. Only on
        the thread that reads the exec inbox; other messages wait in ``deferred``."""
        if (threading.get_ident() != self.exec_thread or self.actor_id is not None
                or self.current_task is None):
            return
        bounced: dict[str, list[bytes]] = {}
        while (msg := self.inbox.recv_nowait()) is not None:
            if msg[0] == Msg.EXEC_TASK:
                bounced.setdefault(msg[8], []).append(msg[1])  # owner, task id
            else:
                self.deferred.append(msg)
        for owner, task_ids in bounced.items():
            self.core.out.send(owner, (Msg.TASK_BOUNCED, task_ids))

    def _set_gpus(self, gpu_ids: tuple[int, ...]) -> None:
        _context.task_local.gpu_ids = tuple(gpu_ids)
        if gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)

    def _function(self, fn_id: bytes, blob: bytes | None) -> Any:
        fn = self.functions.get(fn_id)
        if fn is None:
            if blob is None:
                raise RuntimeError("the function was not sent to this worker (a trainkit bug)")
            fn = self.functions[fn_id] = loads(blob)
        return fn

    def _result_value(self, return_id: bytes | tuple[bytes, ...], owner: str, result: Any
                      ) -> tuple[Any, str | None]:
        if isinstance(return_id, tuple):  # num_returns > 1: one value per return
            n = len(return_id)
            if not isinstance(result, (tuple, list)) or len(result) != n:
                got = (f"{len(result)} values" if isinstance(result, (tuple, list))
                       else f"a {type(result).__name__}")
                raise ValueError(f"num_returns={n}, but the function returned {got}; return "
                                 f"a tuple of {n} values (or change num_returns)")
            values = []
            holder = None
            for oid, item in zip(return_id, result, strict=True):
                value, h = self._result_value(oid, owner, item)
                values.append(value)
                holder = holder or h
            return values, holder
        meta, buffers, refs = dumps(result, "the return value")
        value = self.core.store_value(return_id, meta, buffers, owner)
        holder = None
        if refs:
            # Keep the refs inside the result alive until the caller frees the result.
            self.core.hold_for_caller(return_id, refs)
            holder = self.core.ctl_addr
        return value, holder

    def _run(self, name: str, fn: Any, payload: Any, descs: Any, return_id: bytes,
             owner: str) -> tuple[Any, str | None]:
        try:
            args, kwargs = self.core.resolve_args(payload, descs)
            result = fn(*args, **kwargs)
            return self._result_value(return_id, owner, result)
        except ActorExit:
            self.exiting = True
            return self._exit_value(), None
        except BaseException as e:
            return task_error_value(name, e), None

    # -------------------------------------------------------------- tasks
    def exec_task(self, task_id: bytes, name: str, fn_id: bytes, blob: bytes | None,
                  payload: Any, descs: Any, return_id: bytes, owner: str,
                  gpu_ids: tuple[int, ...], attempt: int, key: Any = None) -> None:
        if task_id in self.cancelled:  # cancelled while it was queued here
            del self.cancelled[task_id]
            self.core.out.send(owner, (Msg.TASK_DONE, task_id, return_id, task_error_value(
                name, TaskCancelledError(name)), None))
            return
        self._set_gpus(gpu_ids)
        local = _context.task_local
        local.name, local.task_id, local.key = name, task_id, key
        self.current_task = task_id
        try:
            try:
                fn = self._function(fn_id, blob)
            except BaseException as e:
                value: Any = task_error_value(name, _load_error(name, e))
                holder = None
            else:
                value, holder = self._run(name, fn, payload, descs, return_id, owner)
        finally:
            self.current_task = None
            local.name = local.task_id = local.key = None
        self.core.out.send(owner, (Msg.TASK_DONE, task_id, return_id, value, holder))
        if gpu_ids and _cuda_initialized():
            # CUDA_VISIBLE_DEVICES cannot change after CUDA starts: never reuse this process.
            self.core.out.send(self.core.node_addr, (Msg.WORKER_TAINTED, self.worker_id))

    # -------------------------------------------------------------- actors
    def become_actor(self, actor_id: bytes, name: str, blob: bytes, payload: Any, descs: Any,
                     gpu_ids: tuple[int, ...], run_opts: Any) -> None:
        # run_opts: (max_concurrency, {"resources": ..., "placement": ...}) from the creator
        max_concurrency, where = run_opts if isinstance(run_opts, tuple) else (run_opts, {})
        self.actor_id = actor_id
        _context.process_actor.update(where, actor_id=actor_id, worker_id=self.worker_id)
        self.label[0] = name
        _context.process_gpu_ids = tuple(gpu_ids)
        if gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
        try:
            try:
                cls = loads(blob)
            except BaseException as e:
                raise _load_error(name, e) from e
            args, kwargs = self.core.resolve_args(payload, descs)
            self.actor = cls(*args, **kwargs)
        except BaseException as e:
            self.core.out.send(self.core.control_addr,
                               (Msg.ACTOR_INIT_FAILED, actor_id, task_error_value(
                                   f"{name}.__init__", e)))
            return
        is_async = any(inspect.iscoroutinefunction(m)
                       for _, m in inspect.getmembers(type(self.actor), inspect.isfunction))
        if is_async:
            self.loop = asyncio.new_event_loop()
            limit = max_concurrency if max_concurrency > 1 else 1000
            threading.Thread(target=self._run_loop, args=(limit,), name="trainkit-actor-loop",
                             daemon=True).start()
        elif max_concurrency > 1:
            self.pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="trainkit-actor")
        self.core.out.send(self.core.control_addr, (Msg.ACTOR_READY, actor_id, self.worker_id))

    def _run_loop(self, limit: int) -> None:
        assert self.loop is not None
        asyncio.set_event_loop(self.loop)
        self.sem = asyncio.Semaphore(limit)
        self.loop.run_forever()

    def actor_call(self, task_id: bytes, method: str, payload: Any, descs: Any,
                   return_id: bytes, caller: str) -> None:
        if self.loop is not None:
            asyncio.run_coroutine_threadsafe(
                self._call_async(task_id, method, payload, descs, return_id, caller), self.loop)
        elif self.pool is not None:
            self.pool.submit(self._call_sync, task_id, method, payload, descs, return_id, caller)
        else:
            self.current_task = task_id
            try:
                self._call_sync(task_id, method, payload, descs, return_id, caller)
            finally:
                self.current_task = None

    def _call_sync(self, task_id: bytes, method: str, payload: Any, descs: Any,
                   return_id: bytes, caller: str) -> None:
        name = f"{self.label[0]}.{method}"
        _context.task_local.name = self.label[0]
        _context.task_local.task_id = task_id
        fn = getattr(self.actor, method, None)
        if fn is None:
            value: Any = task_error_value(name, AttributeError(
                f"{type(self.actor).__name__} has no method {method!r}"))
            holder = None
        else:
            value, holder = self._run(name, fn, payload, descs, return_id, caller)
        self.core.out.send(caller, (Msg.TASK_DONE, task_id, return_id, value, holder))
        if self.exiting:
            self.exit_by_request()

    async def _call_async(self, task_id: bytes, method: str, payload: Any, descs: Any,
                          return_id: bytes, caller: str) -> None:
        assert self.sem is not None
        name = f"{self.label[0]}.{method}"
        async with self.sem:
            holder = None
            try:
                fn = getattr(self.actor, method)
                if descs or payload[0] is None:
                    args, kwargs = await asyncio.get_running_loop().run_in_executor(
                        None, self.core.resolve_args, payload, descs)
                else:
                    args, kwargs = self.core.resolve_args(payload, descs)
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                value, holder = self._result_value(return_id, caller, result)
            except ActorExit:
                self.exiting = True
                value, holder = self._exit_value(), None
            except BaseException as e:
                value = task_error_value(name, e)
        self.core.out.send(caller, (Msg.TASK_DONE, task_id, return_id, value, holder))
        if self.exiting:
            self.exit_by_request()

    def actor_exit(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        self._tell_exiting("it went out of scope (every handle to it was deleted)")
        _flush_and_exit(0)

    def exit_by_request(self) -> None:
        """exit_actor() was called: the control plane marks the actor dead for good (no
        restart), the reply just sent is flushed, and the process leaves."""
        self._tell_exiting("it called exit_actor()")
        self.core.out.flush(5.0)
        _flush_and_exit(0)

    def _exit_value(self) -> Any:
        """The result of the call that ran exit_actor(): as in Ray, its caller sees the
        actor's death, not a return value."""
        return error_value(ActorDiedError(self.label[0], "it called exit_actor()"))

    def _tell_exiting(self, cause: str) -> None:
        """Make the control plane record that this exit is final before it can see the
        process end (it would restart an actor that may restart)."""
        try:
            self.core.request_control(Msg.ACTOR_EXITING, self.actor_id, cause,
                                      what="announcing the actor's exit", timeout=10.0)
        except Exception:
            pass  # the control plane is gone or slow: the exit goes ahead all the same


def _load_error(name: str, e: BaseException) -> BaseException:
    return RuntimeError(
        f"could not load {name} in the worker: {type(e).__name__}: {e}. The worker runs in "
        f"the driver's working directory with the driver's sys.path; make the module "
        f"importable there (or define the function in the script itself)."
    )


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:
        return True


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def _watch_parent() -> None:
    """The node service holds our stdin open; EOF means it is gone."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    os._exit(1)


def main(secret: bytes | None = None) -> None:
    """Run a worker; ``secret``: the cluster's, handed over in memory by the forkserver."""
    die_with_parent()
    # The node service ignores SIGINT, and ignored signals stay ignored across exec; a
    # worker needs it back: cancel() interrupts a running task with it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    env = os.environ
    for p in reversed(json.loads(env.get("TRAINKIT_SYS_PATH", "[]"))):
        if p not in sys.path:
            sys.path.insert(0, p)
    worker_id = bytes.fromhex(env["TRAINKIT_WORKER_ID"])
    session_dir = env["TRAINKIT_SESSION_DIR"]
    host = env.get("TRAINKIT_NODE_HOST") or None
    leaked = env.pop(SECRET_ENV, None)  # user code must not see it, whoever put it there
    if secret is None and leaked:  # started by a launcher that still passes it this way
        secret = leaked.encode()
    if host is not None and not secret:  # tcp without the secret would be unauthenticated
        print("trainkit worker: no cluster secret was handed over; this worker stops",
              file=sys.stderr)
        _flush_and_exit(1)
    auth = FrameAuth(secret) if host is not None and secret else None
    core = CoreWorker(
        session=session_dir,
        node_addr=env["TRAINKIT_NODE_ADDR"],
        node_id=env["TRAINKIT_NODE_ID"],
        arena_path=env["TRAINKIT_ARENA_PATH"],
        arena_capacity=int(env["TRAINKIT_ARENA_CAPACITY"]),
        name=f"w{worker_id.hex()}",
        cluster_resources=json.loads(env["TRAINKIT_CLUSTER_RESOURCES"]),
        control_addr=env.get("TRAINKIT_CONTROL_ADDR"),
        host=host,
        auth=auth,
        store_socket=store_socket_address(session_dir),
    )
    _context.core = core
    exec_inbox = Inbox(core.ctx, endpoint(session_dir, f"w{worker_id.hex()}.exec", host), auth)
    worker = Worker(core, worker_id, exec_inbox)
    core.blocked_msg = ((Msg.WORKER_BLOCKED, worker_id), (Msg.WORKER_UNBLOCKED, worker_id))
    sys.stdout = _PrefixedStream(sys.__stdout__, worker.label)
    sys.stderr = _PrefixedStream(sys.__stderr__, worker.label)
    threading.Thread(target=_watch_parent, name="trainkit-parent-watch", daemon=True).start()
    core.start(copy_threads=False)  # started by the first large write, if one comes
    core.out.send(core.node_addr, (Msg.REGISTER_WORKER, worker_id, os.getpid(),
                                   exec_inbox.address, core.ctl_addr))
    try:
        worker.run()
    finally:
        _flush_and_exit(0)


if __name__ == "__main__":
    main()
