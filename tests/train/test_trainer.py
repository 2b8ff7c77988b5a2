"""Trainer end to end on real processes (2 CPU workers, gloo): DDP, checkpoints, resume,
local mode, metrics, and the errors users meet."""

from __future__ import annotations

import os
import tempfile
import threading

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset

import trainkit as tk
from trainkit import train
from trainkit.exceptions import InfeasibleError
from trainkit.exceptions import TrainingFailedError
from trainkit.train import Checkpoint
from trainkit.train import CheckpointConfig
from trainkit.train import FailureConfig
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer

pytestmark = pytest.mark.usefixtures("train_runtime")


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g))


def ddp_loop(config: dict) -> None:
    torch.manual_seed(0)
    model = train.torch.prepare_model(nn.Linear(8, 1))
    loader = train.torch.prepare_data_loader(
        DataLoader(_data(), batch_size=config["batch_size"], shuffle=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    ctx = train.get_context()
    torch.save(model.state_dict(), os.path.join(config["out"], f"rank{ctx.get_world_rank()}.pt"))
    train.report({"world_size": ctx.get_world_size(), "rank": ctx.get_world_rank(),
                  "env": [os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                  "LOCAL_WORLD_SIZE", "MASTER_ADDR")]})


@pytest.mark.on_ray
def test_ddp_averages_gradients(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = Trainer(ddp_loop, train_loop_config={"batch_size": 16, "out": str(out)},
                     scaling_config=ScalingConfig(num_workers=2),
                     run_config=RunConfig(name="ddp", storage_path=tmp_path)).fit()
    assert result.metrics == {"world_size": 2, "rank": 0,
                              "env": ["0", "0", "2", "2", "127.0.0.1"]}
    r0 = torch.load(out / "rank0.pt")
    r1 = torch.load(out / "rank1.pt")
    for key in r0:  # DDP: the ranks hold the very same parameters
        assert torch.equal(r0[key], r1[key])
    # One process on the same data with the global batch (2 x 16 rows): gradient averaging
    # over ranks must give the same parameters.
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        for x, y in DataLoader(_data(), batch_size=32, shuffle=False):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for key, value in model.state_dict().items():
        assert torch.allclose(r0["module." + key], value, atol=1e-6)


def epochs_loop(config: dict) -> None:
    start = 0
    ckpt = train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d, open(os.path.join(d, "epoch.txt")) as f:
            start = int(f.read()) + 1
    rank = train.get_context().get_world_rank()
    for epoch in range(start, config["epochs"]):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, f"rank{rank}.txt"), "w") as f:
                f.write(str(epoch))
            if rank == 0:
                with open(os.path.join(d, "epoch.txt"), "w") as f:
                    f.write(str(epoch))
            train.report({"epoch": epoch, "loss": config["losses"][epoch], "start": start},
                         checkpoint=Checkpoint.from_directory(d))


