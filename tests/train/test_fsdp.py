"""FSDP2 (``prepare_model(parallel_strategy="fsdp")``) and sharded DCP checkpoints, on real
worker processes over gloo: DTensor parameters, training that matches DDP, a SIGKILLed rank
that resumes to the uninterrupted run's parameters bitwise, the merged checkpoint loaded on
one rank and in a plain process, a file two ranks write differently, and the bad inputs."""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset

from trainkit import train
from trainkit.train import Checkpoint
from trainkit.train import FailureConfig
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer
from trainkit.train import _storage
from trainkit.train._checkpoint_manager import CheckpointConflictError
from trainkit.train._checkpoint_manager import check_merged
from trainkit.train._checkpoint_manager import find_conflicts
from trainkit.train._checkpoint_manager import manifest_name
from trainkit.train._checkpoint_manager import write_manifest
from trainkit.train._fsdp import shard_policy


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.ReLU(),
                         nn.Linear(4, 1))


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g))


def _full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter whole (a collective for FSDP: each rank gathers the shards)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name.replace("module.", "")] = t.detach().clone()
    return out


def sharded_loop(config: dict) -> None:
    """SGD with momentum on an FSDP2 (or DDP) model; a sharded DCP checkpoint per epoch;
    rank 1 SIGKILLs itself once at the start of each epoch in ``kill_at``; rank 0 saves the
    final parameters whole to ``dir/final.pt``."""
    strategy = config["strategy"]
    model = train.torch.prepare_model(_model(), parallel_strategy=strategy,
                                      parallel_strategy_kwargs=config.get("kwargs"))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = 0
    ckpt = train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start = int(train.torch.load_sharded(d, model, opt)["epoch"]) + 1
    rank = train.get_context().get_world_rank()
    types = sorted({type(p).__name__ for p in model.parameters()})
    loader = train.torch.prepare_data_loader(DataLoader(_data(), batch_size=8, shuffle=True))
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
            if strategy == "fsdp":
                train.torch.save_sharded(d, model, opt, {"epoch": epoch})
            train.report({"epoch": epoch, "start": start, "types": types},
                         checkpoint=Checkpoint.from_directory(d) if strategy == "fsdp"
                         else None)
    final = _full_params(model)
    if rank == 0:
        torch.save({"params": final, "types": types}, os.path.join(config["dir"], "final.pt"))


def _fit(tmp_path: Path, name: str, *, strategy: str = "fsdp", kill_at=(), workers: int = 2,
         epochs: int = 4, resume_from: Checkpoint | None = None, callbacks=(), kwargs=None,
         storage: dict | None = None):
    folder = tmp_path / name
    folder.mkdir()
    result = Trainer(
        sharded_loop,
        train_loop_config={"strategy": strategy, "epochs": epochs, "kill_at": list(kill_at),
                           "dir": str(folder), "kwargs": kwargs},
        scaling_config=ScalingConfig(num_workers=workers),
        resume_from_checkpoint=resume_from,
        run_config=RunConfig(name=name, callbacks=callbacks,
                             failure_config=FailureConfig(max_failures=2),
                             **(storage or {"storage_path": tmp_path}))).fit()
    saved = torch.load(folder / "final.pt")
    assert saved["types"] == (["DTensor"] if strategy == "fsdp" else ["Parameter"])
    return result, saved["params"]


class Restarts:
    def __init__(self) -> None:
        self.attempts: list[int] = []

    def on_restart(self, attempt: int, errors: dict) -> None:
        self.attempts.append(attempt)


@pytest.mark.usefixtures("train_runtime")
def test_fsdp_params_are_dtensors_and_training_matches_ddp(tmp_path) -> None:
    # Explicit kwargs here (the default policy is the other tests'): fully_shard's own
    # option and a list of module classes to shard.
    fsdp, fsdp_final = _fit(tmp_path, "fsdp", epochs=2, kwargs={
        "reshard_after_forward": False, "shard_modules": [nn.Linear]})
    assert fsdp.metrics["types"] == ["DTensor"]  # and _fit checked it on rank 0 at the end
    ddp, ddp_final = _fit(tmp_path, "ddp", strategy="ddp", epochs=2)
    assert ddp.metrics["types"] == ["Parameter"]
    assert sorted(fsdp_final) == sorted(ddp_final)
    for key, value in ddp_final.items():
        # The same averaged gradients, summed in another order (reduce-scatter vs all-reduce).
        torch.testing.assert_close(fsdp_final[key], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fsdp_final["0.weight"], _model()[0].weight)  # it trained


