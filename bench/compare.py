"""Run the workloads of bench/wl/ on trainkit and on Ray, side by side, and print a
markdown table: metric, trainkit, Ray, ratio (trainkit/Ray), target, pass/fail.

    bash bench/setup_ray_venv.sh                      # once: Ray 2.60 in bench/.venv-ray
    .venv/bin/python bench/compare.py                 # all workloads, 1 round
    .venv/bin/python bench/compare.py --rounds 3 actor_latency task_throughput
    .venv/bin/python bench/compare.py --from bench/results/compare-XXXX.jsonl   # re-render
    # trainkit's Train/Tune/Data layers on Ray's engine against Ray's own layers:
    .venv/bin/python bench/compare.py --backends trainkit-ray,ray --rounds 3 \
        train_startup train_report tune_overhead data_images data_parquet

trainkit and trainkit-ray (trainkit with init(backend="ray")) run under .venv/bin/python and Ray
under bench/.venv-ray/bin/python, each workload in its own fresh process. The table sets each
backend other than Ray against Ray (one table per such backend): trainkit vs Ray with the
runtime issue's targets (ROWS), trainkit-ray vs Ray with "not slower than Ray's own layers on
Ray's engine" (ratio <= 1.0 for times, >= 1.0 for throughputs) on the headline figures of the
train/tune/data workloads (ON_RAY_TARGETS) and no target elsewhere. Rounds are interleaved
(round 1 of every workload, then round 2, ...) and the backend order reverses between rounds;
with several rounds the table shows the median over rounds. The raw result lines go to
bench/results/compare-<time>.jsonl, the table to bench/results/compare-<time>.md and each run's
stdout+stderr to bench/results/logs/<time>/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wl import BACKENDS  # the registry, bench/wl/: importing it imports only the stdlib
from wl import DEADLINE_DEFAULT
from wl import DEADLINES
from wl import LAYERS
from wl import TK_ON_RAY
from wl import TK_ON_RAY_WORKLOADS
from wl import WORKLOADS
from wl import registry

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
# Each run gets its workload's watchdog deadline (declared with it in bench/wl/) plus this much,
# unless --timeout is given.
TIMEOUT_SLACK = 35.0
PYTHONS = {
    "trainkit": os.path.join(REPO_ROOT, ".venv", "bin", "python"),
    "ray": os.path.join(HERE, ".venv-ray", "bin", "python"),
    TK_ON_RAY: os.path.join(REPO_ROOT, ".venv", "bin", "python"),  # trainkit + Ray 2.60
}
# how a backend is named in the table's header and its ratio column
NAMES = {"trainkit": "trainkit", "ray": "Ray", TK_ON_RAY: "trainkit on Ray"}
SHORT = {"trainkit": "tk", "ray": "Ray", TK_ON_RAY: "tk-on-Ray"}


# ----------------------------------------------------------------- floors ----
class Floor(NamedTuple):
    """What a row is set against besides Ray: the same work with no runtime (a bare pyzmq
    round trip, a multiprocessing.Pool), a constant of the workload (the ideal wall time) or
    the backend's own figure under an easier load (the 10k-task rate). Its value is taken from
    the lines of the table's left backend (trainkit), else, unless `own`, the right one's.

    The no-runtime floors are measured inside the workload whose figure is set against them,
    in blocks between its repeats (actor_latency's zmq_rtt_paired_us, task_throughput's
    pool_tasks_s_paired): on this shared machine the bare round trip alone moves between 40
    and 120 us from minute to minute, so a floor from another process minutes apart says
    little. `fallback` is the stand-alone workload (baseline_zmq, baseline_pool), used when
    the paired figure is missing (result lines from before it existed)."""

    workload: str
    key: str
    name: str  # how the target names it: "<= 1.3x pyzmq REQ/REP"
    own: bool = False  # the left backend's own figure only (no fallback to the right's)
    fallback: Floor | None = None


ZMQ_FLOOR = Floor(
    "actor_latency",
    "zmq_rtt_paired_us",
    "pyzmq REQ/REP",
    own=True,
    fallback=Floor("baseline_zmq", "zmq_reqrep_rtt_us", "pyzmq REQ/REP"),
)
POOL_FLOOR = Floor(
    "task_throughput",
    "pool_tasks_s_paired",
    "Pool(2)",
    own=True,
    fallback=Floor("baseline_pool", "pool_chunk1_tasks_s", "Pool(2)"),
)
SLEEP_IDEAL = Floor("task_throughput", "sleep_ideal_s", "the ideal", own=True)
RATE_10K = Floor("task_backlog", "backlog_10k_tasks_s", "the 10k rate", own=True)


# ---------------------------------------------------------------- targets ----
# Each target gets (tk, ray, ctx) and returns (text, passed) where passed is True/False, or
# None when a value is missing (counted as a failure). ctx["floor"] is the row's floor value
# (None if the row has no floor or it was not measured); ctx also holds a few other figures
# of the run (get_not_growing).
def ratio_le(k):
    def f(tk, ray, ctx):
        ok = None if tk is None or ray is None else tk <= k * ray
        return f"<= {k:g}x Ray", ok

    return f


def ratio_ge(k):
    def f(tk, ray, ctx):
        ok = None if tk is None or ray is None else tk >= k * ray
        return f">= {k:g}x Ray", ok

    return f


def floor_le(k, name):
    """trainkit <= k x the row's floor (a time: the floor is the least it can be)."""

    def f(tk, ray, ctx):
        fl = ctx.get("floor")
        ok = None if tk is None or fl is None else tk <= k * fl
        return f"<= {k:g}x {name}", ok

    return f


