"""The cluster workload: cross-node figures on a 2-node local cluster.

Two nodes on this one machine: a head (1 CPU; the driver attaches to it) and "node_b"
(1 CPU, custom resource {"node_b": 1}), each with its own processes and object store.
Ray: ray.cluster_utils.Cluster; trainkit: trainkit.testing.LocalCluster. The workload code
talks to both through _RayCluster / _TkCluster (start, add_node, connect, remove_node,
shutdown) and otherwise uses only rt.remote/get/put/kill/cluster_resources.
"""

from __future__ import annotations

import gc
import os
import time

from .common import GB
from .common import MB
from .common import TK_ON_RAY
from .common import Budget
from .common import import_backend
from .common import med
from .common import own_descendants
from .common import pc
from .common import pct
from .registry import workload

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


# 2-node local cluster: Ray took 60-86 s in all on 2026-11-26 (head 5-14 s, each of the
# 1 + 3 node adds 1-4 s plus ~1 s to its first task, 8 x 1 GiB transfers ~2 s each).
# Not on trainkit-ray: it drives trainkit.testing.LocalCluster, whose nodes are the built-in
# runtime's.
@workload(
    "cluster",
    about="2-node local cluster (Ray's cluster_utils.Cluster, trainkit.testing."
    "LocalCluster): node join to first task, actor call RTT to the other node, 1 GiB "
    "transfers both ways (MB/s), processes per node",
    deadline_s=180.0,
    on_ray=False,
)
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
