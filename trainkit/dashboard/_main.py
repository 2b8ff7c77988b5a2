"""``trainkit dashboard``: its arguments, the checks on them, and the serving loop.

::

    trainkit dashboard [--storage PATH] [--address auto|HOST:PORT] [--host 127.0.0.1]
                       [--port 8265]

Exit codes: 0 stopped by Ctrl-C or SIGTERM, 1 cannot serve (port taken, cluster not
reachable), 2 a usage error (storage that does not exist, a bad option).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType

from trainkit.dashboard._cluster import ClusterView
from trainkit.dashboard._scan import LocalFolder
from trainkit.dashboard._scan import StorageReader
from trainkit.dashboard._scan import StoreFolder
from trainkit.dashboard._server import DEFAULT_HOST
from trainkit.dashboard._server import DEFAULT_PORT
from trainkit.dashboard._server import DashboardError
from trainkit.dashboard._server import DashboardServer
from trainkit.dashboard._server import check_host


class UsageError(DashboardError):
    """A bad argument (exit code 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", metavar="PATH",
                        help="the folder runs and sweeps are written to (RunConfig's "
                             "storage_path): a local path or a URI such as s3://bucket/runs "
                             "(default: $TRAINKIT_STORAGE_PATH or ~/trainkit_results)")
    parser.add_argument("--address", metavar="ADDR",
                        help="also show this cluster's nodes, resources, actors and placement "
                             "groups: 'auto' (the cluster started on this machine) or "
                             "HOST:PORT of its head")
    parser.add_argument("--host", default=DEFAULT_HOST, metavar="IP",
                        help="the address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, metavar="PORT",
                        help=f"the port to listen on (default {DEFAULT_PORT}; 0: any free one)")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; give a number from 0 to "
                                         "65535 (0: any free port)")
    return int(text)


def open_storage(path: str | None) -> StorageReader:
    """The reader of the storage ``path`` (None: the default storage_path).

    Raises:
        UsageError: a local path that does not exist or is not a folder, or a URI trainkit
            cannot open.
    """
    if path is None:
        from trainkit.train._constants import storage_path

        path = storage_path()
    if "://" not in path or path.startswith("file://"):
        local = os.path.abspath(os.path.expanduser(path.removeprefix("file://")))
        if not os.path.isdir(local):
            what = "is not a folder" if os.path.exists(local) else "does not exist"
            raise UsageError(f"--storage {path}: {local} {what}; pass the folder your runs "
                             "write to (RunConfig(storage_path=...)), e.g. "
                             "--storage ~/trainkit_results")
        return StorageReader(LocalFolder(local))
    from trainkit.train import RunConfig

    try:
        location = RunConfig(storage_path=path).storage_location()
    except ValueError as e:
        raise UsageError(f"--storage {path}: {e}") from None
    return StorageReader(StoreFolder(location))


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; see the module docstring."""
    try:
        reader = open_storage(args.storage)
    except UsageError as e:
        print(f"trainkit dashboard: {e}", file=sys.stderr)
        return 2
    warning = check_host(args.host)
    if warning is not None:
        print(f"trainkit dashboard: WARNING: {warning}", file=sys.stderr, flush=True)
    cluster = None
    if args.address is not None:
        cluster = ClusterView(args.address)
        try:
            cluster.connect()
        except Exception as e:
            print(f"trainkit dashboard: --address {args.address}: cannot join the cluster "
                  f"({type(e).__name__}: {e})", file=sys.stderr)
            return 1
    try:
        try:
            server = DashboardServer(reader, host=args.host, port=args.port, cluster=cluster)
        except DashboardError as e:
            print(f"trainkit dashboard: {e}", file=sys.stderr)
            return 1
        print(f"trainkit dashboard: {reader.uri} at {server.url}"
              + (f", cluster {args.address}" if cluster is not None else "")
              + " (Ctrl-C stops it)", flush=True)
        _serve_until_signalled(server)
        return 0
    finally:
        if cluster is not None:
            cluster.close()


def _serve_until_signalled(server: DashboardServer) -> None:
    """Serve in the server's thread; this one waits for SIGINT or SIGTERM."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with server:
            while not stop.wait(1.0):
                pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
