"""What the ledger and the dashboard cost (issue 18's goals), printed as figures.

1. Train: the run ledger's time per ``train.report()`` (goal: < 1 % of a report's time). A
   Trainer makes ``--reports`` reports on ``--workers`` ranks, a checkpoint every ``--every``;
   every ``RunLedger.append``/``flush`` the driver makes is timed, and set against the run's
   productive time per report (from the ledger itself).
2. Tune: the sweep ledger's time per trial result, against the sweep's wall time per result
   (``--trials`` function trials of ``--reports`` results each).
3. The dashboard's idle memory (goal: < 60 MB RSS): ``trainkit dashboard`` over the storage
   the runs above wrote, every page fetched once, then idle; its RSS read from /proc. Also with
   ``--address auto`` (joined to this script's runtime: the runtime's client is loaded).
4. ``--ray``: Ray's dashboard processes' RSS in the same run (``bench/.venv-ray``, a local
   ``ray.init(include_dashboard=True)``), summed over the dashboard and its agents.

    .venv/bin/python bench/ledger_cost.py [--reports 300] [--step-ms 0] [--trials 8] [--ray]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

import trainkit as tk
from trainkit import train
from trainkit import tune
from trainkit.train import Checkpoint
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer
from trainkit.train import _ledger
from trainkit.train._goodput import summarize
from trainkit.train._goodput import summarize_sweep
from trainkit.train._ledger import read_ledger
from trainkit.train._storage import local_location
from trainkit.tune import _sweep_ledger

ROOT = Path(__file__).resolve().parent.parent
IDLE_S = 3.0
MB = 2**20


def loop(config: dict[str, Any]) -> None:
    for step in range(config["reports"]):
        if config["step_s"]:
            time.sleep(config["step_s"])  # stands for a training step's work
        metrics = {"step": step, "loss": 1.0 / (step + 1)}
        if step % config["every"] == 0:
            with tempfile.TemporaryDirectory() as d:
                Path(d, "w.bin").write_bytes(b"\0" * 4096)
                train.report(metrics, checkpoint=Checkpoint.from_directory(d))
        else:
            train.report(metrics)


def trial(config: dict[str, Any]) -> None:
    for i in range(1, config["reports"] + 1):
        tune.report({"loss": config["x"] ** 2 + 1.0 / i})


class Timer:
    """Wraps methods of a class, summing their time and calls (what they trigger included)."""

    def __init__(self) -> None:
        self.spent = 0.0  # wall seconds (perf_counter): on a busy machine, waits count too
        self.cpu = 0.0  # CPU seconds of the calling thread (thread_time): the work itself
        self.calls = 0
        self._undo: list[Callable[[], None]] = []

    def wrap(self, cls: type, *names: str) -> None:
        for name in names:
            original = getattr(cls, name)

            def timed(obj: Any, *a: Any, _f: Any = original, **k: Any) -> Any:
                began, cpu = time.perf_counter(), time.thread_time()
                try:
                    return _f(obj, *a, **k)
                finally:
                    self.cpu += time.thread_time() - cpu
                    self.spent += time.perf_counter() - began
                    self.calls += 1

            setattr(cls, name, timed)
            self._undo.append(lambda c=cls, n=name, o=original: setattr(c, n, o))

    def restore(self) -> None:
        for undo in self._undo:
            undo()


def bench_train(storage: str, args: argparse.Namespace) -> None:
    timer = Timer()
    # append's time includes the flushes it triggers; flushes called on their own are added.
    timer.wrap(_ledger.RunLedger, "append")
    flushes = Timer()
    flushes.wrap(_ledger.RunLedger, "flush")
    try:
        Trainer(loop, train_loop_config={"reports": args.reports, "every": args.every,
                                         "step_s": args.step_ms / 1000},
                scaling_config=ScalingConfig(num_workers=args.workers),
                run_config=RunConfig(name="train-bench", storage_path=storage,
                                     verbose=0)).fit()
    finally:
        timer.restore()
        flushes.restore()
    found = read_ledger(local_location(os.path.join(storage, "train-bench")))
    assert found is not None
    s = summarize(found[0])
    wall, cpu = timer.spent / args.reports, timer.cpu / args.reports
    step = s["productive_s"] / args.reports
    print(f"train: {args.reports} reports on {args.workers} ranks, a checkpoint every "
          f"{args.every}, {args.step_ms:g} ms of work a step: {timer.calls} ledger events, "
          f"{flushes.calls} writes; a report's productive time {step * 1e3:.2f} ms; the "
          f"ledger per report: CPU "
          f"{cpu * 1e6:.1f} us = {100 * cpu / step:.3f} % (goal < 1 %), wall {wall * 1e6:.1f} "
          f"us = {100 * wall / step:.3f} % (waits for a busy CPU included)")


def bench_tune(storage: str, args: argparse.Namespace) -> None:
    timer = Timer()
    methods = [n for n in vars(_sweep_ledger.SweepLedger) if not n.startswith("_")]
    timer.wrap(_sweep_ledger.SweepLedger, *methods)
    began = time.perf_counter()
    try:
        tune.Tuner(trial, param_space={"x": tune.uniform(-2, 2), "reports": args.reports},
                   tune_config=tune.TuneConfig(metric="loss", mode="min",
                                               num_samples=args.trials),
                   run_config=RunConfig(name="tune-bench", storage_path=storage,
                                        verbose=0)).fit()
    finally:
        timer.restore()
    wall = time.perf_counter() - began
    found = read_ledger(local_location(os.path.join(storage, "tune-bench")))
    assert found is not None
    s = summarize_sweep(found[0])
    results = args.trials * args.reports
    per_wall, per_cpu, per = timer.spent / results, timer.cpu / results, wall / results
    print(f"tune: {args.trials} trials x {args.reports} results: {timer.calls} ledger calls; "
          f"the sweep's wall time per result {per * 1e3:.2f} ms; the ledger per result: CPU "
          f"{per_cpu * 1e6:.1f} us = {100 * per_cpu / per:.3f} %, wall {per_wall * 1e6:.1f} us "
          f"= {100 * per_wall / per:.3f} % (report: {s['status']}, {len(s['trials'])} trials)")


def dashboard_rss(storage: str, address: str | None) -> float:
    """RSS in MB of an idle ``trainkit dashboard`` that has served every page once."""
    cmd = [sys.executable, "-m", "trainkit.cli", "dashboard", "--storage", storage,
           "--port", "0"] + (["--address", address] if address else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"http://\S+?(?=[ ,]|$)", line)
        if found is None:
            raise RuntimeError(f"the dashboard did not start: {line!r}")
        url = found.group(0)
        pages = ["/", "/run/train-bench", "/sweep/tune-bench", "/api/runs"] + (
            ["/cluster"] if address else [])
        for page in pages:
            with urllib.request.urlopen(url + page, timeout=30) as r:
                r.read()
        time.sleep(IDLE_S)  # idle: what it holds between requests, not while answering
        return float(psutil.Process(proc.pid).memory_info().rss) / MB
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def ray_dashboard_rss() -> str:
    python = ROOT / "bench" / ".venv-ray" / "bin" / "python"
    if not python.exists():
        return "Ray: bench/.venv-ray is missing (bench/setup_ray_venv.sh makes it)"
    code = f"""
