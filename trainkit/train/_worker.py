"""``TrainWorker``: the actor that runs one rank of the training loop.

It is a threaded actor: ``run`` executes the user's loop in one thread, while the driver's
``poll`` (a long poll for reports), ``joined_ranks`` and ``dump_stacks`` are answered from
others. ``report()`` in the loop hands the report to the rank's ``ReportQueue`` (see
``_uploader``): the checkpoint folder is snapshotted, then uploaded by a background thread into
the run's staging folder in storage (each rank its own files, straight from its node: nothing
goes through the driver), and only then queued for ``poll``. The driver commits a checkpoint
once every rank's report of that iteration has arrived, and its next ``poll`` carries the ack.
``run`` returns only once every report of the loop is committed, so ``fit()`` does too.

A loop defined in the driver script (or a notebook) travels by value, and cloudpickle names
its code ``<dynamic-code>``; ``code_origins`` (in the driver) and ``restore_code_origins``
(here) put the real file back, so stacks and tracebacks show the script's path and line.
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
import threading
import traceback
import types
from collections.abc import Mapping
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from trainkit.train import _faults
from trainkit.train._checkpoint import Checkpoint
from trainkit.train._ddp import Rendezvous
from trainkit.train._ddp import free_port
from trainkit.train._ddp import set_torchrun_env
from trainkit.train._failure_policy import Frame
from trainkit.train._failure_policy import RankProbe
from trainkit.train._failure_policy import classify_frame
from trainkit.train._session import Session
from trainkit.train._session import TrainContext
from trainkit.train._session import set_session
from trainkit.train._storage import StorageLocation
from trainkit.train._uploader import Report
from trainkit.train._uploader import ReportQueue

MAX_CONCURRENCY = 4  # run + poll + joined_ranks/probe, with one to spare
_DYNAMIC = "<dynamic-code>"  # cloudpickle's co_filename for code pickled by value
# (co_qualname, co_firstlineno) -> co_filename of the driver's by-value code, plus under
# MAIN_FILE the driver script's path (None in a notebook or a REPL)
CodeOrigins = dict[tuple[str, int], str]
MAIN_FILE = ("__main__", 0)


class TrainWorker:
    def __init__(self, rank: int, attempt: int, staging_root: StorageLocation,
                 fault_rules: str) -> None:
        _faults.install(fault_rules)
        self.rank = rank
        self.attempt = attempt
        self.staging_root = staging_root
        self.rendezvous = Rendezvous()
        self.reports = ReportQueue(rank, attempt, staging_root)
        self.loop_thread: int | None = None  # the thread running the loop, while it runs

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
            checkpoint: Checkpoint | None, shards: Mapping[str, Any],
            origins: CodeOrigins | None = None) -> None:
        fn = cloudpickle.loads(fn_blob)
        restore_code_origins(fn, origins or {})
        set_session(Session(self.context, checkpoint, shards, self._report, self.use_gpu,
                            upload=self.reports.put, track_data_positions=True))
        self.loop_thread = threading.get_ident()
        try:
            fn(dict(config)) if config is not None else fn()
            self.reports.wait_committed()  # fit() returns only once every upload is committed
        finally:
            self.loop_thread = None
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
        return self.probe().text

    def probe(self) -> RankProbe:
        """For the hang doctor: how many reports the loop made, where its thread is (each
        frame classified as user code, a wait on the other ranks, or a library) and every
        thread's stack. Answered from another actor thread while the loop is blocked."""
        names = {t.ident: t.name for t in threading.enumerate()}
        frames: tuple[Frame, ...] = ()
        parts = []
        loop = self.loop_thread
        roots = _library_roots()
        for ident, top in sys._current_frames().items():
            if ident == threading.get_ident():
                continue
            summary = traceback.extract_stack(top)
            if ident == loop:
                frames = tuple(Frame(f.filename, f.lineno or 0, f.name,
                                     classify_frame(f.filename, roots)) for f in summary)
            name = "the training loop" if ident == loop else names.get(ident, ident)
            parts.append(f"thread {name}:\n{''.join(summary.format())}")
        return RankProbe(self.reports.seq, frames, "\n".join(parts))

    # -- called by the loop, through train.report() ------------------------------------------
    def _report(self, metrics: dict[str, Any], checkpoint: Checkpoint | None) -> None:
        self.reports.put(metrics, checkpoint, "sync")


