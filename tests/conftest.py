"""Shared test fixtures, starting with the leak police (STYLE.md section 13).

Every test runs under :func:`_leak_police`. After the test and its fixtures are torn down, it
fails the test (as an error at teardown) if the test left behind:

- ``processes``: new child processes of the test process. They get 5 s to exit, then they are
  reported and killed, so one leak does not cascade into the next test.
- ``threads``: new threads, daemon or not. They get 5 s to finish.
- ``shm``: new ``/dev/shm`` entries named ``trainkit*`` (removed after reporting).
- ``tmp``: new temp-folder entries named ``trainkit-*``: runtime session folders (removed).
- ``env``: changed ``os.environ`` keys (restored).

A test that leaks on purpose says which kinds, and that check is skipped for it::

    @pytest.mark.leaking("threads")
    @pytest.mark.leaking("processes", "shm")
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

# Every message any runtime process of the suite sends is checked against the wire's FIELDS
# (trainkit.runtime.wire.protocol): set before trainkit is imported, inherited by every process.
os.environ["TRAINKIT_WIRE_CHECK"] = "1"

pytest_plugins = ["pytester"]

LEAK_KINDS = frozenset({"processes", "threads", "shm", "tmp", "env"})
GRACE_S = 5.0

_SHM_DIR = Path("/dev/shm")
# Runtime sessions (and store tests) name what they create after the driver's pid, so a
# second test run or benchmark on the same machine is never mistaken for a leak of ours.
_SHM_PREFIX = f"trainkit-{os.getpid()}-"
_TMP_DIRS = tuple({Path("/tmp"), Path(tempfile.gettempdir())})
_TMP_PREFIX = f"trainkit-{os.getpid()}-"
# multiprocessing starts these helpers once and keeps them for the life of the interpreter;
# whichever test happens to use multiprocessing first must not be blamed for them.
_INTERPRETER_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
# pytest itself rewrites this one in every phase of every test.
_ENV_IGNORED = frozenset({"PYTEST_CURRENT_TEST"})


@pytest.fixture(autouse=True)
def _leak_police(request: pytest.FixtureRequest) -> Iterator[None]:
    allowed = _allowed_leaks(request.node)
    children_before = set(_children())
    threads_before = set(threading.enumerate())
    shm_before = _entries(_SHM_DIR, _SHM_PREFIX)
    tmp_before = {d: _entries(d, _TMP_PREFIX) for d in _TMP_DIRS}
    env_before = dict(os.environ)

    yield

    problems: list[str] = []
    # Processes first: a process still exiting may be what holds a segment or a folder.
    if "processes" not in allowed:
        problems += _check_processes(children_before)
    if "threads" not in allowed:
        problems += _check_threads(threads_before)
    if "shm" not in allowed:
        problems += _check_entries(_SHM_DIR, _SHM_PREFIX, shm_before, "shared-memory segment")
    if "tmp" not in allowed:
        for folder, before in tmp_before.items():
            problems += _check_entries(folder, _TMP_PREFIX, before, "session folder")
    if "env" not in allowed:
        problems += _check_env(env_before)
    if problems:
        pytest.fail(
            "the test leaked (mark deliberate leaks with @pytest.mark.leaking(kind)):\n  "
            + "\n  ".join(problems),
            pytrace=False,
        )


def _allowed_leaks(node: pytest.Item) -> set[str]:
    allowed: set[str] = set()
    for marker in node.iter_markers("leaking"):
        unknown = set(marker.args) - LEAK_KINDS
        if not marker.args or unknown:
            pytest.fail(
                f"@pytest.mark.leaking{marker.args!r} on {node.nodeid}: give one or more of "
                f"{sorted(LEAK_KINDS)}",
                pytrace=False,
            )
        allowed.update(marker.args)
    return allowed


# --- processes --------------------------------------------------------------------------------


def _children() -> list[psutil.Process]:
    # psutil.Process equality includes the start time, so a reused pid is a new process.
    return [p for p in psutil.Process().children(recursive=True) if not _is_helper(p)]


def _is_helper(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(helper in cmdline for helper in _INTERPRETER_HELPERS)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _describe(proc: psutil.Process) -> str:
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        cmdline = "?"
    return f"pid {proc.pid}: {cmdline[:200]}"


def _check_processes(before: set[psutil.Process]) -> list[str]:
    new = [p for p in _children() if p not in before]
    deadline = time.monotonic() + GRACE_S
    while any(_alive(p) for p in new) and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked = [p for p in new if _alive(p)]
    problems = [
        f"child process still running after {GRACE_S:g} s, killed: {_describe(p)}" for p in leaked
    ]
    for proc in leaked:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(leaked, timeout=GRACE_S)
    return problems


# --- threads ----------------------------------------------------------------------------------


def _check_threads(before: set[threading.Thread]) -> list[str]:
    # _DummyThread stands for a thread started outside `threading` (by C code) that once called
    # into Python; it never leaves threading.enumerate() and cannot be joined.
    new = [
        t
        for t in threading.enumerate()
        if t not in before and not isinstance(t, threading._DummyThread)
    ]
    deadline = time.monotonic() + GRACE_S
    for thread in new:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    return [
        f"thread still running after {GRACE_S:g} s: {t.name!r} (daemon={t.daemon}, "
        f"target={getattr(getattr(t, '_target', None), '__qualname__', None)})"
        for t in new
        if t.is_alive()
    ]


# --- /dev/shm and temp folders ----------------------------------------------------------------


def _entries(folder: Path, prefix: str) -> set[str]:
    try:
        return {name for name in os.listdir(folder) if name.startswith(prefix)}
    except FileNotFoundError:
        return set()


def _check_entries(folder: Path, prefix: str, before: set[str], what: str) -> list[str]:
    problems = []
    for name in sorted(_entries(folder, prefix) - before):
        path = folder / name
        problems.append(f"{what} left behind, removed: {path}")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return problems


# --- environment ------------------------------------------------------------------------------


def _check_env(before: dict[str, str]) -> list[str]:
    changed = sorted(
        key
        for key in before.keys() | os.environ.keys()
        if key not in _ENV_IGNORED and before.get(key) != os.environ.get(key)
    )
    problems = []
    for key in changed:
        if key in before:
            how = "changed" if key in os.environ else "removed"
            os.environ[key] = before[key]
        else:
            how = "added"
            del os.environ[key]
        problems.append(f"environment variable {key} {how}, restored")
    return problems


# --- backends ---------------------------------------------------------------------------------
# Layer fixtures (train_runtime, tune_runtime, data_runtime, backend) take the runtime backend
# as a parameter. Every test runs on trainkit's own runtime; tests marked `on_ray` run on Ray
# Core too (init(backend="ray")), when Ray is installed.

HAS_RAY = importlib.util.find_spec("ray") is not None
BACKENDS = [
    "builtin",
    pytest.param("ray", marks=pytest.mark.skipif(
        not HAS_RAY, reason="Ray is not installed (pip install 'trainkit[ray]')")),
]


@contextlib.contextmanager
def backend_runtime(backend: str, **init_kwargs: object) -> Iterator[None]:
    """init() on ``backend``; at the end shutdown(), then check that every process it started
    is gone (a module's runtime outlives its tests, so the leak police cannot judge them)."""
    import trainkit as tk

    before = set(_children())
    env = dict(os.environ)
    tk.init(backend=backend, **init_kwargs)  # type: ignore[arg-type]
    try:
        yield
    finally:
        tk.shutdown()
        deadline = time.monotonic() + 20
        while (left := [p for p in set(_children()) - before if _alive(p)]) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        if backend == "ray":  # Ray sets variables of its own in the driver
            os.environ.clear()
            os.environ.update(env)
        assert not left, f"{backend}: processes left after shutdown: {[_describe(p) for p in left]}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    deselected = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_ray = callspec is not None and "ray" in (
            callspec.params.get(name) for name in _BACKEND_FIXTURES)
        if not on_ray:
            continue
        if item.get_closest_marker("on_ray") is None:
            deselected.append(item)
        else:
            # Ray's own threads and processes live across tests (see backend_runtime).
            item.add_marker(pytest.mark.leaking("processes", "threads", "env"))
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [i for i in items if i not in deselected]


