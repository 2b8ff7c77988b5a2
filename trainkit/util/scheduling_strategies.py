"""Scheduling strategies under Ray's module path (``ray.util.scheduling_strategies``)."""

from trainkit.runtime import NodeAffinitySchedulingStrategy
from trainkit.runtime import PlacementGroupSchedulingStrategy

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]
