"""A memcpy with non-temporal stores, for large writes into the shared-memory arena.

A writer copies a large buffer into the arena and never reads it again, and the reader is
another process: the textbook case for non-temporal ("streaming") stores, which write whole
cache lines to memory without first reading them into the cache. glibc's memcpy switches to
them only above ``x86_non_temporal_threshold``, which it derives from the L3 size the CPU
reports: 192 MiB on the project's VM (which reports 256 MiB of L3), so no copy of ours, and
none of Ray's, ever gets them. Measured there (100 MB into /dev/shm, 4 threads taking 2 MiB
chunks, medians of 20): glibc memmove 15.3 ms, this copy 11.7 ms.

Python cannot emit the instruction, and trainkit ships no compiled extension, so the loop
below is machine code, loaded into a private page that is made read+execute (never writable
and executable at once) and called through ctypes (which releases the GIL). It is x86-64
SSE2 (every x86-64 CPU has it) and is checked byte for byte on a test copy when loaded;
anywhere else, or if the check or the mapping fails (a policy forbidding executable
memory), :func:`stream_copy` is ``ctypes.memmove``.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Callable

__all__ = ["STREAMING", "stream_copy"]

# nt_copy(dst=rdi, src=rsi, n=rdx): n a multiple of 64, dst 16-byte aligned. Assembled with
# `as --64` from (Intel syntax):
#         xor   eax, eax
#         test  rdx, rdx
#         jz    2f
#     1:  movdqu  xmm0, [rsi+rax]        ; four unaligned 16-byte loads ...
#         movdqu  xmm1, [rsi+rax+16]
#         movdqu  xmm2, [rsi+rax+32]
#         movdqu  xmm3, [rsi+rax+48]
#         movntdq [rdi+rax], xmm0        ; ... and four streaming stores: one cache line
#         movntdq [rdi+rax+16], xmm1
#         movntdq [rdi+rax+32], xmm2
#         movntdq [rdi+rax+48], xmm3
#         add   rax, 64
#         cmp   rax, rdx
#         jb    1b
#     2:  sfence                         ; the stores are visible before we return
#         ret
_X86_64_NT_COPY = bytes.fromhex(
    "31c04885d27437f30f6f0406f30f6f4c0610f30f6f540620f30f6f5c0630"
    "660fe70407660fe74c0710660fe7540720660fe75c07304883c0404839d0"
    "72c90faef8c3"
)
_LINE = 64

_CopyFn = Callable[[int, int, int], object]


def _load_kernel(code: bytes = _X86_64_NT_COPY) -> tuple[_CopyFn, mmap.mmap] | None:
    """``code`` as a ctypes function ``(dst, src, n)`` and the page that holds it, or None
    where it cannot run."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        page.write(code)
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if libc.mprotect(address, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
            return None  # executable memory is not allowed here
        kernel = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)(
            address)
    except (OSError, ValueError, AttributeError):
        return None
    return kernel, page


def _streaming(kernel: _CopyFn) -> _CopyFn:
    memmove = ctypes.memmove

    def copy(dst: int, src: int, n: int) -> None:
        head = min((-dst) % _LINE, n)  # up to the first cache line of dst
        if head:
            memmove(dst, src, head)
        body = (n - head) & ~(_LINE - 1)
        if body:
            kernel(dst + head, src + head, body)
        tail = n - head - body
        if tail:
            memmove(dst + head + body, src + head + body, tail)

    return copy


def _checked(copy: _CopyFn) -> bool:
    """Copy odd-sized, odd-aligned ranges and compare, bytes around them included."""
    data = bytes(range(1, 256)) * 64
    src = ctypes.create_string_buffer(data, len(data))
    for offset, size in ((0, 4096), (3, 5000), (17, 64 * 7 + 5), (1, 63), (64, 0)):
        dst = ctypes.create_string_buffer(len(data) + 256)
        start = 64 + offset
        copy(ctypes.addressof(dst) + start, ctypes.addressof(src) + 1, size)
        raw = dst.raw
        if raw[start : start + size] != data[1 : 1 + size] or any(raw[:start]) or any(
                raw[start + size :]):
            return False
    return True


def _select() -> tuple[_CopyFn, bool, object]:
    loaded = _load_kernel()
    if loaded is not None:
        copy = _streaming(loaded[0])
        if _checked(copy):
            return copy, True, loaded
    return ctypes.memmove, False, None


# stream_copy(dst, src, n) copies n bytes between raw addresses. The page must live as long
# as the function that runs from it: _keep holds it.
stream_copy, STREAMING, _keep = _select()
