"""The public surface is deliberate: each package's __all__ is checked in here."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "trainkit": [
        "ObjectRef", "__version__", "available_resources", "cancel", "cluster_resources",
        "exceptions", "get", "get_actor", "get_gpu_ids", "init", "is_initialized", "kill",
        "nodes", "put", "remote", "shutdown", "wait",
    ],
    "trainkit.runtime": [
        "ActorClass", "ActorHandle", "ObjectRef", "PlacementGroup",
        "PlacementGroupSchedulingStrategy", "RemoteFunction", "available_resources", "cancel",
        "cluster_resources", "get", "get_actor", "get_gpu_ids", "init", "is_initialized",
        "kill", "nodes", "placement_group", "preload_worker_modules", "put", "remote",
        "remove_placement_group",
        "shutdown", "wait",
    ],
    "trainkit.exceptions": [
        "ActorDiedError", "GetTimeoutError", "InfeasibleError", "ObjectLostError",
        "OutOfMemoryError", "RuntimeSystemError", "TaskCancelledError", "TaskError",
        "TrainingFailedError", "TrainkitError", "TrainkitInternalError", "TransportClosedError",
        "WorkerCrashedError",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_the_checked_in_list(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC[module])
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names {name}, which is missing"


def test_api_md_names_exist() -> None:
    import trainkit as tk
    from trainkit import exceptions
    from trainkit.runtime import PlacementGroupSchedulingStrategy  # noqa: F401
    from trainkit.runtime import placement_group  # noqa: F401
    from trainkit.runtime import remove_placement_group  # noqa: F401

    for name in ("init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "kill",
                 "cancel", "get_actor", "cluster_resources", "available_resources", "nodes",
                 "get_gpu_ids"):
        assert callable(getattr(tk, name))
    for name in ("TaskError", "ActorDiedError", "WorkerCrashedError", "ObjectLostError",
                 "GetTimeoutError", "OutOfMemoryError", "InfeasibleError"):
        assert issubclass(getattr(exceptions, name), exceptions.TrainkitError)
