"""Backend-neutral runtime benchmarks: the same code runs on trainkit and on Ray.

    python bench/workloads.py <workload> --backend {trainkit,ray,trainkit-ray}

The backend module is imported as ``rt`` (``import trainkit as rt`` or ``import ray as rt``)
and only the API names the two share are used: init(num_cpus=2), shutdown, remote, get, put,
wait, cluster_resources. The third backend, ``trainkit-ray``, is trainkit's own code path
(trainkit.train / tune / data, the trainkit branch everywhere) with its runtime on Ray's engine:
``rt`` is trainkit behind a thin wrapper whose init() always passes backend="ray" (see
TrainkitOnRay). It runs under the interpreter that has trainkit and Ray (.venv/bin/python).
The last stdout line is one JSON object

    {"bench": <workload>, "backend": <backend>, <metric>: <value>, ...}

Everything else (progress, the runtimes' own logs) goes to stderr or comes before it. On an
error the line carries "error" and whatever metrics were measured before it; the exit code is
then non-zero.

Method (the same as the Ray anchors in ../shared/anchors/ray/): warm up first, then report the
median (and sometimes p99) over repeats, timed with time.perf_counter. Each workload starts its
own runtime with init(num_cpus=2) and all other settings left at the backend's defaults.

Workloads (see bench/README.md for the metric list):
  init             init()+shutdown() wall time over fresh interpreters; memory of the runtime's
                   processes 3 s after the first no-op task; first-task latency
  actor_latency    sync actor call round trip (median, p99); async calls/s
  task_throughput  no-op tasks/s; sync task round trip; 1,000 x 10 ms sleep tasks on 2 CPUs
  object_store     put/get of 100 MB and 1 GB numpy arrays, zero-copy check, task(ref) sum
  baseline_zmq     bare pyzmq REQ/REP round trip over ipc:// (the physical floor; no runtime)
  train_startup    Trainer/TorchTrainer fit() of a tiny DDP MLP on 2 CPU workers: 3 fits after
                   init(), the first a warm-up; fit, first-line, loop and teardown times
  train_report     the cost of one report() with a 10 MB checkpoint, and metrics-only
  tune_overhead    Tuner.fit() of 100 trials x 10 reports of a no-op trainable, FIFO; Ray both
                   with its default (reuse_actors=False) and with reuse_actors=True
  tune_overhead_asha  the same with ASHA (max_t=10, grace_period=1, reduction_factor=4)
  tune_sleep       200 trials of sleep(1 s) + one report on 2 CPUs (ideal 100 s); overhead %
  tune_memory      the driver's USS before and after fit() of 2,000 one-report trials
  data_images      from_numpy of 100k 32x32x3 uint8 images, map_batches (to float32) and
                   iter_torch_batches(256): rows/s, time to first batch; numpy floor
  data_parquet     read_parquet(217 MB).iter_batches(B) for B = 256 and 65,536: rows/s;
                   pyarrow floor
  data_pipeline    ~2 ms/batch map_batches feeding a ~2 ms/batch consumer: the consumer's
                   share of time waiting in next()
  cluster          2-node local cluster (Ray's cluster_utils.Cluster, trainkit.testing.
                   LocalCluster): node join to first task, actor call RTT to the other node,
                   1 GiB transfers both ways (MB/s), processes per node

The train workloads use the Train API the two share (trainkit.train / ray.train: report,
Checkpoint, get_context, torch.prepare_model, torch.prepare_data_loader; Trainer is Ray's
TorchTrainer). The training loop is written once and picks the backend's functions at run time.
The tune workloads do the same with the Tune API (Tuner, TuneConfig, RunConfig, report,
uniform, ASHAScheduler; Ray's RunConfig is ray.tune.RunConfig).
The data workloads use trainkit.data / ray.data (from_numpy, read_parquet, map_batches,
iter_batches, iter_torch_batches).

Guard rails: a workload stops repeating once its time budget is used (it always keeps at least
one repeat), and a watchdog ends it at --deadline seconds (default 85; see DEADLINES for the
train and tune workloads, 120-480 s): it prints the partial results with an error, stops the
processes this driver started (its own descendants, nothing else) and exits with code 3.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
BACKENDS = ("trainkit", "ray", "trainkit-ray")
# trainkit's layers (Train, Tune, Data) on Ray's engine: the trainkit code path throughout, with
# the runtime started by trainkit.init(..., backend="ray")
TK_ON_RAY = "trainkit-ray"
WORKLOADS = (
    "init",
    "actor_latency",
    "task_throughput",
    "object_store",
    "baseline_zmq",
    "train_startup",
    "train_report",
    "tune_overhead",
    "tune_overhead_asha",
    "tune_sleep",
    "tune_memory",
    "data_images",
    "data_parquet",
    "data_pipeline",
    "cluster",
)
# what runs on trainkit-ray: all but `cluster`, which drives trainkit.testing.LocalCluster (nodes
# of the built-in runtime). The runtime workloads (init ... object_store) then measure trainkit's
# runtime API carried out by Ray Core; the train/tune/data workloads, trainkit's layers on it.
TK_ON_RAY_WORKLOADS = tuple(w for w in WORKLOADS if w != "cluster")
# watchdog deadline (s) per workload; compare.py allows each run this plus 35 s
DEADLINE_DEFAULT = 85.0
DEADLINES = {
    "train_startup": 160.0,
    "train_report": 120.0,
    # Ray's default Tune (reuse_actors=False) starts a process per trial: 100 trials took
    # 104 s in the anchor and 323 s on the project machine on 2026-11-26, plus ~20 s for
    # reuse_actors=True and ~10 s for init
    "tune_overhead": 480.0,
    "tune_overhead_asha": 480.0,
    "tune_sleep": 240.0,  # ideal 100 s; Ray took 123 s in all
    "tune_memory": 360.0,  # Ray took 164-215 s in all
    # trainkit took ~20 s per images pass on 2026-11-26; the passes stop after their budgets
    "data_images": 150.0,
    "data_parquet": 150.0,
    "data_pipeline": 120.0,
    # 2-node local cluster: Ray took 60-86 s in all on 2026-11-26 (head 5-14 s, each of the
    # 1 + 3 node adds 1-4 s plus ~1 s to its first task, 8 x 1 GiB transfers ~2 s each)
    "cluster": 180.0,
}
MB = 2**20
GB = 2**30

pc = time.perf_counter


# ---------------------------------------------------------------- helpers ----
def med(xs):
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def pct(xs, q):
    """Nearest-rank percentile, q in [0, 100]."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = max(0, min(len(xs) - 1, round(q / 100.0 * (len(xs) - 1))))
    return xs[k]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


_emit_lock = threading.Lock()
_emitted = False


def emit(line: dict) -> None:
    """Print the result line once (the watchdog and the main thread may race)."""
    global _emitted
    with _emit_lock:
        if _emitted:
            return
        _emitted = True
        sys.stdout.flush()
        sys.stdout.write("\n" + json.dumps(line, default=str) + "\n")
        sys.stdout.flush()


def versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("trainkit", "ray", "numpy", "zmq", "cloudpickle", "psutil"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    return out


def is_trainkit(backend: str) -> bool:
    """Whether a backend runs trainkit's code (its Train/Tune/Data layers): trainkit and
    trainkit-ray. Only the runtime under them differs."""
    return backend in ("trainkit", TK_ON_RAY)


class TrainkitOnRay:
    """The trainkit module, except that init() starts the runtime on Ray's engine: every
    init(...) call gets backend="ray" (a different backend is refused). All other names
    (remote, get, put, shutdown, ...) are trainkit's own."""

    def __init__(self, tk):
        self._tk = tk

    def __getattr__(self, name):
        return getattr(self._tk, name)

    def init(self, *args, **kwargs):
        backend = kwargs.setdefault("backend", "ray")
        if backend != "ray":
            raise ValueError(f"{TK_ON_RAY}: init(backend={backend!r}); it must be 'ray'")
        out = self._tk.init(*args, **kwargs)
        ray = sys.modules.get("ray")
        if ray is None or not ray.is_initialized():
            raise RuntimeError(f"{TK_ON_RAY}: trainkit.init(backend='ray') did not start Ray")
        return out


def import_backend(backend: str):
    if is_trainkit(backend) and REPO_ROOT not in sys.path:
        # run as `python bench/workloads.py`, sys.path[0] is bench/: make the repo importable
        sys.path.insert(1, REPO_ROOT)
    if backend == TK_ON_RAY:
        return TrainkitOnRay(importlib.import_module("trainkit"))
    return importlib.import_module(backend)


def own_descendants():
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def stop_processes(procs, grace=2.0):
    """Terminate then kill the given processes (only ever our own descendants)."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def stop_group(pgid):
    """Stop what is left in a process group we created (start_new_session); return count."""
    import psutil

    left = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and os.getpgid(p.pid) == pgid:
                left.append(p)
        except (OSError, psutil.Error):
            continue
    if left:
        stop_processes(left)
    return len(left)


class Budget:
    """Time budget for the repeats of one phase: always >= min_reps, at most max_reps."""

    def __init__(self, seconds, min_reps=1, max_reps=3):
        self.t0 = pc()
        self.seconds = seconds
        self.min_reps = min_reps
        self.max_reps = max_reps
        self.done = 0

    def more(self) -> bool:
        if self.done >= self.max_reps:
            return False
        if self.done < self.min_reps:
            return True
        # estimate whether one more repeat still fits
        per = (pc() - self.t0) / max(self.done, 1)
        return (pc() - self.t0) + per <= self.seconds

    def tick(self):
        self.done += 1


class Watchdog:
    def __init__(self, line: dict, deadline_s: float):
        self.line = line
        self.deadline_s = deadline_s
        self.timer = threading.Timer(deadline_s, self._fire)
        self.timer.daemon = True

    def start(self):
        self.timer.start()

    def cancel(self):
        self.timer.cancel()

    def _fire(self):
        log(f"[bench] watchdog: deadline {self.deadline_s:.0f}s exceeded, stopping")
        try:
            line = dict(self.line)
        except RuntimeError:  # mutated while copying: retry once
            line = dict(self.line)
        line["error"] = f"deadline {self.deadline_s:.0f}s exceeded (partial results)"
        emit(line)
        stop_processes(own_descendants())
        os._exit(3)


# ------------------------------------------------------------ memory count ----
def runtime_memory(marker: str | None = None) -> dict:
    """RSS/PSS/USS summed over the driver's descendants (the driver itself excluded).

    ``marker``: optional session-directory name; processes whose command line contains it are
    counted too (daemons that were re-parented). Ray's is its session dir, as in the anchor.
    """
    import psutil

    me = psutil.Process()
    procs = {p.pid: p for p in me.children(recursive=True)}
    n_desc = len(procs)
    if marker:
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmd = " ".join(p.info.get("cmdline") or [])
            except Exception:
                continue
            if marker in cmd and p.pid != me.pid:
                procs.setdefault(p.pid, p)
    rss = pss = uss = 0
    names: dict = {}
    counted = 0
    for p in procs.values():
        try:
            mi = p.memory_full_info()
            n = p.name()
        except psutil.Error:
            continue
        counted += 1
        rss += mi.rss
        pss += getattr(mi, "pss", 0)
        uss += mi.uss
        names[n] = names.get(n, 0) + 1
    dmi = me.memory_full_info()
    return {
        "n_procs": counted,
        "n_procs_marker_only": len(procs) - n_desc,
        "rss_mb": round(rss / MB, 1),
        "pss_mb": round(pss / MB, 1),
        "uss_mb": round(uss / MB, 1),
        "driver_rss_mb": round(dmi.rss / MB, 1),
        "driver_pss_mb": round(getattr(dmi, "pss", 0) / MB, 1),
        "proc_names": dict(sorted(names.items())),
    }


def session_marker(rt, backend):
    if backend in ("ray", TK_ON_RAY):  # trainkit-ray: the session of the Ray it started
        try:
            ray = sys.modules["ray"]
            return os.path.basename(ray._private.worker.global_worker.node.get_session_dir_path())
        except Exception:
            return None
    return None


# ----------------------------------------------------------------- init ------
def _sample_init(args, line):
    """One fresh interpreter: import, init(num_cpus=2), shutdown. Nothing else."""
    t0 = pc()
    rt = import_backend(args.backend)
    t1 = pc()
    rt.init(num_cpus=2)
    t2 = pc()
    rt.shutdown()
    t3 = pc()
    line.update(
        import_s=t1 - t0,
        init_s=t2 - t1,
        shutdown_s=t3 - t2,
        init_shutdown_s=(t2 - t1) + (t3 - t2),
        total_s=t3 - t0,
    )


def _sample_mem(args, line):
    """One fresh interpreter: init, first no-op task, 3 s settle, memory, shutdown, leftovers."""
    rt = import_backend(args.backend)
    t0 = pc()
    rt.init(num_cpus=2)
    line["init_s"] = pc() - t0
    try:
        marker = session_marker(rt, args.backend)

        @rt.remote
        def noop():
            return None

        t = pc()
        rt.get(noop.remote())
        line["first_task_s"] = pc() - t
        t = pc()
        rt.get(noop.remote())
        line["second_task_s"] = pc() - t
        time.sleep(3.0)
        line["mem"] = runtime_memory(marker)
    finally:
        t = pc()
        rt.shutdown()
        line["shutdown_s"] = pc() - t
    time.sleep(2.0)
    left = own_descendants()
    line["leftover_procs_2s"] = len(left)
    if left:
        line["leftover_names"] = sorted({p.name() for p in left})


def _run_sample(args, kind, timeout):
    """Run `workloads.py _sample_<kind>` in a fresh interpreter; return (parsed line, wall)."""
    cmd = [sys.executable, os.path.abspath(__file__), f"_sample_{kind}", "--backend", args.backend]
    t = pc()
    p = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=REPO_ROOT,
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import psutil

        try:
            kids = psutil.Process(p.pid).children(recursive=True)
        except psutil.Error:
            kids = []
        stop_processes([*kids, psutil.Process(p.pid)])
        p.communicate()
        raise RuntimeError(f"_sample_{kind} timed out after {timeout}s") from None
    wall = pc() - t
    n_left = stop_group(p.pid)  # only non-zero if the sample crashed and orphaned processes
    res = parse_line(out)
    if res is not None and n_left:
        res["orphans_stopped"] = n_left
    if p.returncode != 0 or res is None or "error" in res:
        tail = (err or "").strip().splitlines()[-5:]
        msg = (res or {}).get("error") or f"rc={p.returncode}"
        raise RuntimeError(f"_sample_{kind} failed: {msg} | " + " / ".join(tail))
    return res, wall


def parse_line(stdout: str):
    for ln in reversed((stdout or "").splitlines()):
        ln = ln.strip()
        if ln.startswith('{"bench"'):
            try:
                return json.loads(ln)
            except ValueError:
                return None
    return None


def wl_init(args, line):
    n_target = 5
    samples, walls = [], []
    budget = Budget(55.0, min_reps=3, max_reps=n_target)
    while budget.more():
        res, wall = _run_sample(args, "init", timeout=30)
        samples.append(res)
        walls.append(wall)
        budget.tick()
        line["init_shutdown_s_all"] = [round(s["init_shutdown_s"], 3) for s in samples]
    for k in ("import_s", "init_s", "shutdown_s", "init_shutdown_s", "total_s"):
        line[k] = round(med(s[k] for s in samples), 3)
    line["init_shutdown_s_min"] = round(min(s["init_shutdown_s"] for s in samples), 3)
    line["init_shutdown_s_max"] = round(max(s["init_shutdown_s"] for s in samples), 3)
    line["process_wall_s"] = round(med(walls), 3)  # launch -> exit, interpreter + atexit
    line["n_samples"] = len(samples)

    res, _ = _run_sample(args, "mem", timeout=30)
    mem = res["mem"]
    line["first_task_s"] = round(res["first_task_s"], 4)
    line["second_task_s"] = round(res["second_task_s"], 5)
    line["mem_n_procs"] = mem["n_procs"]
    line["mem_rss_mb"] = mem["rss_mb"]
    line["mem_pss_mb"] = mem["pss_mb"]
    line["mem_uss_mb"] = mem["uss_mb"]
    line["mem_driver_rss_mb"] = mem["driver_rss_mb"]
    line["mem_n_procs_marker_only"] = mem["n_procs_marker_only"]
    line["mem_proc_names"] = mem["proc_names"]
    line["mem_sample_init_s"] = round(res["init_s"], 3)
    line["mem_sample_shutdown_s"] = round(res["shutdown_s"], 3)
    line["leftover_procs_2s"] = res["leftover_procs_2s"]
    if res.get("leftover_names"):
        line["leftover_names"] = res["leftover_names"]


# -------------------------------------------------------- actor_latency ------
N_SYNC = 2000
N_SYNC_WARM = 300
N_ASYNC = 10_000


def wl_actor_latency(args, line):
    rt = import_backend(args.backend)
    rt.init(num_cpus=2)
    try:

        @rt.remote
        class A:
            def f(self):
                return None

        a = A.remote()
        rt.get(a.f.remote())  # actor process up
        for _ in range(N_SYNC_WARM):
            rt.get(a.f.remote())
        lat = []
        for _ in range(N_SYNC):
            t = pc()
            rt.get(a.f.remote())
            lat.append((pc() - t) * 1e6)
        line["sync_rtt_us"] = round(med(lat), 1)
        line["sync_rtt_p99_us"] = round(pct(lat, 99), 1)
        line["sync_rtt_mean_us"] = round(sum(lat) / len(lat), 1)
        line["n_sync"] = N_SYNC

        rt.get([a.f.remote() for _ in range(1000)])  # warm-up
        thr, sub = [], []
        budget = Budget(30.0, min_reps=1, max_reps=3)
        while budget.more():
            t = pc()
            refs = [a.f.remote() for _ in range(N_ASYNC)]
            ts = pc()
            rt.get(refs)
            te = pc()
            del refs
            thr.append(N_ASYNC / (te - t))
            sub.append(ts - t)
            budget.tick()
            line["async_calls_s"] = round(med(thr), 0)
        line["async_calls_s_all"] = [round(x, 0) for x in thr]
        line["async_submit_s"] = round(med(sub), 3)
        line["n_async"] = N_ASYNC
    finally:
        rt.shutdown()


# ------------------------------------------------------ task_throughput ------
N_NOOP = 10_000
N_SLEEP = 1_000
SLEEP_S = 0.01


def wl_task_throughput(args, line):
    rt = import_backend(args.backend)
    rt.init(num_cpus=2)
    try:

        @rt.remote
        def noop():
            return None

        @rt.remote
        def sleeper():
            time.sleep(SLEEP_S)
            return None

        rt.get([noop.remote() for _ in range(1000)])  # warm-up, workers up
        thr = []
        budget = Budget(25.0, min_reps=1, max_reps=3)
        while budget.more():
            t = pc()
            refs = [noop.remote() for _ in range(N_NOOP)]
            rt.get(refs)
            thr.append(N_NOOP / (pc() - t))
            del refs
            budget.tick()
            line["noop_tasks_s"] = round(med(thr), 0)
        line["noop_tasks_s_all"] = [round(x, 0) for x in thr]

        for _ in range(50):
            rt.get(noop.remote())
        rtt = []
        for _ in range(500):
            t = pc()
            rt.get(noop.remote())
            rtt.append((pc() - t) * 1e6)
        line["task_sync_rtt_us"] = round(med(rtt), 1)
        line["task_sync_rtt_p99_us"] = round(pct(rtt, 99), 1)

        rt.get([sleeper.remote() for _ in range(20)])
        ideal = N_SLEEP * SLEEP_S / 2
        walls = []
        budget = Budget(22.0, min_reps=1, max_reps=3)
        while budget.more():
            t = pc()
            rt.get([sleeper.remote() for _ in range(N_SLEEP)])
            walls.append(pc() - t)
            budget.tick()
            line["sleep_wall_s"] = round(med(walls), 3)
        w = med(walls)
        line["sleep_wall_s_all"] = [round(x, 3) for x in walls]
        line["sleep_ideal_s"] = ideal
        line["sleep_overhead_pct"] = round((w - ideal) / ideal * 100, 1)
    finally:
        rt.shutdown()


# --------------------------------------------------------- object_store ------
def _buffer_location(arr):
    """Where arr's first byte lives: (mapping path, inode, offset in that file), from
    /proc/self/maps. Two arrays with the same file, inode and offset see the same physical
    pages even if they were mapped at different addresses. None if not found."""
    addr = arr.__array_interface__["data"][0]
    try:
        with open("/proc/self/maps") as f:
            for ln in f:
                parts = ln.split(maxsplit=5)
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= addr < hi:
                    path = parts[5].strip() if len(parts) > 5 else "[anon]"
                    return path, int(parts[4]), int(parts[2], 16) + (addr - lo)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _is_shared_mapping(path):
    if not path:
        return False
    return any(s in path for s in ("/dev/shm", "memfd:", "plasma", "/dev/zero", "SYSV"))


def _store_part(rt, sum_task, label, arr, reps, line, do_task):
    nbytes = arr.nbytes
    # first put of this size: fresh shared-memory pages (page faults)
    t = pc()
    ref = rt.put(arr)
    first = pc() - t
    line[f"put_{label}_first_ms"] = round(first * 1e3, 2)
    line[f"put_{label}_first_MBps"] = round(nbytes / MB / first, 0)
    del ref
    gc.collect()
    time.sleep(0.3)
    puts = []
    for _ in range(reps):
        t = pc()
        ref = rt.put(arr)
        puts.append(pc() - t)
        del ref
        gc.collect()
        time.sleep(0.3)  # let the store free the object, as the anchor does
    line[f"put_{label}_ms"] = round(med(puts) * 1e3, 2)
    line[f"put_{label}_max_ms"] = round(max(puts) * 1e3, 2)
    line[f"put_{label}_MBps"] = round(nbytes / MB / med(puts), 0)

    ref = rt.put(arr)
    got = rt.get(ref)  # warm-up
    del got
    gets = []
    for _ in range(max(reps, 5)):
        t = pc()
        got = rt.get(ref)
        gets.append(pc() - t)
        del got
    line[f"get_{label}_us"] = round(med(gets) * 1e6, 1)
    g1 = rt.get(ref)
    g2 = rt.get(ref)
    import numpy as np

    line[f"get_{label}_equal"] = bool(
        g1.shape == arr.shape and g1[0] == arr[0] and g1[-1] == arr[-1]
    )
    line[f"get_{label}_readonly"] = not g1.flags.writeable
    line[f"get_{label}_shares_between_gets"] = bool(np.shares_memory(g1, g2))
    loc1, loc2 = _buffer_location(g1), _buffer_location(g2)
    # same shared file and offset: the same physical pages, even if mapped twice
    line[f"get_{label}_same_pages_between_gets"] = bool(
        loc1 is not None and loc1[1] != 0 and loc1 == loc2
    )
    line[f"get_{label}_shares_with_source"] = bool(np.shares_memory(g1, arr))
    mapping = loc1[0] if loc1 else None
    line[f"get_{label}_mapping"] = mapping
    # zero-copy: the array is a view of a shared-memory mapping, and two gets see the same
    # physical pages (same file and offset; one mapping or two does not matter)
    line[f"get_{label}_zero_copy"] = bool(
        _is_shared_mapping(mapping) and line[f"get_{label}_same_pages_between_gets"]
    )
    del g1, g2
    if do_task:
        t = pc()
        arr.sum()
        line[f"local_sum_{label}_ms"] = round((pc() - t) * 1e3, 2)
        rt.get(sum_task.remote(ref))  # warm-up
        rts = []
        for _ in range(reps):
            t = pc()
            rt.get(sum_task.remote(ref))
            rts.append(pc() - t)
        line[f"task_ref_sum_{label}_ms"] = round(med(rts) * 1e3, 2)
    del ref
    gc.collect()


def wl_object_store(args, line):
    import numpy as np
    import psutil

    rt = import_backend(args.backend)
    rt.init(num_cpus=2)
    try:
        try:
            store = rt.cluster_resources().get("object_store_memory", 0)
            if store:
                line["object_store_memory_gb"] = round(store / GB, 2)
        except Exception:
            store = 0

        @rt.remote
        def sum_task(x):
            return float(x.sum())

        rt.get(sum_task.remote(np.zeros(10, np.float32)))  # worker warm

        arr = np.random.default_rng(0).random(100 * MB // 4, dtype=np.float32)
        dst = np.empty_like(arr)
        np.copyto(dst, arr)
        ts = []
        for _ in range(5):
            t = pc()
            np.copyto(dst, arr)
            ts.append(pc() - t)
        del dst
        line["memcpy_100MB_ms"] = round(med(ts) * 1e3, 2)
        _store_part(rt, sum_task, "100MB", arr, 8, line, do_task=True)
        del arr
        gc.collect()

        if psutil.virtual_memory().available < 5 * GB:
            line["skipped_1GB"] = "less than 5 GB of RAM available"
        elif store and store < 2.5 * GB:
            line["skipped_1GB"] = f"object store is {store / GB:.1f} GB"
        else:
            big = np.full(GB // 4, 1.5, dtype=np.float32)
            try:
                _store_part(rt, sum_task, "1GB", big, 3, line, do_task=False)
            except Exception as e:
                line["error_1GB"] = f"{type(e).__name__}: {e}"[:300]
            del big
            gc.collect()
            if "get_1GB_us" in line and line.get("get_100MB_us"):
                line["get_1GB_vs_100MB"] = round(line["get_1GB_us"] / line["get_100MB_us"], 2)
    finally:
        rt.shutdown()


# --------------------------------------------------------- baseline_zmq ------
def _zmq_server(addr, kind):
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.REP if kind == "rep" else zmq.ROUTER)
    s.setsockopt(zmq.SNDHWM, 0)  # a ROUTER drops replies past its HWM
    s.setsockopt(zmq.RCVHWM, 0)
    s.setsockopt(zmq.RCVTIMEO, 60_000)  # never outlive a dead client by much
    s.bind(addr)
    loads, dumps = pickle.loads, pickle.dumps
    try:
        while True:
            if kind == "rep":
                req = loads(s.recv())
                s.send(dumps(None if req[0] == "stop" else (req[1], None), protocol=5))
            else:
                ident, msg = s.recv_multipart()
                req = loads(msg)
                s.send_multipart(
                    [ident, dumps(None if req[0] == "stop" else (req[1], None), protocol=5)]
                )
            if req[0] == "stop":
                break
    except zmq.Again:
        pass
    s.close(linger=0)
    ctx.term()


def wl_baseline_zmq(args, line):
    """Two processes, ipc://, a 31-byte pickled request ("call", id, name, args, kwargs);
    the server unpickles it and pickles a reply back. No runtime is imported."""
    import multiprocessing as mp

    import zmq

    d = tempfile.mkdtemp(prefix="tkbench_zmq_")
    dumps, loads = pickle.dumps, pickle.loads
    line["msg_bytes"] = len(dumps(("call", 0, "f", (), {}), protocol=5))
    for kind in ("rep", "router"):
        addr = f"ipc://{d}/{kind}.sock"
        p = mp.get_context("fork").Process(target=_zmq_server, args=(addr, kind), daemon=True)
        p.start()
        ctx = zmq.Context()
        c = ctx.socket(zmq.REQ if kind == "rep" else zmq.DEALER)
        c.setsockopt(zmq.SNDHWM, 0)
        c.setsockopt(zmq.RCVHWM, 0)
        c.setsockopt(zmq.RCVTIMEO, 20_000)
        c.connect(addr)
        try:

            def call(i, c=c):
                c.send(dumps(("call", i, "f", (), {}), protocol=5))
                return loads(c.recv())

            for i in range(N_SYNC_WARM):
                call(i)
            lat = []
            for i in range(N_SYNC):
                t = pc()
                call(i)
                lat.append((pc() - t) * 1e6)
            if kind == "rep":
                line["zmq_reqrep_rtt_us"] = round(med(lat), 1)
                line["zmq_reqrep_rtt_p99_us"] = round(pct(lat, 99), 1)
            else:
                line["zmq_dealer_rtt_us"] = round(med(lat), 1)
                thr = []
                for _ in range(3):
                    t = pc()
                    for i in range(N_ASYNC):
                        c.send(dumps(("call", i, "f", (), {}), protocol=5))
                    for _ in range(N_ASYNC):
                        loads(c.recv())
                    thr.append(N_ASYNC / (pc() - t))
                line["zmq_dealer_pipelined_msgs_s"] = round(med(thr), 0)
            c.send(dumps(("stop", -1, "", (), {}), protocol=5))
            c.recv()
        finally:
            c.close(linger=0)
            ctx.term()
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(2)
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)


# ---------------------------------------------------------------- train ------
# The training loops run inside the backends' worker processes. They are written once and get
# the backend's Train functions through _train_api(), so both backends run identical code.
# Timestamps cross process boundaries through files in config["ts_dir"] (time.time()), as in
# ../shared/anchors/ray/train_startup.py.
TRAIN_WORKERS = 2
# train_report: timed report() calls per phase (after one warm-up call): at least REPORT_MIN,
# at most REPORT_MAX, fewer once REPORT_BUDGET_S of the phase is spent. Ray's back-to-back
# report() takes ~2 s (see bench/README.md), so Ray gets about 10 calls per phase.
REPORT_MIN = 5
REPORT_MAX = 20
REPORT_BUDGET_S = 20.0
REPORT_MB = 10
REPORT_PAYLOAD = "payload.bin"


def _train_api(backend):
    """The worker-side Train functions of a backend: report, Checkpoint, get_context,
    prepare_model, prepare_data_loader (the same names on both)."""
    from types import SimpleNamespace

    if backend == "ray":
        import ray.train as train
        import ray.train.torch as ttorch
    else:
        import trainkit.train.torch as ttorch
        from trainkit import train
    return SimpleNamespace(
        report=train.report,
        Checkpoint=train.Checkpoint,
        get_context=train.get_context,
        prepare_model=ttorch.prepare_model,
        prepare_data_loader=ttorch.prepare_data_loader,
    )


def _trainer_api(backend):
    """The driver-side classes: (Trainer, ScalingConfig, RunConfig). Ray's Trainer is
    TorchTrainer (DDP over gloo); trainkit's Trainer takes the same arguments."""
    if backend == "ray":
        from ray.train import RunConfig
        from ray.train import ScalingConfig
        from ray.train.torch import TorchTrainer

        return TorchTrainer, ScalingConfig, RunConfig
    try:
        import trainkit.train.torch  # noqa: F401  (the workers need it too)
        from trainkit.train import RunConfig
        from trainkit.train import ScalingConfig
        from trainkit.train import Trainer
    except ImportError as e:
        raise RuntimeError(
            f"trainkit.train does not provide the Train API yet "
            f"(Trainer, ScalingConfig, RunConfig, trainkit.train.torch): {e}"
        ) from e
    return Trainer, ScalingConfig, RunConfig


def _ts_write(config, kind, rank, value):
    path = os.path.join(config["ts_dir"], f"{kind}_rank{rank}")
    with open(path + ".tmp", "w") as f:
        f.write(value if isinstance(value, str) else repr(value))
    os.replace(path + ".tmp", path)


def _startup_loop(config):
    """The anchor's loop: MLP 32-64-1, 1,024 random samples, batch 64, 2 epochs, DDP; each
    epoch is reported, with a checkpoint (torch.save of the state_dict) from rank 0 only."""
    t_first = time.time()  # first line of the training loop
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torch.utils.data import TensorDataset

    api = _train_api(config["backend"])
    rank = api.get_context().get_world_rank()
    _ts_write(config, "start", rank, t_first)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 32, generator=g)
    y = torch.randn(1024, 1, generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    loader = api.prepare_data_loader(loader)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
    model = api.prepare_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.MSELoss()

    for epoch in range(2):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        total = 0.0
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.detach().item()
        metrics = {"epoch": epoch, "loss": total}
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                sd = model.module.state_dict() if hasattr(model, "module") else model.state_dict()
                torch.save(sd, os.path.join(d, "model.pt"))
                api.report(metrics, checkpoint=api.Checkpoint.from_directory(d))
        else:
            api.report(metrics)

    _ts_write(config, "end", rank, time.time())


def _report_go(config, rank, phase, i, ok=None):
    """Whether report call i of `phase` happens. report() is a barrier on both backends, so
    all ranks must make the same number of calls: rank 0 decides (ok) and writes the decision
    for call i before it enters call i-1; the other ranks read it after call i-1 returns, when
    it is already there (they poll only if report() is not a barrier)."""
    path = os.path.join(config["ts_dir"], f"go_{phase}_{i}")
    if rank == 0:
        with open(path + ".tmp", "w") as f:
            f.write("1" if ok else "0")
        os.replace(path + ".tmp", path)
        return ok
    deadline = time.time() + 120.0
    while not os.path.exists(path):
        if time.time() > deadline:
            raise RuntimeError(f"rank {rank}: no decision from rank 0 for {phase} call {i}")
        time.sleep(0.0005)
    with open(path) as f:
        return f.read() == "1"


def _report_loop(config):
    """report() overhead. Phase "ckpt": rank 0 reports with a 10 MB checkpoint, the other
    ranks metrics only; phase "metrics": metrics only on all ranks. Call 0 of each phase is a
    warm-up; then at least report_min and at most report_max timed calls, fewer if the phase's
    time budget is spent. Each rank times its own calls and writes them to a file."""
    t_first = time.time()
    import json as _json
    import shutil as _shutil

    api = _train_api(config["backend"])
    rank = api.get_context().get_world_rank()
    _ts_write(config, "start", rank, t_first)
    ckpt_dir = payload = blob = None
    rewritten = 0
    if rank == 0:
        ckpt_dir = tempfile.mkdtemp(prefix="tkbench_ckpt_")
        payload = os.path.join(ckpt_dir, config["payload_name"])
        blob = os.urandom(config["payload_mb"] * 2**20)
        with open(payload, "wb") as f:
            f.write(blob)
    out = {"payload_rewritten": 0}
    try:
        for phase in ("ckpt", "metrics"):
            times = []  # times[0] is the warm-up call
            t_phase = time.perf_counter()
            i, go = 0, True
            while go:
                ok = None
                if rank == 0:  # may call i+1 happen? decided before call i
                    k = i + 1
                    el = time.perf_counter() - t_phase
                    per = el / i if i else 0.0
                    ok = k <= config["report_max"] and (
                        k <= config["report_min"] or el + 2 * per <= config["report_budget_s"]
                    )
                    go_next = _report_go(config, rank, phase, k, ok)
                ckpt = None
                if rank == 0 and phase == "ckpt":
                    if not os.path.exists(payload):  # the backend moved or deleted it
                        os.makedirs(ckpt_dir, exist_ok=True)
                        with open(payload, "wb") as f:
                            f.write(blob)
                        rewritten += 1
                    ckpt = api.Checkpoint.from_directory(ckpt_dir)
                metrics = {"phase": phase, "i": i}
                if ckpt is not None:
                    t = time.perf_counter()
                    api.report(metrics, checkpoint=ckpt)
                else:
                    t = time.perf_counter()
                    api.report(metrics)
                times.append(time.perf_counter() - t)
                if rank != 0:
                    go_next = _report_go(config, rank, phase, i + 1)
                go = go_next
                i += 1
            out[phase] = times
    finally:
        if ckpt_dir:
            _shutil.rmtree(ckpt_dir, ignore_errors=True)
    out["payload_rewritten"] = rewritten
    _ts_write(config, "times", rank, _json.dumps(out))
    _ts_write(config, "end", rank, time.time())


def _read_ts(ts_dir, kind):
    out = {}
    for fn in os.listdir(ts_dir):
        if fn.startswith(kind + "_rank") and not fn.endswith(".tmp"):
            with open(os.path.join(ts_dir, fn)) as f:
                out[int(fn[len(kind) + 5 :])] = f.read()
    return out


def _count_checkpoints(exp_dir, marker):
    """Checkpoint directories persisted under the run's directory: the directories that hold
    the file the loop saved (`marker`). Backend-neutral: no assumption on directory names."""
    n = 0
    for _root, _dirs, files in os.walk(exp_dir):
        n += marker in files
    return n


def _fit_once(backend, loop, storage, name, extra_config, marker):
    """One Trainer(...) + fit(); driver times around construction and fit, worker times from
    the files. Raises if the fit failed."""
    Trainer, ScalingConfig, RunConfig = _trainer_api(backend)
    ts_dir = tempfile.mkdtemp(prefix="tkbench_ts_")
    try:
        config = {"ts_dir": ts_dir, "backend": backend, **extra_config}
        t_construct = time.time()
        trainer = Trainer(
            loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=TRAIN_WORKERS, use_gpu=False),
            run_config=RunConfig(name=name, storage_path=storage),
        )
        t_fit = time.time()
        result = trainer.fit()
        t_done = time.time()
        if getattr(result, "error", None) is not None:
            raise RuntimeError(f"fit {name} returned an error: {result.error!r}")
        starts = [float(v) for v in _read_ts(ts_dir, "start").values()]
        ends = [float(v) for v in _read_ts(ts_dir, "end").values()]
        if len(starts) != TRAIN_WORKERS or len(ends) != TRAIN_WORKERS:
            raise RuntimeError(
                f"fit {name}: {len(starts)} loop start(s) and {len(ends)} loop end(s) "
                f"recorded, expected {TRAIN_WORKERS} each"
            )
        res = {
            "fit_s": t_done - t_construct,
            "construct_s": t_fit - t_construct,
            "first_line_s": min(starts) - t_fit,
            "loop_s": max(ends) - min(starts),
            "teardown_s": t_done - max(ends),
            "checkpoints": _count_checkpoints(os.path.join(storage, name), marker),
            "has_checkpoint": getattr(result, "checkpoint", None) is not None,
            "times": {r: json.loads(v) for r, v in _read_ts(ts_dir, "times").items()},
        }
        return res
    finally:
        shutil.rmtree(ts_dir, ignore_errors=True)


