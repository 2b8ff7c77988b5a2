"""The public runtime API: init/shutdown, remote functions and actors, get/put/wait."""

from __future__ import annotations

import difflib
import inspect
import sys
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

from trainkit.runtime import _session
from trainkit.runtime._arity import arity_of
from trainkit.runtime._backend import BUILTIN as _BUILTIN
from trainkit.runtime._backend import current as _backend
from trainkit.runtime._definitions import ActorDef
from trainkit.runtime._definitions import TaskDef
from trainkit.runtime._handles import ActorHandle
from trainkit.runtime._handles import ActorMethod
from trainkit.runtime._options import ACTOR_OPTIONS
from trainkit.runtime._options import METHOD_OPTIONS
from trainkit.runtime._options import TASK_OPTIONS
from trainkit.runtime._options import check_options
from trainkit.runtime._options import resources_of
from trainkit.runtime._strategies import NodeAffinitySchedulingStrategy
from trainkit.runtime._strategies import PlacementGroupSchedulingStrategy
from trainkit.runtime._strategies import placement_of
from trainkit.runtime.core import context as _context
from trainkit.runtime.core.refs import ObjectRef
from trainkit.runtime.wire.protocol import new_id

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "NodeAffinitySchedulingStrategy",
           "PlacementGroupSchedulingStrategy", "RemoteFunction", "available_resources",
           "cancel", "cluster_resources", "exit_actor", "get", "get_actor", "get_gpu_ids",
           "get_node_ip_address", "get_runtime_context", "init", "is_initialized", "kill",
           "list_named_actors", "method", "nodes", "preload_worker_modules", "put", "remote",
           "shutdown", "wait"]

# ---------------------------------------------------------------------- init / shutdown


def init(address: str | None = None, *, num_cpus: float | None = None,
         num_gpus: float | None = None, resources: dict[str, float] | None = None,
         object_store_memory: int | None = None, namespace: str | None = None,
         log_to_driver: bool = True, ignore_reinit_error: bool = False,
         backend: str = "builtin", **ray_options: Any) -> None:
    """Start the embedded single-node runtime owned by this process, or join a cluster.

    Args:
        address: None starts an embedded runtime. "HOST:PORT" attaches this process as a
            driver to the cluster whose head listens there, through a node on this machine.
            "auto": the runtime of the nearest parent process that has one (a driver that
            called init() and started this process), else the cluster `trainkit start`
            started on this machine, else the only driver's runtime here, else an error
            listing them.
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
    return _backend().is_initialized()


# ---------------------------------------------------------------------- remote functions


class RemoteFunction:
    """A function that runs as a task: ``f.remote(*args)`` returns an ObjectRef."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any],
                 shared: list[Any] | None = None) -> None:
        check_options(options, TASK_OPTIONS, f"remote function {fn.__qualname__}")
        if shared is None:
            shared = [new_id(), None, [None], arity_of(fn)]
        resources = resources_of(options, 1.0)
        placement = placement_of(options.get("scheduling_strategy"))
        max_retries = options.get("max_retries", 3)
        retry_exc = options.get("retry_exceptions", False)
        self._def = TaskDef(
            fn=fn, name=options.get("name") or fn.__qualname__, options=options,
            resources=resources, placement=placement,
            key=(tuple(sorted(resources.items())), placement),
            retries=1 << 30 if max_retries == -1 else max_retries,
            retry_exceptions=tuple(retry_exc) if isinstance(retry_exc, list) else retry_exc,
            num_returns=options.get("num_returns", 1), arity=shared[3], shared=shared)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self._def.name
        raise TypeError(f"remote function {name} cannot be called directly; use "
                        f"{name}.remote(...) (or the original function)")

    def options(self, **options: Any) -> RemoteFunction:
        d = self._def
        return RemoteFunction(d.fn, {**d.options, **options}, d.shared)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """An ObjectRef; a list of them for ``num_returns > 1``; None for 0."""
        return _backend().submit_task(self._def, args, kwargs)


# ---------------------------------------------------------------------- actors


def method(*args: Any, **options: Any) -> Any:
    """Options of one actor method, as Ray's ``ray.method``: ``@tk.method(num_returns=2)``."""
    if args:
        raise TypeError("use @tk.method(num_returns=...) with keyword options only")
    check_options(options, METHOD_OPTIONS, "@tk.method")

    def decorator(fn: Any) -> Any:
        if not callable(fn):
            raise TypeError(f"@tk.method decorates a method, got {type(fn).__name__}")
        fn.__trainkit_method_options__ = dict(options)
        return fn

    return decorator


