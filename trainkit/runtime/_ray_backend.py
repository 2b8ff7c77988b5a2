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

import os
import sys
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

INSTALL_HINT = "pip install 'trainkit[ray]'"


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
        # Cluster totals and each node's resources, refreshed only before refusing a request
        # (asking Ray on every submit costs about 0.5 ms).
        self._totals: dict[str, float] | None = None
        self._nodes: list[dict[str, float]] | None = None

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

    def _node_resources(self) -> list[dict[str, float]]:
        if self._nodes is None:
            self._nodes = [dict(n["Resources"]) for n in self.ray.nodes() if n.get("Alive")]
        return self._nodes

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
        strategy = out.get("scheduling_strategy")
        if strategy is not None and not isinstance(strategy, str):
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            out["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=strategy.placement_group,
                placement_group_bundle_index=strategy.placement_group_bundle_index,
                placement_group_capture_child_tasks=strategy.placement_group_capture_child_tasks)
        if "retry_exceptions" in out and isinstance(out["retry_exceptions"], tuple):
            out["retry_exceptions"] = list(out["retry_exceptions"])
        return out

    def submit_task(self, fn: Any, shared: list[Any], options: dict[str, Any],
                    resources: dict[str, float], name: str, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        """``shared`` caches Ray's remote function for every ``.options()`` copy of it (a
        new ``ray.remote`` would export the function again)."""
        self._check_feasible(resources, options.get("scheduling_strategy"), name)
        if shared[0] is None:
            shared[0] = self.ray.remote(fn)
        return shared[0].options(**self._ray_options(options)).remote(*args, **kwargs)

    def create_actor(self, cls: type, shared: list[Any], options: dict[str, Any],
                     resources: dict[str, float], label: str, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
        self._check_feasible(resources, options.get("scheduling_strategy"), label)
        if shared[0] is None:
            shared[0] = self.ray.remote(cls)
        return shared[0].options(**self._ray_options(options)).remote(*args, **kwargs)

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
        self.ray.kill(actor, no_restart=no_restart)

    def cancel(self, ref: Any, force: bool, recursive: bool) -> None:
        self.ray.cancel(ref, force=force, recursive=recursive)

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