TRAIN_KEYS = ("fit_s", "construct_s", "first_line_s", "loop_s", "teardown_s", "checkpoints")


def wl_train_startup(args, line):
    """In one process: init(num_cpus=2), then 3 fits of the anchor's loop. Fit 1 is a warm-up
    (reported as fit1_*); fits 2 and 3 are "warm", reported as medians. Fit 3 is skipped if it
    would not fit in the deadline."""
    rt = import_backend(args.backend)
    _trainer_api(args.backend)  # fail early and clearly if the Train API is missing
    t0 = pc()
    rt.init(num_cpus=2)
    line["init_s"] = round(pc() - t0, 3)
    storage = tempfile.mkdtemp(prefix="tkbench_train_")
    warm = []

    def rnd(d):
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}

    try:
        fits = []
        for i in range(3):
            if i == 2:
                # the third fit only if it fits in the deadline, with 20 s to spare
                left = args.deadline - (pc() - args.t_start)
                if fits[-1]["fit_s"] + 20.0 > left:
                    line["fit3_skipped"] = f"{left:.0f} s left before the deadline"
                    break
            r = _fit_once(args.backend, _startup_loop, storage, f"fit{i + 1}", {}, "model.pt")
            r.pop("times", None)
            fits.append(r)
            if i == 0:
                for k in TRAIN_KEYS:
                    line[f"fit1_{k}"] = round(r[k], 3)
            else:
                warm.append(r)
                line["warm_runs"] = [rnd(w) for w in warm]
                for k in TRAIN_KEYS:
                    line[k] = round(med(w[k] for w in warm), 3)
                line["has_checkpoint"] = all(w["has_checkpoint"] for w in warm)
        line["n_warm"] = len(warm)
    finally:
        t = pc()
        rt.shutdown()
        line["shutdown_s"] = round(pc() - t, 3)
        shutil.rmtree(storage, ignore_errors=True)


