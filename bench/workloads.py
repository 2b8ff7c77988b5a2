"""Backend-neutral benchmarks: the same code runs on trainkit and on Ray.

    python bench/workloads.py <workload> --backend {trainkit,ray,trainkit-ray}

Runs one workload in this process and prints its result line; compare.py runs each workload
this way, in a fresh process. The workloads live in bench/wl/, one module per layer, each
declared once with @workload (bench/wl/registry.py); --help lists them.

The backend module is imported as ``rt`` (``import trainkit as rt`` or ``import ray as rt``)
and only the API names the two share are used: init(num_cpus=2), shutdown, remote, get, put,
wait, cluster_resources. The third backend, ``trainkit-ray``, is trainkit's own code path
(trainkit.train / tune / data, the trainkit branch everywhere) with its runtime on Ray's engine:
``rt`` is trainkit behind a thin wrapper whose init() always passes backend="ray" (see
TrainkitOnRay in bench/wl/common.py). It runs under the interpreter that has trainkit and Ray
(.venv/bin/python). The last stdout line is one JSON object

    {"bench": <workload>, "backend": <backend>, <metric>: <value>, ...}

Everything else (progress, the runtimes' own logs) goes to stderr or comes before it. On an
error the line carries "error" and whatever metrics were measured before it; the exit code is
then non-zero.

Method (the same as the Ray anchors in ../shared/anchors/ray/): warm up first, then report the
median (and sometimes p99) over repeats, timed with time.perf_counter. Each workload starts its
own runtime with init(num_cpus=2) and all other settings left at the backend's defaults.

Guard rails: a workload stops repeating once its time budget is used (it always keeps at least
one repeat), and a watchdog ends it at --deadline seconds (default 85; each workload's own is
declared with it, 120-480 s for the train, tune, data and cluster workloads): it prints the
partial results with an error, stops the processes this driver started (its own descendants,
nothing else) and exits with code 3.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time

from wl import BACKENDS
from wl import DEADLINE_DEFAULT
from wl import DEADLINES
from wl import WORKLOADS
from wl import registry
from wl.common import Watchdog
from wl.common import emit
from wl.common import pc
from wl.common import versions


def _epilog():
    rows = [
        textwrap.fill(w.about, 96, initial_indent=f"  {w.name:<19}", subsequent_indent=" " * 21)
        for w in registry.all_workloads()
        if w.listed
    ]
    return "workloads (see bench/README.md for the metric list):\n" + "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    internal = [w.name for w in registry.all_workloads() if not w.listed]  # _sample_* children
    ap.add_argument("workload", choices=[*WORKLOADS, *internal])
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
        registry.get(args.workload).run(args, line)
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
