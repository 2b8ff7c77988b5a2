"""Resource accounting for the node service: leases and placement groups over explicit nodes.

Pure (no I/O, threads or clocks): the node service feeds it nodes, requests and groups, calls
:meth:`ResourceScheduler.schedule`, and acts on the :class:`Grant`, :class:`PlacementGroupReady`
and :class:`BundlesReady` it returns. Amounts are integer units of 1/10000 inside, so 0.1 + 0.2
never drifts; the public methods take and return floats.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Final

from trainkit.exceptions import InfeasibleError
from trainkit.exceptions import TrainkitInternalError

__all__ = [
    "PLACEMENT_STRATEGIES",
    "BundlesReady",
    "Grant",
    "PlacementGroupReady",
    "ResourceScheduler",
    "make_resource_request",
]

# Request ids are opaque: the runtime uses bytes, tests use readable strings.
RequestId = str | bytes

PLACEMENT_STRATEGIES: Final = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")

_UNIT: Final = 10_000
_GPU: Final = "GPU"
_BUILTIN_OPTIONS: Final = {"cpu": "num_cpus", "gpu": "num_gpus", "memory": "memory"}
# Placing bundles is bin packing; bounding the fit checks keeps one schedule() call cheap. A
# group the bounded search cannot place just waits for the next call.
_SEARCH_BUDGET: Final = 10_000
_MAX_NODES_SHOWN: Final = 8
_REMOVED_ROWS_KEPT: Final = 1000  # rows of removed placement groups kept for the table

_Units = dict[str, int]
_Devices = dict[int, int]  # GPU device id -> units of that device


def _amount(label: str, value: object, *, gpu: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{label} is {value!r} ({type(value).__name__}), but must be a number >= 0"
        )
    as_float = float(value)
    if not math.isfinite(as_float) or as_float < 0:
        raise ValueError(f"{label} is {value!r}, but must be a finite number >= 0")
    units = round(as_float * _UNIT)
    if as_float and not units:
        raise ValueError(f"{label} is {value!r}, but must be 0 or at least 0.0001")
    if gpu and units > _UNIT and units % _UNIT:
        raise ValueError(
            f"{label} is {value!r}, but fractional GPUs must be < 1: ask for a whole number "
            "of GPUs (e.g. 2) or a fraction of one (e.g. 0.5)"
        )
    return units


def _parse(resources: Mapping[str, object], label: str) -> _Units:
    """Validate a resource mapping and convert it to units, dropping zero amounts."""
    if not isinstance(resources, Mapping):
        raise ValueError(f"{label} is {resources!r}, but must be a mapping such as {{'CPU': 1}}")
    units: _Units = {}
    for name, value in resources.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{label} has the key {name!r}, but names must be non-empty str")
        amount = _amount(f"{label}[{name!r}]", value, gpu=name == _GPU)
        if amount:
            units[name] = amount
    return units


def _floats(units: Mapping[str, int]) -> dict[str, float]:
    return {name: amount / _UNIT for name, amount in units.items()}


def _show(units: Mapping[str, int]) -> str:
    """Render amounts for messages, whole numbers without a trailing .0."""
    return repr({k: v // _UNIT if v % _UNIT == 0 else v / _UNIT for k, v in units.items()})


def _without_gpu(units: Mapping[str, int]) -> _Units:
    return {name: amount for name, amount in units.items() if name != _GPU}


def _sum(dicts: Iterable[Mapping[str, int]]) -> _Units:
    total: _Units = {}
    for d in dicts:
        for name, amount in d.items():
            total[name] = total.get(name, 0) + amount
    return total


def make_resource_request(
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    memory: float | None = None,
    resources: Mapping[str, float] | None = None,
    default_cpus: float = 1.0,
) -> dict[str, float]:
    """Normalize user resource options into one request mapping.

    Args:
        num_cpus: CPUs to hold; None means ``default_cpus``.
        num_gpus: GPUs to hold: a fraction below 1 (shares a device) or a whole number.
        memory: memory to hold, in bytes.
        resources: custom resources by name. CPU, GPU and memory (in any case) are refused
            here: they have their own arguments.
        default_cpus: the CPUs to hold when ``num_cpus`` is None (1 for tasks, 0 for actors).

    Returns:
        ``{"CPU": .., "GPU": .., "memory": .., custom...}`` with zero entries dropped.

    Raises:
        ValueError: an amount is negative, not a number, a bool, or a GPU count above 1 that is
            not whole; or ``resources`` names a built-in resource.

    Example:
        >>> make_resource_request(num_gpus=0.5, resources={"accel": 2})
        {'CPU': 1.0, 'GPU': 0.5, 'accel': 2.0}
    """
    for name, value in (resources or {}).items():
        option = _BUILTIN_OPTIONS.get(str(name).lower())
        if option is not None:
            raise ValueError(
                f"resources={{{name!r}: {value!r}}} sets a built-in resource; "
                f"use {option}={value!r} instead of resources="
            )
    cpu_label, cpus = (
        ("num_cpus", num_cpus) if num_cpus is not None else ("default_cpus", default_cpus)
    )
    units = {
        "CPU": _amount(cpu_label, cpus),
        _GPU: _amount("num_gpus", 0 if num_gpus is None else num_gpus, gpu=True),
        "memory": _amount("memory", 0 if memory is None else memory),
        **_parse(resources or {}, "resources"),
    }
    return _floats({name: amount for name, amount in units.items() if amount})


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease request that got its resources.

    Attributes:
        request_id: the id given to :meth:`ResourceScheduler.submit`.
        node_id: the node the resources are on.
        resources: what was taken.
        gpu_ids: the GPU devices used; a fractional request gets exactly one.
        placement: ``(pg_id, bundle_index)`` of the bundle it was taken from, or None.

    Example:
        >>> Grant("r1", "n1", {"CPU": 1.0}, (), None).node_id
        'n1'
    """

    request_id: RequestId
    node_id: str
    resources: dict[str, float]
    gpu_ids: tuple[int, ...]
    placement: tuple[str, int] | None


@dataclass(frozen=True, slots=True)
class PlacementGroupReady:
    """Every bundle of a placement group is reserved.

    Attributes:
        pg_id: the group.
        bundle_nodes: the node id of each bundle, in bundle order.

    Example:
        >>> PlacementGroupReady("pg", ("n1", "n1")).bundle_nodes
        ('n1', 'n1')
    """

    pg_id: str
    bundle_nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BundlesReady:
    """The bundles that one :meth:`ResourceScheduler.add_bundles` call added to a reserved
    group are reserved.

    Attributes:
        pg_id: the group.
        bundle_nodes: ``(bundle_index, node_id)`` of each added bundle, in bundle order.

    Example:
        >>> BundlesReady("pg", ((2, "n1"),)).bundle_nodes
        ((2, 'n1'),)
    """

    pg_id: str
    bundle_nodes: tuple[tuple[int, str], ...]


