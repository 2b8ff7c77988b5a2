"""The public runtime API: init/shutdown, remote functions and actors, get/put/wait."""

from __future__ import annotations

import difflib
import inspect
import os
import sys
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainkit.exceptions import InfeasibleError
from trainkit.runtime import _context
from trainkit.runtime import _session
from trainkit.runtime._actor_calls import _Call
from trainkit.runtime._arity import Arity
from trainkit.runtime._arity import arity_of
from trainkit.runtime._context import ActorExit
from trainkit.runtime._core import CoreWorker
from trainkit.runtime._objects import _Entry
from trainkit.runtime._protocol import INLINE
from trainkit.runtime._protocol import Msg
from trainkit.runtime._protocol import new_id
from trainkit.runtime._refs import ObjectRef
from trainkit.runtime._runtime_context import RuntimeContext
from trainkit.runtime._scheduler import make_resource_request
from trainkit.runtime._serialization import collect_ref
from trainkit.runtime._serialization import dumps_function
from trainkit.runtime._tasks import TaskSpec

# ---------------------------------------------------------------------- init / shutdown


def init(address: str | None = None, *, num_cpus: float | None = None,
         num_gpus: float | None = None, resources: dict[str, float] | None = None,
         object_store_memory: int | None = None, namespace: str | None = None,
         log_to_driver: bool = True, ignore_reinit_error: bool = False,
         backend: str = "builtin", **ray_options: Any) -> None:
    """Start the embedded single-node runtime owned by this process, or join a cluster.

    Args:
        address: None starts an embedded runtime. "HOST:PORT" attaches this process as a
            driver to the cluster whose head listens there ("auto": the cluster that
            `trainkit start` started on this machine), through a node on this machine.
        num_cpus: CPUs to offer (default: the machine's).
        num_gpus: GPUs to offer (default: the machine's); a number larger than the
            machine has fakes GPUs, for tests.
        resources: custom resources, e.g. ``{"accelerator_x": 2}``.
        object_store_memory: bytes of shared memory for large objects (default 30 % of RAM).
        namespace: namespace of named actors.
        log_to_driver: print the workers' output here, prefixed with task and pid.
        backend: "builtin" (trainkit's own runtime) or "ray": every runtime call goes to
            Ray Core (``address`` as Ray takes it: None starts a local Ray, "auto",
            "ray://host:10001"); needs ``pip install 'trainkit[ray]'``.
        **ray_options: Ray's ``init`` keywords that mean nothing here (logging, dashboard,
            ...) are accepted so a Ray script runs; those that would change behaviour
            (``runtime_env``, ``local_mode``, ...) are named in one notice on stderr. On the
            Ray backend they all go to ``ray.init``.

    Example:
        >>> import trainkit as tk
        >>> tk.init(num_cpus=2)
        >>> tk.shutdown()
    """
    if _context.core is not None or _context.ray_backend is not None:
        if ignore_reinit_error:
            return
        raise RuntimeError("trainkit is already initialized in this process; call "
                           "trainkit.shutdown() first, or pass ignore_reinit_error=True")
    if backend not in ("builtin", "ray"):
        raise ValueError(f"init(backend={backend!r}): use 'builtin' (trainkit's runtime) or "
                         "'ray' (run on Ray Core)")
    if backend != "ray":
        _ignore_ray_options(ray_options)
    if backend == "ray":
        if ray_options:
            raise ValueError(f"init(backend='ray', {', '.join(ray_options)}=...): pass Ray's "
                             "own options to ray.init() and then call "
                             "trainkit.init(backend='ray', address='auto')")
        from trainkit.runtime._ray_backend import RayBackend

        _context.ray_backend = RayBackend.start(
            address, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
            object_store_memory=object_store_memory, namespace=namespace,
            log_to_driver=log_to_driver)
        return
    if address is not None:
        if not isinstance(address, str):
            raise TypeError(f"init(address={address!r}): pass 'auto' or 'HOST:PORT'")
        given = {k: v for k, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus),
                                   ("resources", resources),
                                   ("object_store_memory", object_store_memory)) if v}
        if given:
            raise ValueError(
                f"init(address={address!r}, {', '.join(given)}=...): a cluster's resources "
                "are set when its nodes start (`trainkit start --num-cpus ...`), not by a "
                "driver; drop those arguments")
        _session.connect(address, namespace=namespace, log_to_driver=log_to_driver)
        return
    _session.start(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                   object_store_memory=object_store_memory, namespace=namespace,
                   log_to_driver=log_to_driver)


