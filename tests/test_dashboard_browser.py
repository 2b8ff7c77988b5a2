"""The dashboard in a real browser: Debian's chromium, headless, against the real command.

A real Train run and a real sweep (ASHA stopping trials, one trial raising) write their
ledgers and result files; ``trainkit dashboard --address auto`` runs as its own process,
joined to this test's runtime (which holds a placement group and a named actor), bound to
loopback by default. Chromium's ``--dump-dom`` gives the pages as rendered (after their
script ran); ``--screenshot`` takes one picture. Skipped, saying how to install it, where
chromium is missing (scripts/setup.sh installs it with apt-get for the test extras).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

# torch sets TORCHINDUCTOR_CACHE_DIR when its optimizers first load: import it before the test
# (as tests/train/conftest.py does) so the leak police does not blame this module.
import torch._dynamo  # noqa: F401

import trainkit as tk
from trainkit import train
from trainkit import tune
from trainkit.train import Checkpoint
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer
from trainkit.tune.schedulers import ASHAScheduler

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed: `apt-get install -y chromium` (as "
    "root), or run scripts/setup.sh with TRAINKIT_EXTRAS containing test")
BROWSER_TIMEOUT_S = 90


def loop(config: dict[str, Any]) -> None:
    for i in range(1, 9):
        metrics = {"loss": 2.0 / i, "accuracy": 1 - 0.5 / i}
        if i % 4 == 0:
            with tempfile.TemporaryDirectory() as d:
                Path(d, "step").write_text(str(i))
                train.report(metrics, checkpoint=Checkpoint.from_directory(d))
        else:
            train.report(metrics)


def curve(config: dict[str, Any]) -> None:
    for i in range(1, 10):
        if config["x"] == 99:
            raise ValueError("x=99 is out of range")
        tune.report({"loss": config["x"] ** 2 + 1.0 / i})


@pytest.fixture(scope="module")
def storage(start_backend: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A runtime (with a placement group and a named actor to show), and a storage folder
    holding a real 8-report Train run ("fit") and a real 7-trial sweep ("sweep")."""
    root = tmp_path_factory.mktemp("storage")
    with start_backend("builtin", num_cpus=2, num_gpus=0):
        Trainer(loop, scaling_config=ScalingConfig(num_workers=1),
                run_config=RunConfig(name="fit", storage_path=str(root), verbose=0)).fit()
        tune.Tuner(curve, param_space={"x": tune.grid_search([0.0, 0.5, 1.0, 2.0, 3.0, 99])},
                   tune_config=tune.TuneConfig(
                       metric="loss", mode="min", max_concurrent_trials=2,
                       scheduler=ASHAScheduler(max_t=9, grace_period=1, reduction_factor=3)),
                   run_config=RunConfig(name="sweep", storage_path=root, verbose=0)).fit()
        group = tk.util.placement_group([{"CPU": 1}], name="dash-pg")
        tk.get(group.ready(), timeout=30)
        keeper = tk.remote(Keeper).options(name="dash-keeper", num_cpus=0).remote()
        tk.get(keeper.ping.remote(), timeout=30)
        try:
            yield root
        finally:
            tk.kill(keeper)
            tk.util.remove_placement_group(group)


class Keeper:
    def ping(self) -> str:
        return "pong"