Event = Grant | PlacementGroupReady | BundlesReady


@dataclass(slots=True)
class _Pool:
    """Free amounts of a node or of a bundle's reservation; GPUs are tracked per device."""

    free: _Units  # every resource except GPU
    devices: _Devices  # device id -> free units (at most _UNIT); dict order is the pick order

    def copy(self) -> _Pool:
        return _Pool(dict(self.free), dict(self.devices))

    def fit(self, need: Mapping[str, int]) -> _Devices | None:
        """Return the devices ``need`` would take now, or None if it does not fit."""
        if any(self.free.get(k, 0) < v for k, v in need.items() if k != _GPU):
            return None
        gpu = need.get(_GPU, 0)
        if 0 < gpu < _UNIT:
            room = [dev for dev, free in self.devices.items() if free >= gpu]
            # Best fit: filling the fullest device that has room keeps whole devices free for
            # whole-GPU requests. min() keeps the first device on ties.
            return {min(room, key=self.devices.__getitem__): gpu} if room else None
        whole = [dev for dev, free in self.devices.items() if free == _UNIT][: gpu // _UNIT]
        return {dev: _UNIT for dev in whole} if len(whole) == gpu // _UNIT else None

    def take(self, need: Mapping[str, int], devices: _Devices, sign: int = 1) -> None:
        """Take ``need`` on ``devices`` out of the pool; ``sign=-1`` puts it back."""
        for name, amount in _without_gpu(need).items():
            self.free[name] = self.free.get(name, 0) - sign * amount
        for dev, amount in devices.items():
            self.devices[dev] = self.devices.get(dev, 0) - sign * amount

    def give(self, need: Mapping[str, int], devices: _Devices) -> None:
        self.take(need, devices, -1)

    def shape(self) -> tuple[object, ...]:
        """What the pool can hold, regardless of device ids."""
        return (*sorted(self.free.items()), *sorted(self.devices.values()))

    def available(self) -> _Units:
        return {**self.free, _GPU: sum(self.devices.values())}


def _capacity(need: Mapping[str, int]) -> _Pool:
    """A pool holding exactly ``need``, with stand-in devices shaped like a reservation's."""
    gpu = need.get(_GPU, 0)
    devices = {i: _UNIT for i in range(gpu // _UNIT)} if gpu >= _UNIT else {0: gpu} if gpu else {}
    return _Pool(_without_gpu(need), devices)


@dataclass(slots=True)
class _Node:
    node_id: str
    total: _Units
    gpu_ids: tuple[int, ...]
    pool: _Pool = field(init=False)

    def __post_init__(self) -> None:
        self.pool = self.capacity()

    def capacity(self) -> _Pool:
        return _Pool(_without_gpu(self.total), {dev: _UNIT for dev in self.gpu_ids})


@dataclass(slots=True)
class _Bundle:
    need: _Units
    node_id: str | None = None  # None until the group is reserved
    devices: _Devices = field(default_factory=dict)  # taken from the node
    pool: _Pool = field(default_factory=lambda: _Pool({}, {}))  # free inside the reservation


@dataclass(slots=True)
class _PlacementGroup:
    pg_id: str
    strategy: str
    # By bundle index. A removed bundle's index is never used again, so the index a task or
    # actor was placed with keeps naming the same bundle for the group's whole life.
    bundles: dict[int, _Bundle]
    name: str = ""
    ready: bool = False
    lost_a_node: bool = False  # was reserved, then a node with a bundle died: Ray's RESCHEDULING
    # The indices each add_bundles call added to the group while it was reserved, until they
    # are reserved too (each call all or nothing). Empty while the group is not reserved: then
    # every bundle is reserved together.
    adding: list[tuple[int, ...]] = field(default_factory=list)
    next_index: int = field(init=False)

    def __post_init__(self) -> None:
        self.next_index = max(self.bundles, default=-1) + 1

    def used_nodes(self) -> list[str]:
        """The nodes its reserved bundles are on, each once, in bundle order."""
        return list(dict.fromkeys(b.node_id for b in self.bundles.values() if b.node_id))


@dataclass(slots=True)
class _Request:
    request_id: RequestId
    need: _Units
    placement: tuple[str, int] | None
    affinity: tuple[str, bool] | None = None  # (node id, soft): NodeAffinitySchedulingStrategy
    # What schedule() remembers a failure by: requests with the same shape fail together.
    shape: tuple[object, ...] = field(init=False)
    grant: Grant | None = None  # None while queued
    lent: bool = False  # its CPUs are lent back while its holder is blocked
    devices: _Devices = field(default_factory=dict)
    source: _Pool = field(default_factory=lambda: _Pool({}, {}))  # the node or bundle pool

    def __post_init__(self) -> None:
        self.shape = (*sorted(self.need.items()), self.placement, self.affinity)

    def in_group(self, pg_ids: Iterable[str]) -> bool:
        return self.placement is not None and self.placement[0] in pg_ids

    def bound_to(self, node_id: str) -> bool:
        """True for a hard affinity to ``node_id``: the request may run nowhere else."""
        return self.affinity == (node_id, False)


class _SearchGaveUp(Exception):
    """The bounded bundle search ran out of budget before it found an answer."""


def _place_bundles(
    needs: Sequence[_Units], pools: Mapping[str, _Pool], strategy: str
) -> list[tuple[str, _Devices]] | None:
    """Choose a node and devices for every bundle, or return None if they cannot all fit.

    ``pools`` is not changed. Nodes are tried in the mapping's order, so the answer is
    deterministic. Raises _SearchGaveUp when the bounded search could not decide.
    """
    if strategy == "PACK":  # one node is the tightest packing there is
        placed = _place_bundles(needs, pools, "STRICT_PACK")
        if placed is not None:
            return placed
    work = {node_id: pool.copy() for node_id, pool in pools.items()}
    # The usual reason a group does not fit is a busy cluster: fail fast instead of searching.
    if any(all(p.fit(need) is None for p in work.values()) for need in needs):
        return None
    counts: dict[str, int] = {}  # bundles per node on the current search path

    def candidates() -> Iterator[str]:
        if strategy == "STRICT_PACK":  # the node of the first bundle, once it has one
            return iter(list(counts) or list(work))
        if strategy == "PACK":  # nodes in use first: fewer nodes in the end
            return iter([*counts, *(n for n in work if n not in counts)])
        if strategy == "SPREAD":  # least used first; sorted() is stable, node order breaks ties
            return iter(sorted(work, key=lambda n: counts.get(n, 0)))
        return iter([n for n in work if n not in counts])  # STRICT_SPREAD

    chosen: list[tuple[str, _Devices]] = []
    # Per bundle: the untried nodes, and the states of nodes already tried. Nodes in the same
    # state lead to mirror-image subtrees, so once one fails the rest are skipped; this keeps
    # searches over many identical nodes from going factorial.
    stack: list[tuple[Iterator[str], set[tuple[object, ...]]]] = [(candidates(), set())]
    steps = 0
    while stack:
        need = needs[len(chosen)]
        untried, tried = stack[-1]
        for node_id in untried:
            pool = work[node_id]
            state = (*pool.shape(), counts.get(node_id))
            if state in tried:
                continue
            tried.add(state)
            steps += 1
            if steps > _SEARCH_BUDGET:
                raise _SearchGaveUp
            devices = pool.fit(need)
            if devices is not None:
                pool.take(need, devices)
                chosen.append((node_id, devices))
                counts[node_id] = counts.get(node_id, 0) + 1
                break
        else:  # no node left for this bundle: undo the previous one and try its next node
            stack.pop()
            if chosen:
                node_id, devices = chosen.pop()
                work[node_id].give(needs[len(chosen)], devices)
                counts[node_id] -= 1
                if not counts[node_id]:
                    del counts[node_id]
            continue
        if len(chosen) == len(needs):
            return chosen
        stack.append((candidates(), set()))
    return None


class ResourceScheduler:
    """Resource accounting for lease requests and placement groups over explicit nodes.

    Not thread-safe: the node service owns one instance and calls it from one thread. Nothing
    is granted or reserved until :meth:`schedule`; the caller acts on its output, and kills the
    holders of the request ids that the removals return.

    Example:
        >>> s = ResourceScheduler()
        >>> s.add_node("n1", {"CPU": 2, "GPU": 1})
        >>> s.submit("r1", {"CPU": 1, "GPU": 0.5})
        >>> [(g.request_id, g.gpu_ids) for g in s.schedule()]
        [('r1', (0,))]
    """

    def __init__(self) -> None:
        self._nodes: dict[str, _Node] = {}  # insertion order is the order nodes are tried in
        self._groups: dict[str, _PlacementGroup] = {}  # creation order is their FIFO order
        self._requests: dict[RequestId, _Request] = {}  # queued and granted, in submission order
        self._removed: dict[str, dict[str, Any]] = {}  # table rows of removed groups (bounded)

    def add_node(
        self, node_id: str, resources: Mapping[str, float], gpu_ids: Sequence[int] = ()
    ) -> None:
        """Add a node; ``resources["GPU"]`` defaults to ``len(gpu_ids)``, ids to ``0..GPU-1``."""
        if node_id in self._nodes:
            raise ValueError(f"node {node_id!r} already exists; remove it first or pick a new id")
        total = _parse(resources, "resources")
        ids = tuple(gpu_ids)
        if len(set(ids)) != len(ids) or any(
            isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids
        ):
            raise ValueError(f"gpu_ids is {ids!r}, but must be distinct ints >= 0")
        gpu = total.get(_GPU, 0) if _GPU in resources else len(ids) * _UNIT
        if gpu % _UNIT:
            raise ValueError(f"resources['GPU'] is {gpu / _UNIT}, but a node has whole GPUs")
        if ids and len(ids) != gpu // _UNIT:
            raise ValueError(
                f"resources['GPU'] is {gpu // _UNIT}, but gpu_ids {ids!r} lists {len(ids)} "
                "devices; they must agree"
            )
        total.update({_GPU: gpu} if gpu else {})
        self._nodes[node_id] = _Node(node_id, total, ids or tuple(range(gpu // _UNIT)))

    def remove_node(self, node_id: str) -> list[RequestId]:
        """Forget a node; return the ids of the requests that died with it ([] if unknown).

        First the grants that died with it, in submission order: those on the node, and those
        in every bundle of a group that had a bundle there (a group is never partly reserved,
        so it loses its whole reservation and is queued again). Then the queued requests with a
        hard affinity to the node, which can never be granted now. The caller stops the
        holders of the grants and fails the queued ones, as for
        :meth:`remove_placement_group`. Soft-affinity requests stay queued and run anywhere.
        """
        if self._nodes.pop(node_id, None) is None:
            return []
        hit = {
            g.pg_id
            for g in self._groups.values()
            if any(b.node_id == node_id for b in g.bundles.values())
        }
        lost = [
            r
            for r in self._requests.values()
            if (r.grant is None and r.bound_to(node_id))
            or (
                r.grant is not None
                and (r.in_group(hit) or (r.placement is None and r.grant.node_id == node_id))
            )
        ]
        for request in lost:
            del self._requests[request.request_id]
        for pg_id in hit:
            self._unreserve(self._groups[pg_id])
            self._groups[pg_id].lost_a_node = True
        return [r.request_id for r in sorted(lost, key=lambda r: r.grant is None)]

    def submit(
        self,
        request_id: RequestId,
        resources: Mapping[str, float],
        placement: tuple[str, int] | None = None,
        node_affinity: tuple[str, bool] | None = None,
    ) -> None:
        """Queue a lease request.

        Args:
            request_id: unique among queued and granted requests.
            resources: what to hold, e.g. ``{"CPU": 1, "GPU": 0.5}``.
            placement: ``(pg_id, bundle_index)`` to take it from a bundle; index -1 is any
                bundle of the group.
            node_affinity: ``(node_id, soft)``, Ray's ``NodeAffinitySchedulingStrategy``. Hard
                (``soft=False``): granted on that node only, waiting while it is busy; the
                request dies with the node (see :meth:`remove_node`). Soft: that node when it
                fits now, else any node; an unknown or removed node means any node.

        Raises:
            ValueError: duplicate request id, unknown group, bundle index out of range,
                invalid amounts, a malformed ``node_affinity``, a hard affinity to an unknown
                node, or affinity together with a placement group.
            InfeasibleError: no node (or no eligible bundle, or the hard-affine node) could
                ever hold the request.
        """
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already queued or granted")
        need = _parse(resources, "resources")
        if node_affinity is None:
            self._check_request_feasible(request_id, need, placement)
        else:
            node_affinity = self._check_affinity(request_id, need, placement, node_affinity)
        self._requests[request_id] = _Request(request_id, need, placement, node_affinity)

    def cancel(self, request_id: RequestId) -> bool:
        """Drop a queued request; False if it is not queued (granted or unknown)."""
        request = self._requests.get(request_id)
        if request is None or request.grant is not None:
            return False
        del self._requests[request_id]
        return True

    def release(self, request_id: RequestId) -> None:
        """Return a granted request's resources (to its bundle if it was placed in one).

        A no-op for ids that are not granted: the removals already freed their grants, and the
        caller may release those again when it learns that the holder exited.
        """
        request = self._requests.get(request_id)
        if request is None or request.grant is None:
            return
        del self._requests[request_id]
        request.source.give(_held(request), request.devices)

    def lend_cpus(self, request_id: RequestId) -> bool:
        """The holder of a grant is blocked waiting for other work: lend its CPUs back.

        Without this, tasks that wait on the tasks they submit would deadlock once every
        CPU is held by a waiting parent (Ray does the same). True if anything was lent.
        """
        request = self._requests.get(request_id)
        if request is None or request.grant is None or request.lent:
            return False
        if not request.need.get("CPU", 0):
            return False
        request.source.give({"CPU": request.need["CPU"]}, {})
        request.lent = True
        return True

    def reclaim_cpus(self, request_id: RequestId) -> None:
        """The holder runs again: take its CPUs back, even if that over-commits for a while."""
        request = self._requests.get(request_id)
        if request is None or not request.lent:
            return
        request.source.take({"CPU": request.need["CPU"]}, {})
        request.lent = False

    def create_placement_group(
        self,
        pg_id: str,
        bundles: Sequence[Mapping[str, float]],
        strategy: str,
        name: str = "",
    ) -> None:
        """Queue a placement group; :meth:`schedule` reserves it whole or not at all.

        Args:
            pg_id: unique among live groups (a removed group's id may be used again).
            bundles: what each bundle reserves, e.g. ``[{"CPU": 1, "GPU": 1}] * 4``.
            strategy: one of :data:`PLACEMENT_STRATEGIES`.
            name: shown in :meth:`placement_group_table`; "" for none, as in Ray.

        Raises:
            ValueError: duplicate id, unknown strategy, no bundles, an empty bundle, invalid
                amounts, or a name that is not a str.
            InfeasibleError: the group could never be reserved, even on an idle cluster.
        """
        if pg_id in self._groups:
            raise ValueError(f"placement group {pg_id!r} already exists")
        if strategy not in PLACEMENT_STRATEGIES:
            raise ValueError(
                f"strategy is {strategy!r}, but must be one of {', '.join(PLACEMENT_STRATEGIES)}"
            )
        if not isinstance(name, str):
            raise ValueError(f"name is {name!r}, but must be a str ('' for no name)")
        if not bundles:
            raise ValueError("bundles is empty, but a placement group needs at least one bundle")
        needs = _parse_bundles(bundles)
        self._check_group_feasible(pg_id, needs, strategy)
        self._removed.pop(pg_id, None)  # the id is live again: its old row would mislead
        self._groups[pg_id] = _PlacementGroup(
            pg_id, strategy, {i: _Bundle(need) for i, need in enumerate(needs)}, name
        )

    def remove_placement_group(self, pg_id: str) -> list[RequestId]:
        """Free a group; return the ids granted inside it, then the queued ids dropped with it.

        Its row stays in :meth:`placement_group_table` as "REMOVED" (the last
        1000 removed groups only); nothing else remembers it.
        """
        group = self._groups.pop(pg_id, None)
        if group is None:
            return []
        self._removed[pg_id] = {**_table_row(group), "state": "REMOVED"}
        if len(self._removed) > _REMOVED_ROWS_KEPT:
            del self._removed[next(iter(self._removed))]  # the oldest removal
        hit = [r for r in self._requests.values() if r.in_group((pg_id,))]
        for request in hit:
            del self._requests[request.request_id]
        self._unreserve(group)
        return [r.request_id for r in sorted(hit, key=lambda r: r.grant is None)]

    def is_placement_group_ready(self, pg_id: str) -> bool:
        """True once every bundle is reserved (also those added since); False while queued
        or while an addition waits, and for unknown ids."""
        group = self._groups.get(pg_id)
        return group is not None and group.ready and not group.adding

    def are_bundles_ready(self, pg_id: str, indices: Sequence[int] | None = None) -> bool:
        """True once the group is reserved and so are ``indices`` (None: every bundle).

        Raises:
            ValueError: the group is unknown, or an index names no bundle of it (never was one,
                or was removed): what waits for it would wait forever.
        """
        group = self._group(pg_id)
        for i in indices or ():
            if i not in group.bundles:
                raise ValueError(
                    f"bundle {i!r} of placement group {pg_id!r} is not there (removed, or never "
                    f"added); its bundles are {_indices(group)}"
                )
        if indices is None:
            return group.ready and not group.adding
        return group.ready and all(group.bundles[i].node_id is not None for i in indices)

    def add_bundles(self, pg_id: str, bundles: Sequence[Mapping[str, float]]) -> list[int]:
        """Add bundles to a live group, all of them or none; return their indices.

        A reserved group keeps its bundles (and what runs in them) and :meth:`schedule`
        reserves the new ones together, as the group's strategy says relative to the bundles
        it has: STRICT_PACK on the node of its bundles, STRICT_SPREAD on nodes that hold none
        of them, PACK on its nodes first, SPREAD on its least used nodes first. It reports
        them with :class:`BundlesReady`; until then the group stays "CREATED" and the new
        bundles have no node in :meth:`placement_group_table`. A group still waiting to be
        reserved just gets bigger and is reserved whole. New indices follow the highest index
        the group ever had (a removed bundle's index is never reused).

        Raises:
            ValueError: unknown group, no bundles, an empty bundle or invalid amounts.
            InfeasibleError: the new bundles could never be reserved next to the group's,
                even on idle nodes; nothing is changed.

        Example:
            >>> s = ResourceScheduler()
            >>> s.add_node("n1", {"CPU": 2})
            >>> s.create_placement_group("pg", [{"CPU": 1}], "STRICT_PACK")
            >>> _ = s.schedule()
            >>> s.add_bundles("pg", [{"CPU": 1}])
            [1]
            >>> s.schedule()
            [BundlesReady(pg_id='pg', bundle_nodes=((1, 'n1'),))]
        """
        group = self._group(pg_id)
        if isinstance(bundles, (str, bytes, Mapping)) or not isinstance(bundles, Sequence):
            raise ValueError(
                f"bundles is {bundles!r}, but add_bundles takes a list of bundles, e.g. "
                "[{'CPU': 1}]"
            )
        if not bundles:
            raise ValueError(
                "bundles is [], but add_bundles needs at least one bundle to add, e.g. [{'CPU': 1}]"
            )
        needs = _parse_bundles(bundles)
        if group.ready:
            self._check_addition_feasible(group, needs)
        else:
            self._check_group_feasible(
                pg_id, [*(b.need for b in group.bundles.values()), *needs], group.strategy
            )
        indices = tuple(range(group.next_index, group.next_index + len(needs)))
        group.next_index += len(needs)
        group.bundles.update(zip(indices, map(_Bundle, needs), strict=True))
        if group.ready:
            group.adding.append(indices)
        return list(indices)

    def remove_bundles(self, pg_id: str, indices: Sequence[int]) -> list[RequestId]:
        """Remove bundles from a live group, all of them or none; free what they reserve.

        The other bundles, and what runs in them, are not touched; their indices do not
        change, and the removed indices stay unused. Returns the ids granted in the removed
        bundles, then the queued ids that asked for one of them (the caller stops or fails
        them, as for :meth:`remove_placement_group`); requests for any bundle (index -1) stay
        queued.

        Raises:
            ValueError: unknown group, no indices, an index that is not one of the group's
                bundles, an index named twice, or every bundle of the group (use
                :meth:`remove_placement_group`); nothing is changed.
        """
        group = self._group(pg_id)
        self._check_removal(group, indices)
        gone = set(indices)
        hit = [r for r in self._requests.values() if _in_bundles(r, pg_id, gone)]
        for request in hit:
            del self._requests[request.request_id]
        for i in sorted(gone):
            bundle = group.bundles.pop(i)
            if bundle.node_id in self._nodes:
                self._nodes[bundle.node_id].pool.give(bundle.need, bundle.devices)
        batches = (tuple(i for i in batch if i not in gone) for batch in group.adding)
        group.adding = [batch for batch in batches if batch]
        if group.ready and not group.used_nodes():  # only unreserved additions are left
            group.ready, group.adding = False, []
        return [r.request_id for r in sorted(hit, key=lambda r: r.grant is None)]

    def placement_group_table(self, pg_id: str | None = None) -> dict[str, Any]:
        """What Ray's ``ray.util.placement_group_table()`` reports, without ``stats``.

        A row has ``placement_group_id``, ``name``, ``bundles`` ({index: {resource: amount}}),
        ``bundles_to_node_id`` ({index: node_id}, empty until reserved), ``strategy`` and
        ``state``: "PENDING" (queued), "CREATED" (reserved), "RESCHEDULING" (queued again
        after a node with one of its bundles was removed) or "REMOVED" (where its bundles
        were when it was removed). The rows are copies: changing them changes nothing here.

        Args:
            pg_id: one group's id, or None for every row.

        Returns:
            That group's row, or every row keyed by id: removed groups (the last
            1000, oldest removal first), then live ones in creation order.

        Raises:
            ValueError: ``pg_id`` names no live group and no kept removed one.

        Example:
            >>> s = ResourceScheduler()
            >>> s.add_node("n1", {"CPU": 2})
            >>> s.create_placement_group("pg", [{"CPU": 1}], "PACK", name="g")
            >>> s.placement_group_table("pg")["state"]
            'PENDING'
            >>> _ = s.schedule()
            >>> s.placement_group_table()["pg"]["bundles_to_node_id"]
            {0: 'n1'}
        """
        if pg_id is None:
            rows = {i: _copy_row(row) for i, row in self._removed.items()}
            rows.update((g.pg_id, _table_row(g)) for g in self._groups.values())
            return rows
        group = self._groups.get(pg_id)
        if group is not None:
            return _table_row(group)
        if pg_id in self._removed:
            return _copy_row(self._removed[pg_id])
        raise ValueError(
            f"placement group {pg_id!r} is unknown: it was never created here, or it was "
            f"removed before the last {_REMOVED_ROWS_KEPT} removals"
        )

    def placement_group_bundles(self, pg_id: str) -> list[dict[str, float]]:
        """The bundles (as created or added, not those removed), in bundle order."""
        return [_floats(b.need) for b in self._group(pg_id).bundles.values()]

    def schedule(self) -> list[Event]:
        """Reserve what can be reserved and grant what can be granted, now.

        Queued groups go first, in creation order, each all or nothing, and so do the bundles
        each :meth:`add_bundles` call added to a reserved group; then queued requests in
        submission order. Nothing blocks the line: whatever does not fit now is skipped and
        later entries may go ahead of it.
        """
        events: list[Event] = []
        for group in self._groups.values():
            if not group.ready and self._reserve(group):
                nodes = tuple(str(b.node_id) for b in group.bundles.values())
                events.append(PlacementGroupReady(group.pg_id, nodes))
            for batch in [*group.adding] if group.ready else []:
                if self._reserve_addition(group, batch):
                    placed = tuple((i, str(group.bundles[i].node_id)) for i in batch)
                    events.append(BundlesReady(group.pg_id, placed))
        # Free amounts only shrink during a pass, so a shape that failed once fails again;
        # skipping it keeps a long queue of identical requests cheap.
        failed: set[tuple[object, ...]] = set()
        for request in [r for r in self._requests.values() if r.grant is None]:
            if request.shape in failed:
                continue
            grant = self._try_grant(request)
            if grant is None:
                failed.add(request.shape)
            else:
                events.append(grant)
        return events

    def total_resources(self) -> dict[str, float]:
        """Totals summed over nodes."""
        return _floats(_sum(n.total for n in self._nodes.values()))

    def available_resources(self) -> dict[str, float]:
        """Free amounts summed over nodes; reserved bundles count as used, as in Ray.

        Every resource of :meth:`total_resources` is present, 0.0 when all of it is in use.
        """
        free = _sum(n.pool.available() for n in self._nodes.values())
        return {name: free.get(name, 0) / _UNIT for name in self.total_resources()}

    def nodes(self) -> list[dict[str, Any]]:
        """One dict per node: node_id, resources_total, resources_available, gpu_ids."""
        return [
            {
                "node_id": n.node_id,
                "resources_total": _floats(n.total),
                "resources_available": {k: n.pool.available().get(k, 0) / _UNIT for k in n.total},
                "gpu_ids": list(n.gpu_ids),
            }
            for n in self._nodes.values()
        ]

    def queued_requests(self) -> list[RequestId]:
        """Ids of requests waiting for resources, in submission order."""
        return [request_id for request_id, r in self._requests.items() if r.grant is None]

    def queued_placement_groups(self) -> list[str]:
        """Ids of groups waiting to be reserved, in creation order."""
        return [pg_id for pg_id, g in self._groups.items() if not g.ready]

    def _group(self, pg_id: str) -> _PlacementGroup:
        group = self._groups.get(pg_id)
        if group is None:
            raise ValueError(f"placement group {pg_id!r} does not exist (was it removed?)")
        return group

    def _try_grant(self, request: _Request) -> Grant | None:
        spots: list[tuple[str, _Pool, tuple[str, int] | None]]
        if request.affinity is not None:  # the one check a request without affinity pays
            spots = self._affine_spots(*request.affinity)
        elif request.placement is None:
            spots = [(n.node_id, n.pool, None) for n in self._nodes.values()]
        else:
            pg_id, index = request.placement
            group = self._groups[pg_id]
            if not group.ready:
                return None
            bundles = group.bundles.items() if index == -1 else [(index, group.bundles[index])]
            spots = [(b.node_id, b.pool, (pg_id, i)) for i, b in bundles if b.node_id is not None]
        for node_id, pool, placement in spots:
            devices = pool.fit(request.need)
            if devices is not None:
                pool.take(request.need, devices)
                request.devices, request.source = devices, pool
                resources = _floats(request.need)
                request.grant = Grant(
                    request.request_id, node_id, resources, (*devices,), placement
                )
                return request.grant
        return None

    def _affine_spots(
        self, node_id: str, soft: bool
    ) -> list[tuple[str, _Pool, tuple[str, int] | None]]:
        """Where a request with node affinity may go, in the order to try them."""
        node = self._nodes.get(node_id)
        if not soft:  # a missing node cannot happen: remove_node drops requests bound to it
            return [] if node is None else [(node_id, node.pool, None)]
        others: list[tuple[str, _Pool, tuple[str, int] | None]] = [
            (n.node_id, n.pool, None) for n in self._nodes.values() if n is not node
        ]
        return others if node is None else [(node_id, node.pool, None), *others]

    def _reserve(self, group: _PlacementGroup) -> bool:
        pools = {node_id: node.pool for node_id, node in self._nodes.items()}
        try:
            needs = [b.need for b in group.bundles.values()]
            placed = _place_bundles(needs, pools, group.strategy)
        except _SearchGaveUp:
            placed = None
        if placed is None:
            return False
        self._take_bundles(list(group.bundles.values()), placed)
        group.ready, group.lost_a_node, group.adding = True, False, []
        return True

    def _reserve_addition(self, group: _PlacementGroup, batch: tuple[int, ...]) -> bool:
        """Reserve one add_bundles call's bundles next to the group's reserved ones."""
        pools = {node_id: node.pool for node_id, node in self._nodes.items()}
        bundles = [group.bundles[i] for i in batch]
        try:
            placed = _place_bundles(
                [b.need for b in bundles], _addition_pools(group, pools), group.strategy
            )
        except _SearchGaveUp:
            placed = None
        if placed is None:
            return False
        self._take_bundles(bundles, placed)
        group.adding.remove(batch)
        return True

    def _take_bundles(
        self, bundles: Sequence[_Bundle], placed: Sequence[tuple[str, _Devices]]
    ) -> None:
        for bundle, (node_id, devices) in zip(bundles, placed, strict=True):
            self._nodes[node_id].pool.take(bundle.need, devices)
            bundle.node_id, bundle.devices = node_id, devices
            bundle.pool = _Pool(_without_gpu(bundle.need), dict(devices))

    def _unreserve(self, group: _PlacementGroup) -> None:
        """Return every bundle to its node if that is still here; its grants must be gone."""
        for bundle in group.bundles.values():
            if bundle.node_id in self._nodes:
                self._nodes[bundle.node_id].pool.give(bundle.need, bundle.devices)
            bundle.node_id, bundle.devices, bundle.pool = None, {}, _Pool({}, {})
        group.ready, group.adding = False, []

    def _describe_nodes(self) -> str:
        if not self._nodes:
            return "there are no nodes"
        shown = [f"node {n.node_id!r} has {_show(n.total)}" for n in self._nodes.values()]
        more = len(shown) - _MAX_NODES_SHOWN
        return "; ".join(shown[:_MAX_NODES_SHOWN]) + (f"; and {more} more" if more > 0 else "")

    def _check_request_feasible(
        self, request_id: RequestId, need: _Units, placement: tuple[str, int] | None
    ) -> None:
        if placement is None:
            pools = [n.capacity() for n in self._nodes.values()]
            where, have = "any node", self._describe_nodes()
            fix = "Lower num_cpus=/num_gpus=/memory=/resources=, or add a node that has it."
        else:
            pg_id, index = placement
            group = self._group(pg_id)
            bundles = group.bundles
            if type(index) is not int or (index != -1 and index not in bundles):
                raise ValueError(
                    f"bundle index is {index!r}, but placement group {pg_id!r} has "
                    f"{len(bundles)} bundles: use {_indices(group)}, or -1 for any bundle"
                )
            indices = list(bundles) if index == -1 else [index]
            pools = [_capacity(bundles[i].need) for i in indices]
            where = f"{'any bundle' if index == -1 else f'bundle {index}'} of group {pg_id!r}"
            have = "; ".join(f"bundle {i} reserves {_show(bundles[i].need)}" for i in indices)
            fix = "Ask for no more than a bundle reserves, or make the group's bundles bigger."
        if all(pool.fit(need) is None for pool in pools):
            raise InfeasibleError(
                f"request {request_id!r} needs {_show(need)}, more than {where} can ever "
                f"provide ({have}). {fix}"
            )

    def _check_affinity(
        self,
        request_id: RequestId,
        need: _Units,
        placement: tuple[str, int] | None,
        affinity: object,
    ) -> tuple[str, bool]:
        """Validate ``node_affinity`` for :meth:`submit`; return it as ``(node_id, soft)``."""
        if (
            not isinstance(affinity, tuple)
            or len(affinity) != 2
            or not isinstance(affinity[0], str)
            or not isinstance(affinity[1], bool)
        ):
            raise ValueError(
                f"node_affinity is {affinity!r}, but must be a (node_id: str, soft: bool) pair"
            )
        node_id, soft = affinity
        if placement is not None:
            raise ValueError(
                f"request {request_id!r} has node_affinity={affinity!r} and placement="
                f"{placement!r}, but they cannot be combined (Ray forbids it too): drop one; "
                "inside a group, its bundles already decide the node"
            )
        node = self._nodes.get(node_id)
        if node is None:
            if not soft:
                known = ", ".join(list(self._nodes)[:_MAX_NODES_SHOWN]) or "none"
                more = len(self._nodes) - _MAX_NODES_SHOWN
                raise ValueError(
                    f"request {request_id!r}: node_affinity names no live node (node "
                    f"{node_id!r} is unknown; the nodes are {known}"
                    f"{f', and {more} more' if more > 0 else ''}). Pick a node id from "
                    "nodes(), or pass soft=True to run anywhere instead."
                )
        elif node.capacity().fit(need) is not None:
            return node_id, soft
        elif not soft:
            raise InfeasibleError(
                f"request {request_id!r} needs {_show(need)}, more than node {node_id!r} can "
                f"ever provide ({_show(node.total)}), and its node affinity is hard. Lower "
                "num_cpus=/num_gpus=/memory=/resources=, pick another node, or pass soft=True."
            )
        # Soft, and the node is unknown or too small: it would run elsewhere, so check there.
        self._check_request_feasible(request_id, need, None)
        return node_id, soft

    def _check_group_feasible(self, pg_id: str, needs: list[_Units], strategy: str) -> None:
        what = f"placement group {pg_id!r} ({strategy}) can never be reserved"
        nodes = self._describe_nodes()
        capacities = {node_id: node.capacity() for node_id, node in self._nodes.items()}
        for i, need in enumerate(needs):
            if all(c.fit(need) is None for c in capacities.values()):
                raise InfeasibleError(
                    f"{what}: bundle {i} {_show(need)} is larger than every node ({nodes}). "
                    "Make the bundle smaller or add a node that can hold it."
                )
        try:
            if _place_bundles(needs, capacities, strategy) is not None:
                return
        except _SearchGaveUp:
            return  # undecided: let it wait rather than reject a group that might fit
        count = len(needs)
        able = sum(any(c.fit(n) is not None for n in needs) for c in capacities.values())
        if strategy == "STRICT_PACK":
            why = (
                f"its {count} bundles need {_show(_sum(needs))} together on one node, but no "
                f"node has that much ({nodes}). Use PACK to allow several nodes, or smaller bundles"
            )
        elif strategy == "STRICT_SPREAD" and able < count:
            why = (
                f"its {count} bundles need {count} distinct nodes, but only {able} node(s) can "
                f"hold any of them ({nodes}). Use SPREAD to allow sharing nodes, use fewer "
                "bundles, or add nodes"
            )
        else:
            why = (
                f"its bundles {', '.join(_show(n) for n in needs)} do not fit together even on "
                f"idle nodes ({nodes}). Make the bundles smaller, relax the strategy, or add nodes"
            )
        raise InfeasibleError(f"{what}: {why}.")

    def _check_addition_feasible(self, group: _PlacementGroup, needs: list[_Units]) -> None:
        """Could ``needs`` ever be reserved next to a reserved group's bundles, on idle nodes?"""
        capacities = {node_id: node.capacity() for node_id, node in self._nodes.items()}
        for bundle in group.bundles.values():  # its own bundles stay where they are
            if bundle.node_id in capacities:
                capacities[bundle.node_id].take(bundle.need, bundle.devices)
        try:
            if _place_bundles(needs, _addition_pools(group, capacities), group.strategy):
                return
        except _SearchGaveUp:
            return  # undecided: let it wait rather than reject bundles that might fit
        what = (
            f"adding {', '.join(_show(n) for n in needs)} to placement group {group.pg_id!r} "
            f"({group.strategy}) can never succeed"
        )
        used, nodes = group.used_nodes(), self._describe_nodes()
        if group.strategy == "STRICT_PACK":
            mine = _sum(b.need for b in group.bundles.values() if b.node_id is not None)
            why = (
                f"STRICT_PACK keeps every bundle on node {used[0]!r}, which has "
                f"{_show(self._nodes[used[0]].total)} and already reserves {_show(mine)} for "
                "the group. Add smaller bundles, or make a new group (PACK may use several nodes)"
            )
        elif group.strategy == "STRICT_SPREAD":
            free = [n for n in self._nodes if n not in used]
            why = (
                f"STRICT_SPREAD puts each new bundle on a node of its own that holds none of the "
                f"group's bundles, and only {len(free)} node(s) hold none "
                f"({', '.join(map(repr, free)) or 'none'}; {nodes}). Add fewer bundles, or add "
                "nodes"
            )
        else:
            why = (
                f"they do not fit next to the group's bundles even on idle nodes ({nodes}). "
                "Make the bundles smaller, or add a node that can hold them"
            )
        raise InfeasibleError(f"{what}: {why}.")

    def _check_removal(self, group: _PlacementGroup, indices: object) -> None:
        pg_id = group.pg_id
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
            raise ValueError(
                f"indices is {indices!r}, but remove_bundles takes a list of bundle indices, "
                "e.g. [1]"
            )
        if not indices:
            raise ValueError(
                f"indices is [], but remove_bundles needs at least one bundle index of "
                f"placement group {pg_id!r} ({_indices(group)})"
            )
        for i in indices:
            if type(i) is not int or i not in group.bundles:
                was = isinstance(i, int) and 0 <= i < group.next_index
                raise ValueError(
                    f"bundle index {i!r} is not a bundle of placement group {pg_id!r}"
                    f"{' (it was removed)' if was else ''}: its bundles are {_indices(group)}"
                )
        twice = sorted({i for i in indices if list(indices).count(i) > 1})
        if twice:
            raise ValueError(
                f"indices {list(indices)!r} names bundle {twice[0]} more than once: name each "
                "bundle once"
            )
        if set(indices) == set(group.bundles):
            raise ValueError(
                f"indices {list(indices)!r} names every bundle of placement group {pg_id!r}, "
                "but a group keeps at least one: use remove_placement_group() to remove it whole"
            )

    def _validate(self) -> None:
        """Check the bookkeeping invariants; raise TrainkitInternalError on any breach.

        Rebuilds every pool from scratch (capacity minus what is held in it) and compares.
        """
        problems: list[str] = []
        expected: dict[str, _Pool] = {}  # by "node 'n1'" / "bundle 0 of 'pg'"
        actual: dict[str, _Pool] = {}
        holders: list[tuple[str, str, _Units, _Devices]] = []  # (who, held where, need, devices)
        for node_id, node in self._nodes.items():
            expected[f"node {node_id!r}"], actual[f"node {node_id!r}"] = node.capacity(), node.pool
        for pg_id, group in self._groups.items():
            adding = [i for batch in group.adding for i in batch]
            if (adding and not group.ready) or len(set(adding)) != len(adding):
                problems.append(f"group {pg_id!r} has additions {group.adding} out of turn")
            if not set(adding) <= set(group.bundles) or max(group.bundles) >= group.next_index:
                problems.append(f"group {pg_id!r} has unknown or reusable indices")
            if any(
                (b.node_id is not None) != (group.ready and i not in adding)
                for i, b in group.bundles.items()
            ):
                problems.append(f"group {pg_id!r} is partly reserved")
            for i, b in group.bundles.items():
                if b.node_id is not None:
                    where = f"bundle {i} of {pg_id!r}"
                    holders.append((where, f"node {b.node_id!r}", b.need, b.devices))
                    expected[where] = _Pool(_without_gpu(b.need), dict(b.devices))
                    actual[where] = b.pool
        for rid, request in self._requests.items():
            bound = request.affinity is not None and not request.affinity[1]
            if request.affinity is not None and request.placement is not None:
                problems.append(f"{rid!r} has both node affinity and a placement group")
            if request.grant is not None:
                node_id, placement = request.grant.node_id, request.grant.placement
                where = f"node {node_id!r}"
                if placement is not None:
                    where = f"bundle {placement[1]} of {placement[0]!r}"
                holders.append((repr(rid), where, _held(request), request.devices))
                if bound and not request.bound_to(node_id):
                    problems.append(f"{rid!r} is bound to {request.affinity} but on {node_id!r}")
            elif request.placement is not None and request.placement[0] not in self._groups:
                problems.append(f"queued {rid!r} targets a missing group")
            elif bound and request.affinity is not None and request.affinity[0] not in self._nodes:
                problems.append(f"queued {rid!r} is bound to a missing node {request.affinity}")
        if len(self._removed) > _REMOVED_ROWS_KEPT or self._removed.keys() & self._groups:
            problems.append("the removed groups' rows are unbounded or shadow live groups")
        for who, where, need, devices in holders:
            if need.get(_GPU, 0) != sum(devices.values()):
                problems.append(f"{who} holds devices {devices} for {_show(need)}")
            if where in expected:
                expected[where].take(need, devices)
            else:
                problems.append(f"{who} is held in {where}, which is gone or not reserved")
        for where, pool in expected.items():
            have = actual[where]
            if _strip(pool.free) != _strip(have.free) or pool.devices != have.devices:
                problems.append(f"{where} has {have}, but its holders leave {pool}")
            if min([*have.free.values(), *have.devices.values(), 0]) < 0:
                problems.append(f"{where} is over-committed: {have}")
            if any(v > _UNIT for v in have.devices.values()):
                problems.append(f"{where} has a device above 1.0: {have.devices}")
        if problems:
            raise TrainkitInternalError("scheduler state is inconsistent: " + "; ".join(problems))


def _held(request: _Request) -> _Units:
    if not request.lent:
        return request.need
    return {k: v for k, v in request.need.items() if k != "CPU"}


def _parse_bundles(bundles: Sequence[Mapping[str, float]]) -> list[_Units]:
    needs = [_parse(bundle, f"bundles[{i}]") for i, bundle in enumerate(bundles)]
    for i, need in enumerate(needs):
        if not need:
            raise ValueError(
                f"bundles[{i}] is {dict(bundles[i])!r}, but a bundle must reserve a positive "
                "amount of at least one resource, e.g. {'CPU': 1}"
            )
    return needs


def _addition_pools(group: _PlacementGroup, pools: Mapping[str, _Pool]) -> dict[str, _Pool]:
    """Where bundles added to a reserved group may go, in the order to try the nodes.

    The strategy holds for the whole group: STRICT_PACK stays on its node, STRICT_SPREAD
    avoids its nodes, PACK tries its nodes first and SPREAD its least used nodes first.
    """
    used = group.used_nodes()
    if group.strategy == "STRICT_PACK" and used:
        return {used[0]: pools[used[0]]} if used[0] in pools else {}
    if group.strategy == "STRICT_SPREAD":
        return {n: pool for n, pool in pools.items() if n not in used}
    if group.strategy == "PACK":
        order = [*(n for n in used if n in pools), *(n for n in pools if n not in used)]
    else:  # SPREAD; sorted() is stable, so node order breaks ties
        counts = {n: 0 for n in pools}
        for b in group.bundles.values():
            if b.node_id in counts:
                counts[b.node_id] += 1
        order = sorted(pools, key=counts.__getitem__)
    return {n: pools[n] for n in order}


def _in_bundles(request: _Request, pg_id: str, indices: set[int]) -> bool:
    """True if ``request`` is held in, or waits for, one of these bundles of ``pg_id``."""
    placement = request.grant.placement if request.grant is not None else request.placement
    return placement is not None and placement[0] == pg_id and placement[1] in indices


def _indices(group: _PlacementGroup) -> str:
    """The group's bundle indices for messages: ``0..3`` while they have no gaps."""
    indices = list(group.bundles)
    if indices == list(range(len(indices))) and len(indices) > 1:
        return f"0..{len(indices) - 1}"
    return ", ".join(map(str, indices))


def _strip(units: Mapping[str, int]) -> _Units:
    return {name: amount for name, amount in units.items() if amount}


def _table_row(group: _PlacementGroup) -> dict[str, Any]:
    state = "CREATED" if group.ready else "RESCHEDULING" if group.lost_a_node else "PENDING"
    return {
        "placement_group_id": group.pg_id,
        "name": group.name,
        "bundles": {i: _floats(b.need) for i, b in group.bundles.items()},
        "bundles_to_node_id": {
            i: b.node_id for i, b in group.bundles.items() if b.node_id is not None
        },
        "strategy": group.strategy,
        "state": state,
    }


def _copy_row(row: Mapping[str, Any]) -> dict[str, Any]:
    bundles = {i: dict(need) for i, need in row["bundles"].items()}
    return {**row, "bundles": bundles, "bundles_to_node_id": dict(row["bundles_to_node_id"])}
