"""``get_runtime_context()``: who and where the calling code is (driver, task or actor)."""

from __future__ import annotations

import hashlib
from typing import Any

from trainkit.runtime.core import context as _context

__all__ = ["RuntimeContext"]


class RuntimeContext:
    """What Ray's ``RuntimeContext`` reports, for the current process and call.

    Ids are hex strings. The job id names the runtime (embedded) or the cluster this
    process belongs to: trainkit runs one job per runtime.
    """

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace

    @property
    def namespace(self) -> str:
        return self._namespace

    def get_job_id(self) -> str:
        core = _context.core
        if core is None:
            raise RuntimeError("get_runtime_context().get_job_id(): trainkit is not "
                               "initialized; call trainkit.init() first")
        return hashlib.sha1(core.control_addr.encode()).hexdigest()[:8]

    def get_node_id(self) -> str:
        core = _context.core
        if core is None:
            raise RuntimeError("get_runtime_context().get_node_id(): trainkit is not "
                               "initialized; call trainkit.init() first")
        return core.node_id

    def get_task_id(self) -> str | None:
        """The running task's or actor call's id; None in the driver."""
        task_id: bytes | None = getattr(_context.task_local, "task_id", None)
        return task_id.hex() if task_id is not None else None

    def get_actor_id(self) -> str | None:
        """This actor's id inside an actor; None elsewhere."""
        actor_id = _context.process_actor.get("actor_id")
        return actor_id.hex() if actor_id is not None else None

    def get_worker_id(self) -> str | None:
        worker_id = _context.process_actor.get("worker_id")
        return worker_id.hex() if worker_id is not None else None

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources the running task or this actor was given ({} in the driver)."""
        key: Any = getattr(_context.task_local, "key", None)
        if key is not None:
            return dict(key[0])
        resources: dict[str, float] = _context.process_actor.get("resources", {})
        return dict(resources)

    def get_placement_group_id(self) -> str | None:
        placement = _placement()
        return placement[0] if placement is not None else None

    def get(self) -> dict[str, Any]:
        return {"job_id": self.get_job_id(), "node_id": self.get_node_id(),
                "task_id": self.get_task_id(), "actor_id": self.get_actor_id(),
                "namespace": self.namespace}


def _placement() -> tuple[Any, ...] | None:
    key: Any = getattr(_context.task_local, "key", None)
    placement: Any = key[1] if key is not None else _context.process_actor.get("placement")
    if placement is None or placement[0] == "node":
        return None
    return tuple(placement)


def current_placement() -> tuple[Any, ...] | None:
    """(placement group id, bundle index) of the running task or actor, if in a group."""
    return _placement()
