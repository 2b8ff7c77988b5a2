"""The dashboard without a browser: ledger -> page data (pure), the SVG charts, the server's
pages and JSON over a storage folder, and the command's bad input (a port in use, a storage
that does not exist, a bind anyone can reach)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trainkit.cli import main
from trainkit.dashboard._model import cluster_model
from trainkit.dashboard._model import curves_of
from trainkit.dashboard._model import entry_of
from trainkit.dashboard._model import parse_results
from trainkit.dashboard._model import scatter_of
from trainkit.dashboard._model import summary_of
from trainkit.dashboard._pages import index_page
from trainkit.dashboard._pages import sweep_page
from trainkit.dashboard._scan import LocalFolder
from trainkit.dashboard._scan import StorageReader
from trainkit.dashboard._server import DashboardError
from trainkit.dashboard._server import DashboardServer
from trainkit.dashboard._server import check_host
from trainkit.dashboard._svg import line_chart
from trainkit.dashboard._svg import scatter_chart


def _ev(seq: int, t: float, event: str, **fields: object) -> dict[str, Any]:
    return {"v": 1, "seq": seq, "t": t, "event": event, **fields}


RUN = [_ev(1, 10.0, "run_started", name="mnist", kind="train", num_workers=1),
       _ev(2, 10.5, "attempt_started", attempt=0, world_size=1),
       _ev(3, 11.0, "workers_started", attempt=0), _ev(4, 11.2, "rendezvous_done", attempt=0),
       _ev(5, 13.0, "report", attempt=0, iteration=3, step_s=0.6, checkpoint=False),
       _ev(6, 13.1, "attempt_finished", attempt=0), _ev(7, 13.2, "run_finished", iterations=3)]
SWEEP = [_ev(1, 20.0, "sweep_started", name="lr", kind="tune", metric="loss", mode="min"),
         _ev(2, 20.0, "trial_added", trial_id="00000", name="f_00000", params={"lr": 0.001}),
         _ev(3, 20.0, "trial_added", trial_id="00001", name="f_00001", params={"lr": 0.1}),
         _ev(4, 20.1, "trial_started", trial_id="00000", run=1, resumed=None),
         _ev(5, 20.1, "trial_started", trial_id="00001", run=1, resumed=None),
         _ev(6, 21.0, "trial_result", trial_id="00000", iteration=1, checkpoint=False,
             metrics={"loss": 0.5}),
         _ev(7, 21.0, "trial_errored", trial_id="00001", error_type="ValueError",
             message="diverged <b>", failures=1, retrying=False),
         _ev(8, 22.0, "trial_completed", trial_id="00000", iteration=1),
         _ev(9, 22.5, "sweep_finished", trials={"terminated": 1, "errored": 1})]
RESULTS = [{"loss": 1.0 / i, "acc": {"top1": 0.1 * i}, "training_iteration": i,
            "timestamp": 1e9 + i, "note": "text"} for i in range(1, 4)]


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture()
def storage(tmp_path: Path) -> Path:
    """A storage folder with one run (3 reports), one sweep (2 trials) and a stray folder."""
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "ledger.jsonl").write_text(_jsonl(RUN))
    (tmp_path / "mnist" / "result.json").write_text(_jsonl(RESULTS) + '{"loss": 0.')
    (tmp_path / "lr" / "f_00000").mkdir(parents=True)
    (tmp_path / "lr" / "ledger.jsonl").write_text(_jsonl(SWEEP))
    (tmp_path / "lr" / "f_00000" / "result.json").write_text(
        _jsonl([{"loss": 0.5, "training_iteration": 1}]))
    (tmp_path / "not-a-run").mkdir()
    return tmp_path


# --- pure parts -------------------------------------------------------------------------------

def test_results_to_curves() -> None:
    rows, damaged = parse_results((_jsonl(RESULTS) + "torn").encode())
    assert len(rows) == 3 and damaged == 1
    curves = curves_of(rows)
    assert list(curves) == ["loss", "acc/top1"]  # no timestamp, no text, nested flattened
    assert curves["loss"] == [(1.0, 1.0), (2.0, 0.5), (3.0, 1 / 3)]


def test_ledgers_to_index_entries() -> None:
    run, sweep = summary_of(RUN, 0), summary_of(SWEEP, 0)
    assert run is not None and sweep is not None
    e = entry_of("mnist", run, RUN)
    assert (e.kind, e.status, e.wall_s, e.started_t) == ("train", "finished", 3.2, 10.0)
    assert e.detail == "3 iterations, 0 checkpoints, 1 attempt"
    s = entry_of("lr", sweep, SWEEP)
    assert (s.kind, s.status, s.failures) == ("tune", "finished", 1)
    assert s.detail == "2 trials: 1 errored, 1 terminated"
    assert summary_of([_ev(1, 0.0, "something")], 0) is None


def test_sweep_scatter_and_page() -> None:
    summary = summary_of(SWEEP, 0)
    assert summary is not None
    points = scatter_of(summary["trials"], "loss")
    assert points == {"lr": [(0.001, 0.5, "f_00000")]}  # the errored trial has no loss
    html = sweep_page("lr", summary, "loss", points, [("f_00000", [(1.0, 0.5)])])
    assert "f_00001" in html and "diverged &lt;b&gt;" in html and "<b>" not in html
    assert 'class="chart scatter"' in html and 'data-points="1"' in html


def test_line_chart_scales_the_data_into_the_plot() -> None:
    svg = line_chart("loss", [("loss", [(1.0, 4.0), (2.0, 2.0), (3.0, 1.0)])])
    [points] = re.findall(r'<polyline[^>]* points="([^"]+)"', svg)
    xy = [tuple(map(float, p.split(","))) for p in points.split()]
    assert len(xy) == 3
    assert xy[0][0] < xy[1][0] < xy[2][0]  # x grows to the right
    assert xy[0][1] < xy[1][1] < xy[2][1]  # a falling loss goes down the page (y grows down)
    assert 'data-points="3"' in svg


def test_scatter_uses_a_log_axis_for_a_log_uniform_parameter() -> None:
    svg = scatter_chart("loss vs lr", [(1e-4, 1.0, "a"), (1e-1, 2.0, "b")], x_label="lr",
                        y_label="loss", best="a")
    assert "lr (log)" in svg and svg.count("<circle") == 2 and 'fill="#d62728"' in svg


def test_cluster_model_from_runtime_answers() -> None:
    model = cluster_model(
        [{"NodeID": "n1", "Alive": True, "NodeManagerAddress": "10.0.0.1",
          "Resources": {"CPU": 4.0, "node:10.0.0.1": 1.0}, "Available": {"CPU": 1.0},
          "GPUIds": []}],
        {"pg1": {"name": "", "bundles": {0: {"CPU": 1.0}}, "bundles_to_node_id": {0: "n1"},
                 "strategy": "PACK", "state": "CREATED"}},
        [{"name": "svc", "namespace": "default"}], {"CPU": 4.0}, {"CPU": 1.0})
    assert model["nodes"][0]["resources"] == {"CPU": [3.0, 4.0]}  # node: labels dropped
    assert model["placement_groups"][0] | {} == {"id": "pg1", "name": "", "state": "CREATED",
                                                 "strategy": "PACK", "bundles": [{"CPU": 1.0}],
                                                 "nodes": ["n1"]}
    assert model["actors"] == [{"name": "svc", "namespace": "default"}]


def test_index_page_escapes_names() -> None:
    run = summary_of(RUN, 0)
    assert run is not None
    html = index_page([entry_of("<x>", run, RUN)], "/s", [])
    assert "&lt;x&gt;" in html and "<x>" not in html


# --- the server -------------------------------------------------------------------------------

@pytest.fixture()
def server(storage: Path) -> Iterator[DashboardServer]:
    with DashboardServer(StorageReader(LocalFolder(str(storage))), port=0) as s:
        yield s


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_pages_and_api(server: DashboardServer) -> None:
    assert server.address[0] == "127.0.0.1"
    code, html = _get(server.url + "/")
    assert code == 200 and 'href="/run/mnist"' in html and 'href="/sweep/lr"' in html
    assert "not-a-run" not in html
    code, html = _get(server.url + "/run/mnist")
    assert code == 200 and html.count('class="chart line"') == 2 and "result.json: 1 line" in html
    code, html = _get(server.url + "/sweep/lr?fragment=1")
    assert code == 200 and not html.startswith("<!DOCTYPE") and "f_00001" in html
    code, html = _get(server.url + "/sweep/lr/trial/f_00000")
    assert code == 200 and 'data-points="1"' in html
    code, body = _get(server.url + "/api/runs")
    assert code == 200 and sorted(r["name"] for r in json.loads(body)["runs"]) == ["lr", "mnist"]
    code, body = _get(server.url + "/api/run/mnist")
    assert code == 200 and json.loads(body)["curves"]["loss"][0] == [1.0, 1.0]
    code, body = _get(server.url + "/api/sweep/lr")
    assert code == 200 and json.loads(body)["best"]["trial_id"] == "00000"


@pytest.mark.parametrize("path", ["/run/not-a-run", "/run/..", "/run/%2e%2e%2fetc",
                                  "/sweep/lr/trial/..", "/cluster", "/nowhere"])
def test_paths_outside_the_storage_are_not_found(server: DashboardServer, path: str) -> None:
    code, _ = _get(server.url + path)
    assert code == 404


def test_storage_that_is_itself_a_run_says_to_pass_its_parent(storage: Path) -> None:
    reader = StorageReader(LocalFolder(str(storage / "mnist")))
    entries, problems = reader.entries()
    assert entries == [] and "is itself a run or a sweep" in problems[0]
    assert str(storage / "mnist") in problems[0] and "parent" in problems[0]


def test_port_in_use_is_named(storage: Path) -> None:
    with DashboardServer(StorageReader(LocalFolder(str(storage))), port=0) as first:
        port = first.address[1]
        with pytest.raises(DashboardError, match=f"port {port} on 127.0.0.1 is in use.*--port"):
            DashboardServer(StorageReader(LocalFolder(str(storage))), port=port)


def test_missing_storage_and_busy_port_from_the_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--storage", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nope'} does not exist" in err and err.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", "--storage", str(tmp_path), "--port", str(port)]) == 1
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
    assert main(["dashboard", "--port", "70000"]) == 2


def test_loopback_needs_no_warning() -> None:
    assert check_host("127.0.0.1") is None and check_host("::1") is None
    assert "anyone" in (check_host("0.0.0.0") or "")


def test_command_warns_for_a_wide_bind_and_stops_on_sigterm(storage: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "trainkit.cli", "dashboard", "--storage",
                             str(storage), "--host", "0.0.0.0", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()  # printed once it listens
        assert "http://0.0.0.0:" in line, line
        port = int(line.rsplit(":", 1)[1].split()[0])
        code, html = _get(f"http://127.0.0.1:{port}/")
        assert code == 200 and "mnist" in html
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert "WARNING: --host 0.0.0.0: anyone who can reach this machine" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def test_serving_local_storage_loads_no_pyarrow_or_tune(storage: Path) -> None:
    """What keeps the idle dashboard small: on local storage, serving every page imports
    neither pyarrow, numpy nor Tune (bench/ledger_cost.py measures the RSS)."""
    code = ("import sys, urllib.request; from trainkit.cli import _build_parser; "
            "from trainkit.dashboard._main import open_storage; "
            "from trainkit.dashboard._server import DashboardServer; "
            f"s = DashboardServer(open_storage({str(storage)!r}), port=0); s.start(); "
            "[urllib.request.urlopen(s.url + p, timeout=10).read() for p in "
            "('/', '/run/mnist', '/sweep/lr', '/sweep/lr/trial/f_00000', '/api/runs')]; "
            "s.close(); print(sorted(m for m in ('pyarrow', 'numpy', 'trainkit.tune') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_cluster_page_of_a_cluster_from_trainkit_start(
        storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``trainkit start --head`` makes a cluster; ``trainkit dashboard --address HOST:PORT``
    joins it and shows its node and resources on /cluster and /api/cluster."""
    from trainkit.runtime.wire.secret import SECRET_ENV

    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.trainkit (state, secret) private to this test
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["start", "--head", "--port", str(port), "--num-cpus", "3"]) == 0
    try:
        proc = subprocess.Popen([sys.executable, "-m", "trainkit.cli", "dashboard", "--storage",
                                 str(storage), "--address", f"127.0.0.1:{port}", "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stderr is not None
            line = proc.stdout.readline()
            assert f"cluster 127.0.0.1:{port}" in line, (line, proc.stderr.read())
            url = line.split(" at ", 1)[1].split(",", 1)[0]
            code, body = _get(url + "/api/cluster")
            data = json.loads(body)
            assert code == 200 and data["error"] is None, data
            [node] = data["cluster"]["nodes"]
            assert node["alive"] and node["resources"]["CPU"] == [0.0, 3.0]
            code, html = _get(url + "/cluster")
            assert code == 200 and node["node_id"] in html and "<h3>Nodes (1)</h3>" in html
            proc.terminate()
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            for f in (proc.stdout, proc.stderr):
                if f is not None:
                    f.close()
    finally:
        assert main(["stop"]) == 0
