"""Options of remote functions, actor classes and actor methods, checked where they are given."""

from __future__ import annotations

import difflib
from typing import Any

from trainkit.runtime.node.scheduler import make_resource_request

_COMMON = {"num_cpus", "num_gpus", "memory", "resources", "name", "scheduling_strategy"}
TASK_OPTIONS = frozenset(_COMMON | {"max_retries", "retry_exceptions", "num_returns"})
ACTOR_OPTIONS = frozenset(_COMMON | {"namespace", "max_restarts", "max_task_retries",
                                     "max_concurrency", "lifetime", "get_if_exists"})


def check_options(options: dict[str, Any], valid: frozenset[str], what: str) -> None:
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown option {key!r} for {what}.{hint} Valid options: "
                             f"{', '.join(sorted(valid))}")
    for key in ("max_retries", "max_restarts", "max_task_retries"):
        v = options.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < -1):
            raise ValueError(f"{key}={v!r}: must be an int >= -1 (-1 means unlimited)")
    mc = options.get("max_concurrency")
    if mc is not None and (not isinstance(mc, int) or isinstance(mc, bool) or mc < 1):
        raise ValueError(f"max_concurrency={mc!r}: must be an int >= 1")
    nr = options.get("num_returns")
    if nr is not None and (not isinstance(nr, int) or isinstance(nr, bool) or nr < 0):
        raise ValueError(f"num_returns={nr!r}: must be an int >= 0 (the number of values the "
                         "function returns, as a tuple; 'dynamic' and 'streaming' are not "
                         "supported: return a list instead)")
    lt = options.get("lifetime")
    if lt not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime={lt!r}: use None (the actor lives while handles to it "
                         "exist) or 'detached' (it lives until tk.kill() or the runtime stops)")
    if lt == "detached" and options.get("name") is None:
        raise ValueError("lifetime='detached' needs a name=...: a detached actor outlives the "
                         "handles to it, and get_actor(name) is how it is reached again")
    gie = options.get("get_if_exists")
    if gie is not None and not isinstance(gie, bool):
        raise ValueError(f"get_if_exists={gie!r}: must be True or False")
    if gie and options.get("name") is None:
        raise ValueError("get_if_exists=True needs a name=...: it returns the live actor of "
                         "that name instead of creating a second one")


METHOD_OPTIONS = frozenset({"num_returns", "name", "concurrency_group", "max_task_retries",
                            "retry_exceptions"})


def resources_of(options: dict[str, Any], default_cpus: float) -> dict[str, float]:
    return make_resource_request(num_cpus=options.get("num_cpus"),
                                 num_gpus=options.get("num_gpus"),
                                 memory=options.get("memory"),
                                 resources=options.get("resources"),
                                 default_cpus=default_cpus)
