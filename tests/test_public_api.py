"""The public surface is deliberate: each package's __all__ is checked in here."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "trainkit": [
        "ObjectRef", "__version__", "available_resources", "cancel", "cluster_resources",
        "exceptions", "exit_actor", "get", "get_actor", "get_gpu_ids", "get_node_ip_address",
        "get_runtime_context", "init", "is_initialized", "kill", "method", "nodes", "put",
        "remote", "shutdown", "util", "wait",
    ],
    "trainkit.util": [
        "get_current_placement_group", "list_named_actors", "placement_group",
        "placement_group_table", "remove_placement_group", "scheduling_strategies",
    ],
    "trainkit.util.scheduling_strategies": [
        "NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy",
    ],
    "trainkit.runtime": [
        "ActorClass", "ActorHandle", "NodeAffinitySchedulingStrategy", "ObjectRef",
        "PlacementGroup", "PlacementGroupSchedulingStrategy", "RemoteFunction",
        "available_resources", "cancel", "cluster_resources", "exit_actor", "get", "get_actor",
        "get_current_placement_group", "get_gpu_ids", "get_node_ip_address",
        "get_runtime_context", "init", "is_initialized", "kill", "list_named_actors", "method",
        "nodes", "placement_group", "placement_group_table", "preload_worker_modules", "put",
        "remote", "remove_placement_group", "shutdown", "wait",
    ],
    "trainkit.data": [
        "ActorPoolStrategy", "DataContext", "DataIterator", "Dataset", "ExecutionOptions",
        "ExecutionResources", "GroupedData", "TaskPoolStrategy", "from_arrow", "from_items",
        "from_numpy", "from_pandas", "range", "range_tensor", "read_csv", "read_json",
        "read_numpy", "read_parquet",
    ],
    "trainkit.train": [
        "Checkpoint", "CheckpointConfig", "ControllerState", "FailureConfig", "Result",
        "RunConfig", "ScalingConfig", "TrainContext", "Trainer", "TrainingFailedError",
        "get_checkpoint", "get_context", "get_dataset_shard", "report", "torch",
    ],
    "trainkit.train.torch": ["TorchTrainer", "get_device", "load_sharded",
                             "prepare_data_loader", "prepare_model", "save_sharded"],
    # The seam for hosts that run a training loop outside a Trainer (Tune's trial actor).
    "trainkit.train.hosting": [
        "CheckpointRecord", "LEDGER_FILE", "ReportSink", "RunCheckpoints", "RunFiles",
        "RunLedger", "StorageLocation", "TrainContext", "check_writable", "delete_dir",
        "download_dir", "hosted_loop", "ledger_error_fields", "list_dir", "local_location",
        "numbered_folders", "parse_ledger", "read_file", "read_ledger", "run_loop",
        "upload_dir", "write_file",
    ],
    "trainkit.dashboard": [],
    "trainkit.tune": [
        "Checkpoint", "CheckpointConfig", "Experiment", "ExperimentAnalysis", "FailureConfig",
        "PlacementGroupFactory",
        "Result", "ResultGrid", "RunConfig", "Stopper", "Trainable", "TrialState", "TuneConfig",
        "TuneError", "Tuner", "choice", "get_checkpoint", "get_context", "grid_search",
        "lograndint", "loguniform", "qlograndint", "qloguniform", "qrandint", "qrandn", "quniform",
        "randint", "randn", "report", "run", "sample_from", "schedulers", "search", "uniform",
        "with_parameters", "with_resources",
    ],
    "trainkit.tune.integration": [],
    "trainkit.tune.integration.train": ["TuneReportCallback"],
    "trainkit.tune.search.sample": ["Categorical", "Domain", "Float", "Function", "Integer",
                                    "Normal"],
    "trainkit.tune.search": ["BasicVariantGenerator", "ConcurrencyLimiter", "OptunaSearch",
                             "Searcher"],
    "trainkit.tune.schedulers": [
        "ASHAScheduler", "AsyncHyperBandScheduler", "FIFOScheduler", "HyperBandScheduler",
        "MedianStoppingRule", "PopulationBasedTraining", "TrialScheduler",
    ],
    "trainkit.exceptions": [
        "ActorDiedError", "CheckpointUploadError", "GetTimeoutError", "HangError",
        "InfeasibleError", "InvalidTransitionError", "ObjectLostError", "OutOfMemoryError",
        "RuntimeSystemError",
        "TaskCancelledError", "TaskError", "TrainingFailedError", "TrainkitError",
        "TrainkitInternalError", "TransportClosedError", "TuneError", "WorkerCrashedError",
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
