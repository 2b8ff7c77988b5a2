"""Exactly-once resume of dataset shards (issue 16): a Trainer over ``data.range(N)`` whose
loop keeps the ids it consumed inside its own checkpoints. After a rank is SIGKILLed mid-epoch,
after the driver is killed and the script rerun, and when the run resumes on 1 or 3 workers,
the ids over the committed steps of each epoch are exactly ``range(N)``: rows consumed after the
last checkpoint are delivered again, none is lost, none is seen twice."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import torch._dynamo  # noqa: F401 - see tests/train/conftest.py: it sets an env var on import

from trainkit import data
from trainkit import train
from trainkit.exceptions import TrainingFailedError
from trainkit.train import Checkpoint
from trainkit.train import CheckpointConfig
from trainkit.train import FailureConfig
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer

N = 240  # rows; with batches of 8 on 2 ranks an epoch is 15 steps
BATCH = 8
EPOCHS = 2


@pytest.fixture(scope="module")
def resume_runtime(runtime_backend: str, start_backend: Any) -> Iterator[None]:
    """One runtime for the module (its forkserver imports torch once); 4 CPUs so that 3
    workers of a quarter CPU leave whole CPUs to the data tasks."""
    with start_backend(runtime_backend, num_cpus=4, num_gpus=0):
        yield


# The runtime's pooled task workers (the data tasks') outlive a test by design; the module's
# runtime checks at its shutdown that every process it started is gone.
pytestmark = [pytest.mark.usefixtures("resume_runtime"), pytest.mark.leaking("processes")]


def _batches(shard: Any, config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    buffer = config.get("buffer")
    if config.get("torch"):
        yield from shard.iter_torch_batches(batch_size=BATCH, local_shuffle_buffer_size=buffer)
    else:
        yield from shard.iter_batches(batch_size=BATCH, local_shuffle_buffer_size=buffer)


def id_loop(config: dict[str, Any]) -> None:
    """Consumes the shard epoch after epoch; every step reports a checkpoint holding the
    (epoch, id) pairs this rank consumed in this attempt, plus (rank 0) what the checkpoint it
    started from held. Rank ``kill_rank`` SIGKILLs itself once, after consuming its
    ``kill_step``-th batch (or each of ``kill_steps``) and before reporting it; with
    ``fail_step`` every rank raises
    there instead (once)."""
    shard = train.get_dataset_shard("train")
    rank = train.get_context().get_world_rank()
    history, start, step = _load(train.get_checkpoint())
    mine: list[list[int]] = []
    marker = os.path.join(config["dir"], "killed")
    for epoch in range(start, config.get("epochs", EPOCHS)):
        for batch in _batches(shard, config):
            mine += [[epoch, int(i)] for i in batch["id"].tolist()]
            step += 1
            kills = config.get("kill_steps", [config.get("kill_step")])
            if rank == config.get("kill_rank") and step in kills \
                    and not os.path.exists(f"{marker}-{step}"):
                open(f"{marker}-{step}", "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            if step == config.get("fail_step") and not os.path.exists(marker):
                open(marker, "w").close()
                raise RuntimeError("injected failure")
            with tempfile.TemporaryDirectory() as d:
                part = {"mine": mine, "epoch": epoch, "step": step}
                if rank == 0:
                    part["history"] = history
                with open(os.path.join(d, f"ids-{rank}.json"), "w") as f:
                    json.dump(part, f)
                train.report({"step": step, "epoch": epoch},
                             checkpoint=Checkpoint.from_directory(d),
                             checkpoint_upload_mode="sync")


def _load(ckpt: Checkpoint | None) -> tuple[list[list[int]], int, int]:
    """(every (epoch, id) the run committed, the epoch in progress, the step) of ``ckpt``."""
    if ckpt is None:
        return [], 0, 0
    history: list[list[int]] = []
    with ckpt.as_directory() as d:
        for path in sorted(glob.glob(os.path.join(d, "ids-*.json"))):
            with open(path) as f:
                part = json.load(f)
            history += part["mine"] + part.get("history", [])
            if path.endswith("ids-0.json"):
                epoch, step = part["epoch"], part["step"]
    return history, epoch, step


def _check_exactly_once(result: Any, epochs: int = EPOCHS) -> None:
    history, _, _ = _load(result.checkpoint)
    for epoch in range(epochs):
        ids = sorted(i for e, i in history if e == epoch)
        assert ids == list(range(N)), (
            f"epoch {epoch}: {len(ids)} ids, {len(set(range(N)) - set(ids))} missing, "
            f"{len(ids) - len(set(ids))} repeated")


def _trainer(ds: Any, tmp_path: Any, name: str, workers: int = 2, max_failures: int = 1,
             callbacks: tuple[Any, ...] = (), **config: Any) -> Trainer:
    return Trainer(id_loop, train_loop_config={"dir": str(tmp_path), **config},
                   datasets={"train": ds},
                   scaling_config=ScalingConfig(num_workers=workers,
                                                resources_per_worker={"CPU": 0.25}),
                   run_config=RunConfig(name=name, storage_path=str(tmp_path), verbose=0,
                                        callbacks=callbacks,
                                        checkpoint_config=CheckpointConfig(num_to_keep=2),
                                        failure_config=FailureConfig(max_failures=max_failures)))


def _range() -> Any:
    return data.range(N, override_num_blocks=6)


@pytest.mark.on_ray
def test_a_run_without_failures_consumes_each_row_once(tmp_path) -> None:
    result = _trainer(_range(), tmp_path, "plain").fit()
    assert list(result.metrics_dataframe["step"]) == list(range(1, 31))
    _check_exactly_once(result)


@pytest.mark.on_ray
def test_a_killed_rank_resumes_mid_epoch(tmp_path) -> None:
    # The bug this fixes: the next attempt failed with "ranks [0] finished their loop after
    # N reports, but ranks [1] called report() again" (the split restarted mid-way).
    result = _trainer(_range(), tmp_path, "kill", kill_rank=1, kill_step=5).fit()
    steps = list(result.metrics_dataframe["step"])
    assert steps[-1] == 30  # 15 steps an epoch, none lost, none repeated
    _check_exactly_once(result)


def test_a_second_failure_in_a_resumed_epoch_loses_nothing(tmp_path) -> None:
    # The second attempt starts mid-epoch; its checkpoints must keep the rows the first
    # attempt consumed, or the third attempt would deliver them again.
    result = _trainer(_range().random_shuffle(), tmp_path, "twice", max_failures=2,
                      kill_rank=0, kill_steps=[4, 11], buffer=24).fit()
    assert list(result.metrics_dataframe["step"])[-1] == 30
    _check_exactly_once(result)


@pytest.mark.on_ray
@pytest.mark.parametrize("torch_batches", [False, True])
def test_shuffled_with_a_local_buffer_resumes_exactly(tmp_path, torch_batches: bool) -> None:
    # The bug this fixes: rows consumed after the last checkpoint, and rows the shuffle buffer
    # and the prefetcher held, were never delivered again.
    ds = _range().random_shuffle()
    result = _trainer(ds, tmp_path, "shuffle", kill_rank=0, kill_step=7, buffer=50,
                      torch=torch_batches).fit()
    _check_exactly_once(result)


@pytest.mark.on_ray
@pytest.mark.parametrize("workers", [1, 3])
def test_resume_on_another_number_of_workers(tmp_path, workers: int) -> None:
    # Killed after 6 committed steps of 2 x 8 rows: 144 rows of epoch 0 are left, dealt to
    # the new ranks equally (3 x 48 or 1 x 144); epoch 1 splits normally.
    ds = _range().random_shuffle(seed=3)
    with pytest.raises(TrainingFailedError):
        _trainer(ds, tmp_path, "resize", max_failures=0, kill_rank=1, kill_step=7,
                 buffer=20).fit()
    result = _trainer(ds, tmp_path, "resize", workers=workers, buffer=20).fit()
    _check_exactly_once(result)
    steps = list(result.metrics_dataframe["step"])
    per_epoch = N // (BATCH * workers)
    assert steps[-1] == 6 + 144 // (BATCH * workers) + per_epoch


def test_local_mode_resumes_on_a_rerun(tmp_path) -> None:
    # num_workers=0 runs the loop in this process and does not retry: a failure ends fit(),
    # and the rerun continues the epoch from the latest checkpoint.
    ds = _range().random_shuffle()

    def run(**config: Any) -> Any:
        return Trainer(id_loop, train_loop_config={"dir": str(tmp_path), **config},
                       datasets={"train": ds}, scaling_config=ScalingConfig(num_workers=0),
                       run_config=RunConfig(name="local", storage_path=str(tmp_path),
                                            verbose=0)).fit()

    with pytest.raises(TrainingFailedError, match="injected"):
        run(fail_step=5, buffer=16)
    _check_exactly_once(run(buffer=16))


DRIVER = textwrap.dedent("""
    import os, signal, sys
    from trainkit import data
    from test_data_resume import _range, _trainer

    class KillDriverAt:
        def __init__(self, step): self.step = step
        def on_report(self, metrics, checkpoint):
            if checkpoint is not None and metrics["step"] == self.step:
                os.kill(os.getpid(), signal.SIGKILL)

    tmp, workers, kill = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    _trainer(_range().random_shuffle(), tmp, "driver", workers=workers, buffer=30,
             callbacks=(KillDriverAt(kill),) if kill else ()).fit()