def wl_train_report(args, line):
    """One fit on 2 workers whose loop times report(): calls with a 10 MB checkpoint from
    rank 0 (other ranks metrics only), then metrics-only calls on all ranks (_report_loop)."""
    rt = import_backend(args.backend)
    _trainer_api(args.backend)
    t0 = pc()
    rt.init(num_cpus=2)
    line["init_s"] = round(pc() - t0, 3)
    storage = tempfile.mkdtemp(prefix="tkbench_report_")
    try:
        cfg = {
            "report_min": REPORT_MIN,
            "report_max": REPORT_MAX,
            "report_budget_s": REPORT_BUDGET_S,
            "payload_mb": REPORT_MB,
            "payload_name": REPORT_PAYLOAD,
        }
        r = _fit_once(args.backend, _report_loop, storage, "report", cfg, REPORT_PAYLOAD)
        times = {int(k): v for k, v in r.pop("times").items()}
        if 0 not in times:
            raise RuntimeError(f"no report timings from rank 0 (got ranks {sorted(times)})")
        others = [t for rank, t in times.items() if rank != 0]
        for phase, key, nd in (("ckpt", "report_ckpt10mb", 2), ("metrics", "report_metrics", 3)):
            first, timed = times[0][phase][0], times[0][phase][1:]
            line[f"{key}_ms"] = round(med(timed) * 1e3, nd)
            line[f"{key}_p90_ms"] = round(pct(timed, 90) * 1e3, nd)
            line[f"{key}_max_ms"] = round(max(timed) * 1e3, nd)
            line[f"{key}_first_ms"] = round(first * 1e3, nd)  # the phase's warm-up call
            line[f"{key}_n"] = len(timed)
            if others:
                line[f"{key}_other_ranks_ms"] = round(
                    med(x for t in others for x in t[phase][1:]) * 1e3, nd
                )
        line["payload_rewritten"] = times[0]["payload_rewritten"]
        line["report_checkpoints"] = r["checkpoints"]  # persisted copies of the 10 MB file
        for k in ("fit_s", "first_line_s", "loop_s", "teardown_s"):
            line[f"report_fit_{k}"] = round(r[k], 3)
    finally:
        t = pc()
        rt.shutdown()
        line["shutdown_s"] = round(pc() - t, 3)
        shutil.rmtree(storage, ignore_errors=True)


