"""The public API on trainkit's own runtime (the ``Backend`` of ``init(backend="builtin")``).

Each method does one public call's work with this process's core worker, which it starts
on first use (as Ray's API does): ``_api`` checks the caller's input, then hands over here.
"""

from __future__ import annotations

import os
from typing import Any

from trainkit.exceptions import InfeasibleError
from trainkit.runtime import _session
from trainkit.runtime._definitions import ActorDef
from trainkit.runtime._definitions import TaskDef
from trainkit.runtime._handles import ActorHandle
from trainkit.runtime._handles import PlacementGroup
from trainkit.runtime._handles import new_returns
from trainkit.runtime._runtime_context import RuntimeContext
from trainkit.runtime._runtime_context import current_placement
from trainkit.runtime._strategies import NodeAffinitySchedulingStrategy
from trainkit.runtime._strategies import PlacementGroupSchedulingStrategy
from trainkit.runtime._strategies import placement_of
from trainkit.runtime.core import context as _context
from trainkit.runtime.core.core_worker import CoreWorker
from trainkit.runtime.core.refs import ObjectRef
from trainkit.runtime.core.task_submitter import TaskSpec
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.protocol import new_id
from trainkit.runtime.wire.serialization import dumps_function


def _core() -> CoreWorker:
    return _context.core or _session.ensure_started()


def cluster_info() -> dict[str, Any]:
    info: dict[str, Any] = _core().request_control(Msg.CLUSTER_INFO, what="cluster resources")
    return info


