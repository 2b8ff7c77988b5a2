"""The benchmark workloads, one module per layer, behind one registry (registry.py).

    common    timing, the result line, watchdog, budgets, memory sampling, backend import
    runtime   init, actor_latency, task_throughput, object_store, baseline_zmq,
              baseline_pool, task_backlog, actor_memory
    train     train_startup, train_report
    tune      tune_overhead, tune_overhead_asha, tune_sleep, tune_memory, tune_2000
    data      data_images, data_parquet, data_pipeline
    cluster   cluster

Importing this package imports only the stdlib: compare.py reads WORKLOADS, DEADLINES and
TK_ON_RAY_WORKLOADS from it without loading trainkit, Ray, torch or numpy. They are views of
the registry, in declaration order: LAYERS below, then the order in each module.
"""

import importlib

from . import registry
from .common import BACKENDS
from .common import TK_ON_RAY
from .registry import DEADLINE_DEFAULT

# Importing a layer's module registers its workloads; this order is the order of WORKLOADS
# (and of a compare.py run; the table's rows follow ROWS in compare.py).
LAYERS = ("runtime", "train", "tune", "data", "cluster")
for _layer in LAYERS:
    importlib.import_module(f"{__name__}.{_layer}")

WORKLOADS = registry.names()
DEADLINES = registry.deadlines()
# all but `cluster`, which drives trainkit.testing.LocalCluster (nodes of the built-in
# runtime). The runtime workloads (init ... object_store) then measure trainkit's runtime API
# carried out by Ray Core; the train/tune/data workloads, trainkit's layers on it.
TK_ON_RAY_WORKLOADS = registry.on_ray_names()

__all__ = [
    "BACKENDS",
    "DEADLINES",
    "DEADLINE_DEFAULT",
    "LAYERS",
    "TK_ON_RAY",
    "TK_ON_RAY_WORKLOADS",
    "WORKLOADS",
    "registry",
]