_BACKEND_FIXTURES = ("runtime_backend",)


@pytest.fixture(scope="module", params=BACKENDS)
def runtime_backend(request: pytest.FixtureRequest) -> str:
    """The backend a module's runtime fixture starts: "builtin", and "ray" for on_ray tests."""
    backend: str = request.param
    return backend


@pytest.fixture(scope="session")
def start_backend() -> object:
    """``with start_backend(backend, **init_kwargs): ...`` (see backend_runtime)."""
    return backend_runtime


@dataclass(frozen=True)
class S3Server:
    """A moto S3 server on loopback and a bucket in it (``bucket``), reached through ``fs``
    (``endpoint`` is its ``HOST:PORT``, for URIs)."""

    fs: Any  # pyarrow.fs.S3FileSystem
    bucket: str
    endpoint: str

    def keys(self, prefix: str) -> list[str]:
        """Every object under ``bucket/prefix``, relative to it."""
        import pyarrow.fs

        base = f"{self.bucket}/{prefix}".rstrip("/")
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True,
                                                              allow_not_found=True))
        return sorted(i.path[len(base) + 1:] for i in infos
                      if i.type == pyarrow.fs.FileType.File)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """A real S3-protocol server (moto) on 127.0.0.1 and a free port, with a bucket "runs";
    stopped after the module."""
    import logging
    import socket

    import pyarrow.fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"127.0.0.1:{port}"

    def fs(**kwargs: Any) -> Any:
        return pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme="http",
                                       access_key="test", secret_key="test",
                                       region="us-east-1", **kwargs)

    try:
        fs(allow_bucket_creation=True).create_dir("runs")
        yield S3Server(fs(), "runs", endpoint)
    finally:
        server.stop()
