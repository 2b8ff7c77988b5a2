"""Embedded mode opens no network port: every socket is ipc:// (a local Ray opens 14 TCP
ports, 10 of them on all interfaces)."""

from __future__ import annotations

import os

import psutil

import trainkit as tk


def test_embedded_mode_listens_on_no_network_interface():
    tk.init(num_cpus=1)
    try:
        @tk.remote
        def f() -> int:
            return os.getpid()

        tk.get(f.remote())
        me = psutil.Process()
        listening = [cn for p in me.children(recursive=True)
                     for cn in p.net_connections(kind="inet") if cn.status == psutil.CONN_LISTEN]
        listening += [cn for cn in me.net_connections(kind="inet")
                      if cn.status == psutil.CONN_LISTEN]
        assert listening == []
    finally:
        tk.shutdown()
