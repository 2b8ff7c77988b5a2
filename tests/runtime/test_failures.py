"""Fault injection: killed workers, retries, and a driver killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import trainkit as tk
from trainkit.exceptions import WorkerCrashedError


@tk.remote
def die_until(counter_file, survive_on):
    """Kill our own worker process until the attempt number reaches ``survive_on``."""
    with open(counter_file, "a+") as f:
        f.write("x")
    attempt = os.path.getsize(counter_file)
    if attempt < survive_on:
        os.kill(os.getpid(), signal.SIGKILL)
    return attempt


def test_task_retried_after_worker_deaths(rt, tmp_path):
    counter = tmp_path / "attempts"
    ref = die_until.options(max_retries=3).remote(str(counter), 4)
    assert tk.get(ref, timeout=60) == 4
    assert counter.read_text() == "xxxx"  # exactly 3 failed attempts, then success


def test_no_retries_raises_worker_crashed(rt, tmp_path):
    counter = tmp_path / "attempts"
    ref = die_until.options(max_retries=0).remote(str(counter), 2)
    with pytest.raises(WorkerCrashedError, match=r"die_until.*killed by SIGKILL"):
        tk.get(ref, timeout=60)
    assert counter.read_text() == "x"


def test_retry_exceptions(rt, tmp_path):
    @tk.remote
    def flaky(path):
        with open(path, "a+") as f:
            f.write("x")
        if os.path.getsize(path) < 3:
            raise ConnectionError("transient")
        return "ok"

    p1 = tmp_path / "a"
    assert tk.get(flaky.options(max_retries=3, retry_exceptions=True).remote(str(p1))) == "ok"
    p2 = tmp_path / "b"
    with pytest.raises(ConnectionError):
        tk.get(flaky.options(max_retries=3, retry_exceptions=[KeyError]).remote(str(p2)))
    assert p2.read_text() == "x"  # not retried: the exception was not in the list


DRIVER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import trainkit as tk
    tk.init(num_cpus=2)

    @tk.remote
    class A:
        def ping(self):
            return os.getpid()

    @tk.remote
    def sleep():
        time.sleep(60)

    actors = [A.remote() for _ in range(2)]
    pids = tk.get([a.ping.remote() for a in actors])
    big = tk.put(np.ones(10 << 20))
    running = [sleep.remote() for _ in range(2)]
    time.sleep(0.5)
    print("READY", flush=True)
    time.sleep(120)
""")


def test_driver_sigkill_leaves_nothing_behind(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "READY" in line
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert len(descendants) >= 3  # node service, actors, task workers
        prefix = f"trainkit-{proc.pid}-"
        # The arena is a memfd and the sockets are abstract: no file exists even now.
        assert not any(n.startswith(prefix) for n in os.listdir("/dev/shm") + os.listdir("/tmp"))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.time() + 10
        while time.time() < deadline:
            alive = [p for p in descendants if p.is_running() and p.status() != "zombie"]
            left = [n for n in os.listdir("/dev/shm") + os.listdir("/tmp")
                    if n.startswith(prefix)]
            if not alive and not left:
                break
            time.sleep(0.05)
        assert not alive, f"processes outlived the driver: {alive}"
        assert not left, f"left behind: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_node_stays_responsive_when_a_dead_workers_child_holds_its_output(rt):
    @tk.remote
    class Spawner:
        def spawn(self):
            # A grandchild that inherits the worker's stdout and outlives the worker.
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
            return os.getpid()

    s = Spawner.remote()
    tk.get(s.spawn.remote())
    tk.kill(s)
    start = time.time()
    assert tk.get(tk.remote(lambda: 7).remote(), timeout=30) == 7
    assert time.time() - start < 1.5  # not stuck draining the orphan's pipe
    time.sleep(2.2)  # let the grandchild finish
