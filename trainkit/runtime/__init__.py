"""trainkit's actor runtime: remote functions, actors, object refs, placement groups.

This module is the public API. Under it, each part in a subpackage, importing only
downwards: ``cluster`` > ``node`` > ``core`` > ``store`` > ``wire`` (see each one's
docstring); the public functions hand their work to a backend (``_backend``): trainkit's own
runtime or Ray.
"""

from trainkit.runtime._api import ActorClass
from trainkit.runtime._api import ActorHandle
from trainkit.runtime._api import NodeAffinitySchedulingStrategy
from trainkit.runtime._api import PlacementGroupSchedulingStrategy
from trainkit.runtime._api import RemoteFunction
from trainkit.runtime._api import available_resources
from trainkit.runtime._api import cancel
from trainkit.runtime._api import cluster_resources
from trainkit.runtime._api import exit_actor
from trainkit.runtime._api import get
from trainkit.runtime._api import get_actor
from trainkit.runtime._api import get_gpu_ids
from trainkit.runtime._api import get_node_ip_address
from trainkit.runtime._api import get_runtime_context
from trainkit.runtime._api import init
from trainkit.runtime._api import is_initialized
from trainkit.runtime._api import kill
from trainkit.runtime._api import list_named_actors
from trainkit.runtime._api import method
from trainkit.runtime._api import nodes
from trainkit.runtime._api import preload_worker_modules
from trainkit.runtime._api import put
from trainkit.runtime._api import remote
from trainkit.runtime._api import shutdown
from trainkit.runtime._api import wait
from trainkit.runtime._placement_group import PlacementGroup
from trainkit.runtime._placement_group import get_current_placement_group
from trainkit.runtime._placement_group import placement_group
from trainkit.runtime._placement_group import placement_group_table
from trainkit.runtime._placement_group import remove_placement_group
from trainkit.runtime.core.refs import ObjectRef

__all__ = [
    "ActorClass",
    "ActorHandle",
    "NodeAffinitySchedulingStrategy",
    "ObjectRef",
    "PlacementGroup",
    "PlacementGroupSchedulingStrategy",
    "RemoteFunction",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exit_actor",
    "get",
    "get_actor",
    "get_current_placement_group",
    "get_gpu_ids",
    "get_node_ip_address",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "list_named_actors",
    "method",
    "nodes",
    "placement_group",
    "placement_group_table",
    "preload_worker_modules",
    "put",
    "remote",
    "remove_placement_group",
    "shutdown",
    "wait",
]