def floor_ge(k, name):
    """trainkit >= k x the row's floor (a rate: the floor is the most it can be)."""

    def f(tk, ray, ctx):
        fl = ctx.get("floor")
        ok = None if tk is None or fl is None else tk >= k * fl
        return f">= {k:g}x {name}", ok

    return f


def abs_le(k, unit):
    """An absolute bound on trainkit's own figure (Ray's is shown, not judged)."""

    def f(tk, ray, ctx):
        return f"<= {k:g}{unit}", (None if tk is None else tk <= k)

    return f


def is_true(tk, ray, ctx):
    return "true", (None if tk is None else bool(tk))


def get_not_growing(tk, ray, ctx):
    # 10x the bytes: a copying get grows ~10x (1 GB memcpy is >= 70 ms here); a zero-copy
    # get stays flat. Noise at the ~50 us scale is allowed for: <= 3x, or under 1 ms anyway.
    g1, g100 = ctx.get("tk_get_1GB_us"), ctx.get("tk_get_100MB_us")  # the left backend's
    if tk is None or g1 is None or g100 is None:
        return "<= 3x (or < 1 ms)", None
    return "<= 3x (or < 1 ms)", bool(tk <= 3.0 or g1 < 1000.0)


class Row(NamedTuple):
    """label, workload, key, target or None, floor or None. Rows with a target are the issues'
    targets. key is one metric name, or a pair (trainkit's key, Ray's key) to set one trainkit
    figure against a different Ray figure (e.g. Tune with Ray's reuse_actors=True). A row with
    a floor also shows the floor and trainkit / floor (see Floor)."""

    label: str
    workload: str
    key: object
    target: object = None
    floor: Floor | None = None


