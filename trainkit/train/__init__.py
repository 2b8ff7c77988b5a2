"""Train: run a PyTorch DDP loop on a gang-scheduled group of workers.

``from trainkit import train``; ``train.torch`` (prepare_model, prepare_data_loader,
get_device) is imported on first use, so ``import trainkit.train`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from trainkit.exceptions import TrainingFailedError
from trainkit.train._checkpoint import Checkpoint
from trainkit.train._config import CheckpointConfig
from trainkit.train._config import FailureConfig
from trainkit.train._config import RunConfig
from trainkit.train._config import ScalingConfig
from trainkit.train._controller import ControllerState
from trainkit.train._session import TrainContext
from trainkit.train._session import get_checkpoint
from trainkit.train._session import get_context
from trainkit.train._session import get_dataset_shard
from trainkit.train._session import report
from trainkit.train._trainer import Result
from trainkit.train._trainer import Trainer

__all__ = [
    "Checkpoint",
    "CheckpointConfig",
    "ControllerState",
    "FailureConfig",
    "Result",
    "RunConfig",
    "ScalingConfig",
    "TrainContext",
    "Trainer",
    "TrainingFailedError",
    "get_checkpoint",
    "get_context",
    "get_dataset_shard",
    "report",
    "torch",
]


def __getattr__(name: str) -> Any:
    if name == "torch":
        return importlib.import_module("trainkit.train.torch")
    raise AttributeError(f"module 'trainkit.train' has no attribute {name!r}")