class BuiltinBackend:
    """trainkit's runtime behind the public API."""

    def __init__(self) -> None:
        self._known_nodes: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    def is_initialized(self) -> bool:
        return _context.core is not None

    def shutdown(self) -> None:
        _session.stop()

    # ------------------------------------------------------------------ feasibility
    def _check_feasible(self, core: CoreWorker, resources: dict[str, float],
                        strategy: Any, what: str) -> None:
        """Fail at the call site if no node (or the chosen bundle) can ever hold the
        request. ``what`` names the task or actor; messages are only formatted on failure.
        """
        if isinstance(strategy, PlacementGroupSchedulingStrategy):
            pg = strategy.placement_group
            idx = strategy.placement_group_bundle_index
            spec = pg.bundle_spec(idx)
            candidates = pg.bundle_specs if idx == -1 else [spec] if spec is not None else []
            if not candidates:  # a bundle this handle does not know: the scheduler checks
                return
            if any(all(b.get(k, 0.0) >= v for k, v in resources.items()) for b in candidates):
                return
            raise InfeasibleError(
                f"{what!r} needs {resources}, but its placement group bundle"
                f"{'s' if idx == -1 else f' {idx}'} only reserve "
                f"{candidates if idx == -1 else candidates[0]}; ask for less or make the "
                "bundle larger")
        if isinstance(strategy, NodeAffinitySchedulingStrategy) and not strategy.soft:
            self._check_node(core, strategy.node_id, what)
        total = core.cluster_resources
        short = {k: v for k, v in resources.items() if total.get(k, 0.0) < v}
        if short and core.control_addr != core.node_addr:  # a cluster: nodes may have joined
            total = core.cluster_resources = cluster_info()["total"]
            short = {k: v for k, v in resources.items() if total.get(k, 0.0) < v}
        if short:
            have = {k: total.get(k, 0.0) for k in short}
            raise InfeasibleError(
                f"{what!r} needs {resources}, but the cluster has only {have} of "
                f"{'that' if len(short) == 1 else 'those'} in total, so it could never run; "
                f"lower the request or start trainkit with more (init(num_cpus=..., "
                f"num_gpus=..., resources=...))")

    def _check_node(self, core: CoreWorker, node_id: str, what: str) -> None:
        """A hard node affinity must name a live node: checked at the call, not in a
        queue."""
        if node_id == core.node_id or node_id in self._known_nodes:
            return
        ids = [n["node_id"] for n in cluster_info()["nodes"]]
        self._known_nodes = set(ids)
        if node_id not in self._known_nodes:
            raise ValueError(
                f"{what!r}: NodeAffinitySchedulingStrategy(node_id={node_id!r}) names no "
                f"live node; the nodes are {', '.join(ids)} (tk.nodes()[i]['NodeID']), or "
                "pass soft=True to run elsewhere when that node is gone")

    # ------------------------------------------------------------------ tasks and actors
    def submit_task(self, fn: TaskDef, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        if fn.arity is not None:
            fn.arity.check(fn.name, args, kwargs)
        core = _core()
        self._check_feasible(core, fn.resources, fn.options.get("scheduling_strategy"),
                             fn.name)
        shared = fn.shared
        if shared[1] is None:
            shared[1] = dumps_function(fn.fn)
        payload, arg_refs, nested = core.encode_args(args, kwargs, fn.arg_what)
        return_id, refs = new_returns(core, fn.num_returns)
        core.submit_task(TaskSpec(new_id(), fn.name, shared[0], shared[1], payload,
                                  arg_refs, nested, return_id, fn.key, fn.resources,
                                  fn.placement, fn.retries, fn.retry_exceptions))
        return refs

    def create_actor(self, cls: ActorDef, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> ActorHandle:
        if cls.init_arity is not None:
            cls.init_arity.check(cls.cls.__name__, args, kwargs)
        core = _core()
        opts = cls.options
        name = opts.get("name")
        ns = opts.get("namespace") or _session.namespace()
        if name is not None and opts.get("get_if_exists"):
            try:
                return self.get_actor(name, ns)
            except ValueError:
                pass
        resources = cls.resources
        strategy = opts.get("scheduling_strategy")
        label = cls.label
        self._check_feasible(core, resources, strategy, label)
        shared = cls.shared
        if shared[0] is None:
            shared[0] = dumps_function(cls.cls)
        payload, arg_refs, nested = core.encode_args(
            args, kwargs, f"an argument of {cls.cls.__name__}()")
        descs = core.describe_arg_refs(arg_refs)
        max_concurrency = opts.get("max_concurrency") or (1000 if cls.is_async else 1)
        where = {"resources": resources, "placement": placement_of(strategy)}
        max_restarts = opts.get("max_restarts", 0)
        max_task_retries = opts.get("max_task_retries", 0)
        actor_id = new_id()
        core.own_actor(actor_id, pinned=name is not None)  # named: lives as its creator
        client = core.actor_client(actor_id, label, core.ctl_addr, max_task_retries)
        client.creation_refs = arg_refs + nested
        if max_restarts != 0:
            client.restart_refs = client.creation_refs
        meta = {"name": label, "methods": cls.methods, "max_task_retries": max_task_retries,
                "method_info": cls.method_info, "class_name": cls.cls.__qualname__,
                "detached": opts.get("lifetime") == "detached"}
        try:
            core.request_control(
                Msg.CREATE_ACTOR, actor_id, label,
                (ns, name) if name is not None else None,
                (shared[0], payload, descs, (max_concurrency, where)),
                resources, placement_of(strategy), max_restarts, meta,
                what=f"creating actor {label}")
        except ValueError:
            core.forget_actor(actor_id)
            if name is not None and opts.get("get_if_exists"):
                return self.get_actor(name, ns)  # created by another process meanwhile
            raise
        except BaseException:
            core.forget_actor(actor_id)
            raise
        return ActorHandle(actor_id, core.ctl_addr, label, cls.methods, max_task_retries,
                           cls.method_info)

    def exit_actor(self) -> None:
        from trainkit.runtime.core.context import ActorExit

        if _context.process_actor.get("actor_id") is None:
            raise RuntimeError("exit_actor() was called outside an actor: it ends the actor "
                               "whose method calls it; to stop an actor from outside, use "
                               "tk.kill(handle)")
        raise ActorExit()

    def runtime_context(self) -> Any:
        _core()
        return RuntimeContext(_session.namespace())

    def preload_worker_modules(self, modules: list[str]) -> None:
        core = _core()
        core.out.send(core.control_addr, (Msg.PRELOAD_MODULES, modules))

    # ------------------------------------------------------------------ objects
    def get(self, refs: Any, timeout: float | None) -> Any:
        core = _core()
        if isinstance(refs, ObjectRef):
            return core.get_one(refs, timeout)
        return core.get(refs, timeout)

    def put(self, value: Any) -> ObjectRef:
        return _core().put(value)

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None,
             fetch_local: bool) -> tuple[list[ObjectRef], list[ObjectRef]]:
        if not refs:
            return [], []
        ready_flags = _core().wait_refs(refs, num_returns, timeout)
        ready = [r for r, ok in zip(refs, ready_flags, strict=False) if ok][:num_returns]
        chosen = set(ready)
        return ready, [r for r in refs if r not in chosen]

    def kill(self, actor: Any, no_restart: bool) -> None:
        if not isinstance(actor, ActorHandle):
            raise TypeError(f"kill() takes an ActorHandle, got {type(actor).__name__}")
        core = _core()
        core.out.send(core.control_addr, (Msg.KILL_ACTOR, actor._actor_id, no_restart))
        if no_restart:
            core.mark_killed(actor._client)

    def cancel(self, ref: ObjectRef, force: bool, recursive: bool) -> None:
        core = _core()
        if ref.owner_address == core.ctl_addr:
            core.cancel(ref, force)
        else:  # only the owner knows where its task runs: ask it
            core.out.send(ref.owner_address, (Msg.CANCEL_REF, ref.id, force))

    # ------------------------------------------------------------------ named actors
    def list_named_actors(self, all_namespaces: bool) -> list[Any]:
        ns = None if all_namespaces else _session.namespace()
        names: list[Any] = _core().request_control(Msg.LIST_NAMED_ACTORS, ns,
                                                   what="listing named actors")
        return names

    def get_actor(self, name: str, namespace: str | None) -> ActorHandle:
        core = _core()
        ns = namespace or _session.namespace()
        actor_id, owner, meta = core.request_control(Msg.GET_NAMED_ACTOR, name, ns,
                                                     what=f"looking up actor {name!r}")
        return ActorHandle(actor_id, owner, meta["name"], tuple(meta["methods"]),
                           meta["max_task_retries"], meta.get("method_info"))

    # ------------------------------------------------------------------ resources
    def cluster_resources(self) -> dict[str, float]:
        info = cluster_info()
        return {**info["total"], "object_store_memory": float(info["store"]["capacity"])}

    def available_resources(self) -> dict[str, float]:
        return {k: v for k, v in cluster_info()["available"].items() if v > 0}

    def nodes(self) -> list[dict[str, Any]]:
        return [{"NodeID": n["node_id"], "Alive": True,
                 "NodeManagerAddress": n.get("address", "127.0.0.1"),
                 "Resources": n["resources_total"], "Available": n["resources_available"],
                 "GPUIds": list(n.get("gpu_ids", []))} for n in cluster_info()["nodes"]]

    def get_node_ip_address(self) -> str:
        host = os.environ.get("TRAINKIT_NODE_HOST")
        if host:
            return host
        core = _context.core
        if core is not None and core.ctl_addr.startswith("tcp://"):
            return core.ctl_addr[len("tcp://"):].rsplit(":", 1)[0]
        from trainkit.runtime.cluster.nodes import route_ip

        return route_ip("10.254.254.254")

    def get_gpu_ids(self) -> list[int]:
        return _context.current_gpu_ids()

    # ------------------------------------------------------------------ placement groups
    def placement_group(self, bundles: list[dict[str, float]], strategy: str,
                        name: str) -> PlacementGroup:
        pg_id = os.urandom(8).hex()
        _core().request_control(Msg.CREATE_PG, pg_id, bundles, strategy, name,
                                what=f"creating placement group {bundles}")
        return PlacementGroup(pg_id, bundles, strategy, name)

    def add_bundles(self, pg: PlacementGroup, bundles: Any) -> ObjectRef:
        return pg.add_bundles(bundles)

    def remove_bundles(self, pg: PlacementGroup, indices: Any) -> None:
        pg.remove_bundles(indices)

    def remove_placement_group(self, pg: Any) -> None:
        if not isinstance(pg, PlacementGroup):
            raise TypeError(f"remove_placement_group() takes a PlacementGroup, got "
                            f"{type(pg).__name__}")
        if _context.core is None:
            return
        _core().request_control(Msg.REMOVE_PG, pg.id, what=f"removing placement group {pg.id}")

    def placement_group_table(self, pg: Any) -> dict[str, Any]:
        if pg is not None and not isinstance(pg, PlacementGroup):
            raise TypeError(f"placement_group_table() takes a PlacementGroup or nothing, got "
                            f"{type(pg).__name__}")
        table: dict[str, Any] = _core().request_control(
            Msg.PG_TABLE, pg.id if pg is not None else None,
            what="the placement group table")
        return table

    def current_placement_group(self) -> PlacementGroup | None:
        placement = current_placement()
        if placement is None:
            return None
        row = self.placement_group_table(PlacementGroup(placement[0], [], "", ""))
        indices = sorted(row["bundles"])
        bundles = [dict(row["bundles"][i]) for i in indices]
        return PlacementGroup(placement[0], bundles, row["strategy"], row.get("name", ""),
                              indices)
