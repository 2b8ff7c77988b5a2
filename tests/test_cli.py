"""The `trainkit` command (trainkit/cli.py): start, status and stop with real processes.

Each test gets its own HOME (so ~/.trainkit is private to it) and no secret in the environment.
start/status/stop run in-process through ``main``; the services they start are detached, and
every test stops them in a ``finally``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from trainkit import cli
from trainkit.runtime.wire.secret import SECRET_ENV


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(SECRET_ENV, raising=False)
    yield tmp_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _state(home: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((home / ".trainkit" / "cluster.json").read_text())
    return state


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _node_services() -> list[int]:
    """Pids of the node services this test process started that still run."""
    pids = []
    for child in psutil.Process().children():
        try:
            if "trainkit.runtime.node.node_service" in " ".join(child.cmdline()) \
                    and child.status() != psutil.STATUS_ZOMBIE:
                pids.append(child.pid)
        except psutil.Error:
            pass
    return pids


def _node_rows(status_out: str) -> list[str]:
    """The table rows of `trainkit status` for nodes (8 hex digits of id, address, role...)."""
    return [line for line in status_out.splitlines()
            if re.match(r"[0-9a-f]{8}  \S+ +(head|node) ", line)]


def _start_head(capsys: pytest.CaptureFixture[str], port: int, *extra: str) -> str:
    code, out, err = _run(capsys, "start", "--head", "--port", str(port), "--num-cpus", "2",
                          *extra)
    assert code == 0, err
    assert f"127.0.0.1:{port}" in out
    return out


def test_start_status_join_stop(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    outputs: list[str] = []
    try:
        out = _start_head(capsys, port)
        outputs.append(out)
        assert f"trainkit start --address 127.0.0.1:{port}" in out
        assert f'trainkit.init(address="127.0.0.1:{port}")' in out
        assert "cluster_secret" in out and "--secret-file" in out

        secret_file = home / ".trainkit" / "cluster_secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        assert len(secret) == 64

        code, out, err = _run(capsys, "status")
        outputs += [out, err]
        assert code == 0, err
        rows = _node_rows(out)
        assert len(rows) == 1 and rows[0].split()[2:4] == ["head", "0/2"], out
        assert "waiting lease requests: 0" in out and "placement groups waiting: 0" in out

        code, out, err = _run(capsys, "start", "--address", f"127.0.0.1:{port}",
                              "--num-cpus", "1", "--resources", '{"accel": 2}')
        outputs += [out, err]
        assert code == 0, err
        assert "Joined the trainkit cluster" in out

        code, out, err = _run(capsys, "status")
        outputs += [out, err]
        assert code == 0, err
        rows = _node_rows(out)
        assert len(rows) == 2, out
        assert [r.split()[2:4] for r in rows] == [["head", "0/2"], ["node", "0/1"]], out
        assert "accel 0/2" in rows[1]
        assert "trainkit cluster at" in out and "2 nodes" in out

        state = _state(home)
        assert state["address"] == f"127.0.0.1:{port}"
        procs = state["processes"]
        assert [p["role"] for p in procs] == ["head", "node"]
        for proc in procs:  # the secret reaches them by environment, never argv
            cmdline = Path(f"/proc/{proc['pid']}/cmdline").read_bytes()
            assert secret.encode() not in cmdline
            assert os.path.exists(proc["arena_path"])
        assert secret not in json.dumps(state)
    finally:
        code, out, err = _run(capsys, "stop")
        outputs += [out, err]
    assert code == 0, err
    assert out.count(": stopped") == 2, out
    for proc in procs:
        assert _gone(proc["pid"])
        assert not os.path.exists(proc["arena_path"])
        assert not os.path.exists(proc["session_dir"])
    assert not (home / ".trainkit" / "cluster.json").exists()
    assert _node_services() == []
    for text in outputs:
        assert secret not in text
    for log in (home / ".trainkit" / "logs").iterdir():
        assert secret not in log.read_text()

    code, out, _ = _run(capsys, "stop")
    assert code == 0 and "Nothing to stop" in out


def test_driver_connects_with_auto(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A driver finds the cluster through ~/.trainkit; status shows its running and waiting
    work (each task holds both of the head's CPUs, so the second one waits)."""
    port = _free_port()
    script = textwrap.dedent("""
        import time
        import trainkit as tk
        tk.init(address="auto")

        @tk.remote(num_cpus=2)
        def double(x):
            time.sleep(1.5)
            return 2 * x

        refs = [double.remote(i) for i in range(2)]
        print("submitted", flush=True)
        print("result", tk.get(refs), flush=True)
        tk.shutdown()
    """)
    env = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
    try:
        _start_head(capsys, port)
        with subprocess.Popen([sys.executable, "-c", script], env=env, cwd=home, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as driver:
            try:
                assert driver.stdout is not None
                assert driver.stdout.readline() == "submitted\n"
                deadline = time.monotonic() + 10
                while True:
                    code, out, err = _run(capsys, "status")
                    assert code == 0, err
                    rows = _node_rows(out)
                    if "waiting lease requests: 1" in out and rows[0].split()[3] == "2/2":
                        break
                    assert time.monotonic() < deadline, out
                    time.sleep(0.1)
                stdout, stderr = driver.communicate(timeout=60)
            finally:
                driver.kill()
        assert driver.returncode == 0, stderr
        assert "result [0, 2]" in stdout
    finally:
        assert cli.main(["stop"]) == 0


def test_no_secret_anywhere_refuses_to_join(home: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "start", "--address", f"127.0.0.1:{_free_port()}")
    assert code == 2
    assert "--secret-file" in err and SECRET_ENV in err
    assert "Traceback" not in err
    assert not (home / ".trainkit" / "cluster.json").exists()


def test_wrong_secret_fails_fast_and_leaves_nothing(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    wrong = home / "other_secret"
    wrong.write_text(secrets.token_hex(32) + "\n")
    wrong.chmod(0o600)
    try:
        _start_head(capsys, port)
        started = time.monotonic()
        code, out, err = _run(capsys, "start", "--address", f"127.0.0.1:{port}",
                              "--secret-file", str(wrong))
        assert time.monotonic() - started < 30
        assert code == 1
        assert "secret" in err and str(wrong) in err
        assert wrong.read_text().strip() not in out + err
        procs = _state(home)["processes"]
        assert [p["role"] for p in procs] == ["head"]
        assert _node_services() == [procs[0]["pid"]]
        # The head saw (and dropped) the frames signed with the other secret.
        code, out, err = _run(capsys, "status")
        assert code == 0, err
        assert re.search(r"frames the head rejected: (inbox )?bad_mac [1-9]", out), out
    finally:
        assert cli.main(["stop"]) == 0


def test_status_without_a_head(home: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "HEAD_QUERY_TIMEOUT_S", 1.0)
    code, _, err = _run(capsys, "status")
    assert code == 1 and "trainkit start --head" in err
    secret = home / "secret"
    secret.write_text(secrets.token_hex(32))
    secret.chmod(0o600)
    code, _, err = _run(capsys, "status", "--address", f"127.0.0.1:{_free_port()}",
                        "--secret-file", str(secret))
    assert code == 1 and "not reachable" in err
    code, _, err = _run(capsys, "status", "--address", "nosuchhost.invalid:6380",
                        "--secret-file", str(secret))
    assert code == 1 and "cannot resolve the head's host 'nosuchhost.invalid'" in err


@pytest.mark.parametrize("value, message", [
    ("{bad", "not valid JSON"),
    ("[1, 2]", "not an object"),
    ('{"accel": -1}', "numbers >= 0"),
    ('{"accel": true}', "numbers >= 0"),
    ('{"accel": "2"}', "numbers >= 0"),
    ('{"CPU": 2}', "use --num-cpus"),
])
def test_bad_resources(home: Path, capsys: pytest.CaptureFixture[str], value: str,
                       message: str) -> None:
    code, _, err = _run(capsys, "start", "--head", "--resources", value)
    assert code == 2
    assert "--resources" in err and message in err
    assert not (home / ".trainkit" / "cluster.json").exists()


@pytest.mark.parametrize("host, message", [
    ("0.0.0.0", "concrete address"),
    ("localhost", "not an IPv4 address"),
])
def test_host_must_be_a_concrete_ip(home: Path, capsys: pytest.CaptureFixture[str], host: str,
                                    message: str) -> None:
    code, _, err = _run(capsys, "start", "--head", "--host", host)
    assert code == 2 and "--host" in err and message in err
    assert not (home / ".trainkit").exists()


def test_bad_numbers_and_port_with_address(home: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "start", "--head", "--num-gpus", "1.5")
    assert code == 2 and "--num-gpus" in err
    code, _, err = _run(capsys, "start", "--head", "--num-cpus", "-1")
    assert code == 2 and "--num-cpus" in err
    code, _, err = _run(capsys, "start", "--address", "nohost")
    assert code == 2 and "HOST:PORT" in err
    code, _, err = _run(capsys, "start", "--address", "127.0.0.1:6380", "--port", "7000")
    assert code == 2 and "--port is for --head" in err


def test_busy_port(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = _run(capsys, "start", "--head", "--port", str(port))
    assert code == 1
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err
    assert not (home / ".trainkit" / "cluster.json").exists()


def test_a_service_that_fails_shows_its_error(home: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Skip the early check, as when another program takes the port in between.
    monkeypatch.setattr(cli, "_check_port", lambda host, port: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = _run(capsys, "start", "--head", "--port", str(port))
    assert code == 1
    assert "the trainkit head did not start: Address already in use" in err
    assert f"head-{port}.log" in err
    assert not (home / ".trainkit" / "cluster.json").exists()


def test_second_head_refused_while_one_runs(home: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    try:
        _start_head(capsys, port)
        code, _, err = _run(capsys, "start", "--head", "--port", str(_free_port()))
        assert code == 1 and "trainkit stop" in err
        assert len(_state(home)["processes"]) == 1
    finally:
        assert cli.main(["stop"]) == 0


def test_stop_never_signals_a_recycled_pid(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A recorded pid now used by another program (here: this test) is left alone."""
    folder = home / ".trainkit"
    folder.mkdir()
    (folder / "cluster.json").write_text(json.dumps({
        "address": "127.0.0.1:6380",
        "processes": [{"pid": os.getpid(), "role": "head", "node_id": "0123456789abcdef",
                       "session_dir": str(home / "gone"), "arena_path": str(home / "gone-a")}],
    }))
    code, out, _ = _run(capsys, "stop")
    assert code == 0 and "Nothing was running" in out
    assert not (folder / "cluster.json").exists()


def test_module_and_console_script(home: Path) -> None:
    env = {**os.environ, "HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "trainkit.cli", "stop"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Nothing to stop" in proc.stdout, proc.stderr
    script = Path(sys.executable).parent / "trainkit"
    if not script.exists():
        pytest.skip(f"the console script is not installed at {script}")
    proc = subprocess.run([str(script), "start", "--head", "--resources", "{bad"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--resources" in proc.stderr
