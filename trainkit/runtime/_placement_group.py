"""Placement groups: bundles of resources reserved together (gang scheduling)."""

from __future__ import annotations

from typing import Any

from trainkit.runtime._backend import current as _backend
from trainkit.runtime._handles import PlacementGroup
from trainkit.runtime._strategies import PlacementGroupSchedulingStrategy
from trainkit.runtime.node.scheduler import PLACEMENT_STRATEGIES

__all__ = ["PlacementGroup", "PlacementGroupSchedulingStrategy", "get_current_placement_group",
           "placement_group", "placement_group_table", "remove_placement_group"]


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
    pg: PlacementGroup = _backend().placement_group(clean, strategy, name)
    return pg


def placement_group_table(pg: PlacementGroup | None = None) -> dict[str, Any]:
    """What Ray's ``placement_group_table`` reports: for ``pg``, its row (id, name,
    bundles, bundles_to_node_id, strategy, state); with no argument, every group's row
    by id (removed groups included, as state "REMOVED")."""
    return _backend().placement_group_table(pg)


def get_current_placement_group() -> PlacementGroup | None:
    """The placement group the calling task or actor runs in; None outside of one (and in
    the driver)."""
    current: PlacementGroup | None = _backend().current_placement_group()
    return current


def remove_placement_group(pg: PlacementGroup) -> None:
    """Release the group's resources; tasks and actors running in it are killed."""
    _backend().remove_placement_group(pg)
