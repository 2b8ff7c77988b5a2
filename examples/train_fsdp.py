"""Train a small MLP with FSDP2 on 2 CPU workers (gloo): each rank holds a shard of every
parameter and writes its own part of a sharded checkpoint (torch.distributed.checkpoint) each
epoch; the ranks' parts are merged into one checkpoint. Run it again and it resumes from the
latest one; at the end the script loads that checkpoint whole, in this one process.
`python examples/train_fsdp.py [--storage-path DIR] [--epochs N]`."""

import argparse
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


def make_model():
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 1))


def make_data(n=4096):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].sum(dim=1, keepdim=True) > 0).float()  # a simple rule to learn
    return TensorDataset(x, y)


def train_loop(config):
    torch.manual_seed(0)
    # FSDP2: each Linear, then the whole model, is sharded over the ranks (DTensor parameters).
    model = train.torch.prepare_model(make_model(), parallel_strategy="fsdp")
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    start = 0
    checkpoint = train.get_checkpoint()  # set when resuming
    if checkpoint:
        with checkpoint.as_directory() as d:  # every rank reads the shards it needs
            start = train.torch.load_sharded(d, model, opt)["epoch"] + 1
    loader = train.torch.prepare_data_loader(  # each rank reads its own part of the data
        DataLoader(make_data(), batch_size=64, shuffle=True))
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(start, config["epochs"]):
        loader.sampler.set_epoch(epoch)
        total, seen = 0.0, 0
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
            seen += len(x)
        with tempfile.TemporaryDirectory() as d:
            # Every rank writes its shards (__<rank>_0.distcp), rank 0 also .metadata.
            train.torch.save_sharded(d, model, opt, {"epoch": epoch})
            train.report({"epoch": epoch, "loss": total / seen},
                         checkpoint=Checkpoint.from_directory(d))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage-path", default=None)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    trainer = Trainer(
        train_loop,
        train_loop_config={"lr": 1e-2, "epochs": args.epochs},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="train_fsdp_example", storage_path=args.storage_path,
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=2)),
    )
    result = trainer.fit()
    print(f"final metrics: {result.metrics}")
    print(f"latest checkpoint: {result.checkpoint.path}")
    # The merged checkpoint loads on any world size: here one process, a plain model.
    model = make_model()
    with result.checkpoint.as_directory() as d:
        extra = train.torch.load_sharded(d, model)
    x, y = make_data()[:]
    accuracy = ((model(x) > 0).float() == y).float().mean().item()
    print(f"loaded epoch {extra['epoch']} in one process: accuracy {accuracy:.3f}")
