"""Train a small MLP with DDP on 2 CPU workers, a checkpoint per epoch; run it again and it
resumes from the latest checkpoint. `python examples/train_ddp.py [--storage-path DIR]`."""

import argparse
import os
import tempfile

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset

from trainkit import train
from trainkit.train import Checkpoint
from trainkit.train import CheckpointConfig
from trainkit.train import FailureConfig
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer


def make_data(n=4096):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].sum(dim=1, keepdim=True) > 0).float()  # a simple rule to learn
    return TensorDataset(x, y)


def train_loop(config):
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    start = 0
    checkpoint = train.get_checkpoint()  # set when resuming
    if checkpoint:
        state = torch.load(os.path.join(checkpoint.path, "state.pt"))
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["epoch"] + 1
    model = train.torch.prepare_model(model)  # DDP: gradients are averaged over the ranks
    loader = train.torch.prepare_data_loader(  # each rank reads its own part of the data
        DataLoader(make_data(), batch_size=64, shuffle=True))
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(start, config["epochs"]):
        loader.sampler.set_epoch(epoch)
        total, correct, seen = 0.0, 0, 0
        for x, y in loader:
            opt.zero_grad()
            logits = model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
            correct += int(((logits > 0).float() == y).sum())
            seen += len(x)
        metrics = {"epoch": epoch, "loss": total / seen, "accuracy": correct / seen}
        with tempfile.TemporaryDirectory() as d:
            if train.get_context().get_world_rank() == 0:
                torch.save({"model": model.module.state_dict(), "opt": opt.state_dict(),
                            "epoch": epoch}, os.path.join(d, "state.pt"))
            train.report(metrics, checkpoint=Checkpoint.from_directory(d))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage-path", default=None)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    trainer = Trainer(
        train_loop,
        train_loop_config={"lr": 1e-2, "epochs": args.epochs},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(
            name="train_ddp_example", storage_path=args.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="loss",
                                               checkpoint_score_order="min"),
            failure_config=FailureConfig(max_failures=2)),
    )
    result = trainer.fit()
    print(f"final metrics: {result.metrics}")
    print(f"latest checkpoint: {result.checkpoint.path}")
    print(result.metrics_dataframe[["epoch", "loss", "accuracy"]].to_string(index=False))
