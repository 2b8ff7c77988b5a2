"""Message kinds exchanged between trainkit processes, and small shared helpers.

Every message is one pickled tuple ``(kind, *fields)``. Requests that expect an answer
carry a request id and the sender's control address; the answer is ``(REPLY, req_id,
ok, payload)``. Processes: the driver and workers ("core workers") and one node service
per node.
"""

from __future__ import annotations

import enum
import itertools
import os


class Msg:
    """Message kinds. Plain ints, not an IntEnum: an enum member costs ~3 us to pickle and
    unpickle, on every message."""

    # any -> any
    REPLY = 1
    # core worker -> node service
    REGISTER_WORKER = 10
    REQUEST_LEASE = 11
    RETURN_LEASE = 12
    CANCEL_LEASE = 13
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