@pytest.mark.usefixtures("train_runtime")
def test_killed_rank_resumes_from_the_sharded_checkpoint_bitwise(tmp_path) -> None:
    restarts = Restarts()
    interrupted, interrupted_final = _fit(tmp_path, "killed", kill_at=[2], callbacks=[restarts])
    assert restarts.attempts == [0]
    starts = list(interrupted.metrics_dataframe["start"])
    assert starts[0] == 0 and starts[-1] > 0 and starts == sorted(starts)  # it resumed
    _, clean_final = _fit(tmp_path, "clean")
    for key, value in clean_final.items():
        assert torch.equal(interrupted_final[key], value), key  # bitwise

    # One folder holds every rank's shards and rank 0's metadata; no manifest is left.
    merged = Path(interrupted.checkpoint.path)
    names = sorted(os.listdir(merged))
    assert {".metadata", "__0_0.distcp", "__1_0.distcp"} <= set(names), names
    assert not [n for n in names if n.startswith(".trainkit_rank_")], names

    # Another world size: one process with no process group reads it into a plain model ...
    plain = _model()
    extra = train.torch.load_sharded(merged, plain)
    assert extra == {"epoch": 3}
    for key, value in clean_final.items():
        assert torch.equal(dict(plain.named_parameters())[key], value), key
    # ... and a 1-rank FSDP run resumes from it (epoch 3 was the last: nothing left to train).
    one, one_final = _fit(tmp_path, "one", workers=1,
                          resume_from=Checkpoint.from_directory(str(merged)))
    assert one.checkpoint is None  # nothing was left to train, nothing reported
    for key, value in clean_final.items():
        assert torch.equal(one_final[key], value), key


@pytest.mark.usefixtures("train_runtime")
def test_sharded_checkpoint_through_s3_holds_every_rank_and_loads_whole(tmp_path, s3) -> None:
    storage = {"storage_path": f"s3://{s3.bucket}/fsdp", "storage_filesystem": s3.fs}
    result, final = _fit(tmp_path, "s3run", epochs=2, storage=storage)
    keys = s3.keys("fsdp/s3run")
    assert {"checkpoint_000002/.metadata", "checkpoint_000002/__0_0.distcp",
            "checkpoint_000002/__1_0.distcp"} <= set(keys), keys
    assert not [k for k in keys if ".trainkit_rank_" in k or k.startswith(".staging")], keys
    plain = _model()
    with result.checkpoint.as_directory() as d:
        assert train.torch.load_sharded(d, plain) == {"epoch": 1}
    for key, value in final.items():
        assert torch.equal(dict(plain.named_parameters())[key], value), key


def mixed_precision_loop() -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    torch.manual_seed(0)
    model = train.torch.prepare_model(_model(), parallel_strategy="fsdp",
                                      parallel_strategy_kwargs={"mp_policy": MixedPrecisionPolicy(
                                          param_dtype=torch.bfloat16, reduce_dtype=torch.float32)})
    out = model(torch.randn(4, 8, dtype=torch.bfloat16))
    out.float().sum().backward()
    train.report({"out": str(out.dtype), "grad": str(model[0].weight.grad.dtype)})


@pytest.mark.usefixtures("train_runtime")
def test_mp_policy_reaches_fully_shard(tmp_path) -> None:
    result = Trainer(mixed_precision_loop, scaling_config=ScalingConfig(num_workers=2),
                     run_config=RunConfig(name="mp", storage_path=tmp_path, verbose=0)).fit()
    # Computed in bf16, the gradients reduced and kept in fp32 (the sharded parameters' dtype).
    assert result.metrics == {"out": "torch.bfloat16", "grad": "torch.float32"}


def conflicting_loop(config: dict) -> None:
    rank = train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as d:
        Path(d, "same.txt").write_text("every rank writes this")
        Path(d, "state.json").write_text(json.dumps({"rank": rank}))
        train.report({"step": 0}, checkpoint=Checkpoint.from_directory(d))