_ROWS = [
    ("import (s)", "init", "import_s", None),
    ("init(num_cpus=2) (s)", "init", "init_s", None),
    ("shutdown() (s)", "init", "shutdown_s", None),
    ("**init()+shutdown() (s)**", "init", "init_shutdown_s", ratio_le(0.2)),
    ("fresh process, launch to exit (s)", "init", "process_wall_s", None),
    ("first no-op task after init (s)", "init", "first_task_s", None),
    ("runtime processes (settled)", "init", "mem_n_procs", None),
    ("RSS sum of runtime processes (MB)", "init", "mem_rss_mb", None),
    ("**PSS sum of runtime processes (MB)**", "init", "mem_pss_mb", ratio_le(0.25)),
    ("USS sum of runtime processes (MB)", "init", "mem_uss_mb", None),
    ("driver RSS (MB)", "init", "mem_driver_rss_mb", None),
    ("processes left 2 s after shutdown", "init", "leftover_procs_2s", None),
    ("**sync actor call RTT, median (us)**", "actor_latency", "sync_rtt_us", ratio_le(0.5)),
    # issue 13, section 6: <= 1.3x the bare round trip (the runtime issue before it asked 2x)
    (
        "**sync actor call RTT vs bare pyzmq (us)**",
        "actor_latency",
        "sync_rtt_us",
        floor_le(1.3, ZMQ_FLOOR.name),
        ZMQ_FLOOR,
    ),
    ("sync actor call RTT, p99 (us)", "actor_latency", "sync_rtt_p99_us", None),
    ("**async actor calls/s (10k)**", "actor_latency", "async_calls_s", ratio_ge(2.0)),
    ("async: submit 10k only (s)", "actor_latency", "async_submit_s", None),
    ("**no-op tasks/s (10k)**", "task_throughput", "noop_tasks_s", ratio_ge(2.0)),
    (
        "**no-op tasks/s (10k) vs multiprocessing.Pool(2), chunksize=1**",
        "task_throughput",
        "noop_tasks_s",
        floor_ge(0.43, POOL_FLOOR.name),
        POOL_FLOOR,
    ),
    ("sync task RTT, median (us)", "task_throughput", "task_sync_rtt_us", None),
    (
        "**1,000 x 10 ms tasks on 2 CPUs, wall vs the ideal 5.0 s (s)**",
        "task_throughput",
        "sleep_wall_s",
        floor_le(1.03, SLEEP_IDEAL.name),
        SLEEP_IDEAL,
    ),
    (
        "**1,000 x 10 ms tasks: overhead vs 5.0 s (%)**",
        "task_throughput",
        "sleep_overhead_pct",
        ratio_le(1.0),
    ),
    ("no-op tasks/s, 10k, in task_backlog", "task_backlog", "backlog_10k_tasks_s", None),
    (
        "**no-op tasks/s, 100,000 queued, vs the 10k rate**",
        "task_backlog",
        "backlog_100k_tasks_s",
        floor_ge(0.9, RATE_10K.name),
        RATE_10K,
    ),
    (
        "100,000 queued / 10k rate, each runtime its own",
        "task_backlog",
        "backlog_100k_vs_10k",
        None,
    ),
    ("100,000 no-op tasks: submit only (s)", "task_backlog", "backlog_100k_submit_s", None),
    (
        "idle actors: PSS sum of runtime processes, 0 actors (MB)",
        "actor_memory",
        "actor_base_pss_mb",
        None,
    ),
    (
        "**PSS per extra idle actor, 20 vs 0 (MB)**",
        "actor_memory",
        "actor_pss_mb_per_actor",
        abs_le(2.0, " MB"),
    ),
    ("USS per extra idle actor (MB)", "actor_memory", "actor_uss_mb_per_actor", None),
    ("RSS per extra idle actor (MB)", "actor_memory", "actor_rss_mb_per_actor", None),
    ("processes per extra idle actor", "actor_memory", "actor_procs_per_actor", None),
    ("20 actors: create + first call (s)", "actor_memory", "actor_create_20_s", None),
    ("memcpy 100 MB (ms), floor", "object_store", "memcpy_100MB_ms", None),
    ("put 100 MB, first (ms)", "object_store", "put_100MB_first_ms", None),
    ("put 100 MB, warm median (ms)", "object_store", "put_100MB_ms", None),
    ("**put 100 MB, warm (MB/s)**", "object_store", "put_100MB_MBps", ratio_ge(1.0)),
    ("get 100 MB (us)", "object_store", "get_100MB_us", None),
    ("**get 100 MB zero-copy**", "object_store", "get_100MB_zero_copy", is_true),
    ("get 100 MB read-only", "object_store", "get_100MB_readonly", None),
    ("get 1 GB (us)", "object_store", "get_1GB_us", None),
    ("**get 1 GB zero-copy**", "object_store", "get_1GB_zero_copy", is_true),
    ("**get time 1 GB / 100 MB**", "object_store", "get_1GB_vs_100MB", get_not_growing),
    ("put 1 GB, first (ms)", "object_store", "put_1GB_first_ms", None),
    ("put 1 GB, warm median (ms)", "object_store", "put_1GB_ms", None),
    ("task(ref) summing 100 MB, RTT (ms)", "object_store", "task_ref_sum_100MB_ms", None),
    ("bare pyzmq REQ/REP RTT, 31 B, ipc (us)", "baseline_zmq", "zmq_reqrep_rtt_us", None),
    ("bare pyzmq DEALER pipelined (msgs/s)", "baseline_zmq", "zmq_dealer_pipelined_msgs_s", None),
    (
        "multiprocessing.Pool(2).map, chunksize=1, 10k no-ops (tasks/s)",
        "baseline_pool",
        "pool_chunk1_tasks_s",
        None,
    ),
    (
        "multiprocessing.Pool(2).apply_async x 10k (tasks/s)",
        "baseline_pool",
        "pool_apply_async_tasks_s",
        None,
    ),
    ("train: first fit() after init, warm-up (s)", "train_startup", "fit1_fit_s", None),
    ("**train: warm fit() (s)**", "train_startup", "fit_s", ratio_le(0.25)),
    (
        "**train: warm fit() call -> first line of the loop (s)**",
        "train_startup",
        "first_line_s",
        ratio_le(0.25),
    ),
    ("train: warm loop, 2 epochs + 2 reports (s)", "train_startup", "loop_s", None),
    ("train: warm loop end -> fit() returns (s)", "train_startup", "teardown_s", None),
    ("train: checkpoints persisted per fit", "train_startup", "checkpoints", None),
    ("report() with a 10 MB checkpoint, rank 0 (ms)", "train_report", "report_ckpt10mb_ms", None),
    (
        "report() with a 10 MB checkpoint, first call (ms)",
        "train_report",
        "report_ckpt10mb_first_ms",
        None,
    ),
    ("report() metrics only, rank 0 (ms)", "train_report", "report_metrics_ms", None),
    (
        "**tune: 100 trials x 10 reports, FIFO (s); Ray default (reuse_actors=False)**",
        "tune_overhead",
        "fifo_s",
        ratio_le(0.1),
    ),
    (
        "**tune: the same; Ray with reuse_actors=True (s)**",
        "tune_overhead",
        ("fifo_s", "fifo_reuse_s"),
        ratio_le(1.0),
    ),
    (
        "tune: 100 trials x 10 reports, ASHA (s); Ray default",
        "tune_overhead_asha",
        "asha_s",
        None,
    ),
    (
        "tune: the same; Ray with reuse_actors=True (s)",
        "tune_overhead_asha",
        ("asha_s", "asha_reuse_s"),
        None,
    ),
    (
        "tune: ASHA, iterations run (of 1,000); Ray default",
        "tune_overhead_asha",
        "asha_iterations",
        None,
    ),
    (
        "tune: 200 trials x sleep(1 s) on 2 CPUs, wall (s); Ray reuse_actors=True",
        "tune_sleep",
        "sleep_wall_s",
        None,
    ),
    (
        "**tune: 200 x sleep(1 s): overhead vs 100 s (%)**",
        "tune_sleep",
        "sleep_overhead_pct",
        abs_le(5.0, " %"),
    ),
    (
        "tune: 2,000 trivial trials, fit() (s); Ray reuse_actors=True",
        "tune_memory",
        "mem_fit_s",
        None,
    ),
    ("tune: driver USS before fit() (MB)", "tune_memory", "driver_uss_mb_before", None),
    (
        "tune: driver memory growth per trial, USS (KB)",
        "tune_memory",
        "mem_growth_kb_per_trial",
        None,
    ),
    (
        "tune: the same after the ResultGrid is dropped (KB)",
        "tune_memory",
        "mem_growth_released_kb_per_trial",
        None,
    ),
    (
        "**tune: 2,000 one-report trials on 2 CPUs, fit() (s); Ray reuse_actors=True**",
        "tune_2000",
        "t2000_s",
        abs_le(20.0, " s"),
    ),
    ("tune: optuna.journal per report (ms)", "tune_2000", "journal_ms_per_report", None),
    ("data images: from_numpy of 100k 32x32x3 uint8 (s)", "data_images", "create_s", None),
    ("data images: first pass, incl. warm-up (s)", "data_images", "first_pass_s", None),
    ("data images: map_batches + iter_torch_batches(256), pass (s)", "data_images", "pass_s", None),
    ("**data images: rows/s**", "data_images", "rows_s", ratio_ge(2.0)),
    ("**data images: time to first batch (s)**", "data_images", "first_batch_s", ratio_le(0.2)),
    ("data images: time to first batch, first pass (s)", "data_images", "first_batch_cold_s", None),
    (
        "data images: numpy + torch.from_numpy in one process, floor (rows/s)",
        "data_images",
        "numpy_rows_s",
        None,
    ),
    (
        "data parquet: pyarrow ParquetFile.iter_batches in process, floor (rows/s)",
        "data_parquet",
        "pyarrow_rows_s",
        None,
    ),
    ("**data parquet: iter_batches(256) (rows/s)**", "data_parquet", "bs256_rows_s", ratio_ge(2.0)),
    (
        "**data parquet: iter_batches(65536) (rows/s)**",
        "data_parquet",
        "bs65536_rows_s",
        ratio_ge(2.0),
    ),
    ("data pipeline: work per batch, calibrated (ms)", "data_pipeline", "work_ms", None),
    ("data pipeline: pass, 1,000 batches (s)", "data_pipeline", "wall_s_pass", None),
    ("data pipeline: consumer's share of time in next()", "data_pipeline", "wait_share", None),
    (
        "data pipeline: the same from the second batch on",
        "data_pipeline",
        "wait_share_after_first",
        None,
    ),
    ("data pipeline: time to first batch (s)", "data_pipeline", "first_batch_s", None),
    ("cluster: head node start (s)", "cluster", "head_start_s", None),
    ("cluster: first add_node() returns (s)", "cluster", "first_add_node_s", None),
    (
        "**cluster: add_node() -> first task on the new node returned (s)**",
        "cluster",
        "join_s",
        ratio_le(0.5),
    ),
    ("cluster: of which add_node() (s)", "cluster", "join_add_node_s", None),
    ("cluster: remove_node() (s)", "cluster", "join_remove_node_s", None),
    (
        "**cluster: sync actor call RTT to the other node, median (ms)**",
        "cluster",
        "actor_rtt_ms",
        ratio_le(0.5),
    ),
    ("cluster: the same, p99 (ms)", "cluster", "actor_rtt_p99_ms", None),
    (
        "**cluster: 1 GiB head -> node_b, put + task(ref) (MB/s)**",
        "cluster",
        "transfer_1gb_to_node_mbps",
        ratio_ge(1.0),
    ),
    (
        "**cluster: 1 GiB node_b -> head, task return + get (MB/s)**",
        "cluster",
        "transfer_1gb_from_node_mbps",
        ratio_ge(1.0),
    ),
    (
        "cluster: making the 1 GiB on node_b, subtracted (s)",
        "cluster",
        "transfer_1gb_from_node_create_s",
        None,
    ),
    ("cluster: first 1 GiB head -> node_b (s)", "cluster", "transfer_1gb_to_node_first_s", None),
    ("cluster: first 1 GiB node_b -> head (s)", "cluster", "transfer_1gb_from_node_first_s", None),
    ("cluster: 1 GiB transfers bit-exact (sampled)", "cluster", "transfer_1gb_exact", None),
    ("cluster: processes on the head node", "cluster", "procs_head", None),
    ("cluster: processes on node_b", "cluster", "procs_node_b", None),
    ("cluster: processes left 2 s after shutdown", "cluster", "leftover_procs_2s", None),
]
ROWS = [Row(*r) for r in _ROWS]

