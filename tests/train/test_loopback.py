"""An embedded fit listens on loopback only: the rendezvous store and gloo's sockets."""

from __future__ import annotations

import ipaddress
from typing import Any

import psutil

import trainkit as tk
from trainkit import train
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer


def _listening() -> list[str]:
    """The addresses this process listens on (tcp, any family)."""
    return sorted({c.laddr.ip for c in psutil.Process().net_connections("inet")
                   if c.status == psutil.CONN_LISTEN})


def _loop(config: dict[str, Any]) -> None:
    import torch
    import torch.distributed as dist

    t = torch.ones(1)
    dist.all_reduce(t)  # the process group is up and has been used
    train.report({"world": float(t.item()), "listening": ",".join(_listening())})


def test_an_embedded_fit_listens_on_loopback_only(tmp_path: Any) -> None:
    tk.init(num_cpus=2, num_gpus=0)
    try:
        result = Trainer(_loop, scaling_config=ScalingConfig(num_workers=2),
                         run_config=RunConfig(name="lo", storage_path=str(tmp_path))).fit()
    finally:
        tk.shutdown()
    assert result.metrics["world"] == 2.0
    listening = [a for a in result.metrics["listening"].split(",") if a]
    assert listening, "rank 0 hosts the rendezvous store: it must listen somewhere"
    assert all(ipaddress.ip_address(a).is_loopback for a in listening), listening
