"""What every workload shares: timing helpers, the result line, the watchdog, the time budget of
repeats, memory sampling and the backend import.

Only the stdlib at import time (psutil and the backends are imported where they are used).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import sys
import threading
import time

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(BENCH)
# the child-process entry point: `python bench/workloads.py <workload> --backend <backend>`
ENTRY = os.path.join(BENCH, "workloads.py")
BACKENDS = ("trainkit", "ray", "trainkit-ray")
# trainkit's layers (Train, Tune, Data) on Ray's engine: the trainkit code path throughout, with
# the runtime started by trainkit.init(..., backend="ray")
TK_ON_RAY = "trainkit-ray"
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
        pickle_by_value()  # Ray's cloudpickle is loaded now
        return out


def pickle_by_value():
    """Make the picklers that are loaded send this package's functions by value.

    The train loops, trainables and map functions the workloads hand to a backend live in
    this package; cloudpickle would send them by reference, and a worker would then import
    wl.<module> itself. Registering the package sends them by value, with the globals they
    use, as it does for code of ``__main__`` (where they lived when the workloads were one
    script). Only picklers already imported are touched: importing one here would change the
    import and memory figures."""
    package = sys.modules[__package__]
    for name in ("cloudpickle", "ray.cloudpickle"):
        mod = sys.modules.get(name)
        register = getattr(mod, "register_pickle_by_value", None)
        if register is not None:
            register(package)


def import_backend(backend: str):
    if is_trainkit(backend) and REPO_ROOT not in sys.path:
        # run as `python bench/workloads.py`, sys.path[0] is bench/: make the repo importable
        sys.path.insert(1, REPO_ROOT)
    if backend == TK_ON_RAY:
        rt = TrainkitOnRay(importlib.import_module("trainkit"))
    else:
        rt = importlib.import_module(backend)
    pickle_by_value()
    return rt


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


def parse_line(stdout: str):
    for ln in reversed((stdout or "").splitlines()):
        ln = ln.strip()
        if ln.startswith('{"bench"'):
            try:
                return json.loads(ln)
            except ValueError:
                return None
    return None