def _library_roots() -> tuple[str, ...]:
    """The folders whose code is not the user's: the standard library, site-packages and
    trainkit itself (with a trailing separator, so ``/lib/python3`` is not ``/lib/python3x``)."""
    import trainkit

    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.add(os.path.dirname(os.path.abspath(trainkit.__file__)))
    return tuple(os.path.join(os.path.realpath(r), "") for r in roots) + \
        tuple(os.path.join(r, "") for r in roots)


def code_origins(main: types.ModuleType | None = None) -> CodeOrigins:
    """In the driver: where the code of the ``__main__`` module (the script, or a notebook's
    cells) comes from, for ``restore_code_origins`` in the workers. cloudpickle sends
    ``__main__`` functions by value and drops their file name (it names them
    ``<dynamic-code>`` to keep its payload deterministic), so without this a hang or a
    traceback in the loop cannot say which line of the script it is at. Only code objects
    are read: nothing is pickled or imported."""
    main = main if main is not None else sys.modules.get("__main__")
    origins: CodeOrigins = {}
    if main is None:
        return origins
    file = getattr(main, "__file__", None)
    if isinstance(file, str):
        origins[MAIN_FILE] = os.path.abspath(file)
    seen: set[int] = set()

    def add(code: types.CodeType) -> None:
        if id(code) in seen:
            return
        seen.add(id(code))
        origins[(_qualname(code), code.co_firstlineno)] = code.co_filename
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                add(const)

    def visit(obj: Any, depth: int) -> None:
        if isinstance(obj, types.FunctionType) and obj.__module__ == main.__name__:
            add(obj.__code__)
        elif isinstance(obj, type) and obj.__module__ == main.__name__ and depth < 3:
            for value in list(vars(obj).values()):
                visit(getattr(value, "__func__", value), depth + 1)

    for value in list(vars(main).values()):
        visit(value, 0)
    return origins


def restore_code_origins(fn: Any, origins: CodeOrigins) -> None:
    """In a worker: give the by-value code reachable from ``fn`` (the loop, the functions and
    classes of its module it uses, their closures) its real file name from ``origins``
    (see ``code_origins``); code the driver did not know keeps the script's path, else
    ``<dynamic-code>``. Line numbers survive pickling, so stacks then read ``script.py:42``."""
    if not origins:
        return
    fallback = origins.get(MAIN_FILE)
    seen: set[int] = set()

    def fix(code: types.CodeType, parent: str | None) -> types.CodeType:
        name = origins.get((_qualname(code), code.co_firstlineno), parent)
        consts = tuple(fix(c, name) if isinstance(c, types.CodeType) else c
                       for c in code.co_consts)
        if name is None or code.co_filename != _DYNAMIC:
            return code.replace(co_consts=consts) if consts != code.co_consts else code
        return code.replace(co_filename=name, co_consts=consts)

    def visit(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 8:
            return
        seen.add(id(obj))
        if isinstance(obj, types.FunctionType):
            if obj.__code__.co_filename != _DYNAMIC:
                return  # pickled by reference: its module was imported, its file is real
            obj.__code__ = fix(obj.__code__, fallback if obj.__module__ == "__main__" else None)
            for value in [*obj.__globals__.values(), *(obj.__defaults__ or ())]:
                visit(value, depth + 1)
            for cell in obj.__closure__ or ():
                try:
                    visit(cell.cell_contents, depth + 1)
                except ValueError:  # an empty cell
                    pass
        elif isinstance(obj, type):
            if obj.__module__ == "__main__":
                for value in list(vars(obj).values()):
                    visit(getattr(value, "__func__", value), depth + 1)
        elif isinstance(obj, functools.partial):
            visit(obj.func, depth + 1)
        elif type(obj).__module__ == "__main__":  # a callable object of a script's class
            visit(type(obj), depth + 1)

    visit(fn, 0)


def _qualname(code: types.CodeType) -> str:
    """``co_qualname`` (Python 3.11+; the bare name before): with the first line, it tells
    apart same-named functions of different classes or cells."""
    return str(getattr(code, "co_qualname", code.co_name))
