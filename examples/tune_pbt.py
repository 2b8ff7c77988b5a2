"""Population based training: 4 trials climb a toy objective; every 4 steps the bottom half
copy the checkpoint of the top half and perturb their learning rate.
`python examples/tune_pbt.py [--storage-path D]`."""

import argparse
import json
import os
import tempfile

from trainkit import tune
from trainkit.train import Checkpoint
from trainkit.train import RunConfig
from trainkit.tune.schedulers import PopulationBasedTraining


def climb(config):
    """Gradient ascent on -(w - 10)^2 with the trial's lr; the state is w and the step."""
    step, w = 0, 0.0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with open(os.path.join(checkpoint.path, "state.json")) as f:
            state = json.load(f)
        step, w = state["step"], state["w"]
    while step < 24:
        step += 1
        w += config["lr"] * 2 * (10 - w)
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump({"step": step, "w": w}, f)
            tune.report({"score": -((w - 10) ** 2), "lr": config["lr"]},
                        checkpoint=Checkpoint.from_directory(d))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage-path", default=None)
    args = parser.parse_args()
    pbt = PopulationBasedTraining(
        perturbation_interval=4, quantile_fraction=0.5, synch=True, seed=0,
        hyperparam_mutations={"lr": tune.loguniform(1e-4, 0.2)})
    tuner = tune.Tuner(
        climb, param_space={"lr": tune.grid_search([0.0005, 0.001, 0.01, 0.05])},
        tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=pbt),
        run_config=RunConfig(name="pbt_example", storage_path=args.storage_path),
    )
    results = tuner.fit()
    best = results.get_best_result()
    print(f"best score: {best.metrics['score']:.6f} with lr={best.config['lr']:.4g}")
    print(f"exploits: {len(pbt.history)}")
    for r in sorted(results, key=lambda r: r.path):
        print(f"  {os.path.basename(r.path)}: score {r.metrics['score']:.4f}, "
              f"lr {r.config['lr']:.4g}")
