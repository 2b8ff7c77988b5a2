"""Scale check (a script, not a test): 2,000 one-report trials on 2 CPUs.

    .venv/bin/python tests/tune/bench_2000_trials.py [N] [--no-journal]

Prints the sweep's wall time, the driver's peak RSS growth per trial, and the share of the
optuna.journal writes (timed separately on the same number of trials).
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time

import trainkit as tk
from trainkit import tune
from trainkit.train import RunConfig


def one_report(config: dict) -> None:
    tune.report({"loss": config["x"]})


def main(n: int, journal: bool) -> None:
    if not journal:  # to measure what optuna.journal costs
        from trainkit.tune import _optuna_journal

        for name in ("add", "result", "end", "config"):
            setattr(_optuna_journal.OptunaJournal, name, lambda *a, **k: None)
    tk.init(num_cpus=2, num_gpus=0)
    storage = tempfile.mkdtemp()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    grid = tune.Tuner(one_report, param_space={"x": tune.uniform(0, 1)},
                      tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=n),
                      run_config=RunConfig(name="scale", storage_path=storage,
                                           verbose=0)).fit()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert len(grid) == n and grid.num_errors == 0
    print(f"{n} one-report trials: {wall:.1f} s ({n / wall:.0f} trials/s); driver peak RSS "
          f"+{(after - before) / 1024:.1f} MiB ({(after - before) * 1024 / n:.0f} B/trial)")
    tk.shutdown()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(int(args[0]) if args else 2000, "--no-journal" not in sys.argv)