@pytest.mark.usefixtures("train_runtime")
def test_a_file_two_ranks_write_differently_fails_naming_it(tmp_path) -> None:
    trainer = Trainer(conflicting_loop, scaling_config=ScalingConfig(num_workers=2),
                      run_config=RunConfig(name="conflict", storage_path=tmp_path))
    with pytest.raises(CheckpointConflictError, match=r"'state.json' from ranks \[0, 1\]") \
            as info:
        trainer.fit()
    assert "same.txt" not in str(info.value)
    assert not (tmp_path / "conflict" / "checkpoint_000001").exists()  # never committed


# -- the merge check, without processes ------------------------------------------------------
def test_find_conflicts_names_only_files_that_differ() -> None:
    manifests = {0: {"a": [1, "x"], "b": [1, "y"], ".metadata": [3, "m"]},
                 1: {"a": [1, "x"], "b": [1, "z"], "__1_0.distcp": [9, "d"]},
                 2: {"b": [1, "y"]}}
    assert find_conflicts(manifests) == [("b", [0, 1, 2])]
    assert find_conflicts({0: {"a": [1, "x"]}, 1: {"b": [2, "y"]}}) == []


def test_check_merged_drops_manifests_and_refuses_conflicts(tmp_path) -> None:
    staged = tmp_path / "staged"
    for rank, text in ((0, "zero"), (1, "one")):
        d = tmp_path / f"rank{rank}"
        (d / "sub").mkdir(parents=True)
        (d / "sub" / f"__{rank}_0.distcp").write_text(text)
        (d / "shared.bin").write_text("same")
        write_manifest(str(d), rank)
        _storage.move_into(str(d), _storage.local_location(staged))
    check_merged(_storage.local_location(staged))
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*")
                  if p.is_file()) == ["shared.bin", "sub/__0_0.distcp", "sub/__1_0.distcp"]

    for rank in (0, 1):
        d = tmp_path / f"again{rank}"
        d.mkdir()
        (d / "shared.bin").write_text(f"rank {rank}")
        write_manifest(str(d), rank)
        _storage.move_into(str(d), _storage.local_location(tmp_path / "clash"))
    with pytest.raises(CheckpointConflictError, match=r"'shared.bin' from ranks \[0, 1\]"):
        check_merged(_storage.local_location(tmp_path / "clash"))
    assert (tmp_path / "clash" / manifest_name(0)).exists()  # left for a look; never committed


# -- bad input ---------------------------------------------------------------------------------
def test_bad_strategy_kwargs_and_models_name_the_value_and_the_fix(tmp_path) -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"parallel_strategy is 'zero3'.*'fsdp'"):
        train.torch.prepare_model(model, parallel_strategy="zero3")
    with pytest.raises(ValueError, match=r"unknown keys \['sharding'\].*reshard_after_forward"):
        train.torch.prepare_model(model, parallel_strategy="fsdp",
                                  parallel_strategy_kwargs={"sharding": "full"})
    with pytest.raises(ValueError, match=r"ReLU with no parameters.*parallel_strategy=None"):
        train.torch.prepare_model(nn.ReLU(), parallel_strategy="fsdp")
    with pytest.raises(ValueError, match=r"needs torch.distributed's process group"):
        train.torch.prepare_model(model, parallel_strategy="fsdp")
    with pytest.raises(ValueError, match=r"names \['9'\], which Sequential does not have"):
        shard_policy(model, ["0", "9"])
    with pytest.raises(ValueError, match=r"shard_modules'\] is 3"):
        shard_policy(model, 3)
    with pytest.raises(FileNotFoundError, match=r"no \.metadata"):
        train.torch.load_sharded(tmp_path, model)


def test_shard_policy_default_by_class_name_and_callable() -> None:
    model = _model()
    linears = [model[0], model[2], model[4]]
    assert shard_policy(model, None) == linears  # every child with parameters
    assert shard_policy(model, [nn.Linear]) == linears
    assert shard_policy(model, ["2"]) == [model[2]]
    assert shard_policy(model, lambda name, m: name == "4") == [model[4]]
    nested = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), nn.Linear(2, 1))
    order = [id(m) for m in shard_policy(nested, [nn.Linear, nn.Sequential])]
    assert order.index(id(nested[0])) > max(order.index(id(m)) for m in nested[0])  # inner first
