"""``TrainWorker``: the actor that runs one rank of the training loop.

It is a threaded actor: ``run`` executes the user's loop in one thread, while the driver's
``poll`` (a long poll for reports), ``joined_ranks`` and ``dump_stacks`` are answered from
others. ``report()`` in the loop hands the report to the rank's ``ReportQueue`` (see
``_uploader``): the checkpoint folder is snapshotted, then uploaded by a background thread into
the run's staging folder in storage (each rank its own files, straight from its node: nothing
goes through the driver), and only then queued for ``poll``. The driver commits a checkpoint
once every rank's report of that iteration has arrived, and its next ``poll`` carries the ack.
``run`` returns only once every report of the loop is committed, so ``fit()`` does too.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Mapping
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from trainkit.train import _faults
from trainkit.train._checkpoint import Checkpoint
from trainkit.train._ddp import Rendezvous
from trainkit.train._ddp import free_port
from trainkit.train._ddp import set_torchrun_env
from trainkit.train._session import Session
from trainkit.train._session import TrainContext
from trainkit.train._session import set_session
from trainkit.train._storage import StorageLocation
from trainkit.train._uploader import Report
from trainkit.train._uploader import ReportQueue

MAX_CONCURRENCY = 4  # run + poll + joined_ranks/dump_stacks, with one to spare


class TrainWorker:
    def __init__(self, rank: int, attempt: int, staging_root: StorageLocation,
                 fault_rules: str) -> None:
        _faults.install(fault_rules)
        self.rank = rank
        self.attempt = attempt
        self.staging_root = staging_root
        self.rendezvous = Rendezvous()
        self.reports = ReportQueue(rank, attempt, staging_root)

    # -- called by the driver --------------------------------------------------------------
    def node_info(self) -> dict[str, Any]:
        import trainkit

        return {"ip": trainkit.get_node_ip_address(), "hostname": os.uname().nodename,
                "pid": os.getpid(),
                "port": free_port() if self.rank == 0 else 0, "gpu_ids": trainkit.get_gpu_ids()}

    def setup(self, context: TrainContext, master_addr: str, master_port: int, backend: str,
              rendezvous_timeout_s: float, num_threads: int, use_gpu: bool) -> None:
        """Set the torchrun environment, pick the device and join the process group."""
        import torch

        set_torchrun_env(rank=context.world_rank, local_rank=context.local_rank,
                         world_size=context.world_size,
                         local_world_size=context.local_world_size,
                         node_rank=context.node_rank, master_addr=master_addr,
                         master_port=master_port)
        os.environ["OMP_NUM_THREADS"] = str(num_threads)
        torch.set_num_threads(num_threads)
        if use_gpu:
            torch.cuda.set_device(0)  # CUDA_VISIBLE_DEVICES holds exactly this rank's GPU
        self.context = context
        self.use_gpu = use_gpu
        # Even one rank gets a process group: loops that call torch.distributed work as is.
        self.rendezvous.join(rank=context.world_rank, world_size=context.world_size,
                             master_addr=master_addr, master_port=master_port, backend=backend,
                             rendezvous_timeout_s=rendezvous_timeout_s, attempt=self.attempt)

    def joined_ranks(self) -> list[int]:
        return self.rendezvous.joined_ranks()

    def run(self, fn_blob: bytes, config: Mapping[str, Any] | None,
            checkpoint: Checkpoint | None, shards: Mapping[str, Any]) -> None:
        fn = cloudpickle.loads(fn_blob)
        set_session(Session(self.context, checkpoint, shards, self._report, self.use_gpu,
                            upload=self.reports.put, track_data_positions=True))
        try:
            fn(dict(config)) if config is not None else fn()
            self.reports.wait_committed()  # fit() returns only once every upload is committed
        finally:
            self.reports.close()
            set_session(None)
            self.rendezvous.leave()

    def poll(self, ack: int, wait_s: float) -> list[Report]:
        """Acknowledge reports up to ``ack``; return newer ones, waiting up to ``wait_s``.

        Raises the rank's upload error (``CheckpointUploadError``) once the reports uploaded
        before it are taken: the attempt fails like a rank error."""
        self.reports.ack(ack)
        return self.reports.take(wait_s)

    def dump_stacks(self) -> str:
        """Every thread's Python stack in this process."""
        names = {t.ident: t.name for t in threading.enumerate()}
        parts = []
        for ident, frame in sys._current_frames().items():
            if ident == threading.get_ident():
                continue
            stack = "".join(traceback.format_stack(frame))
            parts.append(f"thread {names.get(ident, ident)}:\n{stack}")
        return "\n".join(parts)

    # -- called by the loop, through train.report() ------------------------------------------
    def _report(self, metrics: dict[str, Any], checkpoint: Checkpoint | None) -> None:
        self.reports.put(metrics, checkpoint, "sync")
