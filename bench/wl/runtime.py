"""The runtime workloads: init, actor_latency, task_throughput, object_store, the floors with no
runtime (baseline_zmq: bare pyzmq REQ/REP; baseline_pool: multiprocessing.Pool(2)), and
task_backlog (100,000 queued tasks) and actor_memory (PSS per idle actor). Only the API names
the backends share are used: init(num_cpus=2), shutdown, remote, get, put, wait, kill,
cluster_resources.
"""

from __future__ import annotations

import gc
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time

from .common import ENTRY
from .common import GB
from .common import MB
from .common import REPO_ROOT
from .common import Budget
from .common import import_backend
from .common import med
from .common import own_descendants
from .common import parse_line
from .common import pc
from .common import pct
from .common import runtime_memory
from .common import session_marker
from .common import stop_group
from .common import stop_processes
from .registry import workload


# ----------------------------------------------------------------- init ------
@workload("_sample_init", listed=False)
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


@workload("_sample_mem", listed=False)
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
    cmd = [sys.executable, ENTRY, f"_sample_{kind}", "--backend", args.backend]
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


@workload(
    "init",
    about="init()+shutdown() wall time over fresh interpreters; memory of the runtime's "
    "processes 3 s after the first no-op task; first-task latency",
)
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
N_SYNC_BLOCK = 400  # the sync calls come in blocks of this many, each followed by the floor's


class _ZmqFloor:
    """The bare pyzmq REQ/REP round trip of baseline_zmq (the same server, message and
    pickling), measured inside actor_latency in blocks between the actor calls, so that the
    floor and the figure set against it see the same load: on this shared machine the bare
    round trip alone moves between 40 and 120 us from one minute to the next. The server is
    forked before the runtime is imported or started (no threads to fork yet)."""

    def __init__(self):
        import multiprocessing as mp

        import zmq

        self.dir = tempfile.mkdtemp(prefix="tkbench_zmqfloor_")
        addr = f"ipc://{self.dir}/rep.sock"
        self.proc = mp.get_context("fork").Process(
            target=_zmq_server, args=(addr, "rep"), daemon=True
        )
        self.proc.start()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.RCVTIMEO, 20_000)
        self.sock.connect(addr)
        self.closed = False

    def block(self, n):
        """n round trips; their times in us."""
        dumps, loads, sock = pickle.dumps, pickle.loads, self.sock
        lat = []
        for i in range(n):
            t = pc()
            sock.send(dumps(("call", i, "f", (), {}), protocol=5))
            loads(sock.recv())
            lat.append((pc() - t) * 1e6)
        return lat

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.send(pickle.dumps(("stop", -1, "", (), {}), protocol=5))
            self.sock.recv()
        except Exception:
            pass
        self.sock.close(linger=0)
        self.ctx.term()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(2)
        shutil.rmtree(self.dir, ignore_errors=True)


