"""The wire: message kinds exchanged between trainkit processes, their fields, and ids.

Every message is one pickled tuple ``(kind, *fields)``: plain ints and tuples, because they
are the cheapest thing to pickle (an enum member or a class instance per message would cost
microseconds on every call). ``FIELDS`` names each kind's fields, as its handler names its
parameters (``tests/runtime/test_wire.py`` holds every handler to it, and with
``TRAINKIT_WIRE_CHECK=1``, as the test suite sets, every message sent is checked against it).
A request carries ``req_id`` and ``reply_to`` first; its answer is ``(REPLY, req_id, ok,
payload)``.

The flow, for a task and an actor call (driver D, node service N, workers W1, W2)::

    D --REQUEST_LEASE--> N --(fork W1)--> N --LEASE_GRANTED--> D
    D --EXEC_TASK--> W1 --TASK_DONE--> D ... D --RETURN_LEASE--> N
        (with a backlog, the next EXEC_TASK goes before TASK_DONE; a task that blocks
        in get() has W1 send those queued behind it back: W1 --TASK_BOUNCED--> D)
    D --CREATE_ACTOR--> N --BECOME_ACTOR--> W2 --ACTOR_READY--> N --ACTOR_STATE--> D
    D --ACTOR_CALL--> W2 --TASK_DONE--> D
    borrowers:  B --BORROW/RELEASE--> owner;  B --GET_OBJECT--> owner --OBJECT_VALUE--> B
    the store (on the node's unix socket): STORE_ALLOC/PIN (requests), SEAL/UNPIN/FREE
    cluster mode: nodes --REGISTER_NODE/NODE_HEARTBEAT--> head (the control plane), which
    sends NODE_ASSIGN for leases on their workers and NODE_TABLE/NODE_DIED to everyone
"""

from __future__ import annotations

import enum
import itertools
import os
from typing import Any

from trainkit.exceptions import TrainkitInternalError


class Msg:
    """Message kinds. Plain ints, not an IntEnum: an enum member costs ~3 us to pickle and
    unpickle, on every message."""

    # any -> any
    REPLY = 1
    # core worker -> node service
    REGISTER_WORKER = 10
    REQUEST_LEASE = 11
    RETURN_LEASE = 12
    CREATE_ACTOR = 14
    SUBSCRIBE_ACTOR = 15
    GET_NAMED_ACTOR = 16
    KILL_ACTOR = 17
    CREATE_PG = 18
    REMOVE_PG = 19
    WAIT_PG = 20
    STORE_ALLOC = 21
    STORE_SEAL = 22
    STORE_PIN = 23
    STORE_UNPIN = 24
    STORE_FREE = 25
    CLUSTER_INFO = 26
    KILL_WORKER = 27
    SHUTDOWN = 28
    REGISTER_DRIVER = 29
    ACTOR_READY = 30
    ACTOR_INIT_FAILED = 31
    ACTOR_EXITING = 32
    WORKER_TAINTED = 33
    WORKER_BLOCKED = 34
    WORKER_UNBLOCKED = 35
    PRELOAD_MODULES = 36
    # node service -> core worker
    NODE_READY = 40
    LEASE_GRANTED = 41
    LEASE_FAILED = 42
    WORKER_DIED = 43
    ACTOR_STATE = 44
    PROCESS_DIED = 45
    LOG = 46
    # core worker -> core worker (ownership protocol)
    GET_OBJECT = 50
    BORROW = 51
    RELEASE = 52
    RELEASE_CONTAINED = 53
    TASK_DONE = 54
    CANCEL_TASK = 55
    OBJECT_VALUE = 56
    CANCEL_REF = 57  # cancel a task this process owns, for a process holding its ref
    TASK_BOUNCED = 58  # a blocked worker sends back the tasks queued behind its running one
    # -> a worker's execution inbox
    EXEC_TASK = 60
    BECOME_ACTOR = 61
    ACTOR_CALL = 62
    ACTOR_EXIT = 63
    EXIT = 64
    RETIRE = 65  # exit unless this worker owns objects others may still need
    # cluster mode: node service <-> head, and node service -> its own inbox
    REGISTER_NODE = 70
    NODE_HEARTBEAT = 71
    NODE_HEARTBEAT_ACK = 72
    NODE_ASSIGN = 73
    NODE_ASSIGNED = 74
    NODE_RELEASE = 75
    NODE_KILL_WORKER = 76
    NODE_WORKER_EXIT = 77
    NODE_PROCESS_DIED = 78
    NODE_TABLE = 79
    STORE_PULLED = 80
    CLUSTER_NODES = 81
    DRIVER_EXIT = 82
    NODE_LEASE_FAILED = 83
    NODE_DIED = 84  # also node service -> core worker
    # core worker -> control plane (Ray Core parity)
    LIST_NAMED_ACTORS = 85
    PG_TABLE = 86
    ADD_BUNDLES = 87  # resize a live placement group
    REMOVE_BUNDLES = 88


