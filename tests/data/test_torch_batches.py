"""numpy batches -> torch tensors (zero-copy, no read-only warning), and iter_torch_batches."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import threading
import types
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pytest
import torch

if importlib.util.find_spec("trainkit.data._block") is None:  # pragma: no cover
    # Only while trainkit.data._block is being written: the one function used here.
    _fallback = types.ModuleType("trainkit.data._block")

    def _to_batch(block: pa.Table, batch_format: str) -> Any:
        assert batch_format == "numpy"
        out = {}
        for name, column in zip(block.column_names, block.columns, strict=True):
            array = column.combine_chunks()
            if isinstance(array.type, pa.FixedShapeTensorType):
                out[name] = array.to_numpy_ndarray()
            else:
                out[name] = array.to_numpy(zero_copy_only=False)
        return out

    _fallback.to_batch = _to_batch  # type: ignore[attr-defined]
    sys.modules["trainkit.data._block"] = _fallback

from trainkit.data._torch import batch_to_torch
from trainkit.data._torch import iter_torch_batches
from trainkit.data._torch import resolve_device
from trainkit.data._torch import set_default_device_resolver


@pytest.fixture(autouse=True)
def _no_warnings() -> Iterator[None]:
    """Every conversion here must be silent (torch's non-writable warning above all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.fixture
def strict_from_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.from_numpy`` warns on read-only arrays only once per process, so a clean run
    proves little once anything warned; this makes any such call fail instead."""
    real = torch.from_numpy

    def from_numpy(array: np.ndarray) -> torch.Tensor:
        assert array.flags.writeable, "torch.from_numpy called with a read-only array"
        return real(array)

    monkeypatch.setattr(torch, "from_numpy", from_numpy)


@pytest.fixture
def restore_resolver() -> Iterator[None]:
    previous = set_default_device_resolver(None)
    yield
    set_default_device_resolver(previous)


def read_only(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array.flags.writeable = False
    return array


def tensors(values: np.ndarray) -> pa.Array:
    storage = pa.FixedSizeListArray.from_arrays(
        pa.array(values.ravel()), int(np.prod(values.shape[1:]))
    )
    return pa.ExtensionArray.from_storage(
        pa.fixed_shape_tensor(pa.from_numpy_dtype(values.dtype), values.shape[1:]), storage
    )


def make_blocks(sizes: list[int]) -> list[pa.Table]:
    blocks, start = [], 0
    for size in sizes:
        ids = np.arange(start, start + size, dtype=np.int64)
        images = np.repeat(ids, 6).astype(np.uint8).reshape(size, 2, 3)
        blocks.append(pa.table({"id": ids, "y": ids * 0.5, "img": tensors(images)}))
        start += size
    return blocks


# --- batch_to_torch ---------------------------------------------------------------------------


def test_writable_arrays_are_shared() -> None:
    batch = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "flag": np.array([True, False])}
    out = batch_to_torch(batch, device="cpu")

    assert list(out) == ["x", "flag"]
    assert out["x"].dtype == torch.float32 and out["x"].shape == (2, 3)
    assert out["flag"].dtype == torch.bool
    for name, tensor in out.items():
        assert tensor.data_ptr() == batch[name].ctypes.data


@pytest.mark.usefixtures("strict_from_numpy")
def test_read_only_arrays_are_shared_without_a_warning() -> None:
    batch = {
        "x": read_only(np.arange(12, dtype=np.float64).reshape(3, 4)),
        "strided": read_only(np.arange(12, dtype=np.int32).reshape(3, 4))[:, ::2],
        "u16": read_only(np.arange(3, dtype=np.uint16)),
        "arrow": pa.array(np.arange(5, dtype=np.int64)).to_numpy(zero_copy_only=True),
    }
    assert not batch["arrow"].flags.writeable

    out = batch_to_torch(batch, device="cpu")

    for name, tensor in out.items():
        assert tensor.data_ptr() == batch[name].ctypes.data, name
        np.testing.assert_array_equal(tensor.numpy(), batch[name])


@pytest.mark.slow  # a fresh interpreter importing torch: seconds
def test_read_only_arrays_do_not_warn_in_a_fresh_interpreter() -> None:
    # The real thing: torch's warning fires once per process, so only a fresh one shows it.
    code = textwrap.dedent(
        """
        import numpy as np, pyarrow as pa
        from trainkit.data._torch import batch_to_torch
        a = np.arange(4.0); a.flags.writeable = False
        b = pa.array(np.arange(3)).to_numpy()
        out = batch_to_torch({"a": a, "b": b}, device="cpu")
        assert out["a"].data_ptr() == a.ctypes.data and out["b"].data_ptr() == b.ctypes.data
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_unshareable_arrays_are_copied_correctly() -> None:
    reversed_ro = read_only(np.arange(6.0))[::-1]
    big_endian = read_only(np.arange(4, dtype=">i4"))

    out = batch_to_torch({"rev": reversed_ro, "be": big_endian}, device="cpu")

    assert out["rev"].tolist() == [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    assert out["be"].tolist() == [0, 1, 2, 3] and out["be"].dtype == torch.int32


def test_one_dtype_for_all_columns() -> None:
    out = batch_to_torch(
        {"a": np.arange(3), "b": np.ones((2, 2), np.float64)}, dtypes=torch.float16, device="cpu"
    )
    assert {t.dtype for t in out.values()} == {torch.float16}
    assert out["a"].tolist() == [0.0, 1.0, 2.0]


def test_dtypes_per_column_leave_the_others_alone() -> None:
    batch = {"a": np.arange(3), "b": np.ones(2, np.float64)}
    out = batch_to_torch(batch, dtypes={"a": torch.float32}, device="cpu")
    assert out["a"].dtype == torch.float32
    assert out["b"].dtype == torch.float64
    assert out["b"].data_ptr() == batch["b"].ctypes.data  # untouched columns stay shared


def test_dtypes_naming_a_missing_column_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"`dtypes` names columns \['z'\].*columns are \['a'\]"):
        batch_to_torch({"a": np.arange(3)}, dtypes={"z": torch.float32}, device="cpu")


@pytest.mark.parametrize("dtypes", ["float32", {"a": "float32"}, np.float32])
def test_dtypes_of_the_wrong_type(dtypes: Any) -> None:
    with pytest.raises(TypeError, match="`dtypes` is"):
        batch_to_torch({"a": np.arange(3)}, dtypes=dtypes, device="cpu")


def test_columns_without_a_tensor_type_are_named() -> None:
    with pytest.raises(TypeError, match="column 'name' has numpy dtype <U3"):
        batch_to_torch({"x": np.arange(2), "name": np.array(["abc", "de"])}, device="cpu")
    with pytest.raises(TypeError, match="column 'obj' has numpy dtype object"):
        batch_to_torch({"obj": np.array([{}, None])}, device="cpu")


def test_collate_fn_replaces_the_conversion() -> None:
    seen: list[dict[str, np.ndarray]] = []

    def collate(batch: dict[str, np.ndarray]) -> tuple[int, str]:
        seen.append(batch)
        return len(batch["a"]), "mine"

    batch = {"a": np.arange(3)}
    assert batch_to_torch(batch, collate_fn=collate) == (3, "mine")
    assert seen == [batch]


@pytest.mark.parametrize(
    "kwargs", [{"dtypes": torch.float32}, {"device": "cpu"}, {"pin_memory": True}]
)
def test_collate_fn_refuses_conversion_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="collate_fn replaces the conversion"):
        batch_to_torch({"a": np.arange(3)}, collate_fn=lambda b: b, **kwargs)