# ----------------------------------------------------------------- tune ------
# The trainables run inside the backends' trial processes; like the train loops they are
# written once and get the backend's tune.report through _tune_api(config["backend"]).
# Every trial takes the backend's default resources (1 CPU for a function trainable on both),
# so 2 trials run at once on init(num_cpus=2). Only Tuner(...) + fit() is timed.
TUNE_TRIALS = 100
TUNE_REPORTS = 10
TUNE_SLEEP_TRIALS = 200
TUNE_SLEEP_S = 1.0
TUNE_MEM_TRIALS = 2000
TUNE_MEM_WARMUP_TRIALS = 20
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


def wl_tune_overhead(args, line):
    _tune_overhead(args, line, asha=False)


def wl_tune_overhead_asha(args, line):
    _tune_overhead(args, line, asha=True)


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


# ----------------------------------------------------------------- data ------
# After the anchor ../shared/anchors/ray/data_throughput.py. The same code drives trainkit.data
# and ray.data through _data_api: from_numpy, read_parquet, Dataset.map_batches,
# iter_batches, iter_torch_batches, all with the backend's defaults except the sizes named.
# Every pass builds a fresh pipeline (map_batches on the source dataset) and consumes it fully.
DATA_IMG_ROWS = 100_000  # 32x32x3 uint8: 293 MiB
DATA_PQ_ROWS = 2_500_000  # x 10 float64 columns, snappy, row groups of 262,144: ~217 MB
DATA_PQ_COLS = 10
DATA_PQ_BATCHES = (256, 65_536)  # Ray's default iter_batches size, and pyarrow's
DATA_PIPE_ROWS = 256_000  # x 32 float32: 1,000 batches of 256
DATA_PIPE_BATCH = 256
DATA_PIPE_BLOCKS = 40  # from_numpy of a list: one block per array on both (25 batches each)
DATA_PIPE_WORK_MS = 2.0  # per batch, in map_batches and in the consumer