@pytest.fixture(scope="module")
def dashboard(storage: Path) -> Iterator[tuple[str, int]]:
    """``trainkit dashboard --address auto --port 0`` as its own process: (its url, its pid)."""
    proc = subprocess.Popen([sys.executable, "-m", "trainkit.cli", "dashboard", "--storage",
                             str(storage), "--address", "auto", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it listens (or empty: it exited)
        if not line:
            assert proc.stderr is not None
            pytest.fail(f"the dashboard exited: {proc.wait(timeout=10)} {proc.stderr.read()}")
        url = re.search(r"http://\S+?(?=[ ,]|$)", line)
        assert url is not None and "cluster auto" in line, line
        yield url.group(0), proc.pid
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            for f in (proc.stdout, proc.stderr):
                if f is not None:
                    f.close()


def _chromium(tmp_path: Path, *args: str) -> str:
    """Run headless chromium with its own profile folder; its stdout."""
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-dev-shm-usage", "--disable-extensions", "--disable-background-networking",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _dom(tmp_path: Path, url: str) -> str:
    return _chromium(tmp_path, "--dump-dom", url)


def _polyline_points(svg: str) -> list[list[tuple[float, float]]]:
    return [[tuple(map(float, p.split(","))) for p in pts.split()]  # type: ignore[misc]
            for pts in re.findall(r'<polyline[^>]*points="([^"]*)"', svg)]


def test_index_lists_the_run_and_the_sweep(dashboard: tuple[str, int], tmp_path: Path) -> None:
    url, _ = dashboard
    dom = _dom(tmp_path, url + "/")
    assert '<a href="/run/fit">fit</a>' in dom and '<a href="/sweep/sweep">sweep</a>' in dom
    assert dom.count('class="finished"') >= 2
    assert "8 iterations, 2 checkpoints, 1 attempt" in dom
    assert "6 trials: 1 errored, 5 terminated" in dom


def test_run_page_draws_the_reported_curves(dashboard: tuple[str, int], tmp_path: Path,
                                            storage: Path) -> None:
    url, _ = dashboard
    dom = _dom(tmp_path, url + "/run/fit")
    charts = re.findall(r'<svg[^>]*class="chart line"[^>]*>.*?</svg>', dom, re.S)
    by_title = {re.search(r'data-title="([^"]+)"', c).group(1): c for c in charts}  # type: ignore[union-attr]
    assert {"loss", "accuracy"} <= set(by_title)
    [loss] = _polyline_points(by_title["loss"])
    assert len(loss) == 8  # one point per report, as result.json has them
    rows = [json.loads(line) for line in (storage / "fit" / "result.json").read_text()
            .splitlines()]
    assert [r["loss"] for r in rows] == [2.0 / i for i in range(1, 9)]
    xs, ys = [p[0] for p in loss], [p[1] for p in loss]
    assert xs == sorted(xs) and ys == sorted(ys)  # a falling loss: y (pixels) grows down
    assert "productive" in dom and "rendezvous" in dom and "Failures: none." in dom


def test_sweep_page_lists_trials_and_plots_them(dashboard: tuple[str, int],
                                                tmp_path: Path) -> None:
    url, _ = dashboard
    dom = _dom(tmp_path, url + "/sweep/sweep")
    trials = re.findall(r'<a href="/sweep/sweep/trial/(curve_\d+)">', dom)
    assert len(set(trials)) == 6
    assert "stopped by the scheduler" in dom and "ValueError: x=99 is out of range" in dom
    scatter = re.search(r'<svg[^>]*class="chart scatter"[^>]*data-points="(\d+)"', dom)
    assert scatter is not None and int(scatter.group(1)) == 5  # every trial with a loss
    assert "best:" in dom and "x=0" in dom
    per_trial = re.search(r'<svg[^>]*class="chart line".*?</svg>', dom, re.S)
    assert per_trial is not None and len(_polyline_points(per_trial.group(0))) == 5


def test_cluster_page_shows_nodes_actors_and_groups_live(dashboard: tuple[str, int],
                                                         tmp_path: Path) -> None:
    url, _ = dashboard
    # A virtual-time budget past two refreshes: the page's script fetches its fragment again
    # and swaps it in; the swapped-in content is what --dump-dom prints.
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", url + "/cluster")
    node = tk.nodes()[0]["NodeID"]
    assert node in dom and "dash-keeper" in dom and "CREATED" not in dom  # state lower-cased
    group = re.search(r"<h3>Placement groups \((\d+)\)</h3>", dom)
    assert group is not None and int(group.group(1)) >= 1 and "created" in dom
    assert "CPU" in dom and '<main id="live" data-refresh="2">' in dom


def test_binds_loopback_only_by_default(dashboard: tuple[str, int]) -> None:
    url, pid = dashboard
    listening = [c.laddr for c in psutil.Process(pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(a.ip == "127.0.0.1" for a in listening), listening
    port = listening[0].port
    assert url == f"http://127.0.0.1:{port}"
    other = _non_loopback_ip()
    if other is not None:  # the same port on this machine's network address is closed
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.settimeout(5)
            s.connect((other, port))


def _non_loopback_ip() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return str(a.address)
    return None


def test_screenshot(dashboard: tuple[str, int], tmp_path: Path) -> None:
    url, _ = dashboard
    shot = tmp_path / "sweep.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1400", url + "/sweep/sweep")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a page, not a blank
    keep = os.environ.get("TRAINKIT_DASHBOARD_SCREENSHOT")
    if keep:  # for a person to look at
        shutil.copy(shot, keep)


def test_pages_fetch_themselves_again_in_the_browser(storage: Path, tmp_path: Path) -> None:
    """The page's script runs in the browser: it asks for its fragment again and swaps it
    in (a server in this process, its router spied on, joined to this test's runtime)."""
    from trainkit.dashboard._cluster import ClusterView
    from trainkit.dashboard._scan import LocalFolder
    from trainkit.dashboard._scan import StorageReader
    from trainkit.dashboard._server import DashboardServer

    cluster = ClusterView("auto")
    cluster.connect()  # this process's runtime: nothing to start, nothing to stop
    server = DashboardServer(StorageReader(LocalFolder(str(storage))), port=0, cluster=cluster)
    asked: list[tuple[tuple[str, ...], bool]] = []
    app = server._server.app
    route = app.route

    def spy(parts: list[str], fragment: bool) -> tuple[int, str, bytes]:
        asked.append((tuple(parts), fragment))
        return route(parts, fragment)

    app.route = spy  # type: ignore[method-assign]
    with server:
        dom = _chromium(tmp_path, "--virtual-time-budget=7000", "--dump-dom",
                        server.url + "/cluster")
    assert (("cluster",), False) in asked and (("cluster",), True) in asked, asked
    assert "dash-keeper" in dom and "<h3>Nodes (1)</h3>" in dom
