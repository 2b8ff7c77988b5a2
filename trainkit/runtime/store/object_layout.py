"""How one serialized object is laid out inside its range of the shared-memory arena.

An object is a pickle-protocol-5 payload (``meta``) plus its out-of-band buffers (the raw
memory of numpy arrays, Arrow buffers, ...). Writers copy each buffer once (a memcpy, that
threads share for large buffers: ``_copy_pool``); readers get zero-copy slices of the mapping,
so ``pickle.loads(meta, buffers=buffers)`` rebuilds arrays that *are* views of shared memory.

```text
offset 0   header   magic u32 | version u16 | reserved u16 | meta length u64 | buffer count u64
offset 24  table    (offset u64, length u64) per buffer, offsets from the start of the object
           meta     the pickle payload
           buffers  each starting on a 64-byte boundary (numpy / Arrow alignment)
```

The arena hands out page-aligned ranges and :func:`map_range` maps at a page boundary, so a
64-byte offset inside the object is 64-byte aligned in memory too.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from collections.abc import Sequence
from typing import Final

__all__ = [
    "BUFFER_ALIGNMENT",
    "LAYOUT_MAGIC",
    "LAYOUT_VERSION",
    "layout_size",
    "map_object_file",
    "map_range",
    "read_object",
    "write_object",
]

LAYOUT_MAGIC: Final = 0x4F4B4B54  # b"TKKO" little-endian: "TrainKit Kept Object"
LAYOUT_VERSION: Final = 1
BUFFER_ALIGNMENT: Final = 64

_HEADER: Final = struct.Struct("<IHHQQ")
_ENTRY: Final = struct.Struct("<QQ")


def _align(n: int) -> int:
    return (n + BUFFER_ALIGNMENT - 1) & ~(BUFFER_ALIGNMENT - 1)


def _as_bytes_view(buf: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        # cast() needs a C-contiguous buffer; PickleBuffer.raw() always gives one.
        view = view.cast("B")
    return view


# A large buffer is placed at the same offset within a 4 KiB page as its source: memcpy
# between buffers whose page offsets differ by a little runs ~3x slower here (measured:
# 256 MB in 23 ms at the same page offset, 73 ms 48 bytes apart). Objects start on a page.
PAGE_MATCH_BYTES: Final = 1 << 20
_PAGE: Final = 4096


def _page_phase(view: memoryview) -> int:
    """The source buffer's address modulo the page size (0 if it cannot be known)."""
    if view.nbytes < PAGE_MATCH_BYTES:
        return -1
    try:
        import numpy as np

        phase: int = np.frombuffer(view, dtype=np.uint8).ctypes.data % _PAGE
    except Exception:
        return 0
    return phase


def _buffer_offsets(meta_len: int, lengths: Sequence[int],
                    phases: Sequence[int] = ()) -> tuple[list[int], int]:
    """Offsets of the buffers in the object and the object's total size."""
    pos = _HEADER.size + _ENTRY.size * len(lengths) + meta_len
    offsets = []
    for i, length in enumerate(lengths):
        pos = _align(pos)
        phase = phases[i] if i < len(phases) else -1
        if phase >= 0:  # the same alignment as the source, so as valid for its dtype
            pos += (phase - pos) % _PAGE
        offsets.append(pos)
        pos += length
    return offsets, pos


def layout_size(meta: bytes | memoryview, buffers: Sequence[memoryview]) -> int:
    """Bytes needed to store ``meta`` and ``buffers`` with :func:`write_object`.

    Args:
        meta: the pickle-protocol-5 payload.
        buffers: its out-of-band buffers, as byte memoryviews.

    Returns:
        The size to ask the store to allocate.
    """
    views = [_as_bytes_view(b) for b in buffers]
    return _buffer_offsets(len(meta), [v.nbytes for v in views],
                           [_page_phase(v) for v in views])[1]


def _assign(dst: memoryview, src: memoryview) -> None:
    dst[:] = src


def write_object(dest: memoryview, meta: bytes | memoryview, buffers: Sequence[memoryview],
                 copy: Callable[[memoryview, memoryview], None] = _assign) -> None:
    """Write ``meta`` and ``buffers`` into ``dest`` (the object's range of the arena).

    Each buffer is copied exactly once, by ``copy(destination, buffer)`` (a slice
    assignment unless told otherwise; the runtime passes its threaded ``CopyPool.copy``).

    Args:
        dest: a writable view of at least :func:`layout_size` bytes.
        meta: the pickle-protocol-5 payload.
        buffers: its out-of-band buffers (C-contiguous; cast to bytes here if needed).
        copy: copies one byte view into another of the same length.

    Raises:
        ValueError: ``dest`` is too small or read-only.

    Example:
        >>> meta, bufs = b"payload", [memoryview(b"0123")]
        >>> dest = memoryview(bytearray(layout_size(meta, bufs)))
        >>> write_object(dest, meta, bufs)
        >>> bytes(read_object(dest)[1][0])
        b'0123'
    """
    dest = _as_bytes_view(dest)
    if dest.readonly:
        raise ValueError("`dest` is read-only; map the arena with writable=True to write")
    views = [_as_bytes_view(b) for b in buffers]
    meta_view = _as_bytes_view(meta)
    offsets, total = _buffer_offsets(meta_view.nbytes, [v.nbytes for v in views],
                                     [_page_phase(v) for v in views])
    if dest.nbytes < total:
        raise ValueError(
            f"`dest` has {dest.nbytes} bytes, but this object needs {total} "
            "(allocate layout_size(meta, buffers) bytes)"
        )
    _HEADER.pack_into(dest, 0, LAYOUT_MAGIC, LAYOUT_VERSION, 0, meta_view.nbytes, len(views))
    pos = _HEADER.size
    for offset, view in zip(offsets, views, strict=True):
        _ENTRY.pack_into(dest, pos, offset, view.nbytes)
        pos += _ENTRY.size
    dest[pos : pos + meta_view.nbytes] = meta_view
    for offset, view in zip(offsets, views, strict=True):
        copy(dest[offset : offset + view.nbytes], view)


