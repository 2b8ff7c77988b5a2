"""The hang doctor's overhead per step at 10 steps/s (issue 15, section 4; goal <= 1 %).

Two ranks run a loop of ``--steps`` steps of 100 ms each (``time.sleep(0.1)``: the pace of a
real 10 steps/s loop without its noise), each step ending in ``train.report()``, once with
hang detection on (``FailureConfig(report_timeout_s=300.0)``, the default) and once off
(``report_timeout_s=None``), alternating, ``--rounds`` times each. The figure is each rank's
time from one report to the next, measured inside the loop (median over every step of every
round), and the whole ``fit()``. The doctor costs nothing on the ranks until one is silent;
its per-report work is in the driver (who reported when, the straggler decision), so the
driver's bookkeeping per iteration is also timed on its own (``find_straggler`` over a full
window), as a share of a 100 ms step.

    .venv/bin/python bench/hang_overhead.py [--steps 50] [--rounds 2]

Prints one JSON line per configuration and a summary line with the overhead in percent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import timeit
from typing import Any

STEP_S = 0.1  # 10 steps/s


def paced_loop(config: dict[str, Any]) -> None:
    from trainkit import train

    rank = train.get_context().get_world_rank()
    gaps = []
    last = time.perf_counter()
    for i in range(config["steps"]):
        time.sleep(STEP_S)
        train.report({"i": i})
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    with open(os.path.join(config["out"], f"rank{rank}.json"), "w") as f:
        json.dump(gaps, f)


def run_once(steps: int, timeout: float | None, root: str, tag: str) -> dict[str, Any]:
    from trainkit.train import FailureConfig
    from trainkit.train import RunConfig
    from trainkit.train import ScalingConfig
    from trainkit.train import Trainer

    out = tempfile.mkdtemp(prefix=f"{tag}-", dir=root)
    t0 = time.perf_counter()
    Trainer(paced_loop, train_loop_config={"steps": steps, "out": out},
            scaling_config=ScalingConfig(num_workers=2),
            run_config=RunConfig(name=tag, storage_path=root, verbose=0,
                                 failure_config=FailureConfig(report_timeout_s=timeout))).fit()
    fit_s = time.perf_counter() - t0
    gaps: list[float] = []
    for rank in (0, 1):
        with open(os.path.join(out, f"rank{rank}.json")) as f:
            gaps.extend(json.load(f)[1:])  # the first gap includes the loop's start
    return {"fit_s": fit_s, "gaps": gaps}


def driver_cost_us() -> float:
    """One iteration's straggler decision over a full window of 2 ranks, in microseconds."""
    from trainkit.train._recorder import STRAGGLER_WINDOW
    from trainkit.train._recorder import find_straggler

    arrivals = [{0: i * STEP_S, 1: i * STEP_S + 0.001} for i in range(STRAGGLER_WINDOW)]
    n = 2000
    return timeit.timeit(lambda: find_straggler(arrivals), number=n) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import trainkit as tk

    tk.init(num_cpus=2)
    try:
        with tempfile.TemporaryDirectory(prefix="hang-overhead-") as root:
            run_once(5, None, root, "warmup")  # the first fit forks the workers' template
            samples: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
            for _ in range(args.rounds):
                samples["on"].append(run_once(args.steps, 300.0, root, "on"))
                samples["off"].append(run_once(args.steps, None, root, "off"))
    finally:
        tk.shutdown()
    medians = {}
    for name, runs in samples.items():
        gaps = [g for r in runs for g in r["gaps"]]
        medians[name] = statistics.median(gaps)
        print(json.dumps({"config": f"report_timeout_s={'300.0' if name == 'on' else 'None'}",
                          "median_step_ms": round(medians[name] * 1e3, 3),
                          "mean_step_ms": round(statistics.fmean(gaps) * 1e3, 3),
                          "steps": len(gaps),
                          "fit_s": [round(r["fit_s"], 3) for r in runs]}))
    cost = driver_cost_us()
    overhead = (medians["on"] - medians["off"]) / medians["off"] * 100
    print(json.dumps({"overhead_per_step_pct": round(overhead, 3),
                      "driver_bookkeeping_us_per_iteration": round(cost, 2),
                      "driver_bookkeeping_pct_of_step": round(cost * 1e-6 / STEP_S * 100, 5),
                      "goal_pct": 1.0}))


if __name__ == "__main__":
    main()
