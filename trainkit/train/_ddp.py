"""``torch.distributed`` setup in a training worker: the rendezvous, the process group, and
the environment ``torchrun`` gives, so existing DDP code runs unchanged.

Rank 0 hosts a ``TCPStore`` at MASTER_ADDR:MASTER_PORT. Each rank connects, writes
``joined/<rank>`` and waits for every other rank's key, for ``rendezvous_timeout_s``; then
the process group is built on that store. Rank 0 can say at any time which ranks have joined,
so a rendezvous that times out names the ranks that never came.

Nothing listens beyond the address the ranks use: the store's socket is bound to MASTER_ADDR
(torch's own binds every interface), and when that is a loopback address (every rank on this
machine, as in embedded mode) gloo and nccl are told to use the loopback interface too
(``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME``, unless the user set them).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from typing import Any

from trainkit.train import _faults


def free_port() -> int:
    """A TCP port free right now on this host (for rank 0's rendezvous store)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port: int = s.getsockname()[1]
        return port


def set_torchrun_env(*, rank: int, local_rank: int, world_size: int, local_world_size: int,
                     node_rank: int, master_addr: str, master_port: int) -> None:
    os.environ.update({
        "RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(local_world_size), "GROUP_RANK": str(node_rank),
        "NODE_RANK": str(node_rank), "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port),
    })


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(address)).is_loopback
    except (OSError, ValueError):
        return False


def _loopback_interface() -> str | None:
    names = [name for _, name in socket.if_nameindex()]
    return "lo" if "lo" in names else None


def _listen(address: str, port: int) -> socket.socket:
    """Rank 0's listening socket for the store, on ``address`` only."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


class Rendezvous:
    """This rank's connection to the rendezvous store, and the process group built on it."""

    def __init__(self) -> None:
        self.store: Any = None
        self.world_size = 0

    def join(self, *, rank: int, world_size: int, master_addr: str, master_port: int,
             backend: str, rendezvous_timeout_s: float, attempt: int) -> None:
        import torch.distributed as dist
        from torch.distributed import PrefixStore  # type: ignore[attr-defined]
        from torch.distributed import TCPStore  # type: ignore[attr-defined]

        timeout = datetime.timedelta(seconds=rendezvous_timeout_s)
        self.world_size = world_size
        if _is_loopback(master_addr):
            for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
                if var not in os.environ and (lo := _loopback_interface()):
                    os.environ[var] = lo
        listener = _listen(master_addr, master_port) if rank == 0 else None
        try:
            self.store = TCPStore(master_addr, master_port, world_size, is_master=rank == 0,
                                  timeout=timeout, wait_for_workers=False,
                                  master_listen_fd=None if listener is None
                                  else listener.fileno())
        except BaseException:
            if listener is not None:
                listener.close()
            raise
        if listener is not None:
            listener.detach()  # the store owns the socket now
        _faults.maybe("rendezvous", rank=rank, attempt=attempt)
        self.store.set(f"joined/{rank}", "1")
        try:
            self.store.wait([f"joined/{r}" for r in range(world_size)], timeout)
        except Exception as e:  # DistStoreError; its message names keys, not ranks
            missing = [r for r in range(world_size) if not self.store.check([f"joined/{r}"])]
            raise TimeoutError(
                f"ranks {missing} never joined the process group within {rendezvous_timeout_s} "
                f"s (FailureConfig.rendezvous_timeout_s); rendezvous at {master_addr}:"
                f"{master_port}") from e
        dist.init_process_group(backend, store=PrefixStore("pg", self.store), rank=rank,
                                world_size=world_size)

    def joined_ranks(self) -> list[int]:
        """The ranks that reached the rendezvous (ask rank 0, which hosts the store)."""
        if self.store is None:
            return []
        return [r for r in range(self.world_size) if self.store.check([f"joined/{r}"])]

    def leave(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
