"""A sweep survives its driver: SIGKILL mid-sweep, then Tuner.restore finishes it without
rerunning finished trials, to the same best result as an uninterrupted sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from trainkit import tune
from trainkit.train import RunConfig

pytestmark = pytest.mark.usefixtures("tune_runtime")


def slow_quadratic(config: dict) -> None:
    """Appends one line per run to runs.log in its own folder: what ran, and how often."""
    ctx = tune.get_context()
    with open(os.path.join(ctx.get_trial_dir(), "runs.log"), "a") as f:
        f.write("run\n")
    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        start = int(Path(ckpt.path, "i").read_text())
    for i in range(start + 1, 6):
        time.sleep(0.1)
        d = Path(ctx.get_trial_dir(), "tmp_ckpt")
        d.mkdir(exist_ok=True)
        (d / "i").write_text(str(i))
        tune.report({"loss": (config["x"] - 3) ** 2 + 1.0 / i},
                    checkpoint=tune.Checkpoint.from_directory(d))


def _tuner(storage: str, name: str) -> tune.Tuner:
    return tune.Tuner(
        slow_quadratic, param_space={"x": tune.uniform(0, 6)},
        tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=8, seed=7),
        run_config=RunConfig(name=name, storage_path=storage, verbose=0))


DRIVER = textwrap.dedent("""
    import sys
    from test_tune_restore import _tuner
    _tuner(sys.argv[1], "killed").fit()
""")


def _terminated(exp_dir: Path) -> set[str]:
    done = set()
    journal = exp_dir / "experiment_state.jsonl"
    if journal.exists():
        for line in journal.read_text().splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if ev.get("e") == "state" and ev.get("state") == "terminated":
                done.add(ev["id"])
    return done


def test_driver_sigkill_then_restore(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    exp_dir = tmp_path / "killed"
    deadline = time.monotonic() + 90
    while len(_terminated(exp_dir)) < 3 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    finished_before = _terminated(exp_dir)
    assert 3 <= len(finished_before) < 8

    assert tune.Tuner.can_restore(exp_dir)
    grid = tune.Tuner.restore(str(exp_dir), slow_quadratic).fit()
    assert len(grid) == 8 and grid.num_errors == 0
    for result in grid:
        runs = Path(result.path, "runs.log").read_text().count("run")
        trial_id = result.path.rsplit("_", 1)[-1]
        if trial_id in finished_before:
            assert runs == 1, f"finished trial {trial_id} ran again"
        assert result.metrics["training_iteration"] == 5

    reference = _tuner(str(tmp_path), "reference").fit()
    assert reference.get_best_result().config == grid.get_best_result().config
    assert reference.get_best_result().metrics["loss"] == grid.get_best_result().metrics["loss"]