# Ray's init() keywords: cosmetic ones are accepted silently, the others with one notice.
_RAY_COSMETIC = frozenset({
    "configure_logging", "logging_level", "logging_format", "logging_config",
    "include_dashboard", "dashboard_host", "dashboard_port",
    "_metrics_export_port", "_node_ip_address", "_redis_password", "_plasma_directory",
    "_enable_object_reconstruction", "_memory", "enable_resource_isolation",
    "system_reserved_cpu", "system_reserved_memory", "object_spilling_directory",
    "_system_config", "_temp_dir", "_node_name", "labels"})
_RAY_IGNORED = frozenset({"runtime_env", "local_mode", "job_config", "storage",
                          "_tracing_startup_hook", "_cgroup_path"})


def _ignore_ray_options(options: dict[str, Any]) -> None:
    unknown = [k for k in options if k not in _RAY_COSMETIC and k not in _RAY_IGNORED]
    if unknown:
        valid = ["address", "num_cpus", "num_gpus", "resources", "object_store_memory",
                 "namespace", "log_to_driver", "ignore_reinit_error", "backend"]
        close = difflib.get_close_matches(unknown[0], valid + sorted(_RAY_COSMETIC), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"init() got an unexpected keyword argument {unknown[0]!r}.{hint} "
                        f"trainkit's own: {', '.join(valid)}")
    ignored = sorted(k for k in options if k in _RAY_IGNORED)
    if ignored:
        print(f"trainkit: init() ignores Ray's {', '.join(ignored)} (no meaning in trainkit's "
              "runtime: workers run in this process's environment and working directory)",
              file=sys.stderr)


def shutdown() -> None:
    """Stop the runtime: every worker and actor exits and shared memory is released."""
    rb, _context.ray_backend = _context.ray_backend, None
    if rb is not None:
        rb.shutdown()
        return
    _session.stop()


def is_initialized() -> bool:
    rb = _ray()
    return rb.is_initialized() if rb is not None else _context.core is not None


def _ray() -> Any:
    """The Ray backend if it carries the API here: after init(backend="ray"), or in a Ray
    worker (Ray is initialized there, trainkit's runtime is not). None otherwise."""
    rb = _context.ray_backend
    if rb is not None or _context.core is not None:
        return rb
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from trainkit.runtime._ray_backend import RayBackend

        rb = _context.ray_backend = RayBackend(owns=False)
    return rb


def _core() -> CoreWorker:
    return _session.ensure_started()


# ---------------------------------------------------------------------- options

_COMMON = {"num_cpus", "num_gpus", "memory", "resources", "name", "scheduling_strategy"}
TASK_OPTIONS = frozenset(_COMMON | {"max_retries", "retry_exceptions", "num_returns"})
ACTOR_OPTIONS = frozenset(_COMMON | {"namespace", "max_restarts", "max_task_retries",
                                     "max_concurrency", "lifetime", "get_if_exists"})


