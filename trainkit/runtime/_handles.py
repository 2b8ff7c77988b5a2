"""Handles of the built-in runtime: actors, their methods, placement groups, and the refs
a call returns. (On the Ray backend, Ray's own handles stand in their place.)"""

from __future__ import annotations

from typing import Any

from trainkit.runtime import _session
from trainkit.runtime._options import METHOD_OPTIONS
from trainkit.runtime._options import check_options
from trainkit.runtime.core import context as _context
from trainkit.runtime.core.actor_caller import ActorCall
from trainkit.runtime.core.core_worker import CoreWorker
from trainkit.runtime.core.refs import ObjectRef
from trainkit.runtime.core.values import INLINE
from trainkit.runtime.core.values import error_value
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.protocol import new_id
from trainkit.runtime.wire.serialization import collect_ref
from trainkit.runtime.wire.serialization import dumps
from trainkit.runtime.wire.serialization import inline_buffers


def new_returns(core: CoreWorker, num_returns: int) -> tuple[Any, Any]:
    """The return id(s) a call's worker fills, and what ``.remote()`` gives the caller: one
    ref, a list of ``num_returns`` refs, or None for ``num_returns=0`` (the call still runs;
    its hidden result is freed when it finishes)."""
    if num_returns == 1:
        return_id = core.new_owned(None)
        return return_id, ObjectRef(return_id, core.ctl_addr)
    if num_returns == 0:
        return_id = core.new_owned(None)
        ObjectRef(return_id, core.ctl_addr)  # dropped at once: freed when the call ends
        return return_id, None
    ids = tuple(core.new_owned(None) for _ in range(num_returns))
    return ids, [ObjectRef(i, core.ctl_addr) for i in ids]


class ActorMethod:
    __slots__ = ("_handle", "_method", "_num_returns")

    def __init__(self, handle: ActorHandle, method: str, num_returns: int = 1) -> None:
        self._handle = handle
        self._method = method
        self._num_returns = num_returns

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._handle._call(self._method, args, kwargs, self._num_returns)

    def options(self, **options: Any) -> ActorMethod:
        check_options(options, METHOD_OPTIONS, "an actor method")
        return ActorMethod(self._handle, self._method,
                           options.get("num_returns", self._num_returns))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor method {self._method} cannot be called directly; use "
                        f"handle.{self._method}.remote(...)")


class ActorHandle:
    """A handle to an actor; calls from one handle run in the order they were made."""

    def __init__(self, actor_id: bytes, owner: str, name: str, methods: tuple[str, ...],
                 max_task_retries: int, method_info: dict[str, Any] | None = None) -> None:
        self._actor_id = actor_id
        self._owner = owner
        self._name = name
        self._methods = methods
        self._max_task_retries = max_task_retries
        # method -> (num_returns, Arity or None)
        self._method_info: dict[str, Any] = method_info or {}
        core = _session.ensure_started()
        core.add_ref(actor_id, owner)
        self._client = core.actor_client(actor_id, name, owner, max_task_retries)

    def __getattr__(self, item: str) -> ActorMethod:
        if item.startswith("_"):
            if item.startswith("__") or item not in self._methods:
                raise AttributeError(item)
        elif item not in self._methods:
            raise AttributeError(
                f"actor {self._name} has no method {item!r}; its methods are: "
                f"{', '.join(m for m in self._methods if not m.startswith('_')) or 'none'}")
        info = self._method_info.get(item)
        return ActorMethod(self, item, info[0] if info is not None else 1)

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
              num_returns: int = 1) -> Any:
        core = _context.core
        if core is None:
            raise RuntimeError("trainkit was shut down; this actor handle is no longer valid")
        info = self._method_info.get(method)
        if info is not None and info[1] is not None:
            info[1].check(f"{self._name}.{method}", args, kwargs)
        payload, arg_refs, nested = core.encode_args(
            args, kwargs, f"an argument of {self._name}.{method}")
        return_id, refs = new_returns(core, num_returns)
        core.call_actor(self._client, ActorCall(new_id(), method, payload, arg_refs, nested,
                                                return_id, self._max_task_retries))
        return refs

    def __repr__(self) -> str:
        return f"ActorHandle({self._name}, {self._actor_id.hex()})"

    def __del__(self) -> None:
        core = _context.core
        if core is not None:
            try:
                core.remove_ref(self._actor_id, self._owner)
            except Exception:
                pass

    def __reduce__(self) -> tuple[Any, ...]:
        # Like an ObjectRef: the serializing process keeps this handle (so the actor) alive
        # while the copy may still be read (a task's arguments until the task ends).
        collect_ref(self)
        return (ActorHandle, (self._actor_id, self._owner, self._name, self._methods,
                              self._max_task_retries, self._method_info))


