"""Batches as torch tensors: ``batch_to_torch`` and ``iter_torch_batches``.

The only module of ``trainkit.data`` that imports torch; ``Dataset.iter_torch_batches`` imports
it lazily, so ``import trainkit`` stays torch-free.

Zero-copy and read-only arrays: a batch read from the object store is a read-only numpy view of
shared memory. ``torch.from_numpy`` would share it but warns that torch has no read-only
tensors; ``np.require(..., "W")`` would silence it by copying every batch; silencing the warning
with ``warnings.catch_warnings`` (Ray's way) swaps process-wide filters, which races with other
threads. We hand read-only arrays to DLPack (``torch.utils.dlpack.from_dlpack``) instead, which
shares the memory without a warning (numpy >= 2.1 exports read-only arrays over DLPack 1.0).
The tensor is then writable in torch's eyes, exactly as after the warning: **do not modify CPU
batch tensors in place**; they may be views of data that other readers share. A copy is made
only where sharing is impossible: negative strides, non-native byte order, or a numpy too old
to export read-only arrays. Copies to an accelerator, and dtype conversions, are copies anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any
from typing import TypeVar
from typing import overload

import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]
import torch
from torch.utils.dlpack import from_dlpack

from trainkit.data._batcher import ROW_ID_COLUMN
from trainkit.data._batcher import Prefetcher
from trainkit.data._batcher import iter_batches_from_blocks
from trainkit.data._batcher import prefetch
from trainkit.data._batcher import prefetch_blocks
from trainkit.data._batcher import validate_batch_size
from trainkit.data._batcher import validate_local_shuffle_buffer_size
from trainkit.data._batcher import validate_prefetch_batches
from trainkit.data._block import to_batch
from trainkit.data._numpy_batcher import iter_numpy_batches

__all__ = [
    "DeviceResolver",
    "batch_to_torch",
    "iter_torch_batches",
    "iter_torch_batches_with_ids",
    "resolve_device",
    "set_default_device_resolver",
]

T = TypeVar("T")
NumpyBatch = dict[str, npt.NDArray[Any]]
TorchBatch = dict[str, torch.Tensor]
# A dtype for every column, or per column name (columns not named keep theirs).
TorchDtypes = torch.dtype | Mapping[str, torch.dtype] | None
Device = str | torch.device
DeviceResolver = Callable[[], Device]

# numpy kinds torch has tensors for: bool, signed, unsigned, float, complex.
_TENSOR_KINDS = frozenset("biufc")

_resolver_lock = threading.Lock()
_default_device_resolver: DeviceResolver | None = None


# --- devices ----------------------------------------------------------------------------------


def set_default_device_resolver(resolver: DeviceResolver | None) -> DeviceResolver | None:
    """Set what ``device="auto"`` means, and return the resolver it replaces.

    ``trainkit.data`` sits below ``trainkit.train`` and may not import it, so Train registers
    a resolver (this rank's device) when a worker starts; ``None`` restores the default, the
    CPU. The resolver is called in the thread that starts an iteration, not in a prefetch
    thread, because CUDA's current device is per thread.

    Example:
        >>> previous = set_default_device_resolver(lambda: "cpu")
        >>> resolve_device("auto")
        device(type='cpu')
        >>> _ = set_default_device_resolver(previous)
    """
    global _default_device_resolver
    with _resolver_lock:
        previous, _default_device_resolver = _default_device_resolver, resolver
    return previous


def resolve_device(device: Device) -> torch.device:
    """The device that ``device`` names: ``"auto"`` asks the registered resolver (the CPU if
    none is registered); an index-less accelerator (``"cuda"``) gets the calling thread's
    current index, so that a prefetch thread targets the same GPU as its consumer.

    Raises:
        TypeError: ``device`` is neither a string nor a ``torch.device``.
        RuntimeError: ``device`` is not a device torch knows (torch's own error).
    """
    if isinstance(device, str) and device == "auto":
        resolver = _default_device_resolver
        device = resolver() if resolver is not None else "cpu"
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"`device` is {device!r} ({type(device).__name__}), but must be a torch.device, "
            'a device string such as "cuda:0", or "auto"'
        )
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


# --- one batch --------------------------------------------------------------------------------


def _check_dtypes(dtypes: object) -> None:
    if dtypes is None or isinstance(dtypes, torch.dtype):
        return
    if isinstance(dtypes, Mapping) and all(
        isinstance(name, str) and isinstance(dtype, torch.dtype) for name, dtype in dtypes.items()
    ):
        return
    raise TypeError(
        f"`dtypes` is {dtypes!r}, but must be a torch.dtype, a mapping of column names to "
        "torch dtypes, or None (keep each column's dtype)"
    )


def _check_collate_args(
    collate_fn: Callable[[NumpyBatch], Any] | None,
    dtypes: TorchDtypes,
    device: Device,
    pin_memory: bool,
) -> None:
    if collate_fn is None:
        return
    if not callable(collate_fn):
        raise TypeError(f"`collate_fn` is {collate_fn!r}, but must be callable or None")
    if dtypes is not None or not (isinstance(device, str) and device == "auto") or pin_memory:
        raise ValueError(
            f"`collate_fn` is given, with dtypes={dtypes!r}, device={device!r}, "
            f"pin_memory={pin_memory!r}; collate_fn replaces the conversion to tensors, so "
            'leave dtypes=None, device="auto" and pin_memory=False, and set the dtype and '
            "device of the tensors inside collate_fn"
        )


def _share_or_copy(name: str, array: npt.NDArray[Any]) -> torch.Tensor:
    """``array`` as a CPU tensor sharing its memory where torch can (see the module
    docstring), else as a tensor of a copy."""
    if array.dtype.kind not in _TENSOR_KINDS:
        raise TypeError(
            f"column {name!r} has numpy dtype {array.dtype}, which has no torch tensor type; "
            "drop or convert it first (e.g. with map_batches), or pass a collate_fn"
        )
    # from_dlpack aborts the process on negative strides (torch 2.13), and neither
    # from_numpy nor DLPack takes a non-native byte order: these need a copy.
    shareable = array.dtype.isnative and all(stride >= 0 for stride in array.strides)
    if shareable:
        if array.flags.writeable:
            return torch.from_numpy(array)
        try:
            return from_dlpack(array)
        except (BufferError, TypeError, RuntimeError):
            pass  # numpy < 2.1 cannot export read-only arrays
    native = array.astype(array.dtype.newbyteorder("="), order="C", copy=True)
    return torch.from_numpy(native)


def _convert(
    batch: Mapping[str, npt.NDArray[Any]],
    dtypes: TorchDtypes,
    device: torch.device,
    pin_memory: bool,
) -> TorchBatch:
    if isinstance(dtypes, Mapping):
        unknown = sorted(set(dtypes) - set(batch))
        if unknown:
            raise ValueError(
                f"`dtypes` names columns {unknown} that the batch does not have; its columns "
                f"are {sorted(batch)}"
            )
    on_cpu = device.type == "cpu"
    tensors: TorchBatch = {}
    for name, array in batch.items():
        tensor = _share_or_copy(name, np.asarray(array))
        dtype = dtypes.get(name) if isinstance(dtypes, Mapping) else dtypes
        if on_cpu:
            tensor = tensor if dtype is None else tensor.to(dtype)
        else:
            if pin_memory:
                tensor = tensor.pin_memory()
            tensor = tensor.to(device=device, dtype=dtype, non_blocking=pin_memory)
        tensors[name] = tensor
    return tensors


@overload
def batch_to_torch(
    batch: NumpyBatch,
    *,
    dtypes: TorchDtypes = None,
    device: Device = "auto",
    pin_memory: bool = False,
    collate_fn: None = None,
) -> TorchBatch: ...


@overload
def batch_to_torch(
    batch: NumpyBatch,
    *,
    dtypes: TorchDtypes = None,
    device: Device = "auto",
    pin_memory: bool = False,
    collate_fn: Callable[[NumpyBatch], T],
) -> T: ...


def batch_to_torch(
    batch: NumpyBatch,
    *,
    dtypes: TorchDtypes = None,
    device: Device = "auto",
    pin_memory: bool = False,
    collate_fn: Callable[[NumpyBatch], Any] | None = None,
) -> Any:
    """Convert a numpy batch (column name -> array) into a dict of torch tensors.

    On the CPU the tensors share the arrays' memory, read-only arrays included, without
    torch's non-writable warning (see the module docstring): do not modify them in place.

    Args:
        batch: column name -> numpy array (bool, int, uint, float or complex), as
            ``to_batch(block, "numpy")`` gives; tensor columns are n-dimensional arrays.
        dtypes: a torch dtype for every column, or a dict of dtypes per column name (columns
            not named keep theirs); ``None`` keeps each column's dtype.
        device: where the tensors go. ``"auto"``: the device the registered resolver names
            (this rank's device in a Train worker), else the CPU.
        pin_memory: for an accelerator target, copy each tensor into page-locked memory first,
            so that the copy to the device is asynchronous (``non_blocking=True``). Ignored for
            a CPU target.
        collate_fn: ``collate_fn(batch)`` replaces the conversion entirely and its result is
            returned as is; ``dtypes``, ``device`` and ``pin_memory`` must then keep their
            defaults.

    Returns:
        A dict of tensors, one per column, in the batch's column order; or what ``collate_fn``
        returns.

    Raises:
        TypeError: a column's dtype has no torch type (strings, objects, datetimes), or an
            argument has the wrong type.
        ValueError: ``dtypes`` names a column the batch lacks, or ``collate_fn`` comes with
            ``dtypes``, a ``device`` or ``pin_memory``.

    Example:
        >>> import numpy as np, torch
        >>> out = batch_to_torch({"x": np.arange(3)}, dtypes=torch.float32, device="cpu")
        >>> out["x"]
        tensor([0., 1., 2.])
    """
    _check_collate_args(collate_fn, dtypes, device, pin_memory)
    if collate_fn is not None:
        return collate_fn(batch)
    _check_dtypes(dtypes)
    return _convert(batch, dtypes, resolve_device(device), pin_memory)


# --- a stream of batches ----------------------------------------------------------------------


@overload
def iter_torch_batches(
    block_iter: Iterable[pa.Table],
    *,
    batch_size: int | None = 256,
    dtypes: TorchDtypes = None,
    device: Device = "auto",
    collate_fn: None = None,
    drop_last: bool = False,
    local_shuffle_buffer_size: int | None = None,
    local_shuffle_seed: int | None = None,
    prefetch_batches: int = 1,
    pin_memory: bool = False,
) -> Prefetcher[TorchBatch]: ...


@overload
def iter_torch_batches(
    block_iter: Iterable[pa.Table],
    *,
    batch_size: int | None = 256,
    dtypes: TorchDtypes = None,
    device: Device = "auto",
    collate_fn: Callable[[NumpyBatch], T],
    drop_last: bool = False,
    local_shuffle_buffer_size: int | None = None,
    local_shuffle_seed: int | None = None,
    prefetch_batches: int = 1,
    pin_memory: bool = False,
) -> Prefetcher[T]: ...


def iter_torch_batches(
    block_iter: Iterable[pa.Table],
    *,
    batch_size: int | None = 256,
    dtypes: TorchDtypes = None,
    device: Device = "auto",
    collate_fn: Callable[[NumpyBatch], Any] | None = None,
    drop_last: bool = False,
    local_shuffle_buffer_size: int | None = None,
    local_shuffle_seed: int | None = None,
    prefetch_batches: int = 1,
    pin_memory: bool = False,
) -> Prefetcher[Any]:
    """Re-batch a stream of blocks and convert each batch into torch tensors, ahead of the
    consumer in a background thread.

    The pipeline is :func:`~trainkit.data._batcher.iter_batches_from_blocks`, then
    ``to_batch(table, "numpy")`` (in order: :func:`~trainkit.data._numpy_batcher.
    iter_numpy_batches`, the same batches), then :func:`batch_to_torch` (or ``collate_fn``).
    For an accelerator, or with a ``collate_fn``, all of it runs in the prefetch thread,
    which also makes the copies to ``device``, and up to ``prefetch_batches`` converted
    batches wait in its queue (on the device). For the CPU, the thread fetches blocks (as
    many as hold ``prefetch_batches`` batches, at least one) and the cheap rest (views, no
    copies but where a batch straddles blocks) runs in the consumer's thread. Arguments are
    checked, and ``device="auto"`` resolved, when this is called, in the caller's thread.

    Args:
        block_iter: the blocks; consumed by the prefetch thread (or by the consumer's
            ``__next__`` with ``prefetch_batches=0``), and closed by it when iteration stops.
        batch_size, drop_last, local_shuffle_buffer_size, local_shuffle_seed: as for
            ``iter_batches_from_blocks``.
        dtypes, device, pin_memory, collate_fn: as for :func:`batch_to_torch`.
        prefetch_batches: converted batches to hold ready; 0 runs the pipeline in the
            consumer's thread.

    Returns:
        A :class:`~trainkit.data._batcher.Prefetcher`: iterate it, and ``close()`` it (or use
        it as a context manager) to stop early; ``wait_s`` is the time the consumer waited.

    Raises:
        TypeError, ValueError: an invalid argument.

    Example:
        >>> import pyarrow as pa, torch
        >>> blocks = [pa.table({"x": [0, 1, 2]}), pa.table({"x": [3, 4]})]
        >>> with iter_torch_batches(blocks, batch_size=2, dtypes=torch.float32) as batches:
        ...     [b["x"].tolist() for b in batches]
        [[0.0, 1.0], [2.0, 3.0], [4.0]]
    """
    return _stream(block_iter, False, batch_size, dtypes, device, collate_fn, drop_last,
                   local_shuffle_buffer_size, local_shuffle_seed, prefetch_batches, pin_memory)


def iter_torch_batches_with_ids(
    block_iter: Iterable[pa.Table],
    *,
    batch_size: int | None = 256,
    dtypes: TorchDtypes = None,
    device: Device = "auto",
    collate_fn: Callable[[NumpyBatch], Any] | None = None,
    drop_last: bool = False,
    local_shuffle_buffer_size: int | None = None,
    local_shuffle_seed: int | None = None,
    prefetch_batches: int = 1,
    pin_memory: bool = False,
) -> Prefetcher[tuple[npt.NDArray[np.int64], Any]]:
    """:func:`iter_torch_batches` over blocks that carry ``ROW_ID_COLUMN``: each item is
    (the batch's row ids, the batch without that column), for a tracked pass (``_position``)."""
    return _stream(block_iter, True, batch_size, dtypes, device, collate_fn, drop_last,
                   local_shuffle_buffer_size, local_shuffle_seed, prefetch_batches, pin_memory)


def _stream(
    block_iter: Iterable[pa.Table],
    with_ids: bool,
    batch_size: int | None,
    dtypes: TorchDtypes,
    device: Device,
    collate_fn: Callable[[NumpyBatch], Any] | None,
    drop_last: bool,
    local_shuffle_buffer_size: int | None,
    local_shuffle_seed: int | None,
    prefetch_batches: int,
    pin_memory: bool,
) -> Prefetcher[Any]:
    """The pipeline of both: arguments checked (and ``"auto"`` resolved) here, in the
    caller's thread. For a CPU target the prefetch thread fetches blocks and the batches are
    cut and converted in the consumer's thread (cheap: views; see ``prefetch_blocks``); for
    an accelerator, or with a ``collate_fn``, all of it runs in the prefetch thread, so the
    copies to the device overlap the consumer."""
    n = validate_prefetch_batches(prefetch_batches)
    _check_collate_args(collate_fn, dtypes, device, pin_memory)
    _check_dtypes(dtypes)
    target = resolve_device(device) if collate_fn is None else None
    size = validate_batch_size(batch_size)
    buffer = validate_local_shuffle_buffer_size(local_shuffle_buffer_size, size)
    direct = size is not None and buffer is None

    def batches(blocks: Iterator[pa.Table]) -> Iterator[Any]:
        if direct:
            assert size is not None
            numpy = iter_numpy_batches(blocks, size, drop_last)
        else:
            numpy = (to_batch(t, "numpy") for t in iter_batches_from_blocks(
                blocks, batch_size=size, drop_last=drop_last,
                local_shuffle_buffer_size=buffer, local_shuffle_seed=local_shuffle_seed))
        if not with_ids:
            return _convert_all(numpy, dtypes, target, pin_memory, collate_fn)
        return _convert_with_ids(numpy, dtypes, target, pin_memory, collate_fn)

    if not direct:  # (the shuffle's seed is checked now, not at the first batch)
        iter_batches_from_blocks(iter(()), batch_size=size, local_shuffle_buffer_size=buffer,
                                 local_shuffle_seed=local_shuffle_seed)
    if target is not None and target.type == "cpu":
        return prefetch_blocks(block_iter, n, size, batches)
    return prefetch(batches(iter(block_iter)), n)


def _convert_with_ids(
    batches: Iterator[NumpyBatch],
    dtypes: TorchDtypes,
    device: torch.device | None,
    pin_memory: bool,
    collate_fn: Callable[[NumpyBatch], Any] | None,
) -> Iterator[tuple[npt.NDArray[np.int64], Any]]:
    for batch in batches:
        row_ids = batch.pop(ROW_ID_COLUMN)
        for converted in _convert_all(iter((batch,)), dtypes, device, pin_memory, collate_fn):
            yield row_ids, converted


def _convert_all(
    batches: Iterator[NumpyBatch],
    dtypes: TorchDtypes,
    device: torch.device | None,
    pin_memory: bool,
    collate_fn: Callable[[NumpyBatch], Any] | None,
) -> Iterator[Any]:
    for batch in batches:
        if collate_fn is not None:
            yield collate_fn(batch)
        else:
            assert device is not None
            yield _convert(batch, dtypes, device, pin_memory)