def test_pin_memory_is_ignored_for_a_cpu_target() -> None:
    batch = {"a": np.arange(3)}
    out = batch_to_torch(batch, device="cpu", pin_memory=True)
    assert out["a"].data_ptr() == batch["a"].ctypes.data


# --- devices ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_resolver")
def test_auto_device_is_the_cpu_without_a_resolver() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert batch_to_torch({"a": np.arange(2)})["a"].device == torch.device("cpu")


@pytest.mark.usefixtures("restore_resolver")
def test_auto_device_asks_the_registered_resolver() -> None:
    assert set_default_device_resolver(lambda: torch.device("meta")) is None
    assert resolve_device("auto") == torch.device("meta")
    assert batch_to_torch({"a": np.arange(2)})["a"].device.type == "meta"
    assert resolve_device("cpu") == torch.device("cpu")


def test_bad_devices() -> None:
    with pytest.raises(TypeError, match="`device` is 3"):
        resolve_device(3)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        resolve_device("nonsense")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pin_memory", [False, True])
def test_cuda_target(pin_memory: bool) -> None:
    batch = {"x": read_only(np.arange(12, dtype=np.float32).reshape(3, 4))}
    out = batch_to_torch(batch, dtypes=torch.float16, device="cuda", pin_memory=pin_memory)
    tensor = out["x"]
    assert tensor.device == torch.device("cuda", torch.cuda.current_device())
    assert tensor.dtype == torch.float16
    assert tensor.cpu().tolist() == batch["x"].tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pin_memory", [False, True])
def test_iter_torch_batches_to_cuda(pin_memory: bool) -> None:
    # the copies to the GPU run in the prefetch thread; "cuda" means the caller's current GPU
    with iter_torch_batches(
        make_blocks([5, 7]), batch_size=4, device="cuda", pin_memory=pin_memory, prefetch_batches=2
    ) as batches:
        out = list(batches)
    assert {b["img"].device for b in out} == {torch.device("cuda", torch.cuda.current_device())}
    assert torch.cat([b["id"] for b in out]).tolist() == list(range(12))
    assert all((b["img"][:, 0, 0] == b["id"]).all() for b in out)


# --- iter_torch_batches -----------------------------------------------------------------------


