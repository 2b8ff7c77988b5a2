"""``TuneRunner``: the only place that knows the searcher, the scheduler and the runtime.

A loop in the driver: start the trials that fit (the scheduler picks among pending and paused
ones, then the searcher suggests new ones), wait for the next event from any running trial,
turn it into decisions, and journal every change. Trials run in ``TrialActor``s, reused
across trials with the same resources; a stopped trial's resources are free as soon as its
``report()`` returns into the stop.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import defaultdict
from collections import deque
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import trainkit.runtime as rt
from trainkit._atomic import write_atomic
from trainkit.exceptions import InvalidTransitionError
from trainkit.exceptions import TuneError
from trainkit.train import Checkpoint
from trainkit.train import RunConfig
from trainkit.train.hosting import delete_dir
from trainkit.train.hosting import upload_dir
from trainkit.tune._config import TuneConfig
from trainkit.tune._config import fail_fast_of
from trainkit.tune._experiment_state import Journal
from trainkit.tune._experiment_state import save_search_state
from trainkit.tune._experiment_sync import ExperimentFolder
from trainkit.tune._optuna_journal import OptunaJournal
from trainkit.tune._progress import TrialTable
from trainkit.tune._scheduler import Decision
from trainkit.tune._scheduler import Exploit
from trainkit.tune._scheduler import TrialScheduler
from trainkit.tune._searcher import Searcher
from trainkit.tune._stopper import make_stopper
from trainkit.tune._sweep_ledger import SweepLedger
from trainkit.tune._trial import TRANSITIONS
from trainkit.tune._trial import TrialSnapshot
from trainkit.tune._trial import TrialState
from trainkit.tune._trial_actor import MAX_CONCURRENCY
from trainkit.tune._trial_actor import TrialActor
from trainkit.tune._trial_actor import TrialSpec

POLL_WAIT_S = 5.0
MAX_PENDING_TRIALS = 16  # created ahead of capacity with the default searcher
WAIT_CHECK_S = 2.0  # a placement group pending this long while its trial is quiet is looked at
HISTORY_LENGTH = 20  # moves a trial remembers for an InvalidTransitionError (the journal has all)


@dataclass(eq=False)
class Trial:
    """The driver's live record of one trial (the journal has its history)."""

    trial_id: str
    name: str
    config: dict[str, Any]
    trial_dir: str
    resources: dict[str, float]
    state: TrialState = TrialState.PENDING
    last_result: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    error: str | None = None
    failures: int = 0
    actor: Any = None
    ref: Any = None
    exploit: Exploit | None = None
    exploits: int = 0
    stop_requested: bool = False
    quiet_since: float = 0.0  # when it last sent an event (or started)
    pruned: bool = False  # the scheduler stopped it early
    history: deque[str] = field(default_factory=lambda: deque(maxlen=HISTORY_LENGTH))

    @property
    def iteration(self) -> int:
        return int(self.last_result.get("training_iteration", 0))

    def snapshot(self) -> TrialSnapshot:
        return TrialSnapshot(self.trial_id, dict(self.config), self.state, self.iteration,
                             dict(self.last_result), self.checkpoint is not None)


