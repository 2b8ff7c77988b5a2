"""A Tune sweep with its storage in S3 (a moto server on loopback): every trial's results
and checkpoints and the experiment state land in the bucket, the trials read their
checkpoints back from it, and Tuner.restore / can_restore continue the sweep from it."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

from trainkit import tune
from trainkit.train import RunConfig

pytestmark = pytest.mark.usefixtures("tune_runtime")


def counting(config: dict) -> None:
    """Three reports with checkpoints; fails once at iteration 2 while ``config['flag']``
    exists (the test deletes it before the restore)."""
    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d, open(os.path.join(d, "i.json")) as f:
            start = json.load(f)["i"]
    for i in range(start + 1, 4):
        if i == 2 and config["x"] == 1 and os.path.exists(config["flag"]):
            raise RuntimeError("planned failure")
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "i.json"), "w") as f:
                json.dump({"i": i}, f)
            tune.report({"loss": config["x"] + 1.0 / i, "start": start},
                        checkpoint=tune.Checkpoint.from_directory(d))


def test_sweep_to_s3_and_restore_from_it(s3, tmp_path) -> None:
    flag = tmp_path / "fail"
    flag.write_text("x")
    run_config = RunConfig(name="sweep", storage_path=f"s3://{s3.bucket}/exp",
                           storage_filesystem=s3.fs, verbose=0)
    grid = tune.Tuner(counting, param_space={"x": tune.grid_search([0, 1]), "flag": str(flag)},
                      tune_config=tune.TuneConfig(metric="loss", mode="min"),
                      run_config=run_config).fit()
    assert len(grid.errors) == 1
    keys = s3.keys("exp/sweep")
    assert {"experiment_state.jsonl", "tuner.pkl", "optuna.journal", "fingerprint",
            "search_state.pkl"} <= set(keys)
    trials = sorted({k.split("/")[0] for k in keys if "/" in k})
    assert len(trials) == 2
    for t in trials:
        assert {f"{t}/params.json", f"{t}/result.json", f"{t}/progress.csv",
                f"{t}/checkpoint_000001/i.json"} <= set(keys)
    uri = f"s3://{s3.bucket}/exp/sweep"
    assert tune.Tuner.can_restore(uri, storage_filesystem=s3.fs)
    assert not tune.Tuner.can_restore(f"s3://{s3.bucket}/exp/nothing", storage_filesystem=s3.fs)

    flag.unlink()
    restored = tune.Tuner.restore(uri, counting, storage_filesystem=s3.fs,
                                  resume_errored=True).fit()
    assert not restored.errors
    by_x = {r.config["x"]: r for r in restored}
    # The errored trial resumed from its checkpoint in the bucket; the finished one kept.
    assert by_x[1].metrics["start"] == 1 and by_x[0].metrics["start"] == 0
    assert by_x[0].metrics_dataframe["training_iteration"].tolist() == [1, 2, 3]
    best = restored.get_best_result()
    assert best.config["x"] == 0 and best.filesystem is not None
    assert best.path == f"{s3.bucket}/exp/sweep/{os.path.basename(best.path)}"
    assert best.checkpoint is not None and best.checkpoint.filesystem.type_name == "s3"
    with best.checkpoint.as_directory() as d, open(os.path.join(d, "i.json")) as f:
        assert json.load(f) == {"i": 3}
    assert len(best.best_checkpoints) == 3


def test_sweep_to_missing_bucket_fails_before_trials(s3) -> None:
    tuner = tune.Tuner(counting, param_space={"x": 0, "flag": ""},
                       run_config=RunConfig(name="s", storage_path="s3://no-bucket/exp",
                                            storage_filesystem=s3.fs, verbose=0))
    with pytest.raises(ValueError, match="bucket 'no-bucket' does not exist"):
        tuner.fit()
