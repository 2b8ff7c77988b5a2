"""FSDP2 for ``prepare_model(model, parallel_strategy="fsdp")``, and sharded checkpoints.

``shard_model`` applies ``torch.distributed.fsdp.fully_shard`` to the submodules a policy
picks and then to the root, over a 1-D device mesh of every rank (gloo on the CPU, nccl on
GPUs). Each parameter becomes a ``DTensor`` holding this rank's shard (dim 0 split over the
ranks). With one rank FSDP2 still applies: the parameters are DTensors whose single shard is
the whole tensor, so the same loop code runs on any world size.

The default policy shards every direct child of the root that has parameters (for a
``Sequential``, each layer; for a transformer, its embedding, its block list's parameters
and its head, grouped by the root), the ``fully_shard`` of the root then takes what is
left. ``parallel_strategy_kwargs["shard_modules"]`` picks instead: a list of module classes
(every submodule of those types, e.g. the transformer block class), a list of submodule
names (``model.named_modules()`` names), or a callable ``(name, module) -> bool``.

Sharded checkpoints (``save_sharded``, ``load_sharded``) use
``torch.distributed.checkpoint``: every rank writes its own shards (``__<rank>_0.distcp``)
and rank 0 the ``.metadata`` into its local folder; reported with ``train.report``, the
ranks' folders are merged into one checkpoint that ``dcp.load`` reads on any world size
(resharding to the loading ranks), also with no process group at all.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any
from typing import Final

import torch
import torch.distributed as dist
from torch import nn

# What parallel_strategy_kwargs may hold for "fsdp": fully_shard's own options, the mesh, and
# which modules to shard.
FSDP_KWARGS: Final = ("shard_modules", "reshard_after_forward", "mp_policy",
                      "offload_policy", "mesh")
_STATE_KEYS: Final = ("model", "optimizer", "extra")


def check_fsdp_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The kwargs for ``fully_shard`` (and ``shard_modules``), or a ``ValueError`` naming an
    unknown key and the known ones (pure)."""
    kwargs = dict(kwargs or {})
    unknown = sorted(set(kwargs) - set(FSDP_KWARGS))
    if unknown:
        raise ValueError(
            f"prepare_model(parallel_strategy='fsdp', parallel_strategy_kwargs=...) got unknown "
            f"keys {unknown}; the keys FSDP2 takes are {list(FSDP_KWARGS)} (shard_modules: a "
            "list of module classes or names, or a callable (name, module) -> bool)")
    return kwargs