# trainkit-ray vs Ray: trainkit's Train/Tune/Data layers on Ray's engine must not be slower than
# Ray's own (ratio <= 1.0 for times, >= 1.0 for throughputs). (workload, key as in ROWS) ->
# target. Every other row of ROWS is shown without a target (memory, counts, floors, and the
# runtime workloads, whose targets are the built-in runtime's).
ON_RAY_TARGETS = {
    ("train_startup", "fit_s"): ratio_le(1.0),
    ("train_startup", "first_line_s"): ratio_le(1.0),
    ("train_report", "report_ckpt10mb_ms"): ratio_le(1.0),
    ("train_report", "report_metrics_ms"): ratio_le(1.0),
    ("tune_overhead", "fifo_s"): ratio_le(1.0),
    ("tune_overhead", ("fifo_s", "fifo_reuse_s")): ratio_le(1.0),
    ("tune_overhead_asha", "asha_s"): ratio_le(1.0),
    ("tune_overhead_asha", ("asha_s", "asha_reuse_s")): ratio_le(1.0),
    ("tune_sleep", "sleep_overhead_pct"): ratio_le(1.0),
    ("data_images", "rows_s"): ratio_ge(1.0),
    ("data_images", "first_batch_s"): ratio_le(1.0),
    ("data_parquet", "bs256_rows_s"): ratio_ge(1.0),
    ("data_parquet", "bs65536_rows_s"): ratio_ge(1.0),
    ("data_pipeline", "wall_s_pass"): ratio_le(1.0),
}


