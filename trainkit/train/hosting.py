"""Train's seam for hosts: code that runs a training function outside a Trainer.

Who may use it: trainkit's own higher layers (today Tune's trial actor, which runs a function
trial as a one-rank training loop), never user code, and nothing else in Train's private
modules. ``pyproject.toml``'s import-linter contract "tune uses only train's public API and
its hosting seam" enforces that for Tune.

What it promises (and a change to it is a deliberate diff: its ``__all__`` is checked in
``tests/test_public_api.py``, its behaviour in ``tests/train/test_hosting.py``):

- ``run_loop(fn, config, context=..., on_report=..., checkpoint=...)`` runs ``fn(config)``
  here, in this thread; inside it ``train.report`` hands each report to ``on_report``,
  ``train.get_checkpoint()`` returns ``checkpoint`` and ``train.get_context()`` returns
  ``context``. ``hosted_loop(...)`` is the same as a context manager, for a host that drives
  the loop itself (a class trainable's ``step()`` calls). ``ReportSink`` is the type of
  ``on_report``.
- ``RunCheckpoints(run_dir, checkpoint_config)`` commits checkpoints into a run folder the
  way a Trainer does (atomically, retained by ``CheckpointConfig``) and lists them as
  ``CheckpointRecord``s (``number``, ``path``, ``metrics``, ``checkpoint``).
- ``TrainContext`` (also in ``trainkit.train``) is what the host describes the rank with.
- Storage (``RunConfig(storage_path=..., storage_filesystem=...)``, local or object
  storage): ``StorageLocation`` (``RunConfig.storage_location()``; a folder on a
  ``pyarrow.fs`` filesystem, picklable), the file operations a host needs on it
  (``check_writable``, ``read_file``, ``write_file`` atomic, ``list_dir``, ``delete_dir``,
  ``upload_dir``, ``download_dir``, and ``numbered_folders`` for a rerun's fresh folder),
  and ``RunFiles``: the local folder a ``ResultLog`` writes into, uploaded to the run's
  folder by ``sync()``.
- The ledger (``RunLedger``, ``read_ledger``, ``parse_ledger``, ``ledger_error_fields``,
  ``LEDGER_FILE``):
  the one event format and reader for runs and sweeps, so a sweep appends its events to
  ``ledger.jsonl`` in its folder exactly as a Train run does (see ``_ledger``'s docstring).

Example:
    >>> from trainkit.train.hosting import run_loop
    >>> reports = []
    >>> run_loop(lambda config: train.report({"x": config["x"]}), {"x": 1},
    ...          context=context, on_report=lambda m, c: reports.append(m))
    >>> reports
    [{'x': 1}]
"""

from __future__ import annotations

from trainkit.train._checkpoint_manager import CheckpointRecord
from trainkit.train._host import ReportSink
from trainkit.train._host import RunCheckpoints
from trainkit.train._host import hosted_loop
from trainkit.train._host import run_loop
from trainkit.train._ledger import LEDGER_FILE
from trainkit.train._ledger import RunLedger
from trainkit.train._ledger import error_fields as ledger_error_fields
from trainkit.train._ledger import parse_ledger
from trainkit.train._ledger import read_ledger
from trainkit.train._recorder import ResultFiles as RunFiles
from trainkit.train._session import TrainContext
from trainkit.train._storage import StorageLocation
from trainkit.train._storage import check_writable
from trainkit.train._storage import delete_dir
from trainkit.train._storage import download_dir
from trainkit.train._storage import list_dir
from trainkit.train._storage import local_location
from trainkit.train._storage import numbered_folders
from trainkit.train._storage import read_file
from trainkit.train._storage import upload_dir
from trainkit.train._storage import write_file

__all__ = [
    "LEDGER_FILE",
    "CheckpointRecord",
    "ReportSink",
    "RunCheckpoints",
    "RunFiles",
    "RunLedger",
    "StorageLocation",
    "TrainContext",
    "check_writable",
    "delete_dir",
    "download_dir",
    "hosted_loop",
    "ledger_error_fields",
    "list_dir",
    "local_location",
    "numbered_folders",
    "parse_ledger",
    "read_file",
    "read_ledger",
    "run_loop",
    "upload_dir",
    "write_file",
]
