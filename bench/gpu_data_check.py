"""GPU check of Data (run on a machine with a CUDA GPU): a small CNN trained on the GPU from
``iter_torch_batches(device="cuda")`` with CPU preprocessing in ``map_batches``, against the
same model fed from tensors already on the GPU (the limit).

    python bench/gpu_data_check.py [--rows 50000] [--epochs 2]

Prints one JSON line: images/s both ways, and the GPU's busy share (time in the model's CUDA
work, measured with CUDA events, over wall time).
"""

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

import trainkit as tk
from trainkit import data


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(128, 10)).cuda()


def normalize(batch):
    x = batch["image"].astype(np.float32) / 255.0
    return {"image": np.ascontiguousarray(x.transpose(0, 3, 1, 2)), "label": batch["label"]}


def train_on(batches, model, opt):
    """Train over `batches`; returns (images, wall seconds, seconds of GPU work)."""
    loss_fn = nn.CrossEntropyLoss()
    events = []
    n = 0
    torch.cuda.synchronize()
    t = time.perf_counter()
    for batch in batches:
        x, y = batch["image"], batch["label"]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        end.record()
        events.append((start, end))
        n += len(y)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    busy = sum(s.elapsed_time(e) for s, e in events) / 1e3
    return n, wall, busy


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (args.rows, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.rows).astype(np.int64)
    line = {"bench": "gpu_data_check", "gpu": torch.cuda.get_device_name(0), "rows": args.rows}

    # The limit: the same model, batches already on the GPU.
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.from_numpy(normalize({"image": images, "label": labels})["image"]).cuda()
    y = torch.from_numpy(labels).cuda()
    resident = [{"image": x[i:i + 256], "label": y[i:i + 256]}
                for i in range(0, args.rows, 256)]
    train_on(resident[:20], model, opt)  # warm-up (cuDNN autotune, allocator)
    n, wall, busy = train_on(resident, model, opt)
    line["resident_images_per_s"] = round(n / wall)
    line["resident_gpu_busy"] = round(busy / wall, 3)

    tk.init()
    from trainkit.data._block import to_block

    table = to_block({"image": images, "label": labels}, where="gpu_data_check")
    ds = data.from_arrow(table).map_batches(normalize, batch_size=1024)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    results = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        batches = ds.iter_torch_batches(batch_size=256, device="cuda", prefetch_batches=4)
        it = iter(batches)
        b = next(it)
        first = time.perf_counter() - t0
        n, wall, busy = train_on(_chain(b, it), model, opt)
        results.append((n, wall, busy, first))
    n, wall, busy, first = results[-1]
    line["streamed_images_per_s"] = round(n / wall)
    line["streamed_gpu_busy"] = round(busy / wall, 3)
    line["first_batch_s"] = round(first, 3)
    line["streamed_vs_resident"] = round(line["streamed_images_per_s"]
                                         / line["resident_images_per_s"], 3)
    line["stats"] = ds.stats()
    tk.shutdown()
    print(json.dumps(line))


def _chain(first, rest):
    yield first
    yield from rest


if __name__ == "__main__":
    main()