def _check_options(options: dict[str, Any], valid: frozenset[str], what: str) -> None:
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown option {key!r} for {what}.{hint} Valid options: "
                             f"{', '.join(sorted(valid))}")
    for key in ("max_retries", "max_restarts", "max_task_retries"):
        v = options.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < -1):
            raise ValueError(f"{key}={v!r}: must be an int >= -1 (-1 means unlimited)")
    mc = options.get("max_concurrency")
    if mc is not None and (not isinstance(mc, int) or isinstance(mc, bool) or mc < 1):
        raise ValueError(f"max_concurrency={mc!r}: must be an int >= 1")
    nr = options.get("num_returns")
    if nr is not None and (not isinstance(nr, int) or isinstance(nr, bool) or nr < 0):
        raise ValueError(f"num_returns={nr!r}: must be an int >= 0 (the number of values the "
                         "function returns, as a tuple; 'dynamic' and 'streaming' are not "
                         "supported: return a list instead)")
    lt = options.get("lifetime")
    if lt not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime={lt!r}: use None (the actor lives while handles to it "
                         "exist) or 'detached' (it lives until tk.kill() or the runtime stops)")
    if lt == "detached" and options.get("name") is None:
        raise ValueError("lifetime='detached' needs a name=...: a detached actor outlives the "
                         "handles to it, and get_actor(name) is how it is reached again")
    gie = options.get("get_if_exists")
    if gie is not None and not isinstance(gie, bool):
        raise ValueError(f"get_if_exists={gie!r}: must be True or False")
    if gie and options.get("name") is None:
        raise ValueError("get_if_exists=True needs a name=...: it returns the live actor of "
                         "that name instead of creating a second one")


