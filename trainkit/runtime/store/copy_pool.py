"""Threads kept by a process to share its large copies into the shared-memory arena.

One core does not saturate memory bandwidth, so a large buffer is copied by several threads
taking fixed-size chunks in turn: one the OS preempts (workers and the node service share
the cores) delays the copy by a chunk, not by its share. More threads than cores still pay
on small machines: 100 MB into the arena on a 2-core VM, medians of 30 interleaved copies:
1 thread ~17 ms, 2 threads ~15 ms, 3-8 threads with 2 MiB chunks ~13 ms (glibc's memmove;
~10.5 ms with the streaming copy of ``_stream_copy``, which they use). The threads are
kept for the process's runtime (``start`` ... ``close``): starting one per copy cost ~0.1
ms each, a third of a 100 MB put's overhead. They copy raw addresses through ctypes, which
releases the GIL and holds no buffer export that would outlive the copy.
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from trainkit.runtime.store.stream_copy import stream_copy

__all__ = ["COPY_CHUNK_BYTES", "COPY_THREADS", "PARALLEL_COPY_BYTES", "CopyPool"]

PARALLEL_COPY_BYTES = 8 << 20  # smaller copies are done by the caller alone
COPY_CHUNK_BYTES = 2 << 20
COPY_THREADS = 4  # the caller and three kept threads


def _address(view: memoryview) -> int:
    import numpy as np

    address: int = np.frombuffer(view, dtype=np.uint8).ctypes.data  # the export ends here
    return address


class _CopyJob:
    """One copy, shared by whichever threads call it; ``done`` is set when every byte is."""

    def __init__(self, dst: int, src: int, n: int) -> None:
        self.dst, self.src, self.n = dst, src, n
        self.chunks = itertools.count(0, COPY_CHUNK_BYTES)  # next() is atomic under the GIL
        self.left = n
        self.lock = threading.Lock()
        self.done = threading.Event()

    def __call__(self) -> None:
        # A thread that comes late finds no chunk left and touches no memory: the buffers
        # may already be gone by then.
        for start in self.chunks:
            if start >= self.n:
                return
            size = min(COPY_CHUNK_BYTES, self.n - start)
            stream_copy(self.dst + start, self.src + start, size)
            with self.lock:
                self.left -= size
                if self.left == 0:
                    self.done.set()


class CopyPool:
    """Copies large buffers with the caller's thread and up to ``threads - 1`` kept ones.

    Args:
        threads: threads per copy, the caller's included; 1 (or a 1-core machine, or a
            closed pool) copies on the caller's thread only.
    """

    def __init__(self, threads: int = COPY_THREADS) -> None:
        self.threads = threads if (os.cpu_count() or 1) > 1 else 1
        self._jobs: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self._started: list[threading.Thread] = []
        self._pid = 0
        self._lock = threading.Lock()
        self._closed = False

    def copy(self, dst: memoryview, src: memoryview) -> None:
        """Copy ``src`` into ``dst`` (byte views of the same length); returns when done."""
        n = src.nbytes
        if n < PARALLEL_COPY_BYTES:
            dst[:] = src  # cached stores: a small object may well be read soon
            return
        job = _CopyJob(_address(dst), _address(src), n)
        if self.start():
            for _ in range(min(self.threads, n // COPY_CHUNK_BYTES) - 1):
                self._jobs.put(job)
        job()
        job.done.wait()

    def start(self) -> bool:
        """Start the kept threads in this process, if not yet (again after a fork); False
        once closed. The first large copy starts them (about 0.3 ms, once per process)."""
        if self._pid == os.getpid():
            return True
        with self._lock:
            if self._closed:
                return False
            if self._pid != os.getpid():
                self._jobs = queue.SimpleQueue()  # a forked child has none of the threads
                self._started = [threading.Thread(target=self._serve, name="trainkit-copy",
                                                  daemon=True)
                                 for _ in range(self.threads - 1)]
                for t in self._started:
                    t.start()
                self._pid = os.getpid()
        return True

    def _serve(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a bug must not kill the thread silently
                print("trainkit internal error in a copy thread:", file=sys.stderr)
                traceback.print_exc()

    def close(self) -> None:
        """Stop the kept threads; later copies run on the caller's thread."""
        with self._lock:
            self._closed = True
            threads, self._started = self._started, []
            if self._pid != os.getpid():
                return
            for _ in threads:
                self._jobs.put(None)
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout=5)
