"""init(address="auto") from a second process: it joins the runtime its parent driver
started (or the only one on the machine), and a choice it cannot make is an error that
lists the runtimes it found."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import trainkit as tk
from trainkit.runtime.cluster.discovery import Embedded
from trainkit.runtime.cluster.discovery import ancestors
from trainkit.runtime.cluster.discovery import choose
from trainkit.runtime.cluster.discovery import embedded_runtimes

# ---------------------------------------------------------------------- choosing (pure)

A, B = Embedded("trainkit-100-aaaa0000", 100), Embedded("trainkit-200-bbbb1111", 200)


def test_the_nearest_parents_runtime_wins() -> None:
    assert choose([A, B], [300, 200, 100, 1], None) is B
    assert choose([A, B], [300, 100, 1], "10.0.0.1:6380") is A


def test_without_a_parents_runtime_the_started_cluster_then_the_only_one_is_taken() -> None:
    assert choose([A, B], [300, 1], "10.0.0.1:6380") == "10.0.0.1:6380"
    assert choose([A], [300, 1], None) is A


def test_no_runtime_or_an_ambiguous_choice_is_an_error_that_lists_them() -> None:
    with pytest.raises(ConnectionError, match="no trainkit runtime runs on this machine"):
        choose([], [1], None)
    with pytest.raises(ConnectionError, match=r"2 drivers run embedded runtimes on this "
                                              r"machine \(pids 100, 200\)"):
        choose([A, B], [300, 1], None)


def test_embedded_runtimes_are_read_from_the_kernels_socket_table() -> None:
    me = os.getpid()
    table = textwrap.dedent(f"""\
        Num       RefCount Protocol Flags    Type St Inode Path
        0: 00000002 00000000 00010000 0001 01 1234 @trainkit-{me}-0a1b2c3d/node.ctl
        0: 00000002 00000000 00010000 0001 01 1235 @trainkit-{me}-0a1b2c3d/store.sock
        0: 00000002 00000000 00010000 0001 01 1236 @trainkit-{me}-node-99/node.ctl
        0: 00000002 00000000 00010000 0001 01 1237 @trainkit-{me}-driver-77/driver.ctl
        0: 00000002 00000000 00010000 0001 01 1238 @trainkit-999999999-ffff/node.ctl
        """)
    assert embedded_runtimes(table) == [Embedded(f"trainkit-{me}-0a1b2c3d", me)]


def test_ancestors_walk_up_to_init() -> None:
    line = ancestors(os.getpid())
    assert line and line[0] == os.getppid() and len(set(line)) == len(line)
    assert 1 not in line[:-1]  # init, if reached, is the last


# ---------------------------------------------------------------------- attaching (real)

CHILD = """
import sys
import numpy as np
import trainkit as tk

tk.init(address="auto")
counter = tk.get_actor("counter")
print("count", tk.get(counter.add.remote(5)), flush=True)

@tk.remote
def square(x):
    return x * x

print("square", tk.get(square.remote(7)), flush=True)
big = np.arange(1_000_000, dtype=np.int64)  # through the shared store
print("sum", int(tk.get(tk.put(big)).sum()), flush=True)

@tk.remote
class Mine:
    def ping(self):
        return "pong"

mine = Mine.options(name="childs").remote()
print("mine", tk.get(mine.ping.remote()), flush=True)
tk.shutdown()
"""


def test_a_child_process_joins_its_parents_runtime_and_leaves_it_running(tmp_path) -> None:
    tk.init(num_cpus=2)
    try:
        @tk.remote
        class Counter:
            def __init__(self) -> None:
                self.n = 0

            def add(self, k: int) -> int:
                self.n += k
                return self.n

        counter = Counter.options(name="counter").remote()
        assert tk.get(counter.add.remote(1)) == 1
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.split("\n")
        assert "count 6" in lines and "square 49" in lines and "mine pong" in lines
        assert f"sum {sum(range(1_000_000))}" in lines
        # The child's actors went with it; the parent's runtime and actor stay.
        assert "childs" not in tk.util.list_named_actors()
        assert tk.get(counter.add.remote(1)) == 7
    finally:
        tk.shutdown()
