"""Scheduling strategies, as Ray spells them, and the placement they mean to the scheduler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PlacementGroupSchedulingStrategy:
    """Run a task or actor inside a placement group bundle.

    Args:
        placement_group: the group.
        placement_group_bundle_index: the bundle, or -1 for any bundle that fits.
        placement_group_capture_child_tasks: accepted for Ray compatibility; ignored.
    """

    placement_group: Any
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool | None = None


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run a task or actor on one node (``tk.nodes()[i]["NodeID"]``).

    Args:
        node_id: the node.
        soft: False: only there (an unknown node id is an error); True: there if it fits,
            else anywhere.
    """

    node_id: str
    soft: bool = False
    _spill_on_unavailable: bool = False
    _fail_on_unavailable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError(f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}): "
                             "pass a node id as tk.nodes() reports it (its 'NodeID')")


def placement_of(strategy: Any) -> tuple[Any, ...] | None:
    """The scheduler's placement for a strategy: None (anywhere), ``(pg_id, bundle)`` or
    ``("node", node_id, soft)``."""
    if strategy is None or strategy in ("DEFAULT", "SPREAD"):
        return None
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return ("node", strategy.node_id, bool(strategy.soft))
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        pg = strategy.placement_group
        idx = strategy.placement_group_bundle_index
        # The bundles this handle knows: it sees its own add_bundles/remove_bundles calls
        known = list(getattr(pg, "bundle_indices", range(len(pg.bundle_specs))))
        if not isinstance(idx, int) or isinstance(idx, bool) or (idx != -1
                                                                 and idx not in known):
            raise ValueError(f"placement_group_bundle_index={idx!r}: the group has "
                             f"{len(pg.bundle_specs)} bundles (use -1 for any)"
                             if known == list(range(len(known))) else
                             f"placement_group_bundle_index={idx!r}: the group's bundles are "
                             f"{', '.join(map(str, known))} (use -1 for any)")
        return (pg.id, idx)
    raise ValueError(f"scheduling_strategy={strategy!r}: use 'DEFAULT', 'SPREAD', a "
                     "PlacementGroupSchedulingStrategy or a NodeAffinitySchedulingStrategy")