def _data_api(backend):
    """The backend's data module (trainkit.data / ray.data); Ray's progress bars off, as in
    the anchor."""
    if backend == "ray":
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        return ray.data
    from trainkit import data

    return data


def _img_normalize(batch):
    import numpy as np

    x = batch["data"].astype(np.float32)
    x *= 1.0 / 255.0
    return {"data": x}


def _data_session(args, line, body):
    rt = import_backend(args.backend)
    api = _data_api(args.backend)
    t0 = pc()
    rt.init(num_cpus=2)
    line["init_s"] = round(pc() - t0, 3)
    try:
        body(api)
    finally:
        t = pc()
        rt.shutdown()
        line["shutdown_s"] = round(pc() - t, 3)


def wl_data_images(args, line):
    """100k 32x32x3 uint8 images: from_numpy, map_batches(normalize to float32, 1024),
    iter_torch_batches(256) consumed fully. A warm-up pass, then up to 3 timed passes (fewer
    once 45 s are spent); each pass is a fresh pipeline, and its time to first batch is taken
    from the iter_torch_batches() call to the first batch. The single-process numpy floor
    (normalize + torch.from_numpy, no framework) is measured before init()."""
    import numpy as np
    import torch

    arr = np.random.default_rng(0).integers(0, 256, size=(DATA_IMG_ROWS, 32, 32, 3), dtype=np.uint8)
    line["rows"] = DATA_IMG_ROWS
    line["in_MB"] = round(arr.nbytes / MB, 1)

    floor = []
    for _ in range(3):
        t = pc()
        n = 0
        for i in range(0, DATA_IMG_ROWS, 1024):
            y = _img_normalize({"data": arr[i : i + 1024]})["data"]
            for j in range(0, len(y), 256):
                n += torch.from_numpy(y[j : j + 256]).shape[0]
        floor.append(pc() - t)
        assert n == DATA_IMG_ROWS, n
    line["numpy_rows_s"] = round(DATA_IMG_ROWS / med(floor), 0)

    def one_pass(ds):
        t = pc()
        pipe = ds.map_batches(_img_normalize, batch_size=1024, batch_format="numpy")
        t_iter = pc()
        it = pipe.iter_torch_batches(batch_size=256)
        n, ttfb = 0, None
        for b in it:
            if ttfb is None:
                ttfb = pc() - t_iter
            n += b["data"].shape[0]
        wall = pc() - t
        if n != DATA_IMG_ROWS:
            raise RuntimeError(f"a pass yielded {n} rows, expected {DATA_IMG_ROWS}")
        if b["data"].dtype != torch.float32:
            raise RuntimeError(f"batches are {b['data'].dtype}, expected torch.float32")
        return wall, ttfb

    def body(api):
        t = pc()
        ds = api.from_numpy(arr)
        line["create_s"] = round(pc() - t, 3)
        wall, ttfb = one_pass(ds)
        line["first_pass_s"] = round(wall, 3)
        line["first_batch_cold_s"] = round(ttfb, 4)
        walls, ttfbs = [], []
        budget = Budget(45.0, min_reps=1, max_reps=3)
        while budget.more():
            wall, ttfb = one_pass(ds)
            walls.append(wall)
            ttfbs.append(ttfb)
            budget.tick()
            line["pass_s"] = round(med(walls), 3)
            line["rows_s"] = round(DATA_IMG_ROWS / med(walls), 0)
            line["first_batch_s"] = round(med(ttfbs), 4)
        line["pass_s_all"] = [round(w, 3) for w in walls]
        line["first_batch_s_all"] = [round(x, 4) for x in ttfbs]
        line["in_MBps"] = round(arr.nbytes / MB / med(walls), 1)
        line["vs_numpy_floor"] = round(line["rows_s"] / line["numpy_rows_s"], 3)

    _data_session(args, line, body)