@dataclass(frozen=True)
class PlacementGroupSchedulingStrategy:
    """Run a task or actor inside a placement group bundle.

    Args:
        placement_group: the group.
        placement_group_bundle_index: the bundle, or -1 for any bundle that fits.
        placement_group_capture_child_tasks: accepted for Ray compatibility; ignored.
    """

    placement_group: Any
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool | None = None


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run a task or actor on one node (``tk.nodes()[i]["NodeID"]``).

    Args:
        node_id: the node.
        soft: False: only there (an unknown node id is an error); True: there if it fits,
            else anywhere.
    """

    node_id: str
    soft: bool = False
    _spill_on_unavailable: bool = False
    _fail_on_unavailable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError(f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}): "
                             "pass a node id as tk.nodes() reports it (its 'NodeID')")


def _placement(strategy: Any) -> tuple[Any, ...] | None:
    if strategy is None or strategy in ("DEFAULT", "SPREAD"):
        return None
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return ("node", strategy.node_id, bool(strategy.soft))
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        pg = strategy.placement_group
        idx = strategy.placement_group_bundle_index
        if not isinstance(idx, int) or idx < -1 or idx >= len(pg.bundle_specs):
            raise ValueError(f"placement_group_bundle_index={idx!r}: the group has "
                             f"{len(pg.bundle_specs)} bundles (use -1 for any)")
        return (pg.id, idx)
    raise ValueError(f"scheduling_strategy={strategy!r}: use 'DEFAULT', 'SPREAD', a "
                     "PlacementGroupSchedulingStrategy or a NodeAffinitySchedulingStrategy")


def _resources(options: dict[str, Any], default_cpus: float) -> dict[str, float]:
    return make_resource_request(num_cpus=options.get("num_cpus"),
                                 num_gpus=options.get("num_gpus"),
                                 memory=options.get("memory"),
                                 resources=options.get("resources"),
                                 default_cpus=default_cpus)


def _check_feasible(core: CoreWorker, resources: dict[str, float],
                    strategy: Any, what: str) -> None:
    """Fail at the call site if no node (or the chosen bundle) can ever hold the request.

    ``what`` names the task or actor; messages are only formatted on failure.
    """
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        bundles = strategy.placement_group.bundle_specs
        idx = strategy.placement_group_bundle_index
        candidates = bundles if idx == -1 else [bundles[idx]]
        if any(all(b.get(k, 0.0) >= v for k, v in resources.items()) for b in candidates):
            return
        raise InfeasibleError(
            f"{what!r} needs {resources}, but its placement group bundle"
            f"{'s' if idx == -1 else f' {idx}'} only reserve "
            f"{candidates if idx == -1 else candidates[0]}; ask for less or make the "
            "bundle larger")
    if isinstance(strategy, NodeAffinitySchedulingStrategy) and not strategy.soft:
        _check_node(core, strategy.node_id, what)
    total = core.cluster_resources
    short = {k: v for k, v in resources.items() if total.get(k, 0.0) < v}
    if short and core.control_addr != core.node_addr:  # a cluster: nodes may have joined
        total = core.cluster_resources = _cluster_info()["total"]
        short = {k: v for k, v in resources.items() if total.get(k, 0.0) < v}
    if short:
        have = {k: total.get(k, 0.0) for k in short}
        raise InfeasibleError(
            f"{what!r} needs {resources}, but the cluster has only {have} of "
            f"{'that' if len(short) == 1 else 'those'} in total, so it could never run; "
            f"lower the request or start trainkit with more (init(num_cpus=..., "
            f"num_gpus=..., resources=...))")


_known_nodes: set[str] = set()


def _check_node(core: CoreWorker, node_id: str, what: str) -> None:
    """A hard node affinity must name a live node: checked at the call, not in a queue."""
    if node_id == core.node_id or node_id in _known_nodes:
        return
    ids = [n["node_id"] for n in _cluster_info()["nodes"]]
    _known_nodes.clear()
    _known_nodes.update(ids)
    if node_id not in _known_nodes:
        raise ValueError(
            f"{what!r}: NodeAffinitySchedulingStrategy(node_id={node_id!r}) names no live "
            f"node; the nodes are {', '.join(ids)} (tk.nodes()[i]['NodeID']), or pass "
            "soft=True to run elsewhere when that node is gone")


# ---------------------------------------------------------------------- remote functions


class RemoteFunction:
    """A function that runs as a task: ``f.remote(*args)`` returns an ObjectRef."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any],
                 shared: list[Any] | None = None) -> None:
        _check_options(options, TASK_OPTIONS, f"remote function {fn.__qualname__}")
        self._fn = fn
        self._options = options
        self._name = options.get("name") or fn.__qualname__
        self._arg_what = f"an argument of {self._name}"  # for serialization errors
        # [fn_id, pickled function, [Ray's remote function]]: shared by every .options()
        # copy, pickled (or registered with Ray) once.
        self._shared: list[Any] = shared if shared is not None else [new_id(), None, [None]]
        self._resources = _resources(options, 1.0)
        self._placement = _placement(options.get("scheduling_strategy"))
        self._key = (tuple(sorted(self._resources.items())), self._placement)
        max_retries = options.get("max_retries", 3)
        self._retries = 1 << 30 if max_retries == -1 else max_retries
        retry_exc = options.get("retry_exceptions", False)
        if isinstance(retry_exc, list):
            retry_exc = tuple(retry_exc)
        self._retry_exceptions = retry_exc
        self._num_returns: int = options.get("num_returns", 1)
        if len(self._shared) < 4:
            self._shared.append(arity_of(fn))
        self._arity: Arity | None = self._shared[3]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"remote function {self._name} cannot be called directly; use "
                        f"{self._name}.remote(...) (or the original function)")

    def options(self, **options: Any) -> RemoteFunction:
        return RemoteFunction(self._fn, {**self._options, **options}, self._shared)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """An ObjectRef; a list of them for ``num_returns > 1``; None for 0."""
        rb = _ray()
        if rb is not None:
            result: ObjectRef = rb.submit_task(self._fn, self._shared[2], self._options,
                                               self._resources, self._name, args, kwargs)
            return result
        if self._arity is not None:
            self._arity.check(self._name, args, kwargs)
        core = _core()
        _check_feasible(core, self._resources, self._options.get("scheduling_strategy"),
                        self._name)
        if self._shared[1] is None:
            self._shared[1] = dumps_function(self._fn)
        payload, arg_refs, nested = core.encode_args(args, kwargs, self._arg_what)
        return_id, refs = _new_returns(core, self._num_returns)
        spec = TaskSpec(new_id(), self._name, self._shared[0], self._shared[1], payload,
                        arg_refs, nested, return_id, self._key, self._resources,
                        self._placement, self._retries, self._retry_exceptions)
        core.submit_task(spec)
        return refs


