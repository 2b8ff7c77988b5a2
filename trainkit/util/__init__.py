"""Ray's ``ray.util`` names that trainkit has: named actors and placement groups."""

from trainkit.runtime import get_current_placement_group
from trainkit.runtime import list_named_actors
from trainkit.runtime import placement_group
from trainkit.runtime import placement_group_table
from trainkit.runtime import remove_placement_group
from trainkit.util import scheduling_strategies

__all__ = [
    "get_current_placement_group",
    "list_named_actors",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
    "scheduling_strategies",
]
