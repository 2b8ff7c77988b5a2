"""``DashboardServer``: the dashboard's HTTP server (the stdlib's ``ThreadingHTTPServer``).

Routes (GET only)::

    /                              every run and sweep under the storage, with its status
    /run/NAME  /sweep/NAME         a run (its metric curves) or a sweep (trials and a plot)
    /sweep/NAME/trial/TRIAL        one trial's curves
    /cluster                       nodes, resources, actors, placement groups (with --address)
    /api/runs  /api/run/NAME  /api/sweep/NAME  /api/cluster     the same data as JSON

``?fragment=1`` answers a page's ``<main>`` only (what its script swaps in to stay live).
Each request reads the ledgers and result files it needs and nothing is cached, so the
server's memory does not grow with the runs it has shown. It binds loopback unless told
otherwise; there is no login, so a wider bind is said aloud (see ``check_host``).
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any
from typing import Final
from urllib.parse import parse_qs
from urllib.parse import unquote
from urllib.parse import urlsplit

from trainkit.dashboard import _pages
from trainkit.dashboard._cluster import ClusterView
from trainkit.dashboard._model import curves_of
from trainkit.dashboard._model import scatter_of
from trainkit.dashboard._model import sweep_metric
from trainkit.dashboard._scan import StorageReader

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8265
REFRESH_S: Final = 5.0
CLUSTER_REFRESH_S: Final = 2.0
MAX_TRIAL_CURVES: Final = 40  # curves overlaid on a sweep's page (each reads a result.json)


class DashboardError(Exception):
    """A dashboard that cannot start: the message says why and what to do."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str) -> str | None:
    """The warning to print for a bind that others can reach; None for loopback."""
    if is_loopback(host):
        return None
    return (f"--host {host}: anyone who can reach this machine on the network can read the "
            "dashboard (run names, metrics, configs, errors); it has no login. Bind "
            "127.0.0.1 (the default) and use an SSH tunnel to look from elsewhere")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a page refreshing itself every few seconds would fill the terminal

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        fragment = parse_qs(url.query).get("fragment") == ["1"]
        try:
            status, ctype, body = self.server.app.route(parts, fragment)
        except Exception as e:  # a bug or unreadable storage: one page says it, serving goes on
            status, ctype, body = (HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8",
                                   f"trainkit dashboard: {type(e).__name__}: {e}\n".encode())
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; style-src 'unsafe-inline'; "
                         "script-src 'unsafe-inline'; img-src 'self' data:")
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: _App) -> None:
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that leaves mid-answer (a page closed while it refreshed) is no error.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


_Answer = tuple[int, str, bytes]