def _new_returns(core: CoreWorker, num_returns: int) -> tuple[Any, Any]:
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


# ---------------------------------------------------------------------- actors


def method(*args: Any, **options: Any) -> Any:
    """Options of one actor method, as Ray's ``ray.method``: ``@tk.method(num_returns=2)``."""
    if args:
        raise TypeError("use @tk.method(num_returns=...) with keyword options only")
    _check_options(options, METHOD_OPTIONS, "@tk.method")

    def decorator(fn: Any) -> Any:
        if not callable(fn):
            raise TypeError(f"@tk.method decorates a method, got {type(fn).__name__}")
        fn.__trainkit_method_options__ = dict(options)
        return fn

    return decorator


METHOD_OPTIONS = frozenset({"num_returns", "name", "concurrency_group", "max_task_retries",
                            "retry_exceptions"})


class ActorMethod:
    __slots__ = ("_handle", "_method", "_num_returns")

    def __init__(self, handle: ActorHandle, method: str, num_returns: int = 1) -> None:
        self._handle = handle
        self._method = method
        self._num_returns = num_returns

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._handle._call(self._method, args, kwargs, self._num_returns)

    def options(self, **options: Any) -> ActorMethod:
        _check_options(options, METHOD_OPTIONS, "an actor method")
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
        core = _core()
        core.add_ref(actor_id, owner)
        self._client = core.actor_client(actor_id, name, max_task_retries,
                                         subscribe=owner != core.ctl_addr)

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
        return_id, refs = _new_returns(core, num_returns)
        retries = self._max_task_retries
        core.call_actor(self._client, _Call(new_id(), method, payload, arg_refs, nested,
                                            return_id, retries))
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