def read_object(src: memoryview) -> tuple[memoryview, list[memoryview]]:
    """Parse an object written by :func:`write_object`, without copying.

    Args:
        src: a view of the object's range (usually of a :func:`map_range` mapping).

    Returns:
        ``(meta, buffers)``: zero-copy slices of ``src``, read-only if ``src`` is. Pass them
        to ``pickle.loads(meta, buffers=buffers)``; the rebuilt arrays share ``src``'s memory
        and keep its mapping alive.

    Raises:
        ValueError: ``src`` does not start with the layout's magic number, has another
            layout version, or is shorter than its header says.
    """
    src = _as_bytes_view(src)
    if src.nbytes < _HEADER.size:
        raise ValueError(f"object range of {src.nbytes} bytes is shorter than its header")
    magic, version, _, meta_len, count = _HEADER.unpack_from(src, 0)
    if magic != LAYOUT_MAGIC:
        raise ValueError(
            f"bad magic number 0x{magic:08x} at the start of the object (expected "
            f"0x{LAYOUT_MAGIC:08x}): the offset is wrong or the range was overwritten"
        )
    if version != LAYOUT_VERSION:
        raise ValueError(
            f"object layout version {version} is not supported (this trainkit reads "
            f"version {LAYOUT_VERSION}); are all processes running the same trainkit?"
        )
    pos = _HEADER.size + _ENTRY.size * count
    if pos + meta_len > src.nbytes:
        raise ValueError(
            f"object header says {count} buffers and {meta_len} meta bytes, but the range "
            f"has only {src.nbytes} bytes"
        )
    buffers = []
    for i in range(count):
        offset, length = _ENTRY.unpack_from(src, _HEADER.size + _ENTRY.size * i)
        if offset + length > src.nbytes:
            raise ValueError(
                f"buffer {i} at [{offset}, {offset + length}) lies outside the object's "
                f"range of {src.nbytes} bytes"
            )
        buffers.append(src[offset : offset + length])
    return src[pos : pos + meta_len], buffers


def map_range(path: str, offset: int, size: int, *, writable: bool = False) -> mmap.mmap:
    """Map ``size`` bytes of the file at ``path``, starting at ``offset``.

    A reader maps only its object's range: numpy arrays rebuilt from it hold a reference to
    the mapping (through their memoryviews), so the memory stays valid exactly as long as
    some array uses it, independently of the store. A writer maps the whole arena once
    (``offset=0``, ``size=capacity``) and reuses it, so the page tables stay warm and
    repeated writes run at memcpy speed.

    Args:
        path: the arena file (in /dev/shm).
        offset: start of the range; a multiple of ``mmap.ALLOCATIONGRANULARITY`` (the page
            size), which every arena offset is.
        size: bytes to map (> 0).
        writable: map read-write (shared); otherwise read-only, so that views of it are
            read-only too.

    Returns:
        The mapping; close it (once no views of it remain) or let it be collected.

    Raises:
        ValueError: ``offset`` is not page aligned, ``size`` is not positive, or the file
            is shorter than ``offset + size``.
        OSError: the file cannot be opened.
    """
    if offset < 0 or offset % mmap.ALLOCATIONGRANULARITY:
        raise ValueError(
            f"`offset` is {offset}, but must be a non-negative multiple of the page size "
            f"{mmap.ALLOCATIONGRANULARITY}"
        )
    if size <= 0:
        raise ValueError(f"`size` is {size}, but must be > 0 bytes")
    fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        # The mapping keeps its own reference to the file, so the descriptor can go now.
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        return mmap.mmap(fd, size, access=access, offset=offset)
    finally:
        os.close(fd)



def map_object_file(path: str, size: int, *, writable: bool = False) -> mmap.mmap:
    """Map an object that lives in a file of its own (a fallback allocation, or a spill file
    read in place), from its first byte.

    A writer maps it shared (``writable=True``). A reader gets a private, copy-on-write
    mapping: its pages are the file's pages (no copy is made unless someone writes), yet the
    mapping counts as writable, which ``ctypes.c_char.from_buffer`` needs, and nothing
    written through it could reach the file.

    Args:
        path: the object's file, as the object store's ``allocate`` or ``pin`` returned it.
        size: the object's size in bytes (> 0).
        writable: map for writing the object (its owner, before the seal).

    Returns:
        The mapping; close it (once no views of it remain) or let it be collected.

    Raises:
        ValueError: ``size`` is not positive or the file is shorter.
        OSError: the file cannot be opened.
    """
    if size <= 0:
        raise ValueError(f"`size` is {size}, but must be > 0 bytes")
    fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        return mmap.mmap(fd, size, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_COPY)
    finally:
        os.close(fd)
