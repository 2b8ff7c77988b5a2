"""The logical plan of a dataset: a source and a chain of operators, all immutable.

``Dataset`` methods append operators; nothing runs until the dataset is consumed. Adjacent
task-based map operators are fused by the executor into one task per block.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any


@dataclass(frozen=True, slots=True)
class Source:
    """Read tasks (``_datasource.ReadTask``), or blocks already in the object store."""

    read_tasks: tuple[Any, ...] = ()
    block_refs: tuple[Any, ...] = ()  # ObjectRefs of pa.Tables (a materialized dataset)
    block_rows: tuple[int, ...] = ()
    name: str = "Read"


@dataclass(frozen=True, slots=True)
class ActorPoolSpec:
    """Where a callable class runs: a pool of actors, each holding one instance."""

    min_size: int
    max_size: int | None  # None: as many as the cluster's resources allow
    num_cpus: float
    num_gpus: float
    constructor_args: tuple[Any, ...] = ()
    constructor_kwargs: Mapping[str, Any] = field(default_factory=dict)
    max_concurrency: int = 1  # calls one actor runs at once (threads)
    max_tasks_in_flight: int | None = None  # per actor; None: 2 * max_concurrency


@dataclass(frozen=True, slots=True)
class MapOp:
    """A one-to-one-ish transform of each block: ``fn(block) -> block`` after the wrapping
    in ``_transforms`` (map, map_batches, flat_map, filter, columns)."""

    name: str  # e.g. "map_batches(normalize)", used in errors and stats
    transform: Callable[..., Any]  # block -> block, or (instance, block) -> block for pools
    pool: ActorPoolSpec | None = None  # None: stateless, runs (fused) in tasks
    udf_class: Any = None  # the callable class for actor pools
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    task_limit: int | None = None  # the most tasks at once (``concurrency=n`` for functions)


@dataclass(frozen=True, slots=True)
class AllToAllOp:
    """An operator the driver runs over its whole input: repartition, random_shuffle, sort,
    groupby aggregations and map_groups, union; limit and random_sample stream."""

    name: str
    kind: str  # "repartition" | "random_shuffle" | "sort" | "aggregate" | "map_groups"
    #            | "union" | "limit" | "random_sample"
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    source: Source
    ops: tuple[MapOp | AllToAllOp, ...] = ()

    def then(self, op: MapOp | AllToAllOp) -> Plan:
        return Plan(self.source, (*self.ops, op))