class PlacementGroup:
    """A handle to a placement group. ``ready()`` is an ObjectRef set once it is reserved.

    The group can change size while it runs (:meth:`add_bundles`, :meth:`remove_bundles`).
    A bundle keeps its index for the group's whole life: removing bundle 1 of 0..2 leaves
    bundles 0 and 2 (not a renumbered 0 and 1), and later additions get new indices (3, ...),
    so a task or actor placed with an index stays in the bundle it was placed in.
    ``placement_group_table`` shows the gaps the same way (``bundles`` keyed by index).

    Attributes:
        id: the group's id.
        bundle_specs: the live bundles, in index order, as this handle last saw them.
        bundle_indices: the index of each of ``bundle_specs``.
        strategy: PACK, SPREAD, STRICT_PACK or STRICT_SPREAD.
        name: its name; "" for none.
    """

    def __init__(self, pg_id: str, bundles: list[dict[str, float]], strategy: str,
                 name: str, indices: list[int] | None = None) -> None:
        self.id = pg_id
        self.bundle_specs = bundles
        self.bundle_indices = list(range(len(bundles))) if indices is None else list(indices)
        self.strategy = strategy
        self.name = name

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def bundle_spec(self, index: int) -> dict[str, float] | None:
        """What bundle ``index`` reserves, as this handle knows it; None if it does not."""
        for i, spec in zip(self.bundle_indices, self.bundle_specs, strict=True):
            if i == index:
                return spec
        return None

    def ready(self) -> ObjectRef:
        return self.reserved_ref(None)

    def reserved_ref(self, indices: list[int] | None) -> ObjectRef:
        """A ref set once the group (or only bundles ``indices``) is reserved: to this
        handle, or to ``indices``."""
        core = _session.ensure_started()
        oid = core.new_owned(None)
        ref = ObjectRef(oid, core.ctl_addr)

        def done(ok: bool, payload: Any) -> None:
            if ok:
                meta, bufs, _ = dumps(self if indices is None else payload)
                core.set_result(oid, (INLINE, meta, inline_buffers(bufs)))
            else:
                core.set_result(oid, error_value(payload))

        fields = (self.id,) if indices is None else (self.id, indices)
        core.request_async(core.control_addr, Msg.WAIT_PG, *fields,
                           what=f"placement group {self.id}", callback=done)
        return ref

    def wait(self, timeout_seconds: float | None = 30) -> bool:
        """True once every bundle is reserved; False if that did not happen in time."""
        core = _session.ensure_started()
        return core.wait_refs([self.ready()], 1, timeout_seconds)[0]

    def add_bundles(self, bundles: list[dict[str, float]]) -> ObjectRef:
        """Add bundles to this live group, all of them or none (Ray has no such call).

        The bundles it has, and the tasks and actors in them, are not touched. On a reserved
        group the new bundles are reserved together as the group's strategy says for the
        whole group (STRICT_PACK: on the node of its bundles; STRICT_SPREAD: each on a node
        that holds none of its bundles; PACK: its nodes first; SPREAD: its least used nodes
        first); a group not reserved yet just gets bigger and is reserved whole. Until they
        are reserved, ``placement_group_table`` lists the new bundles without a node and
        ``ready()`` waits for them too.

        Args:
            bundles: what each new bundle reserves, e.g. ``[{"CPU": 1}]``.

        Returns:
            An ObjectRef set to the new bundles' indices (a list) once they are reserved; it
            fails with ValueError if the group or one of them is removed first.

        Raises:
            ValueError: an empty list, a malformed bundle, or a removed group.
            InfeasibleError: the bundles could never be reserved next to the group's, even on
                idle nodes; the group is unchanged.

        Example:
            >>> pg = placement_group([{"CPU": 1}])
            >>> tk.get(pg.add_bundles([{"CPU": 1}]))
            [1]
        """
        if not isinstance(bundles, (list, tuple)):
            raise ValueError(f"bundles is {bundles!r}, but add_bundles takes a list of bundles, "
                             "e.g. [{'CPU': 1}]")
        clean = [dict(b) if isinstance(b, dict) else b for b in bundles]
        indices: list[int] = _session.ensure_started().request_control(
            Msg.ADD_BUNDLES, self.id, clean, what=f"adding bundles to placement group {self.id}")
        self.changed(dict(zip(indices, clean, strict=True)), [])
        return self.reserved_ref(indices)

    def remove_bundles(self, indices: list[int]) -> None:
        """Remove bundles from this live group, all of them or none; free what they reserve.

        What runs in them is killed, as ``remove_placement_group`` does for the whole group
        (actors are not restarted); the other bundles, and what runs in them, are not
        touched. The other bundles keep their indices; the removed indices are never used
        again.

        Args:
            indices: the bundles to remove, e.g. ``[1]``.

        Raises:
            ValueError: an empty list, an index that is not a bundle of the group, an index
                named twice, or every bundle (use ``remove_placement_group``); the group is
                unchanged.

        Example:
            >>> pg = placement_group([{"CPU": 1}] * 2)
            >>> pg.remove_bundles([1])
            >>> pg.bundle_indices
            [0]
        """
        wire = list(indices) if isinstance(indices, (list, tuple)) else indices
        _session.ensure_started().request_control(
            Msg.REMOVE_BUNDLES, self.id, wire,
            what=f"removing bundles of placement group {self.id}")
        self.changed({}, list(wire))

    def changed(self, added: dict[int, dict[str, float]], removed: list[int]) -> None:
        """Record a resize this process made (handles elsewhere learn it from the table)."""
        specs = dict(zip(self.bundle_indices, self.bundle_specs, strict=True))
        specs.update(added)
        for i in removed:
            specs.pop(i, None)
        self.bundle_indices = sorted(specs)
        self.bundle_specs = [specs[i] for i in self.bundle_indices]

    def __reduce__(self) -> tuple[Any, ...]:
        return (PlacementGroup, (self.id, self.bundle_specs, self.strategy, self.name,
                                 self.bundle_indices))

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id}, {self.bundle_specs}, {self.strategy})"