""")


def test_the_driver_killed_and_the_script_rerun(tmp_path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))

    def script(workers: int, kill: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path), str(workers),
                               str(kill)], env=env, capture_output=True, text=True, timeout=180)

    proc = script(2, 9)  # dies right after committing step 9 (of 15 in epoch 0)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    proc = script(3, 0)  # the rerun resumes from step 9 on 3 workers
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_exactly_once(train.Result.from_path(os.path.join(tmp_path, "driver")))


def test_sources_give_the_same_rows_in_the_same_blocks_on_a_rerun(tmp_path) -> None:
    # A position names rows by their order in the stream: each source, planned twice (as a
    # rerun of the script does), gives the same blocks with the same rows.
    import pandas as pd

    frame = pd.DataFrame({"id": range(N), "x": [i * 0.5 for i in range(N)]})
    for i in range(3):
        frame.iloc[i * 80:(i + 1) * 80].to_parquet(tmp_path / f"part-{i}.parquet")
        frame.iloc[i * 80:(i + 1) * 80].to_csv(tmp_path / f"part-{i}.csv", index=False)
    makers = {
        "range": lambda: data.range(N),
        "from_items": lambda: data.from_items([{"id": i} for i in range(N)]),
        "parquet": lambda: data.read_parquet(str(tmp_path)),
        "csv": lambda: data.read_csv(str(tmp_path)),
    }
    for name, make in makers.items():
        blocks = [[b["id"].tolist() for b in make().iter_batches(batch_size=None)]
                  for _ in range(2)]
        assert blocks[0] == blocks[1], name
        assert [i for block in blocks[0] for i in block] == list(range(N)), name


def test_an_unseeded_shuffle_repeats_its_epoch_after_a_restart_and_changes_next_epoch() -> None:
    from trainkit.data._split import restore_split

    (it,) = data.range(N).random_shuffle().streaming_split(1)
    restore_split([it], 1, None)
    first = [r["id"] for r in it.iter_rows()]
    second = [r["id"] for r in it.iter_rows()]
    restore_split([it], 2, None)  # a restart from the start: epoch 0 again, in the same order
    assert [r["id"] for r in it.iter_rows()] == first
    assert sorted(first) == sorted(second) == list(range(N)) and first != second