def wl_data_parquet(args, line):
    """A ~217 MB parquet file (2.5M rows x 10 float64, as the anchor), written once to a temp
    dir (so it is in the page cache), then read_parquet(path).iter_batches(batch_size=B),
    consumed fully, for B = 256 (Ray's default) and 65,536 (pyarrow's): a warm-up pass, then
    up to 3 timed passes each. The floor is pyarrow.parquet.ParquetFile(path).iter_batches()
    in process."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tempfile.mkdtemp(prefix="tkbench_pq_")
    try:
        path = os.path.join(d, "data.parquet")
        rng = np.random.default_rng(0)
        t = pc()
        cols = {f"c{i}": rng.random(DATA_PQ_ROWS) for i in range(DATA_PQ_COLS)}
        pq.write_table(pa.table(cols), path, row_group_size=262_144, compression="snappy")
        del cols
        line["gen_s"] = round(pc() - t, 2)
        line["file_MB"] = round(os.path.getsize(path) / MB, 1)
        line["rows"] = DATA_PQ_ROWS

        def timed(key, fn, budget_s):
            fn()  # warm-up
            times = []
            budget = Budget(budget_s, min_reps=1, max_reps=3)
            while budget.more():
                t = pc()
                n = fn()
                times.append(pc() - t)
                budget.tick()
                if n != DATA_PQ_ROWS:
                    raise RuntimeError(f"{key}: {n} rows, expected {DATA_PQ_ROWS}")
                line[f"{key}_rows_s"] = round(DATA_PQ_ROWS / med(times), 0)
            line[f"{key}_s_all"] = [round(x, 3) for x in times]
            line[f"{key}_MBps"] = round(line["file_MB"] / med(times), 1)

        def run_pyarrow():
            n = 0
            for b in pq.ParquetFile(path).iter_batches():
                n += b.num_rows
            return n

        timed("pyarrow", run_pyarrow, 10.0)

        def body(api):
            for bs in DATA_PQ_BATCHES:

                def run(bs=bs):
                    n = 0
                    for b in api.read_parquet(path).iter_batches(batch_size=bs):
                        n += len(b["c0"])
                    return n

                timed(f"bs{bs}", run, 25.0)

        _data_session(args, line, body)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _pipe_work(k):
    """k rounds of numpy work on a 4k-float buffer (numpy releases the GIL inside)."""
    import numpy as np

    x = np.linspace(0.0, 1.0, 4096)
    for _ in range(k):
        x = np.sqrt(x * x + 1.0)
    return float(x[0])


def _pipe_map(batch, k):
    _pipe_work(k)
    return batch


def _calibrate_work(target_ms):
    """Rounds of _pipe_work that take target_ms in this process (the fastest of 7 after a
    warm-up: the least disturbed by other load), and the ms (median of 7) at that count."""
    k = 10
    _pipe_work(k)
    while True:
        ts = []
        for _ in range(5):
            t = pc()
            _pipe_work(k)
            ts.append(pc() - t)
        if min(ts) >= 0.2e-3 or k > 1_000_000:
            break
        k *= 4
    ts = []
    for _ in range(7):
        t = pc()
        _pipe_work(k)
        ts.append(pc() - t)
    k = max(1, round(k * target_ms * 1e-3 / min(ts)))
    ts = []
    for _ in range(7):
        t = pc()
        _pipe_work(k)
        ts.append(pc() - t)
    return k, med(ts) * 1e3


def wl_data_pipeline(args, line):
    """map_batches(batch_size=256) doing ~2 ms of numpy work per batch, feeding a consumer
    (the driver) that does ~2 ms of the same work per batch of iter_batches(batch_size=256).
    256,000 rows x 32 float32 (1,000 batches) in 40 blocks, given to from_numpy as a list of
    40 arrays: one block per array on both backends (from_numpy of one array is one block on
    Ray, which would leave one task for the whole pass). The work is a fixed count of numpy
    rounds, calibrated to 2 ms in the driver before init(). Reported: the share of the consumer's
    wall time spent inside next() (waiting for data), over a full pass (a warm-up pass, then
    the median of up to 3), and the same from the second batch on."""
    import numpy as np

    k, work_ms = _calibrate_work(DATA_PIPE_WORK_MS)
    line["work_rounds"] = k
    line["work_ms"] = round(work_ms, 3)
    arr = np.random.default_rng(0).random((DATA_PIPE_ROWS, 32), dtype=np.float32)
    n_batches = -(-DATA_PIPE_ROWS // DATA_PIPE_BATCH)
    line["batches"] = n_batches
    # both sides busy for n_batches x work: on 2 CPUs the producer has 1 CPU's worth left
    line["consumer_work_s"] = round(n_batches * work_ms * 1e-3, 3)

    def one_pass(ds):
        pipe = ds.map_batches(
            _pipe_map, batch_size=DATA_PIPE_BATCH, batch_format="numpy", fn_kwargs={"k": k}
        )
        t0 = pc()
        it = iter(pipe.iter_batches(batch_size=DATA_PIPE_BATCH))
        waits, n = [], 0
        while True:
            t = pc()
            try:
                b = next(it)
            except StopIteration:
                waits.append(pc() - t)
                break
            waits.append(pc() - t)
            n += len(b["data"])
            _pipe_work(k)
        total = pc() - t0
        if n != DATA_PIPE_ROWS:
            raise RuntimeError(f"a pass yielded {n} rows, expected {DATA_PIPE_ROWS}")
        return total, sum(waits), waits[0]

    def body(api):
        rows = DATA_PIPE_ROWS // DATA_PIPE_BLOCKS
        ds = api.from_numpy([arr[i : i + rows] for i in range(0, DATA_PIPE_ROWS, rows)])
        total, wait, _ = one_pass(ds)
        line["first_pass_s"] = round(total, 3)
        line["first_pass_wait_share"] = round(wait / total, 4)
        res = []
        budget = Budget(40.0, min_reps=1, max_reps=3)
        while budget.more():
            res.append(one_pass(ds))
            budget.tick()
            line["wall_s_pass"] = round(med(r[0] for r in res), 3)
            line["wait_s"] = round(med(r[1] for r in res), 3)
            line["wait_share"] = round(med(r[1] / r[0] for r in res), 4)
            line["wait_share_after_first"] = round(
                med((r[1] - r[2]) / (r[0] - r[2]) for r in res), 4
            )
            line["first_batch_s"] = round(med(r[2] for r in res), 4)
        line["wait_share_all"] = [round(r[1] / r[0], 4) for r in res]
        line["rows_s"] = round(DATA_PIPE_ROWS / line["wall_s_pass"], 0)

    _data_session(args, line, body)


# -------------------------------------------------------------- cluster ------
# Two nodes on this one machine: a head (1 CPU; the driver attaches to it) and "node_b"
# (1 CPU, custom resource {"node_b": 1}), each with its own processes and object store.
# Ray: ray.cluster_utils.Cluster; trainkit: trainkit.testing.LocalCluster. The workload code
# talks to both through _RayCluster / _TkCluster (start, add_node, connect, remove_node,
# shutdown) and otherwise uses only rt.remote/get/put/kill/cluster_resources.
CL_STORE = 3 * GB  # object store per node; 2 x 3 GiB of /dev/shm (24 GiB here)
CL_RTT_WARM = 200
CL_RTT_N = 2000
CL_BASE = 64 * MB + 4099  # the 1 GiB arrays repeat a random base of this (odd) size
CL_SEED = 1234
CL_CRC_SPAN = 64 * 1024
CL_NODE_GONE_S = 30.0  # how long to wait for a removed node to leave cluster_resources()


class _RayCluster:
    """ray.cluster_utils.Cluster behind the interface of trainkit.testing.LocalCluster."""

    def __init__(self, rt):
        from ray.cluster_utils import Cluster

        self.rt = rt
        self.c = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "object_store_memory": CL_STORE},
        )
        self.nodes = {}

    def add_node(self, **kw):
        node = self.c.add_node(**kw)  # wait=True: until the node is in the GCS node table
        self.nodes[node.node_id] = node
        return node.node_id

    def connect(self):
        self.rt.init(address=self.c.address)

    def remove_node(self, node_id):
        self.c.remove_node(self.nodes.pop(node_id))

    def driver_on_head(self):
        return self.rt.get_runtime_context().get_node_id() == self.c.head_node.node_id

    def shutdown(self):
        try:
            self.rt.shutdown()
        finally:
            self.c.shutdown()


class _TkCluster:
    """trainkit.testing.LocalCluster (its interface is the reference for _RayCluster)."""

    def __init__(self, rt):
        try:
            from trainkit.testing import LocalCluster
        except ImportError as e:
            raise RuntimeError(f"trainkit.testing.LocalCluster is not available: {e}") from e
        self.rt = rt
        self.c = LocalCluster(num_cpus=1, num_gpus=0, resources=None, object_store_memory=CL_STORE)

    def add_node(self, **kw):
        return self.c.add_node(**kw)

    def connect(self):
        self.c.connect()

    def remove_node(self, node_id):
        self.c.remove_node(node_id)

    def driver_on_head(self):
        return None  # LocalCluster.connect() attaches the driver to the head by contract

    def shutdown(self):
        self.c.shutdown()


def _cluster_array(seed, nbytes):
    """nbytes of uint8: a random base of CL_BASE bytes, repeated. Deterministic in seed, so
    the driver and a task on another node make the same array."""
    import numpy as np

    base = np.random.default_rng(seed).integers(0, 256, CL_BASE, dtype=np.uint8)
    out = np.empty(nbytes, dtype=np.uint8)
    for s in range(0, nbytes, CL_BASE):
        n = min(CL_BASE, nbytes - s)
        out[s : s + n] = base[:n]
    return out


def _cluster_fingerprint(arr, idx):
    """(nbytes, the bytes at positions idx, crc32 of CL_CRC_SPAN bytes at the start, the
    middle and the end): cheap to compute where the array is, exact to compare."""
    import zlib

    n = arr.nbytes
    starts = (0, max(0, n // 2 - CL_CRC_SPAN // 2), max(0, n - CL_CRC_SPAN))
    crcs = [zlib.crc32(memoryview(arr[s : s + CL_CRC_SPAN])) for s in starts]
    return n, arr[idx].tobytes(), crcs


def _descendant_pids():
    return {p.pid for p in own_descendants()}


def _node_roots(before):
    """The processes of a node just added, at the moment add_node() returned: the driver's
    direct children that are not in `before` (the descendant pids before add_node). Empty if
    the node's processes are not the driver's children."""
    import psutil

    me = os.getpid()
    roots = []
    for p in own_descendants():
        try:
            if p.pid not in before and p.ppid() == me:
                roots.append(p)
        except psutil.Error:
            continue
    return roots


def _subtree(roots):
    """roots and everything under them now (a node's workers start after add_node)."""
    import psutil

    procs = []
    for p in roots:
        try:
            kids = p.children(recursive=True)
        except psutil.Error:
            continue
        procs.append(p)
        procs.extend(kids)
    return procs


def _proc_names(procs):
    """{name: count}; a Python process is named by its script, -m module or -c code."""
    import psutil

    names = {}
    for p in procs:
        try:
            n = p.name()
            if n.startswith("python"):
                cmd = p.cmdline()
                for i, c in enumerate(cmd[1:], 1):
                    if c in ("-m", "-c") and i + 1 < len(cmd):
                        n = f"python {c} {cmd[i + 1].split(';')[0][:50]}"
                        break
                    if c.endswith(".py"):
                        n = f"python {os.path.basename(c)}"
                        break
        except psutil.Error:
            continue
        names[n] = names.get(n, 0) + 1
    return dict(sorted(names.items()))


def _wait_node_gone(rt, key, timeout):
    """Seconds until cluster_resources() no longer lists `key`, or None on timeout."""
    t = pc()
    while pc() - t < timeout:
        if rt.cluster_resources().get(key, 0) == 0:
            return pc() - t
        time.sleep(0.05)
    return None


def wl_cluster(args, line):
    """Cross-node figures on a 2-node local cluster: node join time, actor call RTT to the
    other node, 1 GiB transfers both ways (see bench/README.md, "Cluster")."""
    import numpy as np

    if args.backend == TK_ON_RAY:
        raise RuntimeError(
            f"cluster does not run on {TK_ON_RAY}: it drives trainkit.testing.LocalCluster, "
            "which starts nodes of the built-in runtime"
        )
    rt = import_backend(args.backend)
    node_args = {
        "num_cpus": 1,
        "num_gpus": 0,
        "resources": {"node_b": 1},
        "object_store_memory": CL_STORE,
    }
    line["store_gib_per_node"] = CL_STORE / GB
    bad = []  # verification failures: raised as an error at the end

    def left_s():
        return args.deadline - (pc() - args.t_start)

    t = pc()
    cluster = _RayCluster(rt) if args.backend == "ray" else _TkCluster(rt)
    line["head_start_s"] = round(pc() - t, 3)
    try:
        # ---- the first node_b, then the driver attaches to the head
        before = _descendant_pids()
        line["procs_head_before_connect"] = len(before)
        t = pc()
        node = cluster.add_node(**node_args)
        line["first_add_node_s"] = round(pc() - t, 3)
        b_roots = _node_roots(before)
        t = pc()
        cluster.connect()
        line["connect_s"] = round(pc() - t, 3)
        line["driver_on_head"] = cluster.driver_on_head()
        if line["driver_on_head"] is False:
            raise RuntimeError("the driver attached to node_b, not to the head node")

        @rt.remote(resources={"node_b": 1})
        def where():
            return os.getpid()

        @rt.remote(num_cpus=0, resources={"node_b": 0.01})
        class Pinger:
            def f(self):
                return None

            def pid(self):
                return os.getpid()

        @rt.remote(resources={"node_b": 0.01})
        def recv(a, idx):
            return _cluster_fingerprint(a, idx)

        @rt.remote(resources={"node_b": 0.01})
        def make(seed, nbytes):
            t0 = time.perf_counter()
            a = _cluster_array(seed, nbytes)
            return time.perf_counter() - t0, a

        t = pc()
        task_pid = rt.get(where.remote())
        line["first_task_s"] = round(pc() - t, 3)

        # ---- actor on node_b, sync calls from the driver on the head
        a = Pinger.remote()
        actor_pid = rt.get(a.pid.remote())
        for _ in range(CL_RTT_WARM):
            rt.get(a.f.remote())
        lat = []
        for _ in range(CL_RTT_N):
            t = pc()
            rt.get(a.f.remote())
            lat.append((pc() - t) * 1e3)
        line["actor_rtt_ms"] = round(med(lat), 4)
        line["actor_rtt_p99_ms"] = round(pct(lat, 99), 4)
        line["actor_rtt_mean_ms"] = round(sum(lat) / len(lat), 4)
        line["actor_rtt_n"] = CL_RTT_N

        # ---- processes per node (node_b: the task's and the actor's workers are up)
        time.sleep(1.0)
        b_procs = _subtree(b_roots)
        b_pids = {p.pid for p in b_procs}
        head_procs = [p for p in own_descendants() if p.pid not in b_pids]
        line["procs_head"] = len(head_procs)
        line["procs_node_b"] = len(b_procs)
        line["proc_names_head"] = _proc_names(head_procs)
        line["proc_names_node_b"] = _proc_names(b_procs)
        if b_pids:  # placement check, where node_b's processes can be told apart
            line["placed_on_node_b"] = task_pid in b_pids and actor_pid in b_pids
            if not line["placed_on_node_b"]:
                bad.append(f"task pid {task_pid} / actor pid {actor_pid} not on node_b")
        else:
            line["placed_on_node_b"] = None  # not checked: node_b's processes not found

        # ---- 1 GiB transfers
        t = pc()
        arr = _cluster_array(CL_SEED, GB)
        line["array_gen_s"] = round(pc() - t, 3)
        idx = np.unique(
            np.concatenate(
                [[0, GB - 1], np.random.default_rng(7).integers(0, GB, 4096, dtype=np.int64)]
            )
        )
        want = _cluster_fingerprint(arr, idx)
        small = _cluster_array(CL_SEED, MB)
        rt.get(recv.remote(rt.put(small), idx[idx < MB]))  # warm-up: worker up, code loaded
        rt.get(make.remote(CL_SEED, MB))

        def free():
            gc.collect()
            time.sleep(0.5)  # let both stores free the object (and Ray's secondary copy)

        # (a) driver put on the head -> task on node_b gets the ref as an argument
        def to_node():
            ref = rt.put(arr)  # not timed; a fresh object each time (no cached copy on node_b)
            t = pc()
            got = rt.get(recv.remote(ref, idx))
            dt = pc() - t
            del ref
            if got[0] != want[0] or got[1] != want[1] or list(got[2]) != want[2]:
                bad.append("to_node: node_b saw different bytes (sampled)")
            free()
            return dt

        # (b) a task on node_b makes the array and returns it; the driver gets it
        def from_node(check_all):
            t = pc()
            ref = make.remote(CL_SEED, GB)
            create_s, got = rt.get(ref)
            int(got[GB // 2])  # touch one byte
            dt = pc() - t
            fp = _cluster_fingerprint(got, idx)
            if fp[0] != want[0] or fp[1] != want[1] or list(fp[2]) != want[2]:
                bad.append("from_node: the driver got different bytes (sampled)")
            elif check_all and not np.array_equal(got, arr):
                bad.append("from_node: the driver got different bytes (full compare)")
            del got, ref
            free()
            return dt - create_s, create_s

        # first transfer each way: fresh store pages; reported on its own
        s = to_node()
        line["transfer_1gb_to_node_first_s"] = round(s, 3)
        s, c = from_node(True)
        line["transfer_1gb_from_node_first_s"] = round(s, 3)
        to_s, from_s, create = [], [], []
        budget = Budget(min(45.0, max(10.0, left_s() / 3)), min_reps=1, max_reps=3)
        while budget.more():
            to_s.append(to_node())
            budget.tick()
            line["transfer_1gb_to_node_s"] = round(med(to_s), 3)
            line["transfer_1gb_to_node_mbps"] = round(1024 / med(to_s), 1)
        line["transfer_1gb_to_node_s_all"] = [round(x, 3) for x in to_s]
        budget = Budget(min(45.0, max(10.0, left_s() / 3)), min_reps=1, max_reps=3)
        while budget.more():
            s, c = from_node(budget.done == 0)
            from_s.append(s)
            create.append(c)
            budget.tick()
            line["transfer_1gb_from_node_s"] = round(med(from_s), 3)
            line["transfer_1gb_from_node_mbps"] = round(1024 / med(from_s), 1)
            line["transfer_1gb_from_node_create_s"] = round(med(create), 3)
        line["transfer_1gb_from_node_s_all"] = [round(x, 3) for x in from_s]
        line["transfer_1gb_exact"] = not bad
        arr = None  # free the driver's 1 GiB before the join phase

        # ---- join: add a node, run a task that needs it, remove it; repeat
        rt.kill(a)
        del a
        t = pc()
        cluster.remove_node(node)
        line["remove_node_s"] = round(pc() - t, 3)
        gone = _wait_node_gone(rt, "node_b", CL_NODE_GONE_S)
        line["node_gone_s"] = None if gone is None else round(gone, 3)
        node = None
        joins, adds, removes = [], [], []
        budget = Budget(min(60.0, max(0.0, left_s() - 40.0)), min_reps=1, max_reps=3)
        while budget.more():
            before = _descendant_pids()
            t0 = pc()
            node = cluster.add_node(**node_args)
            t1 = pc()
            pid = rt.get(where.remote())
            t2 = pc()
            b_pids = {p.pid for p in _subtree(_node_roots(before))}
            if b_pids and pid not in b_pids:
                bad.append(f"join: task pid {pid} not on the new node")
            joins.append(t2 - t0)
            adds.append(t1 - t0)
            t = pc()
            cluster.remove_node(node)
            removes.append(pc() - t)
            node = None
            if _wait_node_gone(rt, "node_b", CL_NODE_GONE_S) is None:
                line["node_gone_timeouts"] = line.get("node_gone_timeouts", 0) + 1
            budget.tick()
            line["join_s"] = round(med(joins), 3)
            line["join_add_node_s"] = round(med(adds), 3)
            line["join_s_all"] = [round(x, 3) for x in joins]
        line["join_remove_node_s"] = round(med(removes), 3)
    finally:
        t = pc()
        try:
            cluster.shutdown()
        finally:
            line["shutdown_s"] = round(pc() - t, 3)
    time.sleep(2.0)
    left = own_descendants()
    line["leftover_procs_2s"] = len(left)
    if left:
        line["leftover_names"] = sorted(_proc_names(left))
    if bad:
        raise RuntimeError("; ".join(bad[:5]))


# ----------------------------------------------------------------- main ------
RUNNERS = {
    "init": wl_init,
    "actor_latency": wl_actor_latency,
    "task_throughput": wl_task_throughput,
    "object_store": wl_object_store,
    "baseline_zmq": wl_baseline_zmq,
    "train_startup": wl_train_startup,
    "train_report": wl_train_report,
    "tune_overhead": wl_tune_overhead,
    "tune_overhead_asha": wl_tune_overhead_asha,
    "tune_sleep": wl_tune_sleep,
    "tune_memory": wl_tune_memory,
    "data_images": wl_data_images,
    "data_parquet": wl_data_parquet,
    "data_pipeline": wl_data_pipeline,
    "cluster": wl_cluster,
    "_sample_init": _sample_init,
    "_sample_mem": _sample_mem,
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workload", choices=[*WORKLOADS, "_sample_init", "_sample_mem"])
    ap.add_argument("--backend", choices=BACKENDS, default="trainkit")
    ap.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="watchdog: stop with partial results after this many seconds "
        f"(default {DEADLINE_DEFAULT:g}; "
        + ", ".join(f"{k} {v:g}" for k, v in DEADLINES.items())
        + ")",
    )
    args = ap.parse_args(argv)
    if args.deadline is None:
        args.deadline = DEADLINES.get(args.workload, DEADLINE_DEFAULT)
    args.t_start = pc()

    line = {"bench": args.workload, "backend": args.backend}
    wd = Watchdog(line, args.deadline)
    wd.start()
    t0 = pc()
    rc = 0
    try:
        RUNNERS[args.workload](args, line)
    except BaseException as e:  # report everything, incl. KeyboardInterrupt
        import traceback

        traceback.print_exc()
        line["error"] = f"{type(e).__name__}: {e}"[:500]
        rc = 1
    finally:
        wd.cancel()
    line["wall_s"] = round(pc() - t0, 2)
    line["versions"] = versions()
    line["cpus"] = os.cpu_count()
    line["ts"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    emit(line)
    return rc


if __name__ == "__main__":
    sys.exit(main())
