"""GPU check of cluster mode (run on a machine with a CUDA GPU): a LocalCluster whose head has
no GPU and whose "GPU node" has the real device. Checks that GPU work lands on the GPU node
with CUDA_VISIBLE_DEVICES set to the real id, that an object put on the CPU head reaches a
GPU task bit-exact (pulled across nodes, then copied to the device), that a Trainer with nccl
runs its rank on the GPU node, and that Data batches made on the CPU head feed the GPU node.

    python bench/gpu_cluster_check.py

Prints one JSON line (last line on stdout) and exits non-zero if a check fails.
"""

import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

import trainkit as tk
from trainkit import train
from trainkit.testing import LocalCluster
from trainkit.train import RunConfig
from trainkit.train import ScalingConfig
from trainkit.train import Trainer

# On a machine without CUDA it runs the same paths with one faked GPU (a smoke test).
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


@tk.remote(num_gpus=1)
def gpu_sum(a: np.ndarray) -> dict:
    t = torch.from_numpy(np.array(a, copy=False)).to(DEVICE)
    return {"node": os.environ["TRAINKIT_NODE_ID"], "visible": os.environ["CUDA_VISIBLE_DEVICES"],
            "ids": tk.get_gpu_ids(), "device": torch.cuda.get_device_name(0) if CUDA else "cpu",
            "sum": int(t.to(torch.int64).sum().item())}


def loop(config: dict) -> None:
    device = train.torch.get_device()
    model = train.torch.prepare_model(nn.Linear(256, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(512, 256, device=device)
    for _ in range(20):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
    train.report({"loss": float(loss), "device": str(device),
                  "backend": torch.distributed.get_backend(),
                  "node": os.environ["TRAINKIT_NODE_ID"]})


def main() -> int:
    out: dict = {"cuda": torch.cuda.is_available()}
    ok = True
    t0 = time.perf_counter()
    import shutil

    store = min(2 << 30, int(shutil.disk_usage("/dev/shm").free * 0.4))  # two stores
    out["store_bytes"] = store
    with LocalCluster(num_cpus=2, num_gpus=0, object_store_memory=store) as cluster:
        gpu_node = cluster.add_node(num_cpus=4, num_gpus=1, resources={"gpu_node": 1},
                                    object_store_memory=store)
        cluster.connect()
        out["start_s"] = round(time.perf_counter() - t0, 2)
        a = np.random.default_rng(0).integers(0, 255, min(256 << 20, store // 4), dtype=np.uint8)
        out["gpu_node"] = gpu_node
        t = time.perf_counter()
        res = tk.get(gpu_sum.remote(tk.put(a)))
        out["object_to_gpu_s"] = round(time.perf_counter() - t, 3)
        out["gpu_task"] = res
        ok &= res["node"] == gpu_node and res["visible"] == ",".join(map(str, res["ids"]))
        ok &= res["sum"] == int(a.astype(np.int64).sum())
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            result = Trainer(loop, scaling_config=ScalingConfig(
                num_workers=1, use_gpu=CUDA, resources_per_worker=None if CUDA else {
                    "CPU": 1, "gpu_node": 0.5}),
                             run_config=RunConfig(name="gpu", storage_path=tmp)).fit()
            out["fit_s"] = round(time.perf_counter() - t, 2)
            out["train"] = result.metrics
            ok &= result.error is None and result.metrics["node"] == gpu_node
            ok &= result.metrics["backend"] == ("nccl" if CUDA else "gloo")
            ok &= result.metrics["device"] == ("cuda:0" if CUDA else "cpu")
        from trainkit import data

        ds = data.range(200_000).map_batches(lambda b: {"x": b["id"] * 2}, batch_size=4096)

        @tk.remote(num_gpus=1)
        def consume(shard) -> dict:
            total, n = 0, 0
            for batch in shard.iter_torch_batches(batch_size=8192, device=DEVICE):
                total += int(batch["x"].sum().item())
                n += int(batch["x"].numel())
            return {"rows": n, "sum": total, "node": os.environ["TRAINKIT_NODE_ID"]}

        t = time.perf_counter()
        fed = tk.get(consume.remote(ds.streaming_split(1)[0]))
        out["data_s"] = round(time.perf_counter() - t, 2)
        out["data"] = fed
        ok &= fed == {"rows": 200_000, "sum": 2 * sum(range(200_000)), "node": gpu_node}
    out["ok"] = bool(ok)
    print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