_R = ("req_id", "reply_to")  # the head of every request

# The fields of each kind after the kind itself, as its handler names them; a trailing
# "name?" may be left out. (EXIT has none: it only wakes the loop that reads it.)
FIELDS: dict[int, tuple[str, ...]] = {
    Msg.REPLY: ("req_id", "ok", "payload"),
    Msg.REGISTER_WORKER: ("worker_id", "pid", "exec_addr", "ctl_addr", "staying?"),
    Msg.REQUEST_LEASE: ("lease_id", "owner", "resources", "placement"),
    Msg.RETURN_LEASE: ("lease_id",),
    Msg.CREATE_ACTOR: (*_R, "actor_id", "name", "registered_name", "spec", "resources",
                       "placement", "max_restarts", "meta"),
    Msg.SUBSCRIBE_ACTOR: ("actor_id", "addr"),
    Msg.GET_NAMED_ACTOR: (*_R, "name", "namespace"),
    Msg.KILL_ACTOR: ("actor_id", "no_restart"),
    Msg.CREATE_PG: (*_R, "pg_id", "bundles", "strategy", "name"),
    Msg.REMOVE_PG: (*_R, "pg_id"),
    Msg.WAIT_PG: (*_R, "pg_id", "indices?"),  # indices: only those bundles (add_bundles)
    Msg.STORE_ALLOC: (*_R, "oid", "size", "owner", "files_ok?"),
    Msg.STORE_SEAL: ("oid",),
    Msg.STORE_PIN: (*_R, "oid", "node_id?", "size?"),
    Msg.STORE_UNPIN: ("oid",),
    Msg.STORE_FREE: ("oids", "node_id?"),
    Msg.CLUSTER_INFO: _R,
    Msg.KILL_WORKER: ("worker_id",),
    Msg.SHUTDOWN: _R,
    Msg.REGISTER_DRIVER: (*_R, "pid"),
    Msg.ACTOR_READY: ("actor_id", "worker_id"),
    Msg.ACTOR_INIT_FAILED: ("actor_id", "error"),
    Msg.ACTOR_EXITING: (*_R, "actor_id", "cause"),
    Msg.WORKER_TAINTED: ("worker_id",),
    Msg.WORKER_BLOCKED: ("worker_id",),
    Msg.WORKER_UNBLOCKED: ("worker_id",),
    Msg.PRELOAD_MODULES: ("modules",),
    Msg.NODE_READY: ("addr", "arena_path"),
    Msg.LEASE_GRANTED: ("lease_id", "worker_id", "exec_addr", "ctl_addr", "gpu_ids"),
    Msg.LEASE_FAILED: ("lease_id", "error"),
    Msg.WORKER_DIED: ("lease_id", "cause"),
    Msg.ACTOR_STATE: ("actor_id", "status", "exec_addr", "cause"),
    Msg.PROCESS_DIED: ("addr", "cause"),
    Msg.LOG: ("stream", "text"),
    Msg.GET_OBJECT: ("oid", "reply_to"),
    Msg.BORROW: ("oid", "addr"),
    Msg.RELEASE: ("oid", "addr"),
    Msg.RELEASE_CONTAINED: ("oid",),
    Msg.TASK_DONE: ("task_id", "return_id", "value", "holder"),
    Msg.CANCEL_TASK: ("task_id",),
    Msg.TASK_BOUNCED: ("task_ids",),
    Msg.OBJECT_VALUE: ("oid", "value"),
    Msg.CANCEL_REF: ("oid", "force"),
    Msg.EXEC_TASK: ("task_id", "name", "fn_id", "blob", "payload", "descs", "return_id",
                    "owner", "gpu_ids", "attempt", "key?"),
    Msg.BECOME_ACTOR: ("actor_id", "name", "blob", "payload", "descs", "gpu_ids", "run_opts"),
    Msg.ACTOR_CALL: ("task_id", "method", "payload", "descs", "return_id", "caller"),
    Msg.ACTOR_EXIT: (),
    Msg.EXIT: (),
    Msg.RETIRE: (),
    Msg.REGISTER_NODE: (*_R, "info"),
    Msg.NODE_HEARTBEAT: ("node_id", "stats"),
    Msg.NODE_HEARTBEAT_ACK: (),
    Msg.NODE_ASSIGN: ("lease_id", "owner", "actor_id", "actor_spec", "gpu_ids"),
    Msg.NODE_ASSIGNED: ("node_id", "lease_id", "worker_id", "exec_addr", "ctl_addr"),
    Msg.NODE_RELEASE: ("worker_id",),
    Msg.NODE_KILL_WORKER: ("worker_id", "reason"),
    Msg.NODE_WORKER_EXIT: ("node_id", "worker_id", "ctl_addr", "cause"),
    Msg.NODE_PROCESS_DIED: ("addr", "cause"),
    Msg.NODE_TABLE: ("table",),
    Msg.STORE_PULLED: ("oid", "error"),
    Msg.CLUSTER_NODES: _R,
    Msg.DRIVER_EXIT: ("addr",),
    Msg.NODE_LEASE_FAILED: ("lease_id", "error"),
    Msg.NODE_DIED: ("node_id", "cause"),
    Msg.LIST_NAMED_ACTORS: (*_R, "namespace"),
    Msg.PG_TABLE: (*_R, "pg_id"),
    Msg.ADD_BUNDLES: (*_R, "pg_id", "bundles"),
    Msg.REMOVE_BUNDLES: (*_R, "pg_id", "indices"),
}

