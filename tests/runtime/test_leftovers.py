"""Issue 13, leftovers: a runtime leaves nothing named trainkit in /tmp or /dev/shm, not even
when the driver and every runtime process are SIGKILLed at the same moment.

The guarantee comes from the kernel, not from cleanup code: sockets are abstract, the arena
is a memfd and spill files are unnamed, so there is nothing a dead process could leave. Each
test runs a driver in a subprocess (embedded mode: a large object in the arena, one spilled,
an actor running) and compares /tmp and /dev/shm with a snapshot taken before, matching
only names that carry one of the session's pids (other tests may run at the same time).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

DRIVER = """
import sys
import numpy as np
import trainkit as tk

tk.init(num_cpus=1, object_store_memory=32 << 20)
refs = [tk.put(np.full(12 << 20, i, dtype=np.uint8)) for i in range(4)]  # the arena, spilled
from trainkit.runtime._builtin_backend import cluster_info as _cluster_info
store = _cluster_info()["store"]
assert store["num_spilled"] >= 1, store

@tk.remote
class Counter:
    def add(self, x):
        return int(x[0]) + 1

counter = Counter.remote()
assert tk.get(counter.add.remote(refs[-1])) == 4
print("READY", flush=True)
if sys.argv[1] == "shutdown":
    del refs
    tk.shutdown()
    print("DONE", flush=True)
else:
    sys.stdin.read()  # until killed
"""

_PLACES = (Path("/tmp"), Path("/dev/shm"))


def _trainkit_names() -> set[str]:
    names = set()
    for place in _PLACES:
        try:
            names.update(str(place / n) for n in os.listdir(place) if "trainkit" in n)
        except FileNotFoundError:
            pass
    return names


def _new_names_of(before: set[str], pids: set[int]) -> list[str]:
    return sorted(n for n in _trainkit_names() - before
                  if any(f"-{pid}-" in n or n.endswith(f"-{pid}") for pid in pids))


def _start(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    return subprocess.Popen([sys.executable, str(script), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # an event: the driver says so, or exits (EOF)
    assert "READY" in line, f"the driver did not start (exit code {proc.poll()})"


def test_sigkill_of_driver_and_every_runtime_process_at_once_leaves_nothing(tmp_path):
    before = _trainkit_names()
    proc = _start(tmp_path, "kill")
    try:
        _wait_ready(proc)
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(family) >= 4  # driver, node service, forkserver, the actor's worker
        pids = {p.pid for p in family}
        assert _new_names_of(before, pids) == []  # while it serves, too: it names no file
        for p in family:  # all at once: nobody is left to clean up after the others
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        proc.wait(30)
        _, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, f"processes survived SIGKILL: {alive}"
        # Their kernel objects went with them: no socket, arena or spill file has a name.
        assert _new_names_of(before, pids) == []
        assert not any(f"/proc/{pid}" in n for n in _trainkit_names() for pid in pids)
    finally:
        _reap(proc)


def test_a_normal_shutdown_leaves_nothing(tmp_path):
    before = _trainkit_names()
    proc = _start(tmp_path, "shutdown")
    try:
        _wait_ready(proc)
        pids = {proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))}
        assert proc.stdout is not None
        assert "DONE" in proc.stdout.read()
        assert proc.wait(30) == 0
        assert _new_names_of(before, pids) == []
    finally:
        _reap(proc)


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()