import os, time, psutil, ray
ray.init(num_cpus=1, include_dashboard=True, dashboard_host="127.0.0.1")
time.sleep({IDLE_S} + 5)
# this session's processes only (other Ray sessions on the machine are not ours)
procs = [p for p in psutil.Process().children(recursive=True)
         if any("dashboard" in part for part in p.cmdline()[:2])]
rows = [("/".join(c.split("/")[-2:]) if c.endswith(".py") else p.name(), p.memory_info().rss)
        for p in procs for c in [next((c for c in p.cmdline() if c.endswith(".py")), "")]]
print(";".join(f"{{n}}={{r / 2**20:.0f}}" for n, r in rows))
ray.shutdown()
"""
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                          timeout=240)
    if done.returncode != 0:
        return f"Ray: failed ({done.stderr.strip().splitlines()[-1:]})"
    rows = [kv.rpartition("=")[::2] for kv in done.stdout.strip().splitlines()[-1].split(";")
            if kv]
    total = sum(float(v) for _, v in rows)
    return (f"Ray 2.60's dashboard processes, idle: {total:.0f} MB RSS in all ("
            + ", ".join(f"{n} {v} MB" for n, v in rows) + ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reports", type=int, default=300)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--step-ms", type=float, default=0.0,
                        help="work per training step (a sleep); 0: reports back to back, the "
                             "worst case for the ledger's share")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--ray", action="store_true", help="also measure Ray's dashboard")
    args = parser.parse_args()
    storage = tempfile.mkdtemp(prefix="bench-ledger-cost-")
    try:
        tk.init(num_cpus=max(2, args.workers))
        try:
            bench_train(storage, args)
            bench_tune(storage, args)
            print(f"dashboard: idle RSS {dashboard_rss(storage, None):.1f} MB on local storage "
                  "(goal < 60 MB)")
            print(f"dashboard --address auto: idle RSS {dashboard_rss(storage, 'auto'):.1f} MB "
                  "(joined to a cluster as a driver)")
        finally:
            tk.shutdown()
        if args.ray:
            print(ray_dashboard_rss())
    finally:
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
