"""trainkit's actor runtime: remote functions, actors, object refs, placement groups."""

from trainkit.runtime._api import ActorClass
from trainkit.runtime._api import ActorHandle
from trainkit.runtime._api import PlacementGroupSchedulingStrategy
from trainkit.runtime._api import RemoteFunction
from trainkit.runtime._api import available_resources
from trainkit.runtime._api import cancel
from trainkit.runtime._api import cluster_resources
from trainkit.runtime._api import get
from trainkit.runtime._api import get_actor
from trainkit.runtime._api import get_gpu_ids
from trainkit.runtime._api import get_node_ip_address
from trainkit.runtime._api import init
from trainkit.runtime._api import is_initialized
from trainkit.runtime._api import kill
from trainkit.runtime._api import nodes
from trainkit.runtime._api import preload_worker_modules
from trainkit.runtime._api import put
from trainkit.runtime._api import remote
from trainkit.runtime._api import shutdown
from trainkit.runtime._api import wait
from trainkit.runtime._placement_group import PlacementGroup
from trainkit.runtime._placement_group import placement_group
from trainkit.runtime._placement_group import remove_placement_group
from trainkit.runtime._refs import ObjectRef

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ObjectRef",
    "PlacementGroup",
    "PlacementGroupSchedulingStrategy",
    "RemoteFunction",
    "available_resources",
    "cancel",
    "cluster_resources",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_node_ip_address",
    "init",
    "is_initialized",
    "kill",
    "nodes",
    "placement_group",
    "preload_worker_modules",
    "put",
    "remote",
    "remove_placement_group",
    "shutdown",
    "wait",
]
