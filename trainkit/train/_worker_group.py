"""``WorkerGroup``: N ``TrainWorker`` actors in one placement group, one per rank.

The group is gang-scheduled: its placement group reserves every rank's bundle or none. It
starts the ranks, joins them into a process group (naming the ranks that never joined), runs
the loop on each, long-polls their reports, and tears everything down by removing the
placement group (which kills its actors).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import trainkit.runtime as rt
from trainkit.exceptions import GetTimeoutError
from trainkit.exceptions import TrainkitError
from trainkit.train import _faults
from trainkit.train._checkpoint import Checkpoint
from trainkit.train._config import FailureConfig
from trainkit.train._config import ScalingConfig
from trainkit.train._constants import PLACEMENT_TIMEOUT_S
from trainkit.train._failure_policy import RankProbe
from trainkit.train._session import TrainContext
from trainkit.train._storage import StorageLocation
from trainkit.train._uploader import Report
from trainkit.train._worker import MAX_CONCURRENCY
from trainkit.train._worker import CodeOrigins
from trainkit.train._worker import TrainWorker

POLL_WAIT_S = 5.0  # a long poll returns empty after this; the driver asks again
_QUICK_S = 10.0  # bound on calls that should answer at once (node info, stacks)


class WorkerGroupError(TrainkitError):
    """Starting or running the group failed; ``errors`` maps world rank -> error."""

    def __init__(self, message: str, errors: dict[int, BaseException]) -> None:
        super().__init__(message, errors)
        self.message = message
        self.errors = errors

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class GroupEvents:
    """What happened in the group since the last look."""

    reports: list[Report] = field(default_factory=list)
    errors: dict[int, BaseException] = field(default_factory=dict)
    finished: frozenset[int] = frozenset()


class WorkerGroup:
    """The actors of one attempt. Used from the driver's controller thread only."""

    def __init__(self, scaling: ScalingConfig, failure: FailureConfig, *, attempt: int,
                 staging_root: StorageLocation, experiment_name: str, run_path: str,
                 backend: str) -> None:
        self.scaling = scaling
        self.failure = failure
        self.attempt = attempt
        self.staging_root = staging_root
        self.experiment_name = experiment_name
        self.run_path = run_path
        self.backend = backend
        self.n = scaling.num_workers
        self.pg: Any = None
        self.workers: list[Any] = []
        self.pids: list[int] = []
        self.nodes: list[str] = []  # each rank's node (its IP), once the actors answered
        self.started_at: float | None = None  # time.monotonic() when they answered
        self.run_refs: dict[Any, int] = {}
        self.poll_refs: dict[Any, int] = {}
        self.finished: set[int] = set()

    # -- start ---------------------------------------------------------------------------
    def start(self) -> list[TrainContext]:
        """Reserve the bundles, start the actors and join them into a process group."""
        bundle = self.scaling.worker_resources
        self.pg = rt.placement_group([dict(bundle)] * self.n,
                                     strategy=self.scaling.placement_strategy)
        if not self.pg.wait(timeout_seconds=PLACEMENT_TIMEOUT_S):
            raise WorkerGroupError(
                f"could not reserve {self.n} x {bundle} for the training workers within "
                f"{PLACEMENT_TIMEOUT_S:.0f} s; available now: {rt.available_resources()}. "
                "Free resources or lower ScalingConfig(num_workers/resources_per_worker)", {})
        custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
        actor_cls = rt.remote(TrainWorker)
        for rank in range(self.n):
            strategy = rt.PlacementGroupSchedulingStrategy(placement_group=self.pg,
                                                           placement_group_bundle_index=rank)
            self.workers.append(actor_cls.options(
                num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0), resources=custom,
                max_concurrency=MAX_CONCURRENCY, scheduling_strategy=strategy,
            ).remote(rank, self.attempt, self.staging_root, _faults.rules()))
        infos = self._gather([w.node_info.remote() for w in self.workers], _QUICK_S + 60,
                             "starting the training workers")
        self.started_at = time.monotonic()
        self.pids = [i["pid"] for i in infos]
        self.nodes = [i["ip"] for i in infos]
        contexts = self._contexts(infos)
        master_addr = "127.0.0.1" if len({i["ip"] for i in infos}) == 1 else infos[0]["ip"]
        port = infos[0]["port"]
        threads = max(1, int(bundle.get("CPU", 1)))
        setup = [w.setup.remote(c, master_addr, port, self.backend,
                                self.failure.rendezvous_timeout_s, threads, self.scaling.uses_gpu)
                 for w, c in zip(self.workers, contexts, strict=True)]
        self._rendezvous(setup, master_addr, port)
        return contexts

    def _contexts(self, infos: list[dict[str, Any]]) -> list[TrainContext]:
        nodes: dict[str, list[int]] = {}
        for rank, info in enumerate(infos):
            nodes.setdefault(info["ip"], []).append(rank)
        node_rank = {ip: i for i, ip in enumerate(nodes)}
        return [TrainContext(world_size=self.n, world_rank=rank,
                             local_rank=nodes[info["ip"]].index(rank),
                             local_world_size=len(nodes[info["ip"]]),
                             node_rank=node_rank[info["ip"]],
                             experiment_name=self.experiment_name, run_path=self.run_path)
                for rank, info in enumerate(infos)]

    def _rendezvous(self, setup: list[Any], addr: str, port: int) -> None:
        timeout = self.failure.rendezvous_timeout_s
        ready, pending = rt.wait(setup, num_returns=len(setup), timeout=timeout + _QUICK_S)
        errors = self._errors_of(ready, setup)
        if errors:
            raise WorkerGroupError("setting up the process group failed", errors)
        if pending:
            try:
                joined = rt.get(self.workers[0].joined_ranks.remote(), timeout=_QUICK_S)
                missing = [r for r in range(self.n) if r not in joined]
                who = f"ranks {missing} never joined" if missing else \
                    "every rank joined but the process group did not form"
            except TrainkitError:
                who = "rank 0, which hosts the rendezvous store, did not answer"
            raise WorkerGroupError(
                f"the process group did not form within {timeout} s "
                f"(FailureConfig.rendezvous_timeout_s): {who}; rendezvous at {addr}:{port}, "
                f"backend {self.backend}", {})

    def _errors_of(self, done: list[Any], refs: list[Any]) -> dict[int, BaseException]:
        errors: dict[int, BaseException] = {}
        for ref in done:
            try:
                rt.get(ref, timeout=_QUICK_S)
            except Exception as e:
                errors[refs.index(ref)] = e
        return errors

    def _gather(self, refs: list[Any], timeout: float, what: str) -> list[Any]:
        try:
            return list(rt.get(refs, timeout=timeout))
        except GetTimeoutError:
            ready, _ = rt.wait(refs, num_returns=len(refs), timeout=0)
            late = [i for i, r in enumerate(refs) if r not in ready]
            raise WorkerGroupError(f"{what}: ranks {late} did not answer within {timeout} s",
                                   {}) from None
        except Exception:
            raise WorkerGroupError(what + " failed", self._errors_of(refs, refs)) from None

    # -- run -----------------------------------------------------------------------------
    def run(self, fn_blob: bytes, config: Mapping[str, Any] | None,
            checkpoint: Checkpoint | None,
            shards: list[dict[str, Any]], origins: CodeOrigins | None = None) -> None:
        blob = rt.put(fn_blob)
        for rank, w in enumerate(self.workers):
            self.run_refs[w.run.remote(blob, config, checkpoint, shards[rank], origins)] = rank
        self.ack(0)

    def ack(self, seq: int) -> None:
        """Release every rank waiting on report ``seq`` and poll for their next reports."""
        for rank, w in enumerate(self.workers):
            if rank not in self.finished:
                self.poll_refs[w.poll.remote(seq, POLL_WAIT_S)] = rank

    def events(self, timeout: float) -> GroupEvents:
        """Wait up to ``timeout`` for reports, finished ranks or errors."""
        refs = [*self.run_refs, *self.poll_refs]
        ready, _ = rt.wait(refs, num_returns=1, timeout=timeout)
        if ready:  # take whatever else is ready too, without waiting
            ready, _ = rt.wait(refs, num_returns=len(refs), timeout=0)
        reports: list[Report] = []
        errors: dict[int, BaseException] = {}
        for ref in ready:
            rank, is_run = (self.run_refs.pop(ref), True) if ref in self.run_refs else \
                (self.poll_refs.pop(ref), False)
            try:
                value = rt.get(ref, timeout=_QUICK_S)
            except Exception as e:
                errors.setdefault(rank, e)
                continue
            if is_run:
                self.finished.add(rank)
            elif value:
                reports.extend(value)
            elif rank not in self.finished and rank not in self.poll_refs.values():
                # an empty long poll (timed out, or ended by a newer poll): ask again
                self.poll_refs[self.workers[rank].poll.remote(0, POLL_WAIT_S)] = rank
        return GroupEvents(reports, errors, frozenset(self.finished))

    def more_errors(self, grace_s: float) -> dict[int, BaseException]:
        """After a failure: the errors other ranks raise within ``grace_s``."""
        deadline = time.monotonic() + grace_s
        errors: dict[int, BaseException] = {}
        while self.run_refs and time.monotonic() < deadline:
            errors.update(self.events(max(0.0, deadline - time.monotonic())).errors)
        return errors

    def dump_stacks(self) -> dict[int, str]:
        return {rank: p if isinstance(p, str) else p.text for rank, p in self.probe().items()}

    def probe(self) -> dict[int, RankProbe | str]:
        """Every rank's ``TrainWorker.probe``, or why it gave none (it did not answer in
        time, or its process is gone), asked of all ranks at once."""
        refs = [w.probe.remote() for w in self.workers]
        ready, _ = rt.wait(refs, num_returns=len(refs), timeout=_QUICK_S)
        out: dict[int, RankProbe | str] = {}
        for rank, ref in enumerate(refs):
            try:
                out[rank] = rt.get(ref, timeout=0.1) if ref in ready else \
                    f"(no answer within {_QUICK_S:.0f} s)"
            except Exception as e:
                out[rank] = f"(could not get its stack: {e})"
        return out

    def shutdown(self) -> None:
        """Kill every rank and free the bundles."""
        if self.pg is not None:
            rt.remove_placement_group(self.pg)
            self.pg = None
        self.workers = []
        self.run_refs.clear()
        self.poll_refs.clear()
