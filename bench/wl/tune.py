"""The tune workloads: tune_overhead, tune_overhead_asha, tune_sleep, tune_memory, tune_2000.

The trainables run inside the backends' trial processes; like the train loops they are
written once and get the backend's tune.report through _tune_api(config["backend"]).
Every trial takes the backend's default resources (1 CPU for a function trainable on both),
so 2 trials run at once on init(num_cpus=2). Only Tuner(...) + fit() is timed.

The Tune API the two share: Tuner, TuneConfig, RunConfig, report, uniform, ASHAScheduler (Ray's
RunConfig is ray.tune.RunConfig, trainkit's is trainkit.train's).
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time

from .common import MB
from .common import import_backend
from .common import is_trainkit
from .common import log
from .common import pc
from .registry import workload

TUNE_TRIALS = 100
TUNE_REPORTS = 10
TUNE_SLEEP_TRIALS = 200
TUNE_SLEEP_S = 1.0
TUNE_MEM_TRIALS = 2000
TUNE_MEM_WARMUP_TRIALS = 20
TUNE_2000_TRIALS = 2000
TUNE_2000_TARGET_S = 20.0  # issue 17: 2,000 one-report trials on 2 CPUs in <= 20 s
ASHA_KW = {"max_t": TUNE_REPORTS, "grace_period": 1, "reduction_factor": 4}


def _tune_api(backend):
    """Tuner, TuneConfig, RunConfig, report, uniform, ASHAScheduler of a backend (the same
    names on both; Ray 2.60's Tuner takes ray.tune.RunConfig, trainkit's trainkit.train's)."""
    from types import SimpleNamespace

    if backend == "ray":
        from ray import tune
        from ray.tune import RunConfig
        from ray.tune.schedulers import ASHAScheduler
    else:
        from trainkit import tune
        from trainkit.train import RunConfig
        from trainkit.tune.schedulers import ASHAScheduler
    return SimpleNamespace(
        Tuner=tune.Tuner,
        TuneConfig=tune.TuneConfig,
        RunConfig=RunConfig,
        report=tune.report,
        uniform=tune.uniform,
        ASHAScheduler=ASHAScheduler,
    )


def _tune_trivial(config):
    """No work: n_reports reports of {"i": i, "x": config["x"]}."""
    report = _tune_api(config["backend"]).report
    for i in range(config["n_reports"]):
        report({"i": i, "x": config["x"]})


def _tune_sleep(config):
    """time.sleep(sleep_s), then one report."""
    time.sleep(config["sleep_s"])
    _tune_api(config["backend"]).report({"i": 0, "x": config["x"]})


def _tune_fit(backend, trainable, n_trials, storage, name, space=None, reuse=None, asha=False):
    """Tuner(...) + fit() of n_trials samples of x ~ U(0, 1), metric "x", mode "max", FIFO
    unless asha. reuse=None leaves reuse_actors at the backend's default. Returns (wall in s,
    summary dict, ResultGrid)."""
    api = _tune_api(backend)
    kw = {"num_samples": n_trials, "metric": "x", "mode": "max"}
    if reuse is not None:
        kw["reuse_actors"] = reuse
    if asha:
        kw["scheduler"] = api.ASHAScheduler(**ASHA_KW)
    param_space = {"x": api.uniform(0.0, 1.0), "backend": backend, **(space or {})}
    t0 = pc()
    tuner = api.Tuner(
        trainable,
        param_space=param_space,
        tune_config=api.TuneConfig(**kw),
        run_config=api.RunConfig(name=name, storage_path=storage, verbose=0),
    )
    grid = tuner.fit()
    wall = pc() - t0
    results = [grid[i] for i in range(len(grid))]
    errors = [r.error for r in results if r.error is not None]
    iters = sum(int(r.metrics.get("i", -1)) + 1 for r in results if r.error is None)
    nfiles = sum(len(files) for _r, _d, files in os.walk(os.path.join(storage, name)))
    summary = {
        "trials": len(results),
        "trials_error": len(errors),
        "iterations": iters,
        "storage_files": nfiles,
    }
    if errors:
        summary["first_error"] = f"{type(errors[0]).__name__}: {errors[0]}"[:300]
    if len(results) != n_trials:
        summary["first_error"] = summary.get("first_error") or (
            f"{len(results)} results for {n_trials} trials"
        )
    return wall, summary, grid


def _tune_session(args, line, body):
    """init(num_cpus=2), body(storage), shutdown; a trial error fails the run at the end,
    after all the figures are in the line."""
    rt = import_backend(args.backend)
    _tune_api(args.backend)  # fail early and clearly if the Tune API is missing
    t0 = pc()
    rt.init(num_cpus=2)
    line["init_s"] = round(pc() - t0, 3)
    storage = tempfile.mkdtemp(prefix="tkbench_tune_")
    try:
        body(storage)
    finally:
        t = pc()
        rt.shutdown()
        line["shutdown_s"] = round(pc() - t, 3)
        shutil.rmtree(storage, ignore_errors=True)
    errs = [f"{k}: {v}" for k, v in line.items() if k.endswith("first_error")]
    if errs:
        raise RuntimeError("trial errors: " + " | ".join(errs))


def _tune_overhead(args, line, asha):
    """100 trials x 10 reports of _tune_trivial, FIFO or ASHA. trainkit: one fit with its
    defaults. Ray: reuse_actors=True first (then the fit is the first after init, as in the
    anchor), then Ray's default reuse_actors=False (~100 s; the warm start does not matter at
    that scale)."""
    p = "asha" if asha else "fifo"
    space = {"n_reports": TUNE_REPORTS}
    variants = [("", None)] if is_trainkit(args.backend) else [("_reuse", True), ("", None)]

    def body(storage):
        for suffix, reuse in variants:
            key = f"{p}{suffix}"
            wall, s, _ = _tune_fit(
                args.backend, _tune_trivial, TUNE_TRIALS, storage, key, space, reuse, asha
            )
            line[f"{key}_s"] = round(wall, 3)
            line[f"{key}_trials_s"] = round(TUNE_TRIALS / wall, 2)
            line[f"{key}_cpu_s_per_trial"] = round(wall * 2 / TUNE_TRIALS, 3)
            for k, v in s.items():
                line[f"{key}_{k}"] = v
            log(f"[bench] {key}: {wall:.2f} s, {s}")

    line["n_trials"] = TUNE_TRIALS
    line["n_reports"] = TUNE_REPORTS
    _tune_session(args, line, body)


# Ray's default Tune (reuse_actors=False) starts a process per trial: 100 trials took 104 s in
# the anchor and 323 s on the project machine on 2026-11-26, plus ~20 s for reuse_actors=True
# and ~10 s for init
@workload(
    "tune_overhead",
    about="Tuner.fit() of 100 trials x 10 reports of a no-op trainable, FIFO; Ray both "
    "with its default (reuse_actors=False) and with reuse_actors=True",
    deadline_s=480.0,
)
def wl_tune_overhead(args, line):
    _tune_overhead(args, line, asha=False)


@workload(
    "tune_overhead_asha",
    about="the same with ASHA (max_t=10, grace_period=1, reduction_factor=4)",
    deadline_s=480.0,
)
def wl_tune_overhead_asha(args, line):
    _tune_overhead(args, line, asha=True)


@workload(
    "tune_sleep",
    about="200 trials of sleep(1 s) + one report on 2 CPUs (ideal 100 s); overhead %",
    deadline_s=240.0,  # ideal 100 s; Ray took 123 s in all
)
def wl_tune_sleep(args, line):
    """200 trials of sleep(1 s) + one report on 2 CPUs: ideal 100 s. trainkit with its
    defaults, Ray with reuse_actors=True (its default would start 200 processes)."""
    reuse = True if args.backend == "ray" else None
    ideal = TUNE_SLEEP_TRIALS * TUNE_SLEEP_S / 2

    def body(storage):
        wall, s, _ = _tune_fit(
            args.backend,
            _tune_sleep,
            TUNE_SLEEP_TRIALS,
            storage,
            "sleep",
            {"sleep_s": TUNE_SLEEP_S},
            reuse,
        )
        line["sleep_wall_s"] = round(wall, 3)
        line["sleep_overhead_pct"] = round((wall - ideal) / ideal * 100, 2)
        line["sleep_overhead_s_per_trial"] = round((wall - ideal) * 2 / TUNE_SLEEP_TRIALS, 4)
        for k, v in s.items():
            line[f"sleep_{k}"] = v

    line["sleep_trials"] = TUNE_SLEEP_TRIALS
    line["sleep_ideal_s"] = ideal
    line["reuse_actors"] = "default (True)" if reuse is None else reuse
    _tune_session(args, line, body)


def _driver_mem():
    """The driver process's own RSS and USS in bytes (no children), after a gc."""
    import psutil

    gc.collect()
    mi = psutil.Process().memory_full_info()
    return mi.rss, getattr(mi, "uss", None)


@workload(
    "tune_memory",
    about="the driver's USS before and after fit() of 2,000 one-report trials",
    deadline_s=360.0,  # Ray took 164-215 s in all
)
def wl_tune_memory(args, line):
    """2,000 trivial trials (1 report each), FIFO: the driver's memory before and after fit().
    A warm-up fit of 20 trials comes first, so that one-time costs (lazy imports, caches) are
    not charged to the trials. trainkit with its defaults, Ray with reuse_actors=True."""
    reuse = True if args.backend == "ray" else None
    space = {"n_reports": 1}
    n = TUNE_MEM_TRIALS

    def body(storage):
        m0 = _driver_mem()
        _wall, s, grid = _tune_fit(
            args.backend, _tune_trivial, TUNE_MEM_WARMUP_TRIALS, storage, "warmup", space, reuse
        )
        del grid
        if s.get("first_error"):
            line["warmup_first_error"] = s["first_error"]
        before = _driver_mem()
        line["mem_warmup_growth_uss_mb"] = round(((before[1] or 0) - (m0[1] or 0)) / MB, 1)
        wall, s, grid = _tune_fit(args.backend, _tune_trivial, n, storage, "memory", space, reuse)
        after = _driver_mem()
        del grid
        released = _driver_mem()
        line["mem_fit_s"] = round(wall, 3)
        for k, v in s.items():
            line[f"mem_{k}"] = v
        basis = 1 if before[1] is not None else 0  # USS if the platform has it
        line["mem_basis"] = "uss" if basis else "rss"
        line["driver_rss_mb_before"] = round(before[0] / MB, 1)
        line["driver_rss_mb_after"] = round(after[0] / MB, 1)
        line["driver_rss_mb_released"] = round(released[0] / MB, 1)
        if basis:
            line["driver_uss_mb_before"] = round(before[1] / MB, 1)
            line["driver_uss_mb_after"] = round(after[1] / MB, 1)
            line["driver_uss_mb_released"] = round(released[1] / MB, 1)
        line["mem_growth_kb_per_trial"] = round((after[basis] - before[basis]) / 1024 / n, 2)
        line["mem_growth_rss_kb_per_trial"] = round((after[0] - before[0]) / 1024 / n, 2)
        line["mem_growth_released_kb_per_trial"] = round(
            (released[basis] - before[basis]) / 1024 / n, 2
        )

    line["mem_trials"] = n
    line["reuse_actors"] = "default (True)" if reuse is None else reuse
    _tune_session(args, line, body)


class _JournalTimer:
    """Time spent in trainkit's optuna.journal writes (OptunaJournal's add/result/end/config,
    all in the driver) during a fit, and the number of reports written: its methods are
    wrapped for the fit and put back after."""

    METHODS = ("add", "result", "end", "config")

    def __init__(self):
        from trainkit.tune._optuna_journal import OptunaJournal

        self.cls = OptunaJournal
        self.spent = dict.fromkeys(self.METHODS, 0.0)
        self.reports = 0
        self.saved = {name: getattr(OptunaJournal, name) for name in self.METHODS}
        for name, fn in self.saved.items():
            setattr(OptunaJournal, name, self._timed(name, fn))

    def _timed(self, name, fn):
        def timed(*a, **k):
            t = pc()
            try:
                return fn(*a, **k)
            finally:
                self.spent[name] += pc() - t
                self.reports += name == "result"

        return timed

    def stop(self):
        for name, fn in self.saved.items():
            setattr(self.cls, name, fn)


# Ray with reuse_actors=True: 2,000 trials took 164-215 s in tune_memory (with its warm-up)
@workload(
    "tune_2000",
    about="Tuner.fit() of 2,000 one-report trials on 2 CPUs, FIFO (issue 17: <= 20 s); Ray "
    "with reuse_actors=True; trainkit's optuna.journal time per report",
    deadline_s=360.0,
)
def wl_tune_2000(args, line):
    """2,000 trials of _tune_trivial with one report each, FIFO, the first fit after init
    (no warm-up: what a user's sweep costs). trainkit with its defaults (reuse_actors=True),
    Ray with reuse_actors=True (its default would start 2,000 processes). For trainkit, the
    share of the fit spent writing optuna.journal."""
    reuse = True if args.backend == "ray" else None
    n = TUNE_2000_TRIALS

    def body(storage):
        journal = _JournalTimer() if is_trainkit(args.backend) else None
        try:
            wall, s, grid = _tune_fit(
                args.backend, _tune_trivial, n, storage, "t2000", {"n_reports": 1}, reuse
            )
        finally:
            if journal is not None:
                journal.stop()
        del grid
        line["t2000_s"] = round(wall, 3)
        line["t2000_trials_s"] = round(n / wall, 1)
        line["t2000_ms_per_trial"] = round(wall * 1000 / n, 3)
        line["t2000_within_target"] = wall <= TUNE_2000_TARGET_S
        for k, v in s.items():
            line[f"t2000_{k}"] = v
        if journal is not None:
            spent = sum(journal.spent.values())
            line["journal_s"] = round(spent, 3)
            line["journal_share_pct"] = round(spent / wall * 100, 2)
            line["journal_ms_per_trial"] = round(spent * 1000 / n, 4)  # add, report, end
            per_report = journal.spent["result"] * 1000 / max(journal.reports, 1)
            line["journal_ms_per_report"] = round(per_report, 4)
        log(f"[bench] t2000: {wall:.2f} s, {s}")

    line["t2000_trials"] = n
    line["t2000_target_s"] = TUNE_2000_TARGET_S
    line["reuse_actors"] = "default (True)" if reuse is None else reuse
    _tune_session(args, line, body)