class TuneRunner:
    def __init__(self, *, blob: bytes, kind: str, trainable_name: str, resources: dict[str, float],
                 tune_config: TuneConfig, run_config: RunConfig, exp_dir: str, exp_name: str,
                 searcher: Searcher, scheduler: TrialScheduler, trials: list[Trial],
                 capacity: int, param_space: dict[str, Any] | None = None,
                 folder: ExperimentFolder | None = None) -> None:
        self.blob = blob
        self.kind = kind
        self.trainable_name = trainable_name
        self.resources = resources
        self.tune_config = tune_config
        self.run_config = run_config
        self.exp_dir = exp_dir
        self.folder = folder  # mirrors exp_dir to remote storage (None: exp_dir is the storage)
        self.exp_name = exp_name
        self.searcher = searcher
        self.scheduler = scheduler
        self.trials: dict[str, Trial] = {t.trial_id: t for t in trials}
        self.capacity = capacity
        self.stopper = make_stopper(run_config.stop)
        self.journal = Journal(exp_dir)
        self.ledger = SweepLedger(exp_dir, tune_config.metric, tune_config.mode)
        self.table = TrialTable(exp_name, run_config.verbose, tune_config.single_metric,
                                tune_config.single_mode)
        self.pool: dict[tuple[tuple[str, float], ...], list[Any]] = defaultdict(list)
        self.by_ref: dict[Any, Trial] = {}
        self.searcher_done = False
        self.metric_checked = False
        self.created = len(trials)
        self.next_id = max((int(t.trial_id) for t in trials), default=-1) + 1
        self.deadline = (time.monotonic() + tune_config.time_budget_s
                         if tune_config.time_budget_s else math.inf)
        self.stopping_all = False
        self.fail_fast_error: BaseException | None = None  # fail_fast="raise": fit() raises it
        self.next_wait_check = 0.0
        self.pg_seen: dict[str, float] = {}  # pending placement group -> when first seen
        self.pg_said: set[str] = set()
        self.optuna = OptunaJournal(exp_dir, exp_name, param_space or {}, tune_config.metric,
                                    tune_config.mode, self.table.say)
        for trial in trials:
            if not trial.state.is_terminal:
                self.optuna.add(trial.trial_id, trial.config)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        self.ledger.sweep_started(
            name=self.exp_name, storage=self.folder.location.uri if self.folder is not None
            else self.exp_dir, resumed=bool(self.trials), metric=self.tune_config.metric,
            mode=self.tune_config.mode, num_samples=self.tune_config.num_samples,
            searcher=type(self._inner_searcher()).__name__,
            scheduler=type(self.scheduler).__name__, trainable=self.trainable_name)
        failed: BaseException | None = None
        try:
            self._loop()
        except BaseException as e:
            failed = e
            raise
        finally:
            self._shutdown()
            failed = failed or self.fail_fast_error
            if failed is not None:
                self.ledger.sweep_failed(failed)
            else:
                counts: dict[str, int] = {}
                for t in self.trials.values():
                    counts[t.state.value] = counts.get(t.state.value, 0) + 1
                self.ledger.sweep_finished(counts)
            self.ledger.close()
            self.optuna.close()

    def _loop(self) -> None:
        while True:
            if not self.stopping_all:
                self._launch()
            if not self.by_ref:
                break  # nothing runs and nothing more could start: no event will come
            timeout = max(0.0, min(1.0, self.deadline - time.monotonic()))
            ready, _ = rt.wait(list(self.by_ref), num_returns=1, timeout=timeout)
            for ref in ready:
                self._on_event(self.by_ref.pop(ref), ref)
            if not ready:
                self._check_waits()
            self._apply_pending()
            if time.monotonic() >= self.deadline and not self.stopping_all:
                self._stop_all("time_budget_s is spent")
            self.table.refresh(self.trials.values())
            if self.folder is not None:
                self.folder.sync()

    def _may_create(self) -> bool:
        n = self.tune_config.num_samples
        from trainkit.tune._basic_variant import BasicVariantGenerator

        limited = not isinstance(self._inner_searcher(), BasicVariantGenerator)
        return not (limited and n != -1 and self.created >= n)

    def _inner_searcher(self) -> Any:
        return getattr(self.searcher, "searcher", self.searcher)

    def _running(self) -> int:
        return sum(1 for t in self.trials.values() if t.state is TrialState.RUNNING)

    def _launch(self) -> None:
        while self._running() < self.capacity and time.monotonic() < self.deadline:
            candidates = [t.snapshot() for t in self.trials.values()
                          if t.state in (TrialState.PENDING, TrialState.PAUSED)]
            chosen = self.scheduler.choose_trial_to_run(candidates) if candidates else None
            self._apply_pending()
            if chosen is not None and self.trials[chosen].state in (TrialState.PENDING,
                                                                    TrialState.PAUSED):
                self._start(self.trials[chosen])
                continue
            if self.searcher_done or not self._may_create() or self._create() is None:
                break
        # With the default searcher, trials are created ahead of capacity (as Ray's pending
        # trials), so population-based schedulers (PBT, HyperBand) see the whole population.
        if self._creates_ahead():
            while self._pending() < MAX_PENDING_TRIALS and not self.searcher_done and \
                    self._may_create() and self._create() is not None:
                pass

    def _creates_ahead(self) -> bool:
        from trainkit.tune._basic_variant import BasicVariantGenerator

        return isinstance(self.searcher, BasicVariantGenerator)

    def _pending(self) -> int:
        return sum(1 for t in self.trials.values() if t.state is TrialState.PENDING)

    def _apply_pending(self) -> None:
        """Apply the scheduler's decisions about trials that were not reporting."""
        for trial_id, decision in self.scheduler.pending_decisions():
            trial = self.trials.get(trial_id)
            if trial is None or trial.state.is_terminal:
                continue
            if decision.exploit is not None:
                if trial.state is TrialState.RUNNING:
                    trial.exploit = decision.exploit  # applied when this run ends
                else:
                    self._apply_exploit(trial, decision.exploit)
            elif decision.decision is Decision.STOP:
                if trial.state is TrialState.RUNNING:
                    trial.stop_requested = True  # said at its next result
                else:
                    self._set_state(trial, TrialState.TERMINATED)
                    self.ledger.trial_stopped(trial.trial_id, trial.iteration, "scheduler",
                                              f"{type(self.scheduler).__name__} stopped it")
                    self.optuna.end(trial.trial_id, trial.last_result, "pruned")
                    self.searcher.on_trial_complete(trial.trial_id, trial.last_result or None)
                    self.scheduler.on_trial_complete(trial.snapshot(), trial.last_result)

    def _create(self) -> Trial | None:
        trial_id = f"{self.next_id:05d}"
        config = self.searcher.suggest(trial_id)
        if config == Searcher.FINISHED:
            self.searcher_done = True
            return None
        if config is None:
            return None
        assert isinstance(config, dict)
        self.next_id += 1
        self.created += 1
        name = f"{self.trainable_name}_{trial_id}"
        trial = Trial(trial_id, name, config, os.path.join(self.exp_dir, name),
                      dict(self.resources))
        self.trials[trial_id] = trial
        os.makedirs(trial.trial_dir, exist_ok=True)
        write_atomic(os.path.join(trial.trial_dir, "params.json"),
                     _json_bytes(config))
        self.journal.append(e="add", id=trial_id, name=name, config=config, dir=trial.trial_dir,
                            res=trial.resources)
        self.ledger.trial_added(trial_id, name, config)
        self.scheduler.on_trial_add(trial.snapshot())
        self.optuna.add(trial_id, config)
        save_search_state(self.exp_dir, self.searcher, self.scheduler)
        return trial

    def _set_state(self, trial: Trial, to: TrialState, error: str | None = None) -> None:
        if to is not trial.state and to not in TRANSITIONS[trial.state]:
            raise InvalidTransitionError("Trial", f"trial {trial.trial_id}", trial.state,
                                         f"move to {to.name}", trial.history)
        trial.history.append(f"{trial.state.name} -> {to.name}"
                             + (f" ({error.splitlines()[0]})" if error else ""))
        trial.state = to
        trial.error = error
        self.journal.append(e="state", id=trial.trial_id, state=to.value, error=error,
                            failures=trial.failures)

    # -- starting and ending trials ------------------------------------------------------
    def _pool_key(self, trial: Trial) -> tuple[tuple[str, float], ...]:
        return tuple(sorted(trial.resources.items()))

    def _start(self, trial: Trial) -> None:
        resumed = ("paused" if trial.state is TrialState.PAUSED else "error" if trial.failures
                   else "checkpoint" if trial.checkpoint else None)
        if trial.state is TrialState.PAUSED:
            self._set_state(trial, TrialState.PENDING)
        trial.stop_requested = False
        pool = self.pool[self._pool_key(trial)]
        actor = pool.pop() if pool else self._new_actor(trial.resources)
        trial.actor = actor
        remote = self.folder is not None and not self.folder.location.is_local
        spec = TrialSpec(trial.trial_id, trial.name, self.kind, self.blob, dict(trial.config),
                         trial.trial_dir, self.exp_name, trial.checkpoint,
                         self.run_config.checkpoint_config,
                         float(trial.last_result.get("time_total_s", 0.0)),
                         self.folder.location.join(trial.name)
                         if remote and self.folder is not None else None)
        actor.start.remote(spec)
        trial.quiet_since = time.monotonic()
        self._poll(trial, None)
        self._set_state(trial, TrialState.RUNNING)
        self.ledger.trial_started(trial.trial_id, resumed)

    def _new_actor(self, resources: dict[str, float]) -> Any:
        custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
        return rt.remote(TrialActor).options(
            num_cpus=resources.get("CPU", 0), num_gpus=resources.get("GPU", 0),
            resources=custom, max_concurrency=MAX_CONCURRENCY).remote()

    def _poll(self, trial: Trial, decision: str | None) -> None:
        trial.ref = trial.actor.next.remote(decision, POLL_WAIT_S)
        self.by_ref[trial.ref] = trial

    def _release(self, trial: Trial, healthy: bool) -> None:
        actor, trial.actor, trial.ref = trial.actor, None, None
        if actor is None:
            return
        if healthy and self.tune_config.reuse_actors:
            self.pool[self._pool_key(trial)].append(actor)
        else:
            rt.kill(actor)

    # -- events --------------------------------------------------------------------------
    def _on_event(self, trial: Trial, ref: Any) -> None:
        try:
            event = rt.get(ref)
        except Exception as e:
            self._on_error(trial, f"{type(e).__name__}: {e}", None, healthy=False)
            return
        if event is None:  # an empty long poll: ask again
            self._poll(trial, None)
            return
        kind = event[0]
        if kind == "result":
            self._on_result(trial, event[1], event[2])
        elif kind == "saved":  # the checkpoint a scheduler asked for (save=True)
            trial.checkpoint = event[1]
            self.journal.append(e="ckpt", id=trial.trial_id, ckpt=event[1])
            self.scheduler.on_trial_save(trial.snapshot())
            self._poll(trial, None)
        elif kind == "done":
            if event[2]:
                trial.checkpoint = event[2]
            self._on_done(trial, event[1])
        else:
            _, error, tb, checkpoint = event
            if checkpoint:
                trial.checkpoint = checkpoint
            self._on_error(trial, f"{type(error).__name__}: {error}\n{tb}", error, healthy=True)

    def _on_result(self, trial: Trial, result: dict[str, Any], checkpoint: str | None) -> None:
        trial.quiet_since = time.monotonic()
        trial.last_result = result
        if checkpoint:
            trial.checkpoint = checkpoint
        self.journal.append(e="result", id=trial.trial_id, result=result, ckpt=checkpoint)
        self.ledger.trial_result(trial.trial_id, result, bool(checkpoint))
        self.optuna.result(trial.trial_id, result)
        self._check_metric(result)
        self.searcher.on_trial_result(trial.trial_id, result)
        # As in Ray, the stop criteria come first: a trial that meets them stops at this very
        # result, and the scheduler is not asked (no pause, no exploit past the criterion).
        action_value: str | None = None
        if self.stopper(trial.trial_id, result) or result.get("done") or trial.stop_requested:
            action = Decision.STOP
        else:
            decision = self.scheduler.on_trial_result(trial.snapshot(), result)
            action = decision.decision
            # Stopped early by the scheduler (not at its own max_t): PRUNED to Optuna.
            max_t = getattr(self.scheduler, "max_t", None)
            time_attr = getattr(self.scheduler, "time_attr", "training_iteration")
            trial.pruned = action is Decision.STOP and not (
                isinstance(max_t, (int, float)) and result.get(time_attr, 0) >= max_t)
            if decision.exploit is not None:
                trial.exploit = decision.exploit
                action = Decision.STOP  # end this run; _on_done restarts it from the donor
            elif decision.save and action is Decision.CONTINUE and self.kind == "class":
                action_value = "save"  # the actor saves, says "saved", and goes on
        if self.stopper.stop_all():
            self._stop_all("the stopper said stop_all()")
            return
        self._poll(trial, action_value or action.value)

    def _check_metric(self, result: dict[str, Any]) -> None:
        if self.metric_checked:
            return
        metrics = self.tune_config.metric
        for m in metrics if isinstance(metrics, (list, tuple)) else [metrics]:
            if m is not None and m not in result:
                reported = sorted(k for k in result if k not in _AUTO_KEYS)
                raise TuneError(f"TuneConfig(metric={m!r}) is not among the metrics the trials "
                                f"report: {reported}")
        self.metric_checked = True

    def _on_done(self, trial: Trial, how: str) -> None:
        self._release(trial, healthy=True)
        if trial.exploit is not None and not self.stopping_all:
            self._apply_exploit(trial, trial.exploit)
            return
        if how == "pause":
            self._set_state(trial, TrialState.PAUSED)
            self.ledger.trial_paused(trial.trial_id, trial.iteration)
            return
        self._set_state(trial, TrialState.TERMINATED)
        if trial.pruned:
            self.ledger.trial_stopped(trial.trial_id, trial.iteration, "scheduler",
                                      f"{type(self.scheduler).__name__} stopped it early")
        else:
            self.ledger.trial_completed(trial.trial_id, trial.iteration)
        self.optuna.end(trial.trial_id, trial.last_result,
                        "pruned" if trial.pruned else "complete")
        self.searcher.on_trial_complete(trial.trial_id, trial.last_result or None)
        self.scheduler.on_trial_complete(trial.snapshot(), trial.last_result)
        save_search_state(self.exp_dir, self.searcher, self.scheduler)

    def _apply_exploit(self, trial: Trial, exploit: Exploit) -> None:
        """PBT: restart ``trial`` from a copy of the donor's checkpoint, with a new config."""
        trial.exploit = None
        donor = self.trials[exploit.donor_id]
        trial.exploits += 1
        if donor.checkpoint and self.folder is not None and not self.folder.location.is_local:
            trial_loc = self.folder.location.join(trial.name)
            target_loc = trial_loc.join(f"exploit_{trial.exploits:04d}")
            local = Checkpoint(donor.checkpoint, trial_loc.filesystem).to_directory()
            try:
                upload_dir(local, target_loc)
            finally:
                shutil.rmtree(local, ignore_errors=True)
            delete_dir(trial_loc.join(f"exploit_{trial.exploits - 1:04d}"))
            trial.checkpoint = target_loc.path
        elif donor.checkpoint:
            target = os.path.join(trial.trial_dir, f"exploit_{trial.exploits:04d}")
            shutil.copytree(donor.checkpoint, target, dirs_exist_ok=True)
            old = os.path.join(trial.trial_dir, f"exploit_{trial.exploits - 1:04d}")
            shutil.rmtree(old, ignore_errors=True)
            trial.checkpoint = target
        trial.config = dict(exploit.config)
        write_atomic(os.path.join(trial.trial_dir, "params.json"), _json_bytes(trial.config))
        self.journal.append(e="config", id=trial.trial_id, config=trial.config,
                            ckpt=trial.checkpoint)
        self.optuna.config(trial.trial_id, trial.config)
        self.ledger.trial_config(trial.trial_id, trial.config)
        self._set_state(trial, TrialState.PENDING)

    def _on_error(self, trial: Trial, text: str, error: BaseException | None,
                  healthy: bool) -> None:
        self._release(trial, healthy)
        trial.failures += 1
        limit = self.run_config.failure_config.max_failures
        retrying = not self.stopping_all and (limit == -1 or trial.failures <= limit)
        self.ledger.trial_errored(trial.trial_id, error, text, trial.failures, retrying)
        if retrying:
            self.table.say(f"trial {trial.name} failed ({trial.failures} of "
                           f"{'unlimited' if limit == -1 else limit} retries); retrying from "
                           f"{trial.checkpoint or 'scratch'}: {text.splitlines()[0]}")
            self._set_state(trial, TrialState.PENDING)
            return
        self._set_state(trial, TrialState.ERRORED, error=text)
        self.optuna.end(trial.trial_id, trial.last_result, "fail")
        self.searcher.on_trial_complete(trial.trial_id, trial.last_result or None, error=True)
        self.scheduler.on_trial_error(trial.snapshot())
        save_search_state(self.exp_dir, self.searcher, self.scheduler)
        fail_fast = fail_fast_of(self.run_config.failure_config)
        if fail_fast and not self.stopping_all:
            if fail_fast == "raise":
                self.fail_fast_error = error if error is not None else TuneError(
                    f"trial {trial.name} failed: {text}")
            self._stop_all(f"trial {trial.name} failed and FailureConfig(fail_fast="
                           f"{fail_fast!r}) is set")

    # -- trials waiting on resources -----------------------------------------------------
    def _check_waits(self) -> None:
        """Trials that wait on resources which cannot come: refused, or said.

        A trial that starts a Trainer asks for a placement group of the workers' bundles.
        When that group, added to what a trial itself holds, is more than the cluster has,
        it can never be reserved while its trial runs: the trial would wait forever, so it
        is refused (errored, not retried) with what to reserve instead. A group that waits
        only because other trials hold the resources is said once in the progress display.
        Runs only when no event came for a whole wait (a quiet sweep), once per second.
        """
        now = time.monotonic()
        if now < self.next_wait_check:
            return
        self.next_wait_check = now + 1.0
        quiet = sorted((t for t in self.trials.values() if t.state is TrialState.RUNNING
                        and now - t.quiet_since >= WAIT_CHECK_S), key=lambda t: t.quiet_since)
        if not quiet:
            return
        try:
            table = rt.placement_group_table()
        except Exception:  # a backend without the table: nothing to look at
            return
        pending = {pid: row for pid, row in table.items()
                   if row.get("state") in ("PENDING", "RESCHEDULING")}
        self.pg_seen = {pid: self.pg_seen.get(pid, now) for pid in pending}
        total = rt.cluster_resources()
        # CPUs of a trial blocked in a wait are lent back by the runtime (as Ray does), so
        # only its other resources (GPUs, custom ones) keep a group from forming.
        keys = {k for t in quiet for k in t.resources if k != "CPU"}
        held = {k: min(t.resources.get(k, 0.0) for t in quiet) for k in keys}
        never, busy = [], []
        for pid, row in pending.items():
            if now - self.pg_seen[pid] < WAIT_CHECK_S:
                continue
            demand = _sum_bundles(row["bundles"].values())
            if _exceeds(demand, held, total):
                never.append((pid, row))
            else:
                busy.append((pid, row))
        running = [t for t in self.trials.values() if t.state is TrialState.RUNNING]
        if busy and len(quiet) == len(running) and len(busy) + len(never) >= len(running):
            held_all = _sum_bundles({k: v for k, v in t.resources.items() if k != "CPU"}
                                    for t in running)
            if all(_exceeds(_sum_bundles(row["bundles"].values()), held_all, total)
                   for _, row in busy):
                # Every trial waits on a group the others' holdings keep from it: a deadlock.
                never, busy = never + busy, []
        busy = [(pid, row) for pid, row in busy if pid not in self.pg_said]
        # The longest-quiet trial asked for the longest-pending group (both in time order).
        never.sort(key=lambda item: self.pg_seen[item[0]])
        for trial, (pid, row) in zip(quiet, never, strict=False):
            self._refuse(trial, pid, list(row["bundles"].values()), total)
        for pid, row in busy:
            self.pg_said.add(pid)
            self.table.say(
                f"{len(quiet)} trial(s) wait for a placement group of "
                f"{_bundles_text(list(row['bundles'].values()))} (a Trainer's workers?) for "
                f"{now - self.pg_seen[pid]:.0f} s: available now {rt.available_resources()}, "
                "the running trials hold the rest; reserve the Trainer's bundles with each "
                "trial (tune.with_resources(trainable, tune.PlacementGroupFactory([...])))")

    def _refuse(self, trial: Trial, pg_id: str, bundles: list[dict[str, float]],
                total: dict[str, float]) -> None:
        head = {k: v for k, v in trial.resources.items() if v}
        text = (f"trial {trial.name} started a Trainer (or another placement group) needing "
                f"{_bundles_text(bundles)}, but the trial itself holds {head} of the "
                f"cluster's {_short(total)} and the other running trials the rest: it would "
                "wait forever. "
                "Reserve the Trainer's bundles with the trial: tune.with_resources(trainable, "
                f"tune.PlacementGroupFactory([{head}] + {_bundles_text(bundles)})), or lower "
                "the Trainer's ScalingConfig(num_workers=..., resources_per_worker=...)")
        self.table.say(text)
        self.by_ref.pop(trial.ref, None)
        self._release(trial, healthy=False)
        try:
            rt.remove_placement_group(rt.PlacementGroup(pg_id, bundles, "PACK", ""))
        except Exception:
            pass  # gone with its trial already
        trial.failures = max(trial.failures, 1)
        self._set_state(trial, TrialState.ERRORED, error=f"TuneError: {text}")
        self.ledger.trial_errored(trial.trial_id, None, f"TuneError: {text}", trial.failures,
                                  retrying=False)
        self.optuna.end(trial.trial_id, trial.last_result, "fail")
        self.searcher.on_trial_complete(trial.trial_id, trial.last_result or None, error=True)
        self.scheduler.on_trial_error(trial.snapshot())
        save_search_state(self.exp_dir, self.searcher, self.scheduler)

    def _stop_all(self, why: str) -> None:
        """End the sweep now: running trials are killed, the others never start."""
        self.stopping_all = True
        self.table.say(f"stopping the sweep: {why}")
        for trial in self.trials.values():
            if trial.state is TrialState.RUNNING:
                self.by_ref.pop(trial.ref, None)
                self._release(trial, healthy=False)
                self._set_state(trial, TrialState.TERMINATED)
                self.ledger.trial_stopped(trial.trial_id, trial.iteration, "sweep", why)
                self.optuna.end(trial.trial_id, trial.last_result, "complete")
                self.scheduler.on_trial_complete(trial.snapshot(), trial.last_result)
            elif trial.state is TrialState.PAUSED:
                self._set_state(trial, TrialState.TERMINATED)
                self.ledger.trial_stopped(trial.trial_id, trial.iteration, "sweep", why)
                self.optuna.end(trial.trial_id, trial.last_result, "complete")

    def _shutdown(self) -> None:
        for trial in list(self.trials.values()):
            if trial.actor is not None:
                rt.kill(trial.actor)
                trial.actor = None
        for actors in self.pool.values():
            for actor in actors:
                rt.kill(actor)
        self.pool.clear()
        save_search_state(self.exp_dir, self.searcher, self.scheduler)
        self.journal.close()
        self.table.finish(self.trials.values())


