"""Train's configuration: frozen, keyword-only dataclasses validated when constructed.

A bad value fails at once, naming the field, the value and the rule.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Literal

from trainkit.train import _constants
from trainkit.train._storage import StorageLocation
from trainkit.train._storage import check_scheme
from trainkit.train._storage import resolve

PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
# Hang detection is on by default: long enough for a slow step or evaluation, short enough
# that a stuck rank does not hold a cluster for hours (torch's NCCL watchdog waits 10 min).
DEFAULT_REPORT_TIMEOUT_S = 300.0


def _check_int(name: str, value: object, minimum: int, rule: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` is {value!r}, but must be an int ({rule})")
    if value < minimum:
        raise ValueError(f"`{name}` is {value}, but must be {rule}")


def _check_timeout(name: str, value: float | None, allow_none: bool, hint: str = "") -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        none = " or None (no limit)" if allow_none else ""
        raise ValueError(f"`{name}` is {value!r}, but must be a number of seconds > 0{none}"
                         f"{hint}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalingConfig:
    """How many training workers, and what each one holds.

    Args:
        num_workers: ranks in the worker group; 0 runs the loop in the calling process
            (local mode: pdb and notebooks work, no process group).
        use_gpu: give every worker one GPU (nccl); it sees only its own GPU.
        resources_per_worker: what one worker reserves, e.g. ``{"CPU": 2, "GPU": 1}``.
            Default: 1 CPU, plus 1 GPU with ``use_gpu``.
        placement_strategy: how the workers' bundles are laid out over nodes.
    """

    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: Mapping[str, float] | None = None
    placement_strategy: PlacementStrategy = "PACK"

    def __post_init__(self) -> None:
        _check_int("num_workers", self.num_workers, 0, ">= 0 (0 runs the loop in this process)")
        if not isinstance(self.use_gpu, bool):
            raise TypeError(f"`use_gpu` is {self.use_gpu!r}, but must be True or False")
        if self.placement_strategy not in _STRATEGIES:
            raise ValueError(f"`placement_strategy` is {self.placement_strategy!r}, but must be "
                             f"one of {', '.join(_STRATEGIES)}")
        res = self.resources_per_worker
        if res is not None:
            if not isinstance(res, Mapping):
                raise TypeError(f"`resources_per_worker` is {res!r}, but must be a dict such "
                                "as {'CPU': 2, 'GPU': 1}")
            for k, v in res.items():
                if not isinstance(k, str) or isinstance(v, bool) or \
                        not isinstance(v, (int, float)) or v < 0:
                    raise ValueError(f"`resources_per_worker[{k!r}]` is {v!r}, but must be a "
                                     "number >= 0")
            if self.use_gpu and res.get("GPU", 1) == 0:
                raise ValueError("`use_gpu` is True but `resources_per_worker['GPU']` is 0: "
                                 "drop one of them")

    @property
    def worker_resources(self) -> dict[str, float]:
        """What one worker reserves (its placement-group bundle)."""
        res = {"CPU": 1.0}
        if self.use_gpu:
            res["GPU"] = 1.0
        res.update({k: float(v) for k, v in (self.resources_per_worker or {}).items()})
        return {k: v for k, v in res.items() if v > 0}

    @property
    def uses_gpu(self) -> bool:
        return self.worker_resources.get("GPU", 0.0) > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointConfig:
    """Which persisted checkpoints to keep.

    Args:
        num_to_keep: keep this many (the best by ``checkpoint_score_attribute``, else the
            latest); None keeps all. The latest checkpoint is always kept, for recovery.
        checkpoint_score_attribute: the reported metric that ranks checkpoints.
        checkpoint_score_order: "max" or "min": which end of that metric is best.
        checkpoint_frequency: Tune's class trainables: save every this many iterations (0:
            only when needed: pausing, ``should_checkpoint`` in a result, the end).
        checkpoint_at_end: Tune's class trainables: save when the trial ends (default: yes).
    """

    num_to_keep: int | None = None
    checkpoint_score_attribute: str | None = None
    checkpoint_score_order: Literal["max", "min"] = "max"
    checkpoint_frequency: int = 0
    checkpoint_at_end: bool | None = None

    def __post_init__(self) -> None:
        _check_int("checkpoint_frequency", self.checkpoint_frequency, 0,
                   ">= 0 (0: checkpoint only when needed)")
        if self.num_to_keep is not None:
            _check_int("num_to_keep", self.num_to_keep, 1, ">= 1, or None to keep all")
        if self.checkpoint_score_order not in ("max", "min"):
            raise ValueError(f"`checkpoint_score_order` is {self.checkpoint_score_order!r}, but "
                             "must be 'max' or 'min'")
        attr = self.checkpoint_score_attribute
        if attr is not None and (not isinstance(attr, str) or not attr):
            raise ValueError(f"`checkpoint_score_attribute` is {attr!r}, but must be the name "
                             "of a reported metric, or None")


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureConfig:
    """What to do when a worker fails, and when to call a silent worker hung.

    Args:
        max_failures: group restarts allowed (each from the latest checkpoint); 0: none,
            -1: no limit.
        rendezvous_timeout_s: how long all ranks have to join the process group; the error
            names the ranks that never joined.
        report_timeout_s: a rank that does not ``report()`` for this long is hung: the
            attempt fails with ``HangError``, naming the stuck rank, its node and its
            innermost frame in user code, with every rank's Python stack. On by default
            (300 s), so a hang speaks instead of holding the cluster forever; raise it for a
            loop with a longer silent stretch (a long first step, a slow evaluation), or
            None for no limit (Ray's behaviour).
    """

    max_failures: int = 0
    rendezvous_timeout_s: float = 120.0
    report_timeout_s: float | None = DEFAULT_REPORT_TIMEOUT_S

    def __post_init__(self) -> None:
        _check_int("max_failures", self.max_failures, -1, ">= -1 (-1 means retry forever)")
        _check_timeout("rendezvous_timeout_s", self.rendezvous_timeout_s, allow_none=False)
        _check_timeout("report_timeout_s", self.report_timeout_s, allow_none=True,
                       hint=f", e.g. {DEFAULT_REPORT_TIMEOUT_S} (the default)")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    """Where a run writes, and how it keeps checkpoints and handles failures.

    Args:
        name: the run's folder under ``storage_path``; running again with the same name
            resumes from its latest checkpoint. Default: ``Trainer_<date>_<time>``.
        storage_path: where runs go: ``s3://bucket/prefix``, ``gs://bucket/prefix``, or a
            local folder (shared across nodes, for a multi-node run). With
            ``storage_filesystem``, a URI or a path on that filesystem (``bucket/prefix``).
            Default: ``$TRAINKIT_STORAGE_PATH`` or ``~/trainkit_results``.
        storage_filesystem: a ``pyarrow.fs.FileSystem`` to write through, e.g.
            ``pyarrow.fs.S3FileSystem(endpoint_override="127.0.0.1:9000", scheme="http")``;
            None picks it from the ``storage_path`` URI. Every file a run writes goes through
            it; it is pickled to every worker.
        checkpoint_config: retention, see :class:`CheckpointConfig`.
        failure_config: restarts and hang detection, see :class:`FailureConfig`.
        callbacks: objects with any of ``on_report(metrics, checkpoint)``,
            ``on_restart(attempt, errors)``, ``on_end(result)``; called in the driver.
        verbose: 0 silent, 1 one progress line (default), 2 a line per report.
        stop: Tune only: when a trial stops, as a dict ``{"training_iteration": 10}`` (stop
            once a reported metric reaches the value), a function ``(trial_id, result) ->
            bool``, or a ``tune.Stopper``.
    """

    name: str | None = None
    storage_path: str | os.PathLike[str] | None = None
    storage_filesystem: Any = None  # a pyarrow.fs.FileSystem; Any keeps pyarrow unimported
    checkpoint_config: CheckpointConfig = field(default_factory=CheckpointConfig)
    failure_config: FailureConfig = field(default_factory=FailureConfig)
    callbacks: Sequence[Any] = ()
    verbose: int = 1
    stop: Any = None

    def __post_init__(self) -> None:
        if self.name is not None and (not isinstance(self.name, str) or not self.name
                                      or os.sep in self.name or self.name in (".", "..")):
            raise ValueError(f"`name` is {self.name!r}, but must be a folder name (no {os.sep!r})")
        if self.storage_path is not None and not isinstance(self.storage_path, (str, os.PathLike)):
            raise TypeError(f"`storage_path` is {self.storage_path!r}, but must be a path")
        if self.storage_filesystem is not None:
            import pyarrow.fs  # type: ignore[import-untyped]

            if not isinstance(self.storage_filesystem, pyarrow.fs.FileSystem):
                raise TypeError(f"`storage_filesystem` is {self.storage_filesystem!r}, but must "
                                "be a pyarrow.fs.FileSystem (e.g. pyarrow.fs.S3FileSystem(...)) "
                                "or None")
        if self.storage_path is not None:
            check_scheme(os.fspath(self.storage_path), self.storage_filesystem is not None)
        if not isinstance(self.checkpoint_config, CheckpointConfig):
            raise TypeError(f"`checkpoint_config` is {self.checkpoint_config!r}, but must be a "
                            "CheckpointConfig")
        if not isinstance(self.failure_config, FailureConfig):
            raise TypeError(f"`failure_config` is {self.failure_config!r}, but must be a "
                            "FailureConfig")
        if self.verbose not in (0, 1, 2):
            raise ValueError(f"`verbose` is {self.verbose!r}, but must be 0, 1 or 2")
        object.__setattr__(self, "callbacks", tuple(self.callbacks or ()))

    @property
    def resolved_storage_path(self) -> str:
        """The local folder ``storage_path`` names (not for URIs: see ``storage_location``)."""
        path = self.storage_path if self.storage_path is not None else _constants.storage_path()
        return os.path.abspath(os.path.expanduser(os.fspath(path)))

    def storage_location(self) -> StorageLocation:
        """``storage_path`` on its filesystem (``_storage.resolve``; no I/O for local paths).

        Raises:
            ValueError: an unknown scheme, or a ``gs://`` path with no GCS credentials.
        """
        path = self.storage_path if self.storage_path is not None else _constants.storage_path()
        return resolve(path, self.storage_filesystem)
