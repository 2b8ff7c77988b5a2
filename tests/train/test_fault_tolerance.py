"""Recovery from worker failures, on real processes: SIGKILLed ranks, an exact failure
budget, and crashes in the middle of a checkpoint write (workers and the driver)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset

from trainkit import train
from trainkit.exceptions import TrainingFailedError
from trainkit.train import Checkpoint
from trainkit.train import FailureConfig
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer

pytestmark = pytest.mark.usefixtures("train_runtime")


def resumable_loop(config: dict) -> None:
    """SGD with momentum; checkpoints model, optimizer and epoch each epoch; rank 1 SIGKILLs
    itself once at the start of each epoch listed in ``kill_at``."""
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(96, 8, generator=g), torch.randn(96, 1, generator=g))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = 0
    ckpt = train.get_checkpoint()
    if ckpt is not None:
        state = torch.load(os.path.join(ckpt.path, "state.pt"))
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["epoch"] + 1
    model = train.torch.prepare_model(model)
    loader = train.torch.prepare_data_loader(DataLoader(data, batch_size=8, shuffle=True))
    rank = train.get_context().get_world_rank()
    for epoch in range(start, config["epochs"]):
        marker = os.path.join(config["dir"], f"killed-{epoch}")
        if rank == 1 and epoch in config["kill_at"] and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                torch.save({"model": model.module.state_dict(), "opt": opt.state_dict(),
                            "epoch": epoch}, os.path.join(d, "state.pt"))
            train.report({"epoch": epoch, "start": start},
                         checkpoint=Checkpoint.from_directory(d),
                         checkpoint_upload_mode=config.get("mode", "async"))


def _final_state(result) -> dict:
    return torch.load(os.path.join(result.checkpoint.path, "state.pt"))["model"]


class Restarts:
    def __init__(self) -> None:
        self.attempts: list[int] = []

    def on_restart(self, attempt: int, errors: dict) -> None:
        self.attempts.append(attempt)


@pytest.mark.on_ray
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkilled_rank_resumes_to_the_same_parameters(tmp_path, mode: str) -> None:
    def fit(name: str, kill_at: list[int], callbacks=()) -> object:
        folder = tmp_path / name
        folder.mkdir()
        return Trainer(resumable_loop,
                       train_loop_config={"epochs": 6, "kill_at": kill_at, "dir": str(folder),
                                          "mode": mode},
                       scaling_config=ScalingConfig(num_workers=2),
                       run_config=RunConfig(name=name, storage_path=tmp_path, callbacks=callbacks,
                                            failure_config=FailureConfig(max_failures=3))).fit()

    restarts = Restarts()
    interrupted = fit("killed", [2, 4], [restarts])
    assert restarts.attempts == [0, 1]
    starts = list(interrupted.metrics_dataframe["start"])
    if mode == "sync":  # each restart resumed from the last reported checkpoint
        assert starts == [0, 0, 2, 2, 4, 4]
    else:  # from the last committed one: the kill may beat the upload of the last report
        assert starts[0] == 0 and starts == sorted(starts)
        # A lost report loses its metrics with its checkpoint: one row per epoch all the same.
        assert list(interrupted.metrics_dataframe["epoch"]) == list(range(6))
    reference = fit("clean", [])
    for key, value in _final_state(reference).items():
        assert torch.equal(_final_state(interrupted)[key], value), key  # bitwise


def always_fails() -> None:
    train.report({})
    if train.get_context().get_world_rank() == 1:
        raise RuntimeError("rank 1 fails every time")
    train.report({})


@pytest.mark.parametrize("budget", [0, 1, 3])
def test_failure_budget_is_exact(tmp_path, budget: int) -> None:
    restarts = Restarts()
    trainer = Trainer(always_fails, scaling_config=ScalingConfig(num_workers=2),
                      run_config=RunConfig(name="budget", storage_path=tmp_path,
                                           callbacks=[restarts],
                                           failure_config=FailureConfig(max_failures=budget)))
    with pytest.raises(TrainingFailedError) as info:
        trainer.fit()
    assert restarts.attempts == list(range(budget))
    assert f"after {budget + 1} attempt(s)" in str(info.value)
    assert "rank 1: RuntimeError: rank 1 fails every time" in str(info.value)


def two_rank_checkpoints(config: dict) -> None:
    rank = train.get_context().get_world_rank()
    ckpt = train.get_checkpoint()
    start = 0 if ckpt is None else int(Path(ckpt.path, "rank0").read_text()) + 1
    for i in range(start, config["n"]):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, f"rank{rank}"), "w") as f:
                f.write(str(i))
            train.report({"i": i}, checkpoint=Checkpoint.from_directory(d))


def _committed(run_dir: str) -> list[str]:
    with open(os.path.join(run_dir, "checkpoints.json")) as f:
        return [c["dir"] for c in json.load(f)["checkpoints"]]


def test_worker_killed_while_writing_a_checkpoint(tmp_path, monkeypatch) -> None:
    # Rank 1 dies right after copying its part of the first checkpoint, on the first attempt.
    monkeypatch.setenv("TRAINKIT_TEST_FAULTS", "checkpoint_upload@1:0=kill")
    result = Trainer(two_rank_checkpoints, train_loop_config={"n": 3},
                     scaling_config=ScalingConfig(num_workers=2),
                     run_config=RunConfig(name="ckpt", storage_path=tmp_path,
                                          failure_config=FailureConfig(max_failures=1))).fit()
    # The half-written checkpoint was never committed; the retry started from scratch.
    assert list(result.metrics_dataframe["i"]) == [0, 1, 2]
    names = _committed(result.path)
    assert names == ["checkpoint_000001", "checkpoint_000002", "checkpoint_000003"]
    for name in names:  # every committed checkpoint holds both ranks' parts
        assert sorted(os.listdir(os.path.join(result.path, name))) == ["rank0", "rank1"]
    assert not os.path.exists(os.path.join(result.path, ".staging"))


DRIVER = textwrap.dedent("""
    import sys
    from trainkit.train import RunConfig, ScalingConfig, Trainer
    from test_fault_tolerance import two_rank_checkpoints
    Trainer(two_rank_checkpoints, train_loop_config={"n": 3},
            scaling_config=ScalingConfig(num_workers=2),
            run_config=RunConfig(name="drv", storage_path=sys.argv[1], verbose=0)).fit()
""")


def test_driver_killed_between_rename_and_index(tmp_path) -> None:
    env = dict(os.environ, TRAINKIT_TEST_FAULTS="checkpoint_commit@-1:*=kill",
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run_dir = os.path.join(tmp_path, "drv")
    # checkpoint_000001 was renamed into place but the index was never written.
    assert os.path.isdir(os.path.join(run_dir, "checkpoint_000001"))
    assert not os.path.exists(os.path.join(run_dir, "checkpoints.json"))
    env.pop("TRAINKIT_TEST_FAULTS")
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _committed(run_dir) == ["checkpoint_000001", "checkpoint_000002",
                                   "checkpoint_000003"]
    with open(os.path.join(run_dir, "checkpoint_000001", "rank0")) as f:
        assert f.read() == "0"  # rewritten by the rerun, not the orphan resumed from