class _App:
    """Routes a request's path to a page or a JSON answer (no sockets here)."""

    def __init__(self, reader: StorageReader, cluster: ClusterView | None) -> None:
        self.reader = reader
        self.cluster = cluster

    def route(self, parts: list[str], fragment: bool) -> _Answer:
        if parts[:1] == ["api"]:
            return self._api(parts[1:])
        if not parts:
            entries, problems = self.reader.entries()
            return self._page("runs and sweeps", _pages.index_page(
                entries, self.reader.uri, problems), fragment)
        if parts[0] in ("run", "sweep") and len(parts) == 2:
            return self._run_or_sweep(parts[1], fragment)
        if parts[0] == "sweep" and len(parts) == 4 and parts[2] == "trial":
            return self._trial(parts[1], parts[3], fragment)
        if parts == ["cluster"]:
            if self.cluster is None:
                return self._missing("no cluster is shown: start the dashboard with "
                                     "--address auto (or HOST:PORT of the head)")
            model, error = self.cluster.snapshot()
            return self._page("cluster", _pages.cluster_page(self.cluster.address, model,
                                                             error), fragment,
                              CLUSTER_REFRESH_S)
        return self._missing(f"no page at /{'/'.join(parts)}")

    def _run_or_sweep(self, name: str, fragment: bool) -> _Answer:
        found = self.reader.load(name)
        if found is None:
            return self._missing(f"{name!r} is not a run or a sweep in "
                                 f"{self.reader.uri}")
        _, summary = found
        if summary["kind"] == "train":
            rows, damaged = self.reader.results(name)
            return self._page(name, _pages.run_page(name, summary, curves_of(rows), damaged),
                              fragment)
        metric = sweep_metric(summary)
        overlay: list[tuple[str, list[tuple[float, float]]]] = []
        if metric is not None:
            for t in summary["trials"][:MAX_TRIAL_CURVES]:
                rows, _ = self.reader.results(name, str(t["name"]))
                points = curves_of(rows).get(metric)
                if points:
                    overlay.append((str(t["name"]), points))
        return self._page(name, _pages.sweep_page(name, summary, metric,
                                                  scatter_of(summary["trials"], metric),
                                                  overlay), fragment)

    def _trial(self, sweep: str, trial: str, fragment: bool) -> _Answer:
        found = self.reader.load(sweep)
        row = None if found is None else next(
            (t for t in found[1].get("trials", []) if t["name"] == trial), None)
        if row is None:
            return self._missing(f"{trial!r} is not a trial of a sweep {sweep!r}")
        rows, _ = self.reader.results(sweep, trial)
        return self._page(trial, _pages.trial_page(sweep, row, curves_of(rows)), fragment)

    def _api(self, parts: list[str]) -> _Answer:
        data: Any
        if parts == ["runs"]:
            entries, problems = self.reader.entries()
            data = {"storage": self.reader.uri, "problems": problems,
                    "runs": [dataclasses.asdict(e) for e in entries]}
        elif len(parts) == 2 and parts[0] in ("run", "sweep"):
            found = self.reader.load(parts[1])
            if found is None:
                return _json({"error": f"{parts[1]!r} is not a run or a sweep"},
                             HTTPStatus.NOT_FOUND)
            data = found[1]
            if data["kind"] == "train":
                data = data | {"curves": curves_of(self.reader.results(parts[1])[0])}
        elif parts == ["cluster"] and self.cluster is not None:
            model, error = self.cluster.snapshot()
            data = {"address": self.cluster.address, "error": error, "cluster": model}
        else:
            return _json({"error": f"no API at /api/{'/'.join(parts)}"}, HTTPStatus.NOT_FOUND)
        return _json(data)

    def _page(self, title: str, fragment_html: str, fragment: bool,
              refresh_s: float = REFRESH_S) -> _Answer:
        body = fragment_html if fragment else _pages.layout(
            title, fragment_html, refresh_s=refresh_s, cluster=self.cluster is not None)
        return HTTPStatus.OK, "text/html; charset=utf-8", body.encode()

    def _missing(self, message: str) -> _Answer:
        html = _pages.layout("not found", _pages.error_page(message), refresh_s=0,
                             cluster=self.cluster is not None)
        return HTTPStatus.NOT_FOUND, "text/html; charset=utf-8", html.encode()


def _json(data: Any, status: int = HTTPStatus.OK) -> _Answer:
    return status, "application/json", json.dumps(data, default=repr).encode()


class DashboardServer:
    """The dashboard on ``host:port`` (port 0: any free one), serving ``reader``'s storage.

    Args:
        reader: the storage to show.
        host, port: where to listen; loopback by default.
        cluster: the cluster to show on /cluster (connected already), or None.

    Raises:
        DashboardError: the port is taken, or the host is not an address of this machine.

    Example:
        >>> with DashboardServer(StorageReader(LocalFolder(path)), port=0) as server:
        ...     urllib.request.urlopen(server.url).read()  # doctest: +SKIP
    """

    def __init__(self, reader: StorageReader, *, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT, cluster: ClusterView | None = None) -> None:
        try:
            self._server = _Server((host, port), _App(reader, cluster))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise DashboardError(
                    f"port {port} on {host} is in use (another dashboard, or Ray's, which "
                    f"also takes {DEFAULT_PORT}?): pass --port N for another port, or --port 0 "
                    "for any free one") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise DashboardError(f"--host {host} is not an address of this machine: use "
                                     "127.0.0.1 (the default) or one of its own IPs") from None
            raise DashboardError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    def start(self) -> None:
        """Answer requests in a background thread, until ``close()``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.5},
                                            name="trainkit-dashboard", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop answering and release the port (the requests in flight finish first)."""
        if self._thread is not None:
            self._server.shutdown()  # returns once serve_forever has left its loop
            self._thread.join(timeout_s)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> DashboardServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