def _plain(label):
    return label.replace("**", "")


def rows_for(pair):
    """The rows of the table of pair = (backend, the one it is set against)."""
    if pair == ("trainkit", "ray"):
        return ROWS
    if pair == (TK_ON_RAY, "ray"):
        out = []
        for row in ROWS:
            target = ON_RAY_TARGETS.get((row.workload, row.key))
            label = _plain(row.label)
            out.append(row._replace(label=f"**{label}**" if target else label, target=target))
        return out
    # any other pair (e.g. trainkit vs trainkit-ray): the figures and ratios, no targets; the
    # rows that set a trainkit figure against a different Ray figure are left out
    return [
        row._replace(label=_plain(row.label), target=None)
        for row in ROWS
        if isinstance(row.key, str)
    ]


# ---------------------------------------------------------------- running ----
def parse_line(stdout):
    for ln in reversed((stdout or "").splitlines()):
        ln = ln.strip()
        if ln.startswith('{"bench"'):
            try:
                return json.loads(ln)
            except ValueError:
                return None
    return None


def stop_tree(pid):
    """Stop a child we started and everything under it (only our own processes)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def _group_members(pgid):
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if p.pid != os.getpid() and os.getpgid(p.pid) == pgid:
                out.append(p)
        except (OSError, psutil.Error):
            continue
    return out


def stop_group_leftovers(pgid, grace=5.0):
    """Processes still in the process group of a run we started, `grace` seconds after it
    exited (daemons finishing their shutdown get that long). The group was created by us
    (start_new_session), so whatever is in it is ours; stragglers are stopped."""
    import psutil

    deadline = time.perf_counter() + grace
    left = _group_members(pgid)
    while left and time.perf_counter() < deadline:
        time.sleep(0.25)
        left = _group_members(pgid)
    names = sorted({p.info.get("name") or "?" for p in left})
    for p in left:
        try:
            p.terminate()
        except psutil.Error:
            pass
    if left:
        _, alive = psutil.wait_procs(left, timeout=3)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
    return len(left), names


def run_one(workload, backend, python, timeout, logdir, rnd):
    cmd = [python, os.path.join(HERE, "workloads.py"), workload, "--backend", backend]
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        stop_tree(p.pid)
        out, err = p.communicate()
    wall = time.perf_counter() - t0
    n_left, left_names = stop_group_leftovers(p.pid)
    with open(os.path.join(logdir, f"{workload}-{backend}-r{rnd}.log"), "w") as f:
        f.write(f"$ {' '.join(cmd)}\n# rc={p.returncode} wall={wall:.1f}s\n")
        f.write("---- stdout ----\n" + (out or "") + "\n---- stderr ----\n" + (err or ""))
    line = parse_line(out)
    if line is None:
        tail = " / ".join((err or "").strip().splitlines()[-4:])
        line = {
            "bench": workload,
            "backend": backend,
            "error": ("timed out" if timed_out else f"no result line, rc={p.returncode}")
            + (f": {tail}" if tail else ""),
        }
    elif timed_out:
        line["error"] = line.get("error") or f"timed out after {timeout}s"
    if n_left:
        line["leftover_after_run"] = n_left
        line["leftover_after_run_names"] = left_names
    line.update(round=rnd, rc=p.returncode, run_wall_s=round(wall, 2), python=python)
    return line


# -------------------------------------------------------------- reporting ----
def fmt_num(v):
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, (int, float)):
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def aggregate(lines, backend, workload, key):
    vals = [
        ln[key]
        for ln in lines
        if ln.get("backend") == backend
        and ln.get("bench") == workload
        and key in ln
        and ln[key] is not None
    ]
    if not vals:
        return None
    if all(isinstance(v, bool) for v in vals):
        return all(vals)
    if all(isinstance(v, (int, float)) for v in vals):
        return statistics.median(vals)
    return vals[-1]


def fmt_ratio(a, b, digits=None):
    """a / b as "1.23x" (or with `digits` significant digits); "—" unless both are numbers
    (not booleans) and b is not zero."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)) or not b:
        return "—"
    r = a / b
    if digits:
        return f"{r:.{digits}g}x"
    return f"{r:.2f}x" if abs(r) >= 0.01 else f"{r:.2g}x"


