"""Placement groups: bundles of resources reserved together (gang scheduling)."""

from __future__ import annotations

from typing import Any

from trainkit.runtime import _context
from trainkit.runtime._api import PlacementGroupSchedulingStrategy
from trainkit.runtime._api import _core
from trainkit.runtime._api import wait
from trainkit.runtime._objects import error_value
from trainkit.runtime._protocol import INLINE
from trainkit.runtime._protocol import Msg
from trainkit.runtime._refs import ObjectRef
from trainkit.runtime._scheduler import PLACEMENT_STRATEGIES
from trainkit.runtime._serialization import dumps
from trainkit.runtime._serialization import inline_buffers

__all__ = ["PlacementGroup", "PlacementGroupSchedulingStrategy", "get_current_placement_group",
           "placement_group", "placement_group_table", "remove_placement_group"]


class PlacementGroup:
    """A handle to a placement group. ``ready()`` is an ObjectRef set once it is reserved."""

    def __init__(self, pg_id: str, bundles: list[dict[str, float]], strategy: str,
                 name: str) -> None:
        self.id = pg_id
        self.bundle_specs = bundles
        self.strategy = strategy
        self.name = name

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        core = _core()
        oid = core.new_owned(None)
        ref = ObjectRef(oid, core.ctl_addr)

        def done(ok: bool, payload: Any) -> None:
            if ok:
                meta, bufs, _ = dumps(self)
                core.set_result(oid, (INLINE, meta, inline_buffers(bufs)))
            else:
                core.set_result(oid, error_value(payload))

        core.request_async(core.control_addr, Msg.WAIT_PG, self.id,
                           what=f"placement group {self.id}", callback=done)
        return ref

    def wait(self, timeout_seconds: float | None = 30) -> bool:
        """True once every bundle is reserved; False if that did not happen in time."""
        ready, _ = wait([self.ready()], timeout=timeout_seconds)
        return bool(ready)

    def __reduce__(self) -> tuple[Any, ...]:
        return (PlacementGroup, (self.id, self.bundle_specs, self.strategy, self.name))

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id}, {self.bundle_specs}, {self.strategy})"


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK",
                    name: str = "", lifetime: str | None = None) -> PlacementGroup:
    """Reserve ``bundles`` all together (or not at all).

    Raises:
        ValueError: an unknown strategy or a malformed bundle.
        InfeasibleError: a group no node (or set of nodes) could ever hold.

    Example:
        >>> pg = placement_group([{"CPU": 1}] * 2, strategy="PACK")
        >>> pg.wait(10)
        True
    """
    if strategy not in PLACEMENT_STRATEGIES:
        raise ValueError(f"unknown placement strategy {strategy!r}; valid strategies: "
                         f"{', '.join(PLACEMENT_STRATEGIES)}")
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError("placement_group() needs a non-empty list of bundles, e.g. "
                         "[{'CPU': 1, 'GPU': 1}] * 4")
    clean = []
    for i, b in enumerate(bundles):
        if not isinstance(b, dict):
            raise ValueError(f"bundle {i} is {b!r}; each bundle must be a dict like "
                             "{'CPU': 1}")
        clean.append({str(k): float(v) for k, v in b.items()})
    if lifetime is not None:
        raise ValueError(f"lifetime={lifetime!r}: detached placement groups are not "
                         "supported; remove the group when you are done with it")
    from trainkit.runtime._api import _ray

    rb = _ray()
    if rb is not None:
        ray_pg: PlacementGroup = rb.placement_group(clean, strategy, name)
        return ray_pg
    core = _core()
    pg_id = core_id()
    core.request_control(Msg.CREATE_PG, pg_id, clean, strategy, name,
                      what=f"creating placement group {clean}")
    return PlacementGroup(pg_id, clean, strategy, name)


def placement_group_table(pg: PlacementGroup | None = None) -> dict[str, Any]:
    """What Ray's ``placement_group_table`` reports: for ``pg``, its row (id, name,
    bundles, bundles_to_node_id, strategy, state); with no argument, every group's row
    by id (removed groups included, as state "REMOVED")."""
    from trainkit.runtime._api import _ray

    rb = _ray()
    if rb is not None:
        return rb.placement_group_table(pg)  # type: ignore[no-any-return]
    if pg is not None and not isinstance(pg, PlacementGroup):
        raise TypeError(f"placement_group_table() takes a PlacementGroup or nothing, got "
                        f"{type(pg).__name__}")
    table: dict[str, Any] = _core().request_control(
        Msg.PG_TABLE, pg.id if pg is not None else None, what="the placement group table")
    return table


def get_current_placement_group() -> PlacementGroup | None:
    """The placement group the calling task or actor runs in; None outside of one (and in
    the driver)."""
    from trainkit.runtime._api import _ray
    from trainkit.runtime._runtime_context import current_placement

    rb = _ray()
    if rb is not None:
        current: PlacementGroup | None = rb.current_placement_group()
        return current
    placement = current_placement()
    if placement is None:
        return None
    row = placement_group_table(PlacementGroup(placement[0], [], "", ""))
    bundles = [dict(b) for _, b in sorted(row["bundles"].items())]
    return PlacementGroup(placement[0], bundles, row["strategy"], row.get("name", ""))


def core_id() -> str:
    import os

    return os.urandom(8).hex()


def remove_placement_group(pg: PlacementGroup) -> None:
    """Release the group's resources; tasks and actors running in it are killed."""
    from trainkit.runtime._api import _ray

    rb = _ray()
    if rb is not None:
        rb.remove_placement_group(pg)
        return
    if not isinstance(pg, PlacementGroup):
        raise TypeError(f"remove_placement_group() takes a PlacementGroup, got "
                        f"{type(pg).__name__}")
    if _context.core is None:
        return
    _core().request_control(Msg.REMOVE_PG, pg.id, what=f"removing placement group {pg.id}")