@pytest.mark.parametrize("prefetch_batches", [0, 1, 3])
def test_iter_torch_batches_end_to_end(prefetch_batches: int) -> None:
    blocks = make_blocks([5, 0, 3, 9, 1, 6])
    with iter_torch_batches(
        iter(blocks),
        batch_size=4,
        device="cpu",
        prefetch_batches=prefetch_batches,
        dtypes={"y": torch.float32},
    ) as batches:
        out = list(batches)

    assert [len(b["id"]) for b in out] == [4, 4, 4, 4, 4, 4]
    ids = torch.cat([b["id"] for b in out])
    assert ids.tolist() == list(range(24))
    for batch in out:
        assert batch["id"].dtype == torch.int64
        assert batch["y"].dtype == torch.float32
        assert batch["img"].dtype == torch.uint8 and batch["img"].shape[1:] == (2, 3)
        assert (batch["img"][:, 1, 2] == batch["id"]).all()
        assert torch.equal(batch["y"], batch["id"] * 0.5)


@pytest.mark.usefixtures("strict_from_numpy")
def test_iter_torch_batches_shares_block_memory() -> None:
    (block,) = make_blocks([12])
    with iter_torch_batches([block], batch_size=4, device="cpu") as batches:
        out = list(batches)

    ids = block["id"].chunk(0).to_numpy()
    images = block["img"].chunk(0).to_numpy_ndarray()
    for i, batch in enumerate(out):
        assert batch["id"].data_ptr() == ids[4 * i :].ctypes.data
        assert batch["img"].data_ptr() == images[4 * i :].ctypes.data


def test_iter_torch_batches_shuffle_and_drop_last() -> None:
    def run(seed: int) -> list[int]:
        with iter_torch_batches(
            make_blocks([7, 7, 7, 7]),
            batch_size=5,
            drop_last=True,
            device="cpu",
            local_shuffle_buffer_size=6,
            local_shuffle_seed=seed,
        ) as batches:
            out = list(batches)
        assert all(len(b["id"]) == 5 for b in out)
        return torch.cat([b["id"] for b in out]).tolist()

    first = run(0)
    assert len(first) == 25 and len(set(first)) == 25
    assert first == run(0)
    assert first != sorted(first)


def test_iter_torch_batches_with_collate_fn() -> None:
    def collate(batch: dict[str, np.ndarray]) -> torch.Tensor:
        return torch.as_tensor(batch["id"] * 10)

    with iter_torch_batches(make_blocks([3, 3]), batch_size=4, collate_fn=collate) as batches:
        assert [t.tolist() for t in batches] == [[0, 10, 20, 30], [40, 50]]


def test_iter_torch_batches_checks_arguments_at_once() -> None:
    blocks_started = False

    def blocks() -> Iterator[pa.Table]:
        nonlocal blocks_started
        blocks_started = True
        yield from make_blocks([3])

    with pytest.raises(ValueError, match="collate_fn replaces the conversion"):
        iter_torch_batches(blocks(), collate_fn=lambda b: b, dtypes=torch.float32)
    with pytest.raises(ValueError, match="`prefetch_batches` is -1"):
        iter_torch_batches(blocks(), prefetch_batches=-1)
    with pytest.raises(ValueError, match="`batch_size` is 0"):
        iter_torch_batches(blocks(), batch_size=0)
    with pytest.raises(TypeError, match="`dtypes` is"):
        iter_torch_batches(blocks(), dtypes="float32")  # type: ignore[call-overload]
    assert not blocks_started


@pytest.mark.usefixtures("restore_resolver")
def test_iter_torch_batches_resolves_auto_in_the_callers_thread() -> None:
    asked_in: list[threading.Thread] = []

    def resolver() -> str:
        asked_in.append(threading.current_thread())
        return "cpu"

    set_default_device_resolver(resolver)
    with iter_torch_batches(make_blocks([4]), batch_size=2, prefetch_batches=2) as batches:
        assert len(list(batches)) == 2
    assert asked_in == [threading.current_thread()]


def test_iter_torch_batches_errors_reach_the_consumer() -> None:
    blocks = [pa.table({"name": ["a", "b", "c"]})]
    with (
        iter_torch_batches(blocks, batch_size=2, device="cpu") as batches,
        pytest.raises(TypeError, match="column 'name'"),
    ):
        next(batches)


def test_iter_torch_batches_stops_its_thread_on_early_exit() -> None:
    closed = threading.Event()

    def endless() -> Iterator[pa.Table]:
        try:
            while True:
                yield from make_blocks([8])
        finally:
            closed.set()

    before = threading.active_count()
    batches = iter_torch_batches(endless(), batch_size=3, device="cpu", prefetch_batches=2)
    for i, _ in enumerate(batches):
        if i == 5:
            break
    batches.close()
    assert closed.is_set()
    assert threading.active_count() == before
    assert batches.wait_s >= 0.0