# Set from the environment once: every message sent is checked against FIELDS (tests).
CHECK_WIRE = os.environ.get("TRAINKIT_WIRE_CHECK") == "1"


def arity(kind: int) -> tuple[int, int]:
    """The fewest and most fields a message of ``kind`` has."""
    names = FIELDS[kind]
    return sum(1 for n in names if not n.endswith("?")), len(names)


def check(msg: tuple[Any, ...]) -> None:
    """A message that does not fit its kind's ``FIELDS`` is a bug in its sender."""
    kind = msg[0] if msg else None
    if not isinstance(kind, int) or kind not in FIELDS:
        raise TrainkitInternalError(f"a message of unknown kind {kind!r} was sent: {msg!r:.200}")
    low, high = arity(kind)
    if not low <= len(msg) - 1 <= high:
        raise TrainkitInternalError(
            f"a {msg_name(kind)} message has {len(msg) - 1} fields, not {low}-{high} "
            f"({', '.join(FIELDS[kind])}): {msg!r:.200}")


def msg_name(kind: int) -> str:
    for name, value in vars(Msg).items():
        if value == kind and name.isupper():
            return name
    return str(kind)


class ActorStatus(enum.Enum):
    """Lifecycle of an actor: PENDING -> ALIVE <-> RESTARTING -> DEAD."""

    PENDING = "pending"
    ALIVE = "alive"
    RESTARTING = "restarting"
    DEAD = "dead"

    @property
    def is_terminal(self) -> bool:
        return self is ActorStatus.DEAD


# Value representations carried in TASK_DONE / GET_OBJECT replies.
INLINE = 0  # (INLINE, meta, buffers)
STORED = 1  # (STORED, node_id, size)
ERROR = 2  # (ERROR, meta, buffers): a pickled exception to raise on get


_counter = itertools.count()
_prefix = os.urandom(6)


def new_id() -> bytes:
    """A process-unique, cluster-unique-enough 14-byte id (random prefix + counter)."""
    return _prefix + next(_counter).to_bytes(8, "little")


def reset_ids_after_fork() -> None:
    global _prefix, _counter
    _prefix = os.urandom(6)
    _counter = itertools.count()