def floor_value(lines, pair, floor):
    """The value of a row's floor in this run (see Floor), or None."""
    if floor is None:
        return None
    left, right = pair
    v = aggregate(lines, left, floor.workload, floor.key)
    if v is None and not floor.own:
        v = aggregate(lines, right, floor.workload, floor.key)
    if v is None:
        v = floor_value(lines, pair, floor.fallback)
    return v


def floor_workloads(floor):
    """The workloads a floor's value can come from."""
    return [] if floor is None else [floor.workload, *floor_workloads(floor.fallback)]


def render(lines, source="", pair=("trainkit", "ray")):
    """The markdown table of pair = (left, right): left's figures, right's, left / right; and,
    when a shown row has a floor, the floor and left / floor."""
    left, right = pair
    ctx = {
        "tk_get_1GB_us": aggregate(lines, left, "object_store", "get_1GB_us"),
        "tk_get_100MB_us": aggregate(lines, left, "object_store", "get_100MB_us"),
    }
    rounds = sorted({ln.get("round") for ln in lines if ln.get("round") is not None})
    present = {ln.get("bench") for ln in lines}
    rows = [row for row in rows_for(pair) if row.workload in present]
    with_floors = any(row.floor is not None for row in rows)
    out = []
    out.append(
        f"Benchmarks: {NAMES[left]} vs {NAMES[right]} ({len(rounds) or 1} round(s), median "
        f"over rounds; {platform.node()}, {os.cpu_count()} CPUs){source}"
    )
    out.append("")
    floor_head = f" floor | {SHORT[left]}/floor |" if with_floors else ""
    out.append(
        f"| metric | {NAMES[left]} | {NAMES[right]} | ratio ({SHORT[left]}/{SHORT[right]}) "
        f"|{floor_head} target | pass |"
    )
    floor_align = " ---: | ---: |" if with_floors else ""
    out.append(f"| --- | ---: | ---: | ---: |{floor_align} --- | --- |")
    n_pass = n_fail = 0
    for row in rows:
        key = row.key
        tk_key, ray_key = key if isinstance(key, tuple) else (key, key)
        tk = aggregate(lines, left, row.workload, tk_key)
        ray = aggregate(lines, right, row.workload, ray_key)
        fl = floor_value(lines, pair, row.floor)
        floor_cells = ""
        if with_floors:
            floor_cells = (
                f" {fmt_num(fl)} | {fmt_ratio(tk, fl, 3)} |" if row.floor is not None else "  |  |"
            )
        if row.target is None:
            ttext, verdict = "", ""
        elif row.floor is not None and not present.intersection(floor_workloads(row.floor)):
            ttext, _ = row.target(tk, ray, {**ctx, "floor": None})
            verdict = f"— (floor not run: {' / '.join(floor_workloads(row.floor))})"
        else:
            ttext, ok = row.target(tk, ray, {**ctx, "floor": fl})
            verdict = "PASS" if ok else ("**FAIL**" if ok is False else "**FAIL** (no data)")
            n_pass += bool(ok)
            n_fail += not ok
        out.append(
            f"| {row.label} | {fmt_num(tk)} | {fmt_num(ray)} | {fmt_ratio(tk, ray)} |"
            f"{floor_cells} {ttext} | {verdict} |"
        )
    out.append("")
    out.append(f"Targets: {n_pass} pass, {n_fail} fail.")
    lines = [ln for ln in lines if ln.get("backend") in pair]
    for ln in lines:
        if ln.get("skipped"):
            out.append(f"- skipped: {ln.get('bench')} / {ln.get('backend')}: {ln['skipped']}")
    for ln in lines:
        if ln.get("leftover_after_run"):
            out.append(
                f"- {ln.get('bench')} / {ln.get('backend')} (round {ln.get('round')}) "
                f"left {ln['leftover_after_run']} process(es) alive 5 s after it exited "
                f"({', '.join(ln.get('leftover_after_run_names', []))}); stopped"
            )
    errs = [ln for ln in lines if ln.get("error")]
    for ln in errs:
        out.append(
            f"- error: {ln.get('bench')} / {ln.get('backend')} "
            f"(round {ln.get('round')}): {ln['error']}"
        )
    return "\n".join(out)


