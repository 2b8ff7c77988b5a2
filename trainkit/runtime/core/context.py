"""Process-global runtime state: the current core worker and the current task context."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    from trainkit.runtime.core.core_worker import CoreWorker

core: CoreWorker | None = None
# The Ray backend (trainkit.runtime._ray_backend.RayBackend) when it carries the API instead.
ray_backend: Any = None

# Per-thread context of the task or actor call being executed (worker processes only).
task_local = threading.local()


def current_gpu_ids() -> list[int]:
    ids: Any = getattr(task_local, "gpu_ids", None)
    if ids is None:
        ids = process_gpu_ids
    return list(ids)


# GPU ids assigned to this whole process (an actor's), set by the worker.
process_gpu_ids: tuple[int, ...] = ()
# The actor this process hosts: actor_id, worker_id, resources, placement (set by the worker).
process_actor: dict[str, Any] = {}


class ActorExit(BaseException):
    """Raised by ``exit_actor()`` inside an actor method; the worker catches it, answers the
    call and leaves. A BaseException, so a user's ``except Exception`` does not swallow it."""
