"""A sweep of a small PyTorch regression: optuna's TPE proposes learning rates and widths,
ASHA stops the hopeless trials early. `python examples/tune_asha_optuna.py [--storage-path D]`."""

import argparse

import torch
from torch import nn

from trainkit import tune
from trainkit.train import RunConfig
from trainkit.tune.schedulers import ASHAScheduler
from trainkit.tune.search import OptunaSearch


def train_model(config):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(512, 1, generator=g)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, config["width"]), nn.ReLU(), nn.Linear(config["width"], 1))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    for epoch in range(20):
        for i in range(0, 512, 64):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x[i:i + 64]), y[i:i + 64])
            loss.backward()
            opt.step()
        with torch.no_grad():
            tune.report({"loss": nn.functional.mse_loss(model(x), y).item(), "epoch": epoch})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage-path", default=None)
    parser.add_argument("--num-samples", type=int, default=16)
    args = parser.parse_args()
    tuner = tune.Tuner(
        train_model,
        param_space={"lr": tune.loguniform(1e-4, 1e-1), "width": tune.choice([8, 32, 128])},
        tune_config=tune.TuneConfig(
            metric="loss", mode="min", num_samples=args.num_samples,
            search_alg=OptunaSearch(seed=0),
            scheduler=ASHAScheduler(max_t=20, grace_period=2, reduction_factor=3)),
        run_config=RunConfig(name="asha_optuna_example", storage_path=args.storage_path),
    )
    results = tuner.fit()
    best = results.get_best_result()
    print(f"best config: {best.config}")
    epochs_run = best.metrics["training_iteration"]
    print(f"best loss: {best.metrics['loss']:.4f} after {epochs_run} epochs")
    epochs = sorted(r.metrics["training_iteration"] for r in results)
    print(f"epochs run per trial: {epochs} (ASHA stopped the others early)")