def table_pairs(backends):
    """The tables to print: each backend other than Ray against Ray; two backends without Ray,
    the first against the second; one alone, against Ray (its column then empty)."""
    others = [b for b in backends if b != "ray"]
    if "ray" in backends and others:
        return [(b, "ray") for b in others]
    if len(others) >= 2:
        return [(others[0], others[1])]
    return [(others[0] if others else "trainkit", "ray")]


def render_all(lines, source, backends):
    return "\n\n".join(render(lines, source, pair) for pair in table_pairs(backends))


def layer_workloads(layer):
    """The workloads declared in bench/wl/<layer>.py, in registry order."""
    return [w for w in WORKLOADS if registry.get(w).source == f"wl/{layer}.py"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "workloads",
        nargs="*",
        metavar="WORKLOAD",
        help=f"any of {', '.join(WORKLOADS)} (default: all)",
    )
    ap.add_argument(
        "--layer",
        action="append",
        default=[],
        choices=LAYERS,
        help="add every workload of this layer (bench/wl/<layer>.py), in registry order, after "
        "any WORKLOAD named; repeatable. --layer runtime: " + ", ".join(layer_workloads("runtime")),
    )
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--backends",
        default=None,
        help=f"comma-separated, of {','.join(BACKENDS)} (default: trainkit,ray; with --from: "
        f"those in the file). {TK_ON_RAY} is trainkit's layers with init(backend='ray'); each "
        "backend other than ray gets a table against ray",
    )
    ap.add_argument(
        "--tk-python", default=PYTHONS["trainkit"], help=f"for trainkit and {TK_ON_RAY}"
    )
    ap.add_argument("--ray-python", default=PYTHONS["ray"])
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="per workload run, in seconds (default: the workload's own deadline + "
        f"{TIMEOUT_SLACK:g}: {DEADLINE_DEFAULT + TIMEOUT_SLACK:g}, "
        + ", ".join(f"{k} {v + TIMEOUT_SLACK:g}" for k, v in DEADLINES.items())
        + ")",
    )
    ap.add_argument(
        "--from",
        dest="from_file",
        metavar="JSONL",
        help="do not run: render the table from saved result lines",
    )
    args = ap.parse_args()

    backends = None
    if args.backends is not None:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        bad = [b for b in backends if b not in BACKENDS]
        if bad or not backends or len(set(backends)) != len(backends):
            ap.error(
                f"--backends {args.backends!r}: a comma-separated list of distinct "
                f"backends from {', '.join(BACKENDS)}"
            )

    if args.from_file:
        with open(args.from_file) as f:
            lines = [json.loads(ln) for ln in f if ln.strip()]
        if backends is None:
            seen = {ln.get("backend") for ln in lines}
            backends = [b for b in BACKENDS if b in seen] or ["trainkit", "ray"]
        print(render_all(lines, f"; from {args.from_file}", backends))
        return 0

    bad = [w for w in args.workloads if w not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload(s) {bad}; choose from {', '.join(WORKLOADS)}")
    # the named workloads in the order given, then each --layer's (no workload twice)
    chosen = [*args.workloads, *(w for layer in args.layer for w in layer_workloads(layer))]
    workloads = list(dict.fromkeys(chosen)) or list(WORKLOADS)
    backends = backends or ["trainkit", "ray"]
    pythons = {"trainkit": args.tk_python, "ray": args.ray_python, TK_ON_RAY: args.tk_python}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    os.makedirs(RESULTS, exist_ok=True)
    logdir = os.path.join(RESULTS, "logs", stamp)
    os.makedirs(logdir, exist_ok=True)
    jsonl = os.path.join(RESULTS, f"compare-{stamp}.jsonl")

    lines = []
    with open(jsonl, "w") as fout:
        for rnd in range(1, args.rounds + 1):
            order = backends if rnd % 2 else backends[::-1]
            for wl in workloads:
                for be in order:
                    py = pythons[be]
                    if be == TK_ON_RAY and wl not in TK_ON_RAY_WORKLOADS:
                        line = {
                            "bench": wl,
                            "backend": be,
                            "round": rnd,
                            "skipped": f"{wl} does not run on {TK_ON_RAY} "
                            f"(see bench/{registry.get(wl).source})",
                        }
                    elif not os.path.exists(py):
                        line = {
                            "bench": wl,
                            "backend": be,
                            "round": rnd,
                            "error": f"no interpreter at {py}"
                            + (" (run bench/setup_ray_venv.sh)" if be == "ray" else ""),
                        }
                    else:
                        print(
                            f"[round {rnd}/{args.rounds}] {wl} on {be} ...",
                            file=sys.stderr,
                            flush=True,
                        )
                        timeout = args.timeout or (
                            DEADLINES.get(wl, DEADLINE_DEFAULT) + TIMEOUT_SLACK
                        )
                        line = run_one(wl, be, py, timeout, logdir, rnd)
                        print(
                            f"    {line.get('run_wall_s')} s"
                            + (f", ERROR: {line['error']}" if line.get("error") else ""),
                            file=sys.stderr,
                            flush=True,
                        )
                    lines.append(line)
                    fout.write(json.dumps(line, default=str) + "\n")
                    fout.flush()

    table = render_all(lines, f"; raw: {os.path.relpath(jsonl, REPO_ROOT)}", backends)
    with open(jsonl[: -len(".jsonl")] + ".md", "w") as f:
        f.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