_AUTO_KEYS = frozenset({"training_iteration", "time_this_iter_s", "time_total_s", "timestamp",
                        "trial_id", "checkpoint_dir_name", "done"})


def _sum_bundles(bundles: Any) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        for key, amount in bundle.items():
            total[key] = total.get(key, 0.0) + float(amount)
    return total


def _exceeds(demand: dict[str, float], held: dict[str, float],
             total: dict[str, float]) -> bool:
    """Whether ``demand`` (CPUs aside) cannot fit in ``total`` next to ``held``."""
    return any(amount + held.get(key, 0.0) > total.get(key, 0.0) + 1e-9
               for key, amount in demand.items() if key != "CPU" and amount > 0)


def _short(resources: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in resources.items()
            if k not in ("memory", "object_store_memory") and not k.startswith("node:")}


def _bundles_text(bundles: list[dict[str, float]]) -> str:
    """``[{'CPU': 1.0}] * 2`` for equal bundles, else the list."""
    clean = [{k: v for k, v in b.items() if v} for b in bundles]
    if clean and all(b == clean[0] for b in clean):
        return f"[{clean[0]}] * {len(clean)}"
    return repr(clean)


def _json_bytes(value: Any) -> bytes:
    import json

    return json.dumps(value, indent=2, default=repr).encode()
