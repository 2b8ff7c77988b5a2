"""The Ray backend: the runtime API carried out by Ray Core instead of trainkit's own runtime.

``trainkit.init(backend="ray", address=...)`` routes every runtime call here, so Train, Tune
and Data (which use only the runtime's public API) run unchanged on an existing Ray cluster.
Inside a Ray worker the backend is picked automatically (Ray is initialized there and the
built-in runtime is not). What trainkit promises and Ray does not do by itself is kept here
where it can be:

- an impossible request raises ``InfeasibleError`` at the call site (checked against
  ``ray.cluster_resources()`` and each node's resources), instead of waiting forever;
- Ray's errors reach the user as trainkit's (``TaskError`` still an instance of the user's
  exception class, ``ActorDiedError``, ``WorkerCrashedError``, ``ObjectLostError``,
  ``GetTimeoutError``, ``OutOfMemoryError``, ``TaskCancelledError``).

Not kept (documented in the README): fractional GPUs are Ray's (a 0.5 request may share a
device with a 0.5 request of another job, as in Ray), ``preload_worker_modules`` does nothing
(Ray starts its own workers), and refs are Ray's ``ObjectRef``.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
import types
from typing import Any

from trainkit.exceptions import ActorDiedError
from trainkit.exceptions import GetTimeoutError
from trainkit.exceptions import InfeasibleError
from trainkit.exceptions import ObjectLostError
from trainkit.exceptions import OutOfMemoryError
from trainkit.exceptions import TaskCancelledError
from trainkit.exceptions import TaskError
from trainkit.exceptions import TrainkitError
from trainkit.exceptions import WorkerCrashedError
from trainkit.runtime._definitions import ActorDef
from trainkit.runtime._definitions import TaskDef
from trainkit.runtime._strategies import NodeAffinitySchedulingStrategy

INSTALL_HINT = "pip install 'trainkit[ray]'"
# How long kill() waits for Ray to record an actor as dead.
KILL_CONFIRM_TIMEOUT_S = 10.0

_NO_RESIZE = ("Ray cannot resize a placement group: remove it with remove_placement_group() "
              "and create a new one with the bundles you need")

# The keys of ``@tk.method(...)`` that Ray's ``ray.method`` takes (trainkit's "name" is not).
_RAY_METHOD_OPTIONS = ("num_returns", "concurrency_group", "max_task_retries",
                       "retry_exceptions")


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"init(backend='ray') needs Ray, which is not installed ({e}); "
                          f"install it with: {INSTALL_HINT}") from None
    return ray


class RayBackend:
    """The runtime API on Ray. ``owns`` is True when this process started Ray (init)."""

    def __init__(self, owns: bool) -> None:
        self.ray = import_ray()
        self.owns = owns
        # Cluster totals and each live node's resources by node id, refreshed only before
        # refusing a request (asking Ray on every submit costs about 0.5 ms).
        self._totals: dict[str, float] | None = None
        self._nodes: dict[str, dict[str, float]] | None = None

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, address: str | None, *, num_cpus: float | None, num_gpus: float | None,
              resources: dict[str, float] | None, object_store_memory: int | None,
              namespace: str | None, log_to_driver: bool) -> RayBackend:
        ray = import_ray()
        kwargs: dict[str, Any] = {"address": address, "namespace": namespace,
                                  "log_to_driver": log_to_driver,
                                  "include_dashboard": False, "configure_logging": False}
        if address is None or address == "local":
            # A local Ray's workers import what this process can, as trainkit's own do
            # (functions of the script's modules travel by reference).
            path = os.pathsep.join(p or os.getcwd() for p in sys.path)
            kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                          object_store_memory=object_store_memory,
                          runtime_env={"env_vars": {"PYTHONPATH": path}})
        elif any(v is not None for v in (num_cpus, num_gpus, resources, object_store_memory)):
            raise ValueError("init(backend='ray', address=...): a running Ray cluster's "
                             "resources are its own; drop num_cpus/num_gpus/resources/"
                             "object_store_memory")
        ray.init(**{k: v for k, v in kwargs.items() if v is not None or k == "address"})
        return cls(owns=True)

    def shutdown(self) -> None:
        if self.owns:
            self.ray.shutdown()

    def is_initialized(self) -> bool:
        return bool(self.ray.is_initialized())

    # ------------------------------------------------------------------ feasibility
    def _check_feasible(self, resources: dict[str, float], strategy: Any, what: str) -> None:
        if _is_node_affinity(strategy):
            self._check_node_affinity(resources, strategy, what)
            return
        if strategy is not None and not isinstance(strategy, str):
            return  # inside a placement group: its bundles were checked when it was made
        need = {k: v for k, v in resources.items() if v}
        if not need:
            return
        if self._fits_a_node(need):
            return
        self._totals = self._nodes = None
        if self._fits_a_node(need):
            return
        if not self._node_resources():
            raise ConnectionError(f"cannot submit {what!r}: the Ray cluster has no live node "
                                  "(was it stopped?)")
        raise InfeasibleError(
            f"{what!r} needs {need}, but no node of the Ray cluster has that much (nodes: "
            f"{self._node_resources()}), so it could never run; lower the request or add "
            "nodes")

    def _check_node_affinity(self, resources: dict[str, float], strategy: Any,
                             what: str) -> None:
        """A hard affinity must name a live node that can hold the request (checked at the
        call, as trainkit's runtime does; Ray would fail the task later); a soft one only
        needs some node that can."""
        need = {k: v for k, v in resources.items() if v}
        if strategy.soft:
            if need:
                self._check_feasible(resources, None, what)
            return
        node_id = strategy.node_id
        if node_id not in self._live_nodes():
            self._totals = self._nodes = None
            if node_id not in self._live_nodes():
                raise ValueError(
                    f"{what!r}: NodeAffinitySchedulingStrategy(node_id={node_id!r}) names no "
                    f"live node; the nodes are {', '.join(self._live_nodes())} "
                    "(tk.nodes()[i]['NodeID']), or pass soft=True to run elsewhere when that "
                    "node is gone")
        have = self._live_nodes()[node_id]
        if any(have.get(k, 0.0) < v for k, v in need.items()):
            raise InfeasibleError(
                f"{what!r} needs {need}, but node {node_id} (its NodeAffinitySchedulingStrategy"
                f") has {have}, so it could never run there; lower the request or pass "
                "soft=True")

    def _live_nodes(self) -> dict[str, dict[str, float]]:
        if self._nodes is None:
            self._nodes = {str(n["NodeID"]): dict(n["Resources"]) for n in self.ray.nodes()
                           if n.get("Alive")}
        return self._nodes

    def _node_resources(self) -> list[dict[str, float]]:
        return list(self._live_nodes().values())

    def _fits_a_node(self, need: dict[str, float]) -> bool:
        if self._totals is None:
            self._totals = dict(self.ray.cluster_resources())
        if any(self._totals.get(k, 0.0) < v for k, v in need.items()):
            return False
        return any(all(node.get(k, 0.0) >= v for k, v in need.items())
                   for node in self._node_resources())

    # ------------------------------------------------------------------ tasks and actors
    def _ray_options(self, options: dict[str, Any]) -> dict[str, Any]:
        out = dict(options)
        strategy: Any = out.get("scheduling_strategy")
        if _is_node_affinity(strategy):
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            out["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                node_id=strategy.node_id, soft=bool(strategy.soft),
                _spill_on_unavailable=bool(getattr(strategy, "_spill_on_unavailable", False)),
                _fail_on_unavailable=bool(getattr(strategy, "_fail_on_unavailable", False)))
        elif strategy is not None and not isinstance(strategy, str):
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            out["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=strategy.placement_group,
                placement_group_bundle_index=strategy.placement_group_bundle_index,
                placement_group_capture_child_tasks=strategy.placement_group_capture_child_tasks)
        if "retry_exceptions" in out and isinstance(out["retry_exceptions"], tuple):
            out["retry_exceptions"] = list(out["retry_exceptions"])
        return out

    def submit_task(self, fn: TaskDef, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        """Ray's remote function is made once and kept with every ``.options()`` copy of
        ``fn`` (a new ``ray.remote`` would export the function again)."""
        options = fn.options
        self._check_feasible(fn.resources, options.get("scheduling_strategy"), fn.name)
        shared = fn.shared[2]
        if shared[0] is None:
            shared[0] = self.ray.remote(fn.fn)
        remote = shared[0].options(**self._ray_options(options))
        try:
            return remote.remote(*args, **kwargs)
        except TypeError as e:
            raise _arity_error(fn.fn, fn.name, args, kwargs) or e from None

    def create_actor(self, cls: ActorDef, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
        options = cls.options
        self._check_feasible(cls.resources, options.get("scheduling_strategy"), cls.label)
        shared = cls.shared[1]
        if shared[0] is None:
            shared[0] = self.ray.remote(self._with_method_options(cls.cls))
        remote = shared[0].options(**self._ray_options(options))
        try:
            return remote.remote(*args, **kwargs)
        except TypeError as e:
            raise _arity_error(cls.cls, cls.cls.__name__, args, kwargs) or e from None

    def preload_worker_modules(self, modules: list[str]) -> None:
        """Ray starts its own workers: nothing to preload."""

    def _with_method_options(self, cls: type) -> type:
        """``cls``, or a subclass of it of the same name whose ``@tk.method(...)`` methods
        are copies carrying Ray's ``ray.method`` options (the user's class and functions are
        left as they are, for trainkit's own runtime)."""
        overrides: dict[str, Any] = {}
        for attr in dir(cls):
            raw = inspect.getattr_static(cls, attr, None)
            if not isinstance(raw, types.FunctionType):
                continue
            opts = getattr(raw, "__trainkit_method_options__", None)
            ray_opts = {k: v for k, v in (opts or {}).items()
                        if k in _RAY_METHOD_OPTIONS and v is not None}
            if isinstance(ray_opts.get("retry_exceptions"), tuple):
                ray_opts["retry_exceptions"] = list(ray_opts["retry_exceptions"])
            if ray_opts:
                overrides[attr] = self.ray.method(**ray_opts)(_copy_function(raw))
        if not overrides:
            return cls
        namespace = {**overrides, "__module__": cls.__module__,
                     "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
        sub: type = type(cls)(cls.__name__, (cls,), namespace)
        return sub

    def exit_actor(self) -> None:
        if self.ray.get_runtime_context().get_actor_id() is None:
            raise RuntimeError("exit_actor() was called outside an actor: it ends the actor "
                               "whose method calls it; to stop an actor from outside, use "
                               "tk.kill(handle)")
        self.ray.actor.exit_actor()  # raises (SystemExit) in the calling method

    def runtime_context(self) -> Any:
        """Ray's own ``RuntimeContext`` (ids as hex strings, ``namespace``)."""
        return self.ray.get_runtime_context()

    # ------------------------------------------------------------------ objects
    def get(self, refs: Any, timeout: float | None) -> Any:
        try:
            return self.ray.get(refs, timeout=timeout)
        except Exception as e:
            raise translate(e) from None

    def put(self, value: Any) -> Any:
        try:
            return self.ray.put(value)
        except Exception as e:
            raise translate(e) from None

    def wait(self, refs: list[Any], num_returns: int, timeout: float | None,
             fetch_local: bool) -> tuple[list[Any], list[Any]]:
        ready, rest = self.ray.wait(refs, num_returns=num_returns, timeout=timeout,
                                    fetch_local=fetch_local)
        return list(ready), list(rest)

    def kill(self, actor: Any, no_restart: bool) -> None:
        """Ray's kill is asynchronous: a call made right after it may still run. Wait
        (bounded) until the GCS records the death, so that later calls fail as they do
        on the built-in runtime."""
        self.ray.kill(actor, no_restart=no_restart)
        if not no_restart:
            return
        try:
            from ray._private import state
        except ImportError:  # a Ray without that module: keep its asynchronous kill
            return
        actor_id = actor._actor_id.hex()
        deadline = time.monotonic() + KILL_CONFIRM_TIMEOUT_S
        while time.monotonic() < deadline:
            info = state.actors(actor_id)
            if not info or info.get("State") == "DEAD":
                return
            time.sleep(0.005)

    def cancel(self, ref: Any, force: bool, recursive: bool) -> None:
        self.ray.cancel(ref, force=force, recursive=recursive)

    def list_named_actors(self, all_namespaces: bool) -> list[Any]:
        return list(self.ray.util.list_named_actors(all_namespaces=all_namespaces))

    def get_actor(self, name: str, namespace: str | None) -> Any:
        try:
            return self.ray.get_actor(name, namespace=namespace)
        except ValueError:
            raise ValueError(f"no live actor named {name!r} in namespace "
                             f"{namespace or 'the current one'}") from None

    # ------------------------------------------------------------------ resources
    def cluster_resources(self) -> dict[str, float]:
        return dict(self.ray.cluster_resources())

    def available_resources(self) -> dict[str, float]:
        return dict(self.ray.available_resources())

    def nodes(self) -> list[dict[str, Any]]:
        return [{"NodeID": n["NodeID"], "Alive": n["Alive"],
                 "NodeManagerAddress": n["NodeManagerAddress"], "Resources": n["Resources"],
                 "Available": {}, "GPUIds": []} for n in self.ray.nodes()]

    def get_gpu_ids(self) -> list[int]:
        return [int(i) for i in self.ray.get_gpu_ids()]

    def get_node_ip_address(self) -> str:
        return str(self.ray.util.get_node_ip_address())

    # ------------------------------------------------------------------ placement groups
    def placement_group(self, bundles: list[dict[str, float]], strategy: str,
                        name: str) -> Any:
        for i, bundle in enumerate(bundles):
            need = {k: v for k, v in bundle.items() if v}
            if need and not self._fits_a_node(need):
                self._totals = self._nodes = None
                if not self._fits_a_node(need):
                    raise InfeasibleError(
                        f"bundle {i} of the placement group needs {need}, but no node of the "
                        f"Ray cluster has that much (nodes: {self._node_resources()})")
        if strategy == "STRICT_SPREAD" and len(bundles) > len(self._node_resources()):
            self._nodes = None
        if strategy == "STRICT_SPREAD" and len(bundles) > len(self._node_resources()):
            raise InfeasibleError(
                f"a STRICT_SPREAD placement group of {len(bundles)} bundles needs as many "
                f"nodes; the Ray cluster has {len(self._node_resources())}")
        from ray.util import placement_group

        return placement_group(bundles, strategy=strategy, name=name)

    def remove_placement_group(self, pg: Any) -> None:
        from ray.util import remove_placement_group

        remove_placement_group(pg)

    def add_bundles(self, pg: Any, bundles: Any) -> Any:
        raise NotImplementedError(_NO_RESIZE)

    def remove_bundles(self, pg: Any, indices: Any) -> None:
        raise NotImplementedError(_NO_RESIZE)

    def placement_group_table(self, pg: Any) -> dict[str, Any]:
        """Ray's row for ``pg`` (id, name, bundles, bundles_to_node_id, strategy, state,
        stats), or with None every group's row by id."""
        from ray.util import placement_group_table

        return dict(placement_group_table(pg))

    def current_placement_group(self) -> Any:
        """The Ray placement group the calling task or actor runs in (the type
        ``placement_group()`` returns here), or None."""
        from ray.util import get_current_placement_group

        return get_current_placement_group()


def _is_node_affinity(strategy: Any) -> bool:
    return isinstance(strategy, NodeAffinitySchedulingStrategy)


def _copy_function(fn: types.FunctionType) -> types.FunctionType:
    """A new function object with ``fn``'s code, defaults, closure and attributes."""
    new = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                             fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__ = fn.__qualname__
    new.__doc__ = fn.__doc__
    new.__module__ = fn.__module__
    new.__annotations__ = dict(fn.__annotations__)
    new.__dict__.update(fn.__dict__)
    return new


def _arity_error(fn: Any, name: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> TypeError | None:
    """Ray rejects a wrong number of arguments at ``.remote()`` without naming the function
    ("too many positional arguments"): the same TypeError naming it, or None when the
    arguments do bind (the TypeError was another one)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        return TypeError(f"{name}.remote(): {e} (signature: {name}{signature})")
    return None


def translate(e: BaseException) -> BaseException:
    """Ray's error -> trainkit's (the user's own exception class kept for task errors)."""
    import ray.exceptions as rex

    if isinstance(e, TrainkitError):
        return e
    if isinstance(e, rex.GetTimeoutError):
        return GetTimeoutError(str(e))
    if isinstance(e, rex.TaskCancelledError):
        return TaskCancelledError(str(e))
    if isinstance(e, rex.ActorDiedError | rex.ActorUnavailableError | rex.RayActorError):
        return ActorDiedError(getattr(e, "actor_id", "") or "", str(e))
    if isinstance(e, rex.WorkerCrashedError | rex.NodeDiedError):
        return WorkerCrashedError("", str(e))
    if isinstance(e, rex.ObjectLostError):
        return ObjectLostError(str(getattr(e, "object_ref_hex", "")), str(e))
    if isinstance(e, rex.ObjectStoreFullError | rex.OutOfMemoryError):
        return OutOfMemoryError(str(e))
    if isinstance(e, rex.RayTaskError):
        cause = e.cause
        if isinstance(cause, TrainkitError):
            return cause  # already a trainkit error (e.g. a nested TaskError): keep it
        if isinstance(cause, rex.RayError):
            return translate(cause)
        # Ray's dual exception (RayTaskError + the user's class) forwards unknown attributes
        # to the cause, so read its own fields from __dict__.
        own = vars(e)
        return TaskError(own.get("function_name") or "a Ray task",
                         own.get("traceback_str") or str(e), cause,
                         own.get("pid") or 0).as_instanceof_cause()
    return e
