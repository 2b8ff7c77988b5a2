"""Train with its storage in S3: a real S3-protocol server (moto) on loopback, 2 CPU workers.

Each rank uploads its own checkpoint files; result.json, progress.csv, TensorBoard events and
the checkpoint index land in the bucket; a rerun resumes from the bucket; Result.from_path
reads a run back; bad storage input fails before any worker starts.
"""

from __future__ import annotations

import json
import os
import pickle

import moto.settings
import pytest

from trainkit import train
from trainkit.exceptions import TrainingFailedError
from trainkit.train import Checkpoint
from trainkit.train import CheckpointConfig
from trainkit.train import Result
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer

pytestmark = pytest.mark.usefixtures("train_runtime")


def rank_loop(config: dict) -> None:
    """Each rank writes its own file into every checkpoint; resumes count on from there."""
    import tempfile

    ctx = train.get_context()
    rank = ctx.get_world_rank()
    start = 0
    ckpt = train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d, open(os.path.join(d, f"rank{rank}.json")) as f:
            start = json.load(f)["step"] + 1
    for step in range(start, config["steps"]):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, f"rank{rank}.json"), "w") as f:
                json.dump({"step": step, "rank": rank}, f)
            train.report({"step": step, "loss": 1.0 / (step + 1), "start": start},
                         checkpoint=Checkpoint.from_directory(d))
        if step == config.get("fail_at"):
            raise RuntimeError(f"planned failure at step {step}")


def _run_config(s3, name: str, **kw) -> RunConfig:
    return RunConfig(name=name, storage_path=f"s3://{s3.bucket}/train", storage_filesystem=s3.fs,
                     verbose=0, **kw)


def test_two_workers_write_every_rank_to_s3(s3) -> None:
    result = Trainer(rank_loop, train_loop_config={"steps": 3},
                     scaling_config=ScalingConfig(num_workers=2),
                     run_config=_run_config(s3, "two", checkpoint_config=CheckpointConfig(
                         num_to_keep=2))).fit()
    keys = s3.keys("train/two")
    ckpts = sorted({k.split("/")[0] for k in keys if k.startswith("checkpoint_")})
    assert ckpts == ["checkpoint_000002", "checkpoint_000003"]
    for c in ckpts:
        assert f"{c}/rank0.json" in keys and f"{c}/rank1.json" in keys
    assert {"result.json", "progress.csv", "checkpoints.json"} <= set(keys)
    assert any(k.startswith("events.out.tfevents.") for k in keys)
    assert not any(k.startswith(".staging") or k == ".write_probe" for k in keys)

    assert result.path == f"{s3.bucket}/train/two"
    assert result.filesystem is not None and result.filesystem.type_name == "s3"
    assert result.checkpoint is not None
    assert result.checkpoint.path == f"{s3.bucket}/train/two/checkpoint_000003"
    assert result.checkpoint.filesystem.type_name == "s3"
    with result.checkpoint.as_directory() as d:
        assert sorted(os.listdir(d)) == ["rank0.json", "rank1.json"]
        local = d
    assert not os.path.exists(local)  # the download is gone after the with block
    assert result.metrics_dataframe["step"].tolist() == [0, 1, 2]
    best = result.get_best_checkpoint("loss", "max")
    assert best is not None and best.path.endswith("checkpoint_000002")
    # A checkpoint pickles with its filesystem (it crosses processes).
    again = pickle.loads(pickle.dumps(result.checkpoint))
    assert again == result.checkpoint and again.filesystem.type_name == "s3"


def test_rerun_resumes_from_s3_and_from_path_reads_it_back(s3, tmp_path) -> None:
    def trainer(**config) -> Trainer:
        return Trainer(rank_loop, train_loop_config={"steps": 4, **config},
                       scaling_config=ScalingConfig(num_workers=2),
                       run_config=_run_config(s3, "resume"))

    with pytest.raises(TrainingFailedError, match="planned failure at step 1"):
        trainer(fail_at=1).fit()
    assert s3.keys("train/resume/checkpoint_000002") == ["rank0.json", "rank1.json"]
    # The script runs again: a new driver, nothing local, everything read from the bucket.
    result = trainer().fit()
    assert result.metrics["start"] == 2
    assert result.metrics_dataframe["step"].tolist() == [0, 1, 2, 3]

    read = Result.from_path(f"s3://{s3.bucket}/train/resume", storage_filesystem=s3.fs)
    assert read.path == result.path and read.metrics == result.metrics
    assert [c.path for c, _ in read.best_checkpoints] == \
        [c.path for c, _ in result.best_checkpoints]
    assert read.metrics_dataframe["step"].tolist() == [0, 1, 2, 3]
    best = read.get_best_checkpoint("loss", "min")
    assert best is not None
    out = best.to_directory(str(tmp_path / "out"))
    with open(os.path.join(out, "rank1.json")) as f:
        assert json.load(f) == {"step": 3, "rank": 1}
    # Ray's bare form: a path on the filesystem, no scheme.
    bare = Result.from_path(f"{s3.bucket}/train/resume", storage_filesystem=s3.fs)
    assert bare.checkpoint == read.checkpoint


def test_local_mode_to_s3(s3) -> None:
    result = Trainer(rank_loop, train_loop_config={"steps": 2},
                     scaling_config=ScalingConfig(num_workers=0),
                     run_config=_run_config(s3, "local")).fit()
    assert result.checkpoint is not None and result.checkpoint.filesystem.type_name == "s3"
    assert "checkpoint_000002/rank0.json" in s3.keys("train/local")


# -- bad input: each fails before any worker starts, naming the value and the fix ---------------
def _fit(run_config: RunConfig) -> None:
    Trainer(rank_loop, train_loop_config={"steps": 1},
            scaling_config=ScalingConfig(num_workers=2), run_config=run_config).fit()


def test_unknown_scheme_fails_at_once() -> None:
    with pytest.raises(ValueError, match=r"'s4://bucket/x'.*scheme 's4://'.*storage_filesystem"):
        RunConfig(storage_path="s4://bucket/x")


def test_missing_bucket_fails_before_workers(s3) -> None:
    with pytest.raises(ValueError, match=r"bucket 'no-such-bucket' does not exist.*create it"):
        _fit(RunConfig(name="x", storage_path="s3://no-such-bucket/runs",
                       storage_filesystem=s3.fs, verbose=0))


def test_refused_credentials_fail_before_workers(s3, monkeypatch) -> None:
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys
    with pytest.raises(PermissionError, match=r"refused the credentials.*access_key"):
        _fit(_run_config(s3, "refused"))


def test_gs_without_credentials_names_them(monkeypatch, tmp_path) -> None:
    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/gcloud here
    config = RunConfig(name="x", storage_path="gs://bucket/runs")  # parses
    with pytest.raises(ValueError, match=r"'gs://bucket/runs'.*no Google Cloud Storage "
                                         r"credentials.*GOOGLE_APPLICATION_CREDENTIALS"):
        _fit(config)


def test_storage_filesystem_must_be_a_filesystem() -> None:
    with pytest.raises(TypeError, match=r"`storage_filesystem` is 's3'.*pyarrow.fs.FileSystem"):
        RunConfig(storage_path="bucket/x", storage_filesystem="s3")
