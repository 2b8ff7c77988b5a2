"""The run ledger's cost per report (issue 18's goal: < 1 % of a report's time).

Runs a Trainer (``--workers`` ranks, ``--reports`` reports, a checkpoint every
``--every``-th) on ``--storage`` (default: a new temporary local folder), times every
``RunLedger.append``/``flush`` the driver makes, and prints the ledger's time per report next
to the run's time per report (its wall time over its reports, from the ledger itself).

    .venv/bin/python tests/train/bench_ledger.py --reports 300 --every 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Any

from trainkit import train
from trainkit.train import Checkpoint
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer
from trainkit.train import _ledger
from trainkit.train._goodput import summarize
from trainkit.train._ledger import read_ledger
from trainkit.train._storage import resolve


def loop(config: dict[str, Any]) -> None:
    for step in range(config["reports"]):
        if step % config["every"] == 0:
            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, "w.bin"), "wb") as f:
                    f.write(b"\0" * 4096)
                train.report({"step": step, "loss": 1.0 / (step + 1)},
                             checkpoint=Checkpoint.from_directory(d))
        else:
            train.report({"step": step, "loss": 1.0 / (step + 1)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reports", type=int, default=300)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--storage", default=None)
    args = parser.parse_args()
    storage = args.storage or tempfile.mkdtemp(prefix="bench-ledger-")
    spent = {"append": 0.0, "flush": 0.0}
    calls = {"append": 0, "flush": 0}
    for name in ("append", "flush"):
        original = getattr(_ledger.RunLedger, name)

        def timed(self: Any, *a: Any, _f: Any = original, _n: str = name, **k: Any) -> None:
            began = time.perf_counter()
            _f(self, *a, **k)
            spent[_n] += time.perf_counter() - began
            calls[_n] += 1

        setattr(_ledger.RunLedger, name, timed)
    try:
        Trainer(loop, train_loop_config={"reports": args.reports, "every": args.every},
                scaling_config=ScalingConfig(num_workers=args.workers),
                run_config=RunConfig(name="bench", storage_path=storage, verbose=0)).fit()
        run = resolve(storage).join("bench")
        found = read_ledger(run)
        assert found is not None
        s = summarize(found[0])
        # append's time includes the flushes it triggers; flush's count includes those.
        per_report = spent["append"] / args.reports
        step = s["productive_s"] / args.reports
        print(f"{args.reports} reports, {args.workers} ranks, a checkpoint every {args.every}: "
              f"{calls['append']} events, {calls['flush']} flushes, "
              f"ledger {per_report * 1e6:.1f} us per report; "
              f"the run's productive time per report {step * 1e3:.2f} ms "
              f"(wall {s['wall_s']:.2f} s): ledger = {100 * per_report / step:.3f} % of it")
    finally:
        if args.storage is None:
            shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