def test_checkpoints_retention_and_job_resume(tmp_path, capfd) -> None:
    losses = [5.0, 1.0, 4.0, 2.0, 3.0, 0.5]
    run = RunConfig(name="job", storage_path=tmp_path, checkpoint_config=CheckpointConfig(
        num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min"))
    first = Trainer(epochs_loop, train_loop_config={"epochs": 5, "losses": losses},
                    scaling_config=ScalingConfig(num_workers=2), run_config=run).fit()
    kept = sorted(n for n in os.listdir(first.path) if n.startswith("checkpoint_"))
    assert kept == ["checkpoint_000002", "checkpoint_000004", "checkpoint_000005"]
    assert first.checkpoint is not None
    assert os.path.basename(first.checkpoint.path) == "checkpoint_000005"
    assert sorted(os.listdir(first.checkpoint.path)) == ["epoch.txt", "rank0.txt", "rank1.txt"]
    assert [m["loss"] for _, m in first.best_checkpoints] == [1.0, 2.0, 3.0]
    df = first.metrics_dataframe
    assert list(df["epoch"]) == [0, 1, 2, 3, 4]  # every report, whatever retention kept
    assert list(df["training_iteration"]) == [1, 2, 3, 4, 5]
    assert os.path.exists(os.path.join(first.path, "progress.csv"))
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(first.path))

    # The same script again: it resumes from the latest checkpoint and says so.
    second = Trainer(epochs_loop, train_loop_config={"epochs": 6, "losses": losses},
                     scaling_config=ScalingConfig(num_workers=2), run_config=run).fit()
    assert "resuming run 'job' from" in capfd.readouterr().out  # stdout: it is no warning
    assert second.metrics == {"epoch": 5, "loss": 0.5, "start": 5}
    assert os.path.basename(second.checkpoint.path) == "checkpoint_000006"
    assert list(second.metrics_dataframe["epoch"]) == [0, 1, 2, 3, 4, 5]

    # resume_from_checkpoint starts a new run from a given checkpoint.
    third = Trainer(epochs_loop, train_loop_config={"epochs": 5, "losses": losses},
                    scaling_config=ScalingConfig(num_workers=2),
                    run_config=RunConfig(name="fork", storage_path=tmp_path),
                    resume_from_checkpoint=first.best_checkpoints[0][0]).fit()
    assert list(third.metrics_dataframe["start"]) == [2, 2, 2]


def test_local_mode_runs_in_this_process(tmp_path) -> None:
    seen = []

    def loop(config: dict) -> None:
        seen.append((os.getpid(), threading.current_thread().name, train.get_checkpoint()))
        epochs_loop(config)

    run = RunConfig(name="local", storage_path=tmp_path)
    config = {"epochs": 2, "losses": [1.0, 2.0, 3.0]}
    result = Trainer(loop, train_loop_config=config,
                     scaling_config=ScalingConfig(num_workers=0), run_config=run).fit()
    assert seen == [(os.getpid(), threading.current_thread().name, None)]
    assert result.metrics["epoch"] == 1
    config["epochs"] = 3
    again = Trainer(loop, train_loop_config=config,
                    scaling_config=ScalingConfig(num_workers=0), run_config=run).fit()
    assert seen[1][2] == result.checkpoint
    assert again.metrics == {"epoch": 2, "loss": 3.0, "start": 2}


def test_datasets_are_split_by_rank(tmp_path) -> None:
    def loop() -> None:
        train.report({"shard": train.get_dataset_shard("train")})

    result = Trainer(loop, datasets={"train": list(range(6))},
                     scaling_config=ScalingConfig(num_workers=2),
                     run_config=RunConfig(name="data", storage_path=tmp_path)).fit()
    assert result.metrics["shard"] == [0, 2, 4]


def uneven_loop() -> None:
    for _ in range(2 + train.get_context().get_world_rank()):
        train.report({})


def test_uneven_report_counts_fail_without_retry(tmp_path) -> None:
    trainer = Trainer(uneven_loop, scaling_config=ScalingConfig(num_workers=2),
                      run_config=RunConfig(name="uneven", storage_path=tmp_path,
                                           failure_config=FailureConfig(max_failures=3)))
    with pytest.raises(TrainingFailedError, match="same number of times") as info:
        trainer.fit()
    assert "not retryable" in str(info.value)


def stuck_here() -> None:
    import time

    time.sleep(60)


def hanging_loop() -> None:
    if train.get_context().get_world_rank() == 1:
        stuck_here()
    train.report({})


def test_a_silent_rank_fails_with_every_stack(tmp_path) -> None:
    trainer = Trainer(hanging_loop, scaling_config=ScalingConfig(num_workers=2),
                      run_config=RunConfig(name="hang", storage_path=tmp_path,
                                           failure_config=FailureConfig(report_timeout_s=1.0)))
    with pytest.raises(TrainingFailedError) as info:
        trainer.fit()
    text = str(info.value)
    assert "ranks [1] did not call report() for 1.0 s" in text
    assert "--- rank 0" in text and "--- rank 1" in text
    assert "in stuck_here" in text


def test_rendezvous_timeout_names_missing_ranks(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRAINKIT_TEST_FAULTS", "rendezvous@1:*=hang")
    trainer = Trainer(uneven_loop, scaling_config=ScalingConfig(num_workers=2),
                      run_config=RunConfig(name="rdzv", storage_path=tmp_path,
                                           failure_config=FailureConfig(rendezvous_timeout_s=1)))
    with pytest.raises(TrainingFailedError, match=r"ranks \[1\] never joined"):
        trainer.fit()


def test_user_errors_are_grouped_and_say_how_to_resume(tmp_path) -> None:
    def loop() -> None:
        train.report({})
        if train.get_context().get_world_rank() == 1:
            raise ValueError("bad batch 7")
        train.report({})

    trainer = Trainer(loop, scaling_config=ScalingConfig(num_workers=2),
                      run_config=RunConfig(name="err", storage_path=tmp_path))
    with pytest.raises(TrainingFailedError) as info:
        trainer.fit()
    err = info.value
    assert "rank 1: ValueError: bad batch 7" in str(err)
    assert "No checkpoint was persisted" in str(err)
    assert isinstance(err.errors[1], ValueError)
    assert err.path == os.path.join(tmp_path, "err")


# -- bad input: clear errors before anything starts ------------------------------------------

def test_more_gpus_than_the_cluster_has(tmp_path) -> None:
    trainer = Trainer(uneven_loop, scaling_config=ScalingConfig(num_workers=2, use_gpu=True),
                      run_config=RunConfig(storage_path=tmp_path))
    with pytest.raises(InfeasibleError, match=r"needs 2 GPU .* the cluster has 0"):
        trainer.fit()
    assert tk.available_resources().get("CPU") == 2


def test_unpicklable_loop_names_the_captured_variable() -> None:
    lock = threading.Lock()

    def loop() -> None:
        with lock:
            pass

    with pytest.raises(TypeError, match="captures the variable 'lock'"):
        Trainer(loop)


def test_unwritable_storage_path(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    trainer = Trainer(uneven_loop, run_config=RunConfig(storage_path=blocker))
    with pytest.raises(PermissionError, match="cannot be written"):
        trainer.fit()


def test_loop_signature_is_checked() -> None:
    with pytest.raises(TypeError, match="takes no argument"):
        Trainer(uneven_loop, train_loop_config={"a": 1})
    with pytest.raises(TypeError, match="must take one"):
        Trainer(lambda a, b: None)
    with pytest.raises(TypeError, match="ScalingConfig"):
        Trainer(uneven_loop, scaling_config={"num_workers": 2})  # type: ignore[arg-type]


def test_report_outside_a_loop() -> None:
    with pytest.raises(RuntimeError, match="outside a training loop"):
        train.report({"a": 1})
