"""PyTorch helpers for the training loop: the model and data loader on this rank's device,
wrapped for DDP when the group has more than one rank, or sharded with FSDP2
(``parallel_strategy="fsdp"``); sharded checkpoints with ``save_sharded``/``load_sharded``
(see ``trainkit.train._fsdp``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.data import DistributedSampler
from torch.utils.data import RandomSampler

from trainkit.data._torch import set_default_device_resolver
from trainkit.train._fsdp import check_fsdp_kwargs
from trainkit.train._fsdp import load_sharded
from trainkit.train._fsdp import save_sharded
from trainkit.train._fsdp import shard_model
from trainkit.train._session import current_session
from trainkit.train._trainer import Trainer

__all__ = ["TorchTrainer", "get_device", "load_sharded", "prepare_data_loader",
           "prepare_model", "save_sharded"]
_STRATEGIES = ("ddp", "fsdp", None)

# Ray's spelling (ray.train.torch.TorchTrainer): trainkit's Trainer already runs PyTorch.
TorchTrainer = Trainer


def get_device() -> torch.device:
    """This rank's device: its own GPU (``cuda:0``, the only one it sees) when the run uses
    GPUs (``ScalingConfig(use_gpu=True)``), else the CPU, even on a machine with GPUs."""
    session = current_session()
    use_gpu = session.use_gpu if session is not None else torch.cuda.is_available()
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def prepare_model(model: torch.nn.Module, *, move_to_device: bool = True,
                  parallel_strategy: str | None = "ddp",
                  parallel_strategy_kwargs: dict[str, Any] | None = None) -> torch.nn.Module:
    """Move ``model`` to this rank's device and make it data parallel.

    ``parallel_strategy="ddp"`` (the default) wraps it in DistributedDataParallel when the
    group has more than one rank (``parallel_strategy_kwargs`` go to DDP). ``"fsdp"`` shards
    it with FSDP2 (``torch.distributed.fsdp.fully_shard``) on every world size, one rank
    included: each child module with parameters, then the root, so every parameter becomes a
    ``DTensor`` holding this rank's shard, and the model itself is returned (an
    ``FSDPModule``; no ``.module``). ``parallel_strategy_kwargs`` for "fsdp":
    ``shard_modules`` (module classes, submodule names, or ``(name, module) -> bool``),
    ``reshard_after_forward``, ``mp_policy``, ``offload_policy`` and ``mesh``, as
    ``fully_shard`` takes them. Save and load it with ``save_sharded``/``load_sharded``.
    ``None``: only move it.

    Raises:
        ValueError: an unknown strategy or kwarg, or "fsdp" with a model that has no
            parameters (each names the value and the fix).
    """
    if parallel_strategy not in _STRATEGIES:
        raise ValueError(f"parallel_strategy is {parallel_strategy!r}; use 'ddp' "
                         "(DistributedDataParallel), 'fsdp' (FSDP2: shard the parameters "
                         "over the ranks) or None (no wrapper)")
    if parallel_strategy == "fsdp":
        check_fsdp_kwargs(parallel_strategy_kwargs)
    device = get_device()
    if move_to_device:
        model = model.to(device)
    if parallel_strategy == "fsdp":
        return shard_model(model, device, parallel_strategy_kwargs)
    if parallel_strategy == "ddp" and _world_size() > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=ids,
                                        **(parallel_strategy_kwargs or {}))
    return model


class _DeviceLoader:
    """A DataLoader whose batches arrive on this rank's device; each new pass over it moves
    its DistributedSampler to the next epoch unless the loop set the epoch itself."""

    def __init__(self, loader: DataLoader[Any], device: torch.device | None) -> None:
        self.loader = loader
        self.device = device
        self.sampler = loader.sampler
        self.batch_size = loader.batch_size
        self.dataset = loader.dataset
        self._passes = 0
        self._last_epoch: int | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        sampler = self.sampler
        if isinstance(sampler, DistributedSampler):
            if self._passes and sampler.epoch == self._last_epoch:
                sampler.set_epoch(sampler.epoch + 1)
            self._last_epoch = sampler.epoch
        self._passes += 1
        for batch in self.loader:
            yield _to_device(batch, self.device) if self.device is not None else batch


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def prepare_data_loader(data_loader: DataLoader[Any], *, add_dist_sampler: bool = True,
                        move_to_device: bool = True) -> Any:
    """Give each rank its own part of the data (a DistributedSampler, shuffled if the
    loader shuffled) and deliver batches on this rank's device."""
    loader = data_loader
    if add_dist_sampler and _world_size() > 1 and \
            not isinstance(loader.sampler, DistributedSampler):
        shuffle = isinstance(loader.sampler, RandomSampler)
        loader = DataLoader(
            loader.dataset, batch_size=loader.batch_size,
            sampler=DistributedSampler(loader.dataset, shuffle=shuffle),
            num_workers=loader.num_workers, collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory, drop_last=loader.drop_last,
            timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
            persistent_workers=loader.persistent_workers)
    device = get_device() if move_to_device else None
    if device is not None and device.type == "cpu":
        device = None  # batches are on the CPU already
    return _DeviceLoader(loader, device)


# ``iter_torch_batches(device="auto")`` in a training loop puts batches on this rank's device.
set_default_device_resolver(get_device)
