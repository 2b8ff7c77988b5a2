"""GPU check of Train (run on a machine with a CUDA GPU): one rank with nccl, the GPU it sees,
a checkpoint/resume round trip of GPU tensors, and trainkit's per-step overhead against the
same loop in plain PyTorch on the same GPU.

    python bench/gpu_train_check.py [--steps 300] [--storage-path DIR]

Prints one JSON line (last line on stdout) and exits non-zero if a check fails.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

import trainkit as tk
from trainkit import train
from trainkit.train import Checkpoint
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer

WIDTH, BATCH = 4096, 1024


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(),
                         nn.Linear(WIDTH, 1))


def timed_steps(model, opt, steps, device, report=None):
    """Median step time (ms) of `steps` SGD steps, each synchronised; `report` runs per step."""
    x = torch.randn(BATCH, WIDTH, device=device)
    y = torch.randn(BATCH, 1, device=device)
    times = []
    for i in range(steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if report is not None:
            report({"step": i, "loss": loss.item()})
        else:
            loss.item()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times[steps // 5:])  # drop warm-up


def gpu_loop(config):
    import torch.distributed as dist

    device = train.torch.get_device()
    facts = {
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "assigned_gpu_ids": tk.get_gpu_ids(),
        "device_count": torch.cuda.device_count(),
        "device": str(device),
        "env": {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")},
    }
    model = train.torch.prepare_model(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    ckpt = train.get_checkpoint()
    if ckpt is not None:  # the resume half of the round trip
        state = torch.load(os.path.join(ckpt.path, "model.pt"), map_location=device)
        saved = state["model"]
        model.load_state_dict(saved)
        same = all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
        facts["resumed_equal"] = same
        facts["resumed_on"] = str(next(model.parameters()).device)
        with open(config["out"] + ".resume.json", "w") as f:
            json.dump(facts, f)
        train.report({"resumed": 1})
        return
    facts["step_ms_report_each_step"] = timed_steps(
        model, opt, config["steps"], device, report=lambda m: train.report(m))
    facts["step_ms_no_report"] = timed_steps(model, opt, config["steps"], device)
    with tempfile.TemporaryDirectory() as d:
        torch.save({"model": model.state_dict()}, os.path.join(d, "model.pt"))
        train.report({"saved": 1}, checkpoint=Checkpoint.from_directory(d))
    with open(config["out"] + ".json", "w") as f:
        json.dump(facts, f)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--storage-path", default=None)
    args = p.parse_args()
    storage = args.storage_path or tempfile.mkdtemp(prefix="gpu_check_")
    shutil.rmtree(os.path.join(storage, "gpu"), ignore_errors=True)  # a fresh run, not a resume
    out = os.path.join(storage, "facts")
    line = {"bench": "gpu_train_check", "gpu": torch.cuda.get_device_name(0)}
    failures = []

    # Plain PyTorch, same loop, same GPU, in this process (before the runtime starts).
    model = make_model().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    line["plain_step_ms"] = timed_steps(model, opt, args.steps, torch.device("cuda", 0))
    del model, opt
    torch.cuda.empty_cache()

    tk.init()
    t = time.perf_counter()
    run = RunConfig(name="gpu", storage_path=storage, verbose=0)
    result = Trainer(gpu_loop, train_loop_config={"steps": args.steps, "out": out},
                     scaling_config=ScalingConfig(num_workers=1, use_gpu=True),
                     run_config=run).fit()
    line["fit_s"] = round(time.perf_counter() - t, 2)
    with open(out + ".json") as f:
        facts = json.load(f)
    line.update(facts)
    # Resume: the same run again starts from its latest checkpoint, on the GPU.
    Trainer(gpu_loop, train_loop_config={"steps": args.steps, "out": out},
            scaling_config=ScalingConfig(num_workers=1, use_gpu=True), run_config=run).fit()
    with open(out + ".resume.json") as f:
        resumed = json.load(f)
    line["resumed_equal"] = resumed["resumed_equal"]
    line["resumed_on"] = resumed["resumed_on"]
    line["checkpoint"] = os.path.basename(result.checkpoint.path)
    line["overhead_ratio_report_each_step"] = round(
        facts["step_ms_report_each_step"] / line["plain_step_ms"], 3)
    line["overhead_ratio_no_report"] = round(facts["step_ms_no_report"] / line["plain_step_ms"], 3)
    tk.shutdown()

    if facts["backend"] != "nccl":
        failures.append(f"backend {facts['backend']}")
    if facts["device_count"] != 1 or facts["device"] != "cuda:0":
        failures.append(f"device {facts['device']} of {facts['device_count']}")
    if facts["cuda_visible_devices"] != ",".join(map(str, facts["assigned_gpu_ids"])):
        failures.append("CUDA_VISIBLE_DEVICES does not match get_gpu_ids()")
    if not resumed["resumed_equal"] or not resumed["resumed_on"].startswith("cuda"):
        failures.append("resume round trip")
    line["failures"] = failures
    print(json.dumps(line))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
