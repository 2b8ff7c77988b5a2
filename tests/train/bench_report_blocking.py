"""How long ``train.report()`` holds the loop for a 256 MB checkpoint (issue 14, section 5).

Not a test (pytest does not collect it). One worker writes its state (``--mb`` MB of float32)
to a folder and reports it, ``--reports`` times per mode, in ``async`` and ``sync`` mode, to a
run on ``--storage`` (default: a new temporary local folder). Reference: a plain memcpy of the
same state (``numpy.copyto`` into a preallocated array) and a local copy of the folder
(``shutil.copytree``), both measured in the same worker. Prints one JSON line per figure
(median and each sample, in milliseconds) and the ratio async / memcpy.

    .venv/bin/python tests/train/bench_report_blocking.py [--mb 256] [--reports 3]
        [--storage PATH_OR_URI]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Any


def bench_loop(config: dict[str, Any]) -> None:
    import numpy as np

    from trainkit import train
    from trainkit.train import Checkpoint

    state = np.random.default_rng(0).random(config["mb"] << 18, dtype=np.float32)
    spare = np.empty_like(state)
    np.copyto(spare, state)  # fault its pages in before timing
    out: dict[str, list[float]] = {"memcpy": [], "copytree": [], "async": [], "sync": []}
    for mode in ("async", "sync"):
        for i in range(config["reports"]):
            d = tempfile.mkdtemp(prefix="bench-ckpt-")
            state.tofile(os.path.join(d, "state.bin"))
            t0 = time.perf_counter()
            np.copyto(spare, state)
            out["memcpy"].append(time.perf_counter() - t0)
            ref = tempfile.mkdtemp(prefix="bench-ref-")
            t0 = time.perf_counter()
            shutil.copytree(d, ref, dirs_exist_ok=True)
            out["copytree"].append(time.perf_counter() - t0)
            shutil.rmtree(ref)
            t0 = time.perf_counter()
            train.report({"mode": mode, "i": i}, checkpoint=Checkpoint.from_directory(d),
                         checkpoint_upload_mode=mode)
            out[mode].append(time.perf_counter() - t0)
            shutil.rmtree(d)
    if train.get_context().get_world_rank() == 0:
        with open(config["out"], "w") as f:
            json.dump(out, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--reports", type=int, default=3)
    parser.add_argument("--storage", default=None)
    args = parser.parse_args()

    import trainkit
    from trainkit.train import CheckpointConfig
    from trainkit.train import RunConfig
    from trainkit.train import ScalingConfig
    from trainkit.train import Trainer

    work = tempfile.mkdtemp(prefix="bench-report-")
    try:
        out = os.path.join(work, "times.json")
        Trainer(bench_loop, train_loop_config={"mb": args.mb, "reports": args.reports,
                                               "out": out},
                scaling_config=ScalingConfig(num_workers=1),
                run_config=RunConfig(name="bench", storage_path=args.storage or work,
                                     verbose=0,
                                     checkpoint_config=CheckpointConfig(num_to_keep=1))).fit()
        with open(out) as f:
            times = json.load(f)
        medians = {}
        for name, samples in times.items():
            medians[name] = statistics.median(samples) * 1e3
            print(json.dumps({"figure": f"report_blocking_{name}", "mb": args.mb,
                              "median_ms": round(medians[name], 1),
                              "samples_ms": [round(s * 1e3, 1) for s in samples]}))
        print(json.dumps({"figure": "async_over_memcpy", "mb": args.mb,
                          "ratio": round(medians["async"] / medians["memcpy"], 2),
                          "goal": "<= 1.2x memcpy + 10 ms"}))
    finally:
        trainkit.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