class ActorClass:
    """A class whose instances are actors: ``Cls.remote(*args)`` returns an ActorHandle."""

    def __init__(self, cls: type, options: dict[str, Any], shared: list[Any] | None = None
                 ) -> None:
        _check_options(options, ACTOR_OPTIONS, f"actor class {cls.__qualname__}")
        self._cls = cls
        self._options = options
        # [pickled class, [Ray's actor class], (constructor Arity, method info)]
        self._shared: list[Any] = shared if shared is not None else [None, [None]]
        self._methods = tuple(name for name, _ in inspect.getmembers(cls, callable)
                              if not name.startswith("__"))
        self._is_async = any(inspect.iscoroutinefunction(m)
                             for _, m in inspect.getmembers(cls, inspect.isfunction))
        if len(self._shared) < 3:
            self._shared.append((arity_of(cls), _method_info(cls, self._methods)))
        self._init_arity: Arity | None = self._shared[2][0]
        self._method_info: dict[str, Any] = self._shared[2][1]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor class {self._cls.__name__} cannot be instantiated directly; "
                        f"use {self._cls.__name__}.remote(...)")

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        name = self._cls.__name__
        raise TypeError(
            f"cannot subclass the actor class {name} (made by @remote): subclass the plain "
            f"class and decorate the subclass, e.g. define {name} without @remote, then "
            f"`class Sub({name}): ...` and `SubActor = tk.remote(Sub)`")

    def __getattr__(self, item: str) -> Any:
        # Class attributes, static and class methods, as in plain Python: code inside the
        # actor's methods that says ``MyActor.LIMIT`` finds this wrapper under that name.
        if item.startswith("__") or item in ("_cls", "_options", "_shared"):
            raise AttributeError(item)
        return getattr(self._cls, item)

    def options(self, **options: Any) -> ActorClass:
        return ActorClass(self._cls, {**self._options, **options}, self._shared)

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        rb = _ray()
        if rb is not None:
            handle: ActorHandle = rb.create_actor(
                self._cls, self._shared[1], self._options, _resources(self._options, 0.0),
                self._options.get("name") or self._cls.__name__, args, kwargs)
            return handle
        if self._init_arity is not None:
            self._init_arity.check(self._cls.__name__, args, kwargs)
        core = _core()
        opts = self._options
        name = opts.get("name")
        ns = opts.get("namespace") or _session.namespace()
        if name is not None and opts.get("get_if_exists"):
            try:
                return get_actor(name, namespace=ns)
            except ValueError:
                pass
        resources = _resources(opts, 0.0)
        strategy = opts.get("scheduling_strategy")
        label = name or self._cls.__name__
        _check_feasible(core, resources, strategy, label)
        if self._shared[0] is None:
            self._shared[0] = dumps_function(self._cls)
        payload, arg_refs, nested = core.encode_args(
            args, kwargs, f"an argument of {self._cls.__name__}()")
        descs = core.describe_arg_refs(arg_refs)
        max_concurrency = opts.get("max_concurrency") or (1000 if self._is_async else 1)
        where = {"resources": resources, "placement": _placement(strategy)}
        max_restarts = opts.get("max_restarts", 0)
        max_task_retries = opts.get("max_task_retries", 0)
        actor_id = new_id()
        entry = _Entry()
        entry.actor = True
        entry.value = (INLINE, b"", [])
        detached = opts.get("lifetime") == "detached"
        if name is not None:
            entry.local += 1  # named actors live as long as their creator
        with core.lock:
            core.owned[actor_id] = entry
        client = core.actor_client(actor_id, label, max_task_retries, subscribe=False)
        client.creation_refs = arg_refs + nested
        if max_restarts != 0:
            client.restart_refs = client.creation_refs
        meta = {"name": label, "methods": self._methods, "max_task_retries": max_task_retries,
                "method_info": self._method_info, "class_name": self._cls.__qualname__,
                "detached": detached}
        try:
            core.request_control(
                Msg.CREATE_ACTOR, actor_id, label,
                (ns, name) if name is not None else None,
                (self._shared[0], payload, descs, (max_concurrency, where)),
                resources, _placement(strategy), max_restarts, meta,
                what=f"creating actor {label}")
        except ValueError:
            with core.lock:
                core.owned.pop(actor_id, None)
                core.actors.pop(actor_id, None)
            if name is not None and opts.get("get_if_exists"):
                return get_actor(name, namespace=ns)  # created by another process meanwhile
            raise
        except BaseException:
            with core.lock:
                core.owned.pop(actor_id, None)
                core.actors.pop(actor_id, None)
            raise
        return ActorHandle(actor_id, core.ctl_addr, label, self._methods, max_task_retries,
                           self._method_info)


def _method_info(cls: type, methods: tuple[str, ...]) -> dict[str, Any]:
    """For each method: (num_returns from @tk.method, its Arity as called on an instance)."""
    info: dict[str, Any] = {}
    for name in methods:
        raw = inspect.getattr_static(cls, name, None)
        fn = getattr(cls, name)
        if isinstance(raw, staticmethod):
            arity = arity_of(raw.__func__)
        elif isinstance(raw, classmethod):
            arity = arity_of(fn)  # already bound to the class
        else:
            arity = arity_of(fn, bound=True)
        opts = getattr(fn, "__trainkit_method_options__", None) or {}
        info[name] = (opts.get("num_returns", 1), arity)
    return info