@workload("actor_latency", about="sync actor call round trip (median, p99); async calls/s")
def wl_actor_latency(args, line):
    floor = _ZmqFloor()
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
        floor.block(N_SYNC_WARM)
        lat, zlat = [], []
        for _ in range(N_SYNC // N_SYNC_BLOCK):
            for _ in range(N_SYNC_BLOCK):
                t = pc()
                rt.get(a.f.remote())
                lat.append((pc() - t) * 1e6)
            zlat += floor.block(N_SYNC_BLOCK)
        floor.close()
        line["sync_rtt_us"] = round(med(lat), 1)
        line["sync_rtt_p99_us"] = round(pct(lat, 99), 1)
        line["sync_rtt_mean_us"] = round(sum(lat) / len(lat), 1)
        line["n_sync"] = len(lat)
        # the floor, from the blocks between the actor calls
        line["zmq_rtt_paired_us"] = round(med(zlat), 1)
        line["sync_rtt_vs_zmq"] = round(med(lat) / med(zlat), 3)

        rt.get([a.f.remote() for _ in range(1000)])  # warm-up
        thr, sub = [], []
        budget = Budget(30.0, min_reps=3, max_reps=3)
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
        floor.close()


# ------------------------------------------------------ task_throughput ------
N_NOOP = 10_000
N_SLEEP = 1_000
SLEEP_S = 0.01


@workload(
    "task_throughput",
    about="no-op tasks/s; sync task round trip; 1,000 x 10 ms sleep tasks on 2 CPUs",
)
def wl_task_throughput(args, line):
    import multiprocessing as mp

    # the floor of no-op tasks/s (baseline_pool's Pool), run between the 10k repeats below so
    # that it sees the same load; forked before the runtime is imported or started
    pool = mp.get_context("fork").Pool(2)
    rt = None
    try:
        backend = import_backend(args.backend)
        backend.init(num_cpus=2)
        rt = backend
        _task_throughput(rt, pool, line)
    finally:
        if rt is not None:
            rt.shutdown()
        pool.terminate()
        pool.join()


def _task_throughput(rt, pool, line):
    @rt.remote
    def noop():
        return None

    @rt.remote
    def sleeper():
        time.sleep(SLEEP_S)
        return None

    rt.get([noop.remote() for _ in range(1000)])  # warm-up, workers up
    pool.map(_pool_noop, range(1000), chunksize=1)
    thr, pool_thr = [], []
    budget = Budget(25.0, min_reps=3, max_reps=3)
    while budget.more():
        t = pc()
        refs = [noop.remote() for _ in range(N_NOOP)]
        rt.get(refs)
        thr.append(N_NOOP / (pc() - t))
        del refs
        t = pc()
        pool.map(_pool_noop, range(N_POOL), chunksize=1)
        pool_thr.append(N_POOL / (pc() - t))
        budget.tick()
        line["noop_tasks_s"] = round(med(thr), 0)
    line["noop_tasks_s_all"] = [round(x, 0) for x in thr]
    line["pool_tasks_s_paired"] = round(med(pool_thr), 0)
    line["pool_tasks_s_paired_all"] = [round(x, 0) for x in pool_thr]
    line["noop_vs_pool"] = round(med(thr) / med(pool_thr), 3)

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
    budget = Budget(22.0, min_reps=3, max_reps=3)
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


@workload(
    "object_store",
    about="put/get of 100 MB and 1 GB numpy arrays, zero-copy check, task(ref) sum",
)
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


@workload(
    "baseline_zmq",
    about="bare pyzmq REQ/REP round trip over ipc:// (the physical floor; no runtime)",
)
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


# -------------------------------------------------------- baseline_pool ------
N_POOL = 10_000


def _pool_noop(x):
    return None


@workload(
    "baseline_pool",
    about="multiprocessing.Pool(2) (fork) no-op tasks/s, map with chunksize=1: the floor of "
    "no-op tasks/s (no runtime)",
)
def wl_baseline_pool(args, line):
    """The floor of no-op tasks/s, as ../shared/anchors/ray/baselines.py measures it: a fork
    Pool(2), a 1,000-task warm-up map, then pool.map(noop, range(10,000), chunksize=1), one
    message per task each way; median of 5. No runtime is imported."""
    import multiprocessing as mp

    with mp.get_context("fork").Pool(2) as pool:
        pool.map(_pool_noop, range(1000), chunksize=1)  # workers up
        thr = []
        for _ in range(5):
            t = pc()
            pool.map(_pool_noop, range(N_POOL), chunksize=1)
            thr.append(N_POOL / (pc() - t))
        line["pool_chunk1_tasks_s"] = round(med(thr), 0)
        line["pool_chunk1_tasks_s_all"] = [round(x, 0) for x in thr]
        thr = []
        for _ in range(3):
            t = pc()
            rs = [pool.apply_async(_pool_noop, (i,)) for i in range(N_POOL)]
            for r in rs:
                r.get()
            thr.append(N_POOL / (pc() - t))
        line["pool_apply_async_tasks_s"] = round(med(thr), 0)
    line["pool_n_tasks"] = N_POOL


# --------------------------------------------------------- task_backlog ------
N_BACKLOG = 100_000


@workload(
    "task_backlog",
    about="100,000 queued no-op tasks (submit all, then one get) against the 10k rate in "
    "the same process",
    deadline_s=240.0,
)
def wl_task_backlog(args, line):
    """Does the no-op rate hold with 100,000 tasks queued? After a 1,000-task warm-up, pairs
    of (10,000 tasks, then 100,000 tasks), each submitted in full and then fetched with one
    get(), as task_throughput does. The 100k repeats stop once 90 s are spent (at least one;
    Ray's one repeat takes ~80 s here); the 10k rate gets at least 3 repeats. The ratio is
    median 100k rate / median 10k rate, both from this process."""
    rt = import_backend(args.backend)
    rt.init(num_cpus=2)
    try:

        @rt.remote
        def noop():
            return None

        rt.get([noop.remote() for _ in range(1000)])  # warm-up, workers up

        def rate(n):
            t = pc()
            refs = [noop.remote() for _ in range(n)]
            ts = pc()
            rt.get(refs)
            te = pc()
            del refs
            gc.collect()
            return n / (te - t), ts - t

        r10, r100, sub100 = [], [], []
        budget = Budget(90.0, min_reps=1, max_reps=3)
        while budget.more():
            r10.append(rate(N_NOOP)[0])
            r, s = rate(N_BACKLOG)
            r100.append(r)
            sub100.append(s)
            budget.tick()
            line["backlog_10k_tasks_s"] = round(med(r10), 0)
            line["backlog_100k_tasks_s"] = round(med(r100), 0)
        while len(r10) < 3:
            r10.append(rate(N_NOOP)[0])
        line["backlog_10k_tasks_s"] = round(med(r10), 0)
        line["backlog_100k_tasks_s"] = round(med(r100), 0)
        line["backlog_10k_tasks_s_all"] = [round(x, 0) for x in r10]
        line["backlog_100k_tasks_s_all"] = [round(x, 0) for x in r100]
        line["backlog_100k_submit_s"] = round(med(sub100), 2)
        line["backlog_100k_vs_10k"] = round(med(r100) / med(r10), 3)
        line["backlog_n_100k"] = len(r100)
    finally:
        rt.shutdown()


# --------------------------------------------------------- actor_memory ------
N_IDLE_ACTORS = 20


def _runtime_pss(marker, samples=3, gap=0.5):
    """runtime_memory() taken `samples` times, `gap` s apart; the median of each figure."""
    got = []
    for i in range(samples):
        if i:
            time.sleep(gap)
        got.append(runtime_memory(marker))
    return {k: med(m[k] for m in got) for k in ("n_procs", "rss_mb", "pss_mb", "uss_mb")}


def _wait_procs(n_max, timeout):
    """Wait until this driver has at most n_max descendant processes; return the count."""
    t_end = pc() + timeout
    n = len(own_descendants())
    while n > n_max and pc() < t_end:
        time.sleep(0.2)
        n = len(own_descendants())
    return n


@workload(
    "actor_memory",
    about="PSS per extra idle actor: the PSS summed over the runtime's processes with 20 idle "
    "actors against none (median of 3 cycles)",
    deadline_s=200.0,
)
def wl_actor_memory(args, line):
    """The memory an idle actor costs. After init(num_cpus=2), one no-op task and a 3 s
    settle, each cycle: the PSS (and RSS, USS) summed over the runtime's processes (the
    driver's descendants plus, on Ray, any process naming the session directory; the driver
    itself left out), as in `init`; median of 3 samples 0.5 s apart. Then 20 actors of a
    class with one no-op method (default resources: 0 CPU to run), each called once, 3 s to
    settle, and the same sums again. Per actor: (with 20 - with 0) / 20. The actors are then
    killed and the cycle waits (up to 20 s) until the runtime is back to its process count.
    3 cycles (Ray's take about 25 s each here); the median over cycles."""
    rt = import_backend(args.backend)
    rt.init(num_cpus=2)
    try:
        marker = session_marker(rt, args.backend)

        @rt.remote
        def noop():
            return None

        @rt.remote
        class Idle:
            def pid(self):
                return os.getpid()

        rt.get(noop.remote())
        time.sleep(3.0)
        per = {"pss_mb": [], "rss_mb": [], "uss_mb": [], "n_procs": []}
        base0, create_s, counts = None, [], []
        budget = Budget(150.0, min_reps=3, max_reps=3)
        while budget.more():
            n_base_procs = len(own_descendants())
            base = _runtime_pss(marker)
            if base0 is None:
                base0 = base
            t = pc()
            actors = [Idle.remote() for _ in range(N_IDLE_ACTORS)]
            pids = rt.get([a.pid.remote() for a in actors])
            create_s.append(pc() - t)
            if len(set(pids)) != N_IDLE_ACTORS:
                line["actor_pids_distinct"] = len(set(pids))
            time.sleep(3.0)
            loaded = _runtime_pss(marker)
            for k in per:
                per[k].append((loaded[k] - base[k]) / N_IDLE_ACTORS)
            counts.append([base["n_procs"], loaded["n_procs"]])
            for a in actors:
                rt.kill(a)
            del actors
            gc.collect()
            line["actor_procs_after_kill"] = _wait_procs(n_base_procs, timeout=20.0)
            time.sleep(1.0)
            budget.tick()
            line["actor_pss_mb_per_actor"] = round(med(per["pss_mb"]), 2)
        line["actor_pss_mb_per_actor"] = round(med(per["pss_mb"]), 2)
        line["actor_pss_mb_per_actor_all"] = [round(x, 2) for x in per["pss_mb"]]
        line["actor_rss_mb_per_actor"] = round(med(per["rss_mb"]), 2)
        line["actor_uss_mb_per_actor"] = round(med(per["uss_mb"]), 2)
        line["actor_procs_per_actor"] = round(med(per["n_procs"]), 2)
        line["actor_n_procs_all"] = counts  # [without, with the 20 actors] per cycle
        line["actor_base_pss_mb"] = base0["pss_mb"]
        line["actor_base_n_procs"] = base0["n_procs"]
        line["actor_create_20_s"] = round(med(create_s), 2)
        line["actor_n_cycles"] = len(per["pss_mb"])
    finally:
        rt.shutdown()
