"""The leak police in conftest.py catches each kind of leak, cleans up, and honours the marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

INNER_TESTS = """
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

TAG = "leakprobe-{pid}"


def test_clean():
    pass


def test_env():
    os.environ["TRAINKIT_LEAK_PROBE"] = "1"


@pytest.mark.leaking("env")
def test_env_allowed():
    os.environ["TRAINKIT_LEAK_PROBE_ALLOWED"] = "1"


def test_tmp():
    Path("/tmp", f"trainkit-{{os.getpid()}}-{{TAG}}").mkdir()


def test_shm():
    Path("/dev/shm", f"trainkit-{{os.getpid()}}-{{TAG}}").write_bytes(b"x")


def test_process():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_thread():
    threading.Thread(target=threading.Event().wait, name="stuck", daemon=True).start()


@pytest.mark.leaking("bogus")
def test_bad_kind():
    pass
"""


@pytest.mark.slow
def test_leak_police_reports_and_cleans_up(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_inner=INNER_TESTS.format(pid=os.getpid()))
    tag = f"leakprobe-{os.getpid()}"

    # A subprocess: the inner run must not share this process's children, threads or conftest.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    # Teardown errors are counted as errors on top of the passed calls.
    result.assert_outcomes(passed=7, errors=6)
    result.stdout.fnmatch_lines_random(
        [
            "*ERROR at setup of test_bad_kind*",
            "*ERROR at teardown of test_env*",
            "*environment variable TRAINKIT_LEAK_PROBE added, restored*",
            f"*session folder left behind, removed: /tmp/trainkit-*-{tag}*",
            f"*shared-memory segment left behind, removed: /dev/shm/trainkit-*-{tag}*",
            "*child process still running after 5 s, killed: pid * -c import time*",
            "*thread still running after 5 s: 'stuck' (daemon=True*",
        ]
    )
    assert "TRAINKIT_LEAK_PROBE_ALLOWED" not in result.stdout.str()
    assert not list(Path("/tmp").glob(f"trainkit-*-{tag}"))
    assert not list(Path("/dev/shm").glob(f"trainkit-*-{tag}"))
