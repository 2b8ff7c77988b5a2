"""What a node offers on this machine, and the names its sessions go by."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket

# What `python -m` runs to start a node service.
NODE_SERVICE_MODULE = "trainkit.runtime.node.node_service"


def detect_gpus() -> list[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(x) for x in visible.split(",") if x.strip().isdigit()]
    return list(range(len(glob.glob("/proc/driver/nvidia/gpus/*"))))


def default_store_bytes() -> int:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    want = int(total * 0.3)
    try:
        shm_free = shutil.disk_usage("/dev/shm").free
        want = min(want, int(shm_free * 0.9))
    except OSError:
        pass
    return want


def new_session_name(role: str) -> str:
    """``trainkit-<pid>-[<role>-]<random>``: unique on this machine, names no file."""
    middle = f"{role}-" if role else ""
    return f"trainkit-{os.getpid()}-{middle}{secrets.token_hex(4)}"


def machine_key() -> str:
    """Identifies this machine and network namespace: a driver attaches to a node here."""
    try:
        with open("/etc/machine-id") as f:
            machine = f.read().strip()
    except OSError:
        machine = socket.gethostname()
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        netns = 0
    return f"{machine}:{netns}"
