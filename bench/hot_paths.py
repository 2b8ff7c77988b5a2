"""Driver CPU and Python calls per operation on trainkit's hot paths, for before/after
comparisons of a runtime change on a busy machine (CPU seconds move far less than wall time).

Run it once per commit, alternating, each from a ``git archive`` of the commit:

    git archive REV | tar -x -C /tmp/rev
    PYTHONPATH=/tmp/rev .venv/bin/python bench/hot_paths.py REV

It prints one line: the median over 3 repeats of the driver process's CPU time per sync
actor call, pipelined actor call, no-op task and small put+get, then the Python calls per
operation in the user thread and in the core worker's I/O thread (cProfile, deterministic).
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def _profile_io_thread() -> cProfile.Profile:
    try:
        from trainkit.runtime.core.core_worker import CoreWorker
    except ImportError:  # before the core redesign
        from trainkit.runtime._core import CoreWorker  # type: ignore[import-not-found,no-redef]
    profile = cProfile.Profile()
    loop = CoreWorker._io_loop

    def profiled(self: Any) -> None:
        profile.enable()
        try:
            loop(self)
        finally:
            profile.disable()

    CoreWorker._io_loop = profiled  # type: ignore[method-assign]
    return profile


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "trainkit"
    io_profile = _profile_io_thread()
    import trainkit as tk

    tk.init(num_cpus=2)

    @tk.remote
    class Echo:
        def f(self, x: Any = None) -> Any:
            return x

    @tk.remote
    def noop() -> None:
        return None

    actor = Echo.remote()
    tk.get(actor.f.remote())
    tk.get([noop.remote() for _ in range(200)])

    def sync(n: int) -> None:
        for _ in range(n):
            tk.get(actor.f.remote())

    def pipelined(n: int) -> None:
        tk.get([actor.f.remote(i) for i in range(n)])

    def tasks(n: int) -> None:
        tk.get([noop.remote() for _ in range(n)])

    def put_get(n: int) -> None:
        for i in range(n):
            tk.get(tk.put(i))

    def cpu_us(fn: Callable[[int], None], n: int) -> float:
        t = time.process_time()
        fn(n)
        return (time.process_time() - t) / n * 1e6

    cases = [("sync_call", sync, 2000), ("pipelined_call", pipelined, 5000),
             ("noop_task", tasks, 3000), ("put_get", put_get, 10000)]
    cpu = {name: statistics.median(cpu_us(fn, n) for _ in range(3)) for name, fn, n in cases}
    user = cProfile.Profile()
    io_before = pstats.Stats(io_profile).total_calls if io_profile.getstats() else 0
    user.enable()
    tasks(2000)
    pipelined(2000)
    user.disable()
    io_calls = pstats.Stats(io_profile).total_calls - io_before
    tk.shutdown()
    fields = " ".join(f"{k}={v:.1f}us" for k, v in cpu.items())
    print(f"{label} {fields} calls_per_op_user={pstats.Stats(user).total_calls / 4000:.1f} "
          f"calls_per_op_io={io_calls / 4000:.1f}", flush=True)


if __name__ == "__main__":
    main()
