"""trainkit: ML training and tuning on a fast, light actor runtime of its own."""

from trainkit import exceptions
from trainkit import util
from trainkit.runtime import ObjectRef
from trainkit.runtime import available_resources
from trainkit.runtime import cancel
from trainkit.runtime import cluster_resources
from trainkit.runtime import exit_actor
from trainkit.runtime import get
from trainkit.runtime import get_actor
from trainkit.runtime import get_gpu_ids
from trainkit.runtime import get_node_ip_address
from trainkit.runtime import get_runtime_context
from trainkit.runtime import init
from trainkit.runtime import is_initialized
from trainkit.runtime import kill
from trainkit.runtime import method
from trainkit.runtime import nodes
from trainkit.runtime import put
from trainkit.runtime import remote
from trainkit.runtime import shutdown
from trainkit.runtime import wait

__version__ = "0.1.0"

__all__ = [
    "ObjectRef",
    "__version__",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "exit_actor",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_node_ip_address",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "util",
    "wait",
]