def remote(*args: Any, **options: Any) -> Any:
    """Make a function a task or a class an actor: ``@remote`` or ``@remote(num_cpus=2)``."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("use @remote or @remote(option=value, ...) with keyword options only")

    def decorator(obj: Any) -> Any:
        return _make_remote(obj, options)

    return decorator


def _make_remote(obj: Any, options: dict[str, Any]) -> Any:
    if inspect.isclass(obj):
        return ActorClass(obj, options)
    if callable(obj):
        return RemoteFunction(obj, options)
    raise TypeError(f"@remote needs a function or a class, got {type(obj).__name__}")


# ---------------------------------------------------------------------- objects


def _as_refs(refs: Any, fn: str) -> list[ObjectRef]:
    if not isinstance(refs, (list, tuple)):
        raise TypeError(f"{fn}() takes an ObjectRef or a list of ObjectRefs, got "
                        f"{type(refs).__name__}")
    for r in refs:
        if not isinstance(r, ObjectRef):
            raise TypeError(f"{fn}() got a {type(r).__name__} in its list; every item must "
                            "be an ObjectRef")
    return list(refs)


def get(refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """Wait for and return the value(s); re-raises a task's exception (a TaskError).

    Raises:
        GetTimeoutError: not ready within ``timeout`` seconds.
    """
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout={timeout!r}: must be >= 0 or None")
    rb = _ray()
    if rb is not None:
        return rb.get(refs, timeout)
    core = _core()
    if isinstance(refs, ObjectRef):
        return core.get_one(refs, timeout)
    return core.get(_as_refs(refs, "get"), timeout)


def put(value: Any) -> ObjectRef:
    """Store a value in the runtime; large values go to shared memory once."""
    if isinstance(value, ObjectRef):
        raise TypeError("put() of an ObjectRef is not allowed; pass the ref itself around")
    rb = _ray()
    if rb is not None:
        result: ObjectRef = rb.put(value)
        return result
    return _core().put(value)


def wait(refs: Sequence[ObjectRef], *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Return (ready, not_ready) once ``num_returns`` refs are ready or ``timeout`` passes."""
    rb = _ray()
    if rb is not None:
        return rb.wait(list(refs), num_returns, timeout, fetch_local)  # type: ignore[no-any-return]
    core = _core()
    refs = _as_refs(refs, "wait")
    if len(set(refs)) != len(refs):
        raise ValueError("wait() got the same ObjectRef more than once")
    if not isinstance(num_returns, int) or not 0 < num_returns <= max(1, len(refs)):
        raise ValueError(f"num_returns={num_returns!r}: must be between 1 and len(refs)="
                         f"{len(refs)}")
    if not refs:
        return [], []
    ready_flags = core.wait_refs(refs, num_returns, timeout)
    ready = [r for r, ok in zip(refs, ready_flags, strict=False) if ok][:num_returns]
    chosen = set(ready)
    return ready, [r for r in refs if r not in chosen]


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill an actor at once (its pending calls fail with ActorDiedError)."""
    rb = _ray()
    if rb is not None:
        rb.kill(actor, no_restart)
        return
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an ActorHandle, got {type(actor).__name__}")
    core = _core()
    core.out.send(core.control_addr, (Msg.KILL_ACTOR, actor._actor_id, no_restart))
    if no_restart:
        core.mark_killed(actor._client)


def preload_worker_modules(*modules: str) -> None:
    """Import ``modules`` once in the process that forks workers, so workers started from
    now on have them loaded (importing torch takes about 2 s; a forked worker then pays
    nothing). Returns at once. A module that cannot be imported there is skipped; the
    worker that needs it raises the import error itself."""
    for m in modules:
        if not isinstance(m, str) or not m:
            raise TypeError(f"preload_worker_modules() takes module names, got {m!r}")
    if _ray() is not None:
        return  # Ray starts its own workers
    _core().out.send(_core().control_addr, (Msg.PRELOAD_MODULES, list(modules)))


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel a task: dropped if queued, interrupted (or with force, killed) if running."""
    rb = _ray()
    if rb is not None:
        rb.cancel(ref, force, recursive)
        return
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"cancel() takes an ObjectRef, got {type(ref).__name__}")
    core = _core()
    if ref.owner_address == core.ctl_addr:
        core.cancel(ref, force)
    else:  # only the owner knows where its task runs: ask it
        core.out.send(ref.owner_address, (Msg.CANCEL_REF, ref.id, force))


