"""The streaming-store copy used for large writes into the arena."""

from __future__ import annotations

import ctypes
import os
import sys

import numpy as np
import pytest

from trainkit.runtime.store import stream_copy as _stream_copy

X86_64_LINUX = sys.platform == "linux" and os.uname().machine == "x86_64"


@pytest.mark.skipif(not X86_64_LINUX, reason="the streaming loop is x86-64 Linux code")
def test_the_streaming_loop_is_in_use_on_x86_64_linux() -> None:
    assert _stream_copy.STREAMING
    assert _stream_copy.stream_copy is not ctypes.memmove


@pytest.mark.parametrize("dst_offset", [0, 1, 16, 63, 64, 100])
@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 4096 + 17, 3 * 2**20 + 5])
def test_copies_are_exact_at_any_alignment_and_touch_nothing_else(dst_offset, size) -> None:
    rng = np.random.default_rng(size + dst_offset)
    src = rng.integers(1, 256, size + 64, dtype=np.uint8)
    dst = np.zeros(size + 256, dtype=np.uint8)
    src_offset = 5
    _stream_copy.stream_copy(dst.ctypes.data + dst_offset, src.ctypes.data + src_offset, size)
    np.testing.assert_array_equal(dst[dst_offset : dst_offset + size],
                                  src[src_offset : src_offset + size])
    assert not dst[:dst_offset].any() and not dst[dst_offset + size :].any()


@pytest.mark.skipif(not X86_64_LINUX, reason="loads x86-64 code")
def test_a_kernel_that_copies_wrong_fails_the_check_and_is_not_used(monkeypatch) -> None:
    loaded = _stream_copy._load_kernel(bytes.fromhex("c3"))  # `ret`: copies nothing
    assert loaded is not None
    assert not _stream_copy._checked(_stream_copy._streaming(loaded[0]))
    monkeypatch.setattr(_stream_copy, "_load_kernel", lambda: loaded)
    copy, streaming, _ = _stream_copy._select()
    assert copy is ctypes.memmove and not streaming


def test_without_the_kernel_the_copy_is_memmove(monkeypatch) -> None:
    monkeypatch.setattr(_stream_copy, "_load_kernel", lambda: None)
    copy, streaming, keep = _stream_copy._select()
    assert copy is ctypes.memmove and not streaming and keep is None