class ActorClass:
    """A class whose instances are actors: ``Cls.remote(*args)`` returns an ActorHandle."""

    def __init__(self, cls: type, options: dict[str, Any], shared: list[Any] | None = None
                 ) -> None:
        check_options(options, ACTOR_OPTIONS, f"actor class {cls.__qualname__}")
        methods = tuple(name for name, _ in inspect.getmembers(cls, callable)
                        if not name.startswith("__"))
        if shared is None:
            shared = [None, [None], (arity_of(cls), _method_info(cls, methods))]
        self._cls = cls
        self._def = ActorDef(
            cls=cls, options=options, resources=resources_of(options, 0.0), methods=methods,
            is_async=any(inspect.iscoroutinefunction(m)
                         for _, m in inspect.getmembers(cls, inspect.isfunction)),
            init_arity=shared[2][0], method_info=shared[2][1], shared=shared)

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
        if item.startswith("__") or item in ("_cls", "_def"):
            raise AttributeError(item)
        return getattr(self._cls, item)

    def options(self, **options: Any) -> ActorClass:
        d = self._def
        return ActorClass(self._cls, {**d.options, **options}, d.shared)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """An ActorHandle (Ray's own on the Ray backend)."""
        return _backend().create_actor(self._def, args, kwargs)


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
    backend = _backend()
    if backend is _BUILTIN and not isinstance(refs, ObjectRef):
        refs = _as_refs(refs, "get")
    return backend.get(refs, timeout)


def put(value: Any) -> ObjectRef:
    """Store a value in the runtime; large values go to shared memory once."""
    if isinstance(value, ObjectRef):
        raise TypeError("put() of an ObjectRef is not allowed; pass the ref itself around")
    ref: ObjectRef = _backend().put(value)
    return ref


def wait(refs: Sequence[ObjectRef], *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Return (ready, not_ready) once ``num_returns`` refs are ready or ``timeout`` passes."""
    backend = _backend()
    if backend is _BUILTIN:
        refs = _as_refs(refs, "wait")
        if len(set(refs)) != len(refs):
            raise ValueError("wait() got the same ObjectRef more than once")
        if not isinstance(num_returns, int) or not 0 < num_returns <= max(1, len(refs)):
            raise ValueError(f"num_returns={num_returns!r}: must be between 1 and "
                             f"len(refs)={len(refs)}")
    return backend.wait(list(refs), num_returns, timeout, fetch_local)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill an actor at once (its pending calls fail with ActorDiedError)."""
    _backend().kill(actor, no_restart)


def preload_worker_modules(*modules: str) -> None:
    """Import ``modules`` once in the process that forks workers, so workers started from
    now on have them loaded (importing torch takes about 2 s; a forked worker then pays
    nothing). Returns at once. A module that cannot be imported there is skipped; the
    worker that needs it raises the import error itself."""
    for m in modules:
        if not isinstance(m, str) or not m:
            raise TypeError(f"preload_worker_modules() takes module names, got {m!r}")
    _backend().preload_worker_modules(list(modules))


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel a task: dropped if queued, interrupted (or with force, killed) if running."""
    backend = _backend()
    if backend is _BUILTIN and not isinstance(ref, ObjectRef):
        raise TypeError(f"cancel() takes an ObjectRef, got {type(ref).__name__}")
    backend.cancel(ref, force, recursive)


def exit_actor() -> None:
    """Inside an actor method: end the actor; as in Ray, the caller of this call and of
    every later one gets ActorDiedError (naming exit_actor), and it is not restarted."""
    _backend().exit_actor()


def get_runtime_context() -> Any:
    """Who and where this code runs: ``get_job_id()``, ``get_node_id()``, ``get_task_id()``,
    ``get_actor_id()``, ``get_assigned_resources()``, ``namespace``."""
    return _backend().runtime_context()


def list_named_actors(all_namespaces: bool = False) -> list[Any]:
    """Names of the live named actors in this namespace, or with ``all_namespaces`` a list
    of ``{"name": ..., "namespace": ...}`` rows for every namespace (as Ray's)."""
    return _backend().list_named_actors(all_namespaces)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of a live named actor. Raises ValueError if there is none."""
    handle: ActorHandle = _backend().get_actor(name, namespace)
    return handle


def cluster_resources() -> dict[str, float]:
    """Total resources, plus ``object_store_memory`` (bytes), as Ray reports them."""
    return _backend().cluster_resources()


def available_resources() -> dict[str, float]:
    return _backend().available_resources()


def nodes() -> list[dict[str, Any]]:
    return _backend().nodes()


def get_node_ip_address() -> str:
    """The address other nodes reach this process's node at: the node's cluster address in
    cluster mode, else this host's outbound address (as Ray's ``get_node_ip_address``)."""
    return _backend().get_node_ip_address()


def get_gpu_ids() -> list[int]:
    """GPU ids assigned to the current task or actor ([] in the driver)."""
    return _backend().get_gpu_ids()