def exit_actor() -> None:
    """Inside an actor method: end the actor; as in Ray, the caller of this call and of
    every later one gets ActorDiedError (naming exit_actor), and it is not restarted."""
    rb = _ray()
    if rb is not None:
        rb.exit_actor()
        return
    if _context.process_actor.get("actor_id") is None:
        raise RuntimeError("exit_actor() was called outside an actor: it ends the actor whose "
                           "method calls it; to stop an actor from outside, use "
                           "tk.kill(handle)")
    raise ActorExit()


def get_runtime_context() -> Any:
    """Who and where this code runs: ``get_job_id()``, ``get_node_id()``, ``get_task_id()``,
    ``get_actor_id()``, ``get_assigned_resources()``, ``namespace``."""
    rb = _ray()
    if rb is not None:
        return rb.runtime_context()
    _core()
    return RuntimeContext(_session.namespace())


def list_named_actors(all_namespaces: bool = False) -> list[Any]:
    """Names of the live named actors in this namespace, or with ``all_namespaces`` a list
    of ``{"name": ..., "namespace": ...}`` rows for every namespace (as Ray's)."""
    rb = _ray()
    if rb is not None:
        return rb.list_named_actors(all_namespaces)  # type: ignore[no-any-return]
    ns = None if all_namespaces else _session.namespace()
    names: list[Any] = _core().request_control(Msg.LIST_NAMED_ACTORS, ns,
                                               what="listing named actors")
    return names


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of a live named actor. Raises ValueError if there is none."""
    rb = _ray()
    if rb is not None:
        named: ActorHandle = rb.get_actor(name, namespace)
        return named
    core = _core()
    ns = namespace or _session.namespace()
    actor_id, owner, meta = core.request_control(Msg.GET_NAMED_ACTOR, name, ns,
                                              what=f"looking up actor {name!r}")
    return ActorHandle(actor_id, owner, meta["name"], tuple(meta["methods"]),
                       meta["max_task_retries"], meta.get("method_info"))


def _cluster_info() -> dict[str, Any]:
    info: dict[str, Any] = _core().request_control(Msg.CLUSTER_INFO, what="cluster resources")
    return info


def cluster_resources() -> dict[str, float]:
    """Total resources, plus ``object_store_memory`` (bytes), as Ray reports them."""
    rb = _ray()
    if rb is not None:
        return rb.cluster_resources()  # type: ignore[no-any-return]
    info = _cluster_info()
    return {**info["total"], "object_store_memory": float(info["store"]["capacity"])}


def available_resources() -> dict[str, float]:
    rb = _ray()
    if rb is not None:
        return rb.available_resources()  # type: ignore[no-any-return]
    return {k: v for k, v in _cluster_info()["available"].items() if v > 0}


def nodes() -> list[dict[str, Any]]:
    rb = _ray()
    if rb is not None:
        return rb.nodes()  # type: ignore[no-any-return]
    return [{"NodeID": n["node_id"], "Alive": True,
             "NodeManagerAddress": n.get("address", "127.0.0.1"),
             "Resources": n["resources_total"], "Available": n["resources_available"],
             "GPUIds": list(n.get("gpu_ids", []))} for n in _cluster_info()["nodes"]]


def get_node_ip_address() -> str:
    """The address other nodes reach this process's node at: the node's cluster address in
    cluster mode, else this host's outbound address (as Ray's ``get_node_ip_address``)."""
    rb = _ray()
    if rb is not None:
        return rb.get_node_ip_address()  # type: ignore[no-any-return]
    host = os.environ.get("TRAINKIT_NODE_HOST")
    if host:
        return host
    core = _context.core
    if core is not None and core.ctl_addr.startswith("tcp://"):
        return core.ctl_addr[len("tcp://"):].rsplit(":", 1)[0]
    from trainkit.runtime._cluster import route_ip

    return route_ip("10.254.254.254")


def get_gpu_ids() -> list[int]:
    """GPU ids assigned to the current task or actor ([] in the driver)."""
    rb = _ray()
    if rb is not None:
        return rb.get_gpu_ids()  # type: ignore[no-any-return]
    return _context.current_gpu_ids()