def shard_policy(model: nn.Module, shard_modules: Any) -> list[nn.Module]:
    """The submodules to ``fully_shard`` before the root, innermost first (pure).

    Raises:
        ValueError: ``shard_modules`` is not a list of classes or names nor a callable, or
            names a submodule ``model`` does not have.
    """
    named = [(n, m) for n, m in model.named_modules() if m is not model]
    if shard_modules is None:
        chosen = [m for _, m in model.named_children() if _has_params(m)]
    elif callable(shard_modules) and not isinstance(shard_modules, type):
        chosen = [m for n, m in named if shard_modules(n, m)]
    elif isinstance(shard_modules, Sequence) and not isinstance(shard_modules, str) and \
            all(isinstance(s, type) and issubclass(s, nn.Module) for s in shard_modules):
        classes = tuple(shard_modules)
        chosen = [m for _, m in named if isinstance(m, classes)]
    elif isinstance(shard_modules, Sequence) and not isinstance(shard_modules, str) and \
            all(isinstance(s, str) for s in shard_modules):
        by_name = dict(named)
        missing = [s for s in shard_modules if s not in by_name]
        if missing:
            raise ValueError(
                f"parallel_strategy_kwargs['shard_modules'] names {missing}, which "
                f"{type(model).__name__} does not have; its submodules are "
                f"{[n for n, _ in named][:20]} (names as model.named_modules() gives them)")
        chosen = [by_name[s] for s in shard_modules]
    else:
        raise ValueError(
            f"parallel_strategy_kwargs['shard_modules'] is {shard_modules!r}; use a list of "
            "nn.Module classes, a list of submodule names, or a callable (name, module) -> bool")
    # fully_shard an inner module before an outer one (FSDP2 requires bottom-up).
    depth = {id(m): n.count(".") for n, m in named}
    return sorted((m for m in chosen if _has_params(m)), key=lambda m: -depth[id(m)])


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def shard_model(model: nn.Module, device: torch.device,
                kwargs: dict[str, Any] | None) -> nn.Module:
    """``fully_shard`` the modules ``shard_policy`` picks, then the root (see the module
    docstring). Needs the process group ``Trainer`` forms on every rank.

    Raises:
        ValueError: a model without parameters, no process group, or bad kwargs (each
            message names the value and the fix).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    options = check_fsdp_kwargs(kwargs)
    if not _has_params(model):
        raise ValueError(
            f"prepare_model(parallel_strategy='fsdp') got a {type(model).__name__} with no "
            "parameters: FSDP shards parameters, so there is nothing to shard; build the "
            "layers before prepare_model, or use parallel_strategy=None")
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "prepare_model(parallel_strategy='fsdp') needs torch.distributed's process group, "
            "which a Trainer's workers have: call it inside the training loop (or call "
            "torch.distributed.init_process_group first), or use parallel_strategy=None")
    shard_modules = options.pop("shard_modules", None)
    mesh = options.pop("mesh", None)
    if mesh is None:
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for module in shard_policy(model, shard_modules):
        fully_shard(module, mesh=mesh, **options)
    fully_shard(model, mesh=mesh, **options)
    return model


def save_sharded(directory: str | os.PathLike[str], model: nn.Module,
                 optimizer: torch.optim.Optimizer | None = None,
                 extra: dict[str, Any] | None = None) -> None:
    """Write this rank's part of a sharded checkpoint of ``model`` (and ``optimizer``, and
    ``extra``: small values such as the epoch) into ``directory``, a folder of this rank.

    A collective: every rank calls it, each with its own folder (a ``TemporaryDirectory``),
    then reports it: ``train.report(metrics, checkpoint=Checkpoint.from_directory(d))``.
    The ranks' folders are merged into one checkpoint that ``load_sharded`` (or
    ``torch.distributed.checkpoint.load``) reads on any number of ranks.
    """
    from torch.distributed.checkpoint.state_dict_saver import save

    with _single_process_ok():
        save(_state(model, optimizer, extra), checkpoint_id=os.fspath(directory))


def load_sharded(directory: str | os.PathLike[str], model: nn.Module,
                 optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load a checkpoint ``save_sharded`` wrote (on any world size) into ``model`` and
    ``optimizer`` in place; returns the ``extra`` saved with it.

    A collective when there is a process group (every rank calls it with the checkpoint's
    folder, e.g. ``train.get_checkpoint().as_directory()``); works without one too, loading
    the whole state into one process.
    """
    from torch.distributed.checkpoint.state_dict import set_state_dict
    from torch.distributed.checkpoint.state_dict_loader import load

    path = os.fspath(directory)
    if not os.path.exists(os.path.join(path, ".metadata")):
        raise FileNotFoundError(
            f"{path} has no .metadata, so it is not a complete sharded checkpoint (rank 0 "
            "writes .metadata, every rank its __<rank>_0.distcp): pass a checkpoint folder "
            "that save_sharded wrote on every rank and train.report() committed")
    state = _state(model, optimizer, None)
    extra = _extra_of(path)
    if extra is not None:
        state["extra"] = extra
    with _single_process_ok():
        load(state, checkpoint_id=path)
    if optimizer is None:
        set_state_dict(model, (), model_state_dict=state["model"], optim_state_dict={})
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])
    return dict(state.get("extra") or {})


@contextlib.contextmanager
def _single_process_ok() -> Iterator[None]:
    """Without a process group DCP warns that it assumes one process: that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
        yield


def _state(model: nn.Module, optimizer: torch.optim.Optimizer | None,
           extra: dict[str, Any] | None) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer if optimizer is not None else ())
    state: dict[str, Any] = {"model": model_sd}
    if optimizer is not None:
        state["optimizer"] = optim_sd
    if extra is not None:
        state["extra"] = dict(extra)
    return state


def _extra_of(path: str) -> dict[str, Any] | None:
    """A placeholder for the ``extra`` values in the checkpoint at ``path`` (``dcp.load``
    fills only the keys it is given), or None if it saved none."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    metadata = FileSystemReader(path).read_metadata()
    keys = [k for k in metadata.state_dict_metadata if k.startswith("extra.")]
    if not keys:
        return None
    return {k[len("extra."):]: _placeholder(metadata.state_dict_metadata[k]) for k in keys}


def _placeholder(meta: Any) -> Any:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    if isinstance(meta, TensorStorageMetadata):
        return torch.empty(meta.size, dtype=meta.properties.dtype)
    return None  # a bytes value (an int, a string, a dict): dcp.load replaces it


__all__ = ["FSDP_KWARGS", "check_fsdp_kwargs", "load_sharded", "save_sharded",
           "shard_model", "shard_policy"]
