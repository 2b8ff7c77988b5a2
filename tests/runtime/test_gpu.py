"""Real-GPU checks: device assignment, CUDA_VISIBLE_DEVICES, fractional sharing, feeding data.

They need a CUDA machine and run there (`pytest tests/runtime/test_gpu.py`); the CPU twins of
every check, on faked GPUs, are in test_resources.py and run everywhere.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import trainkit as tk
from trainkit.runtime import PlacementGroupSchedulingStrategy
from trainkit.runtime import placement_group
from trainkit.runtime import remove_placement_group

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (CPU twins: test_resources.py)")


@pytest.fixture
def gpu_rt(runtime):
    runtime(num_gpus=None)  # detect the machine's GPUs


@tk.remote
class GpuUser:
    def info(self):
        x = torch.ones(1024, 1024, device="cuda")
        return {
            "ids": tk.get_gpu_ids(),
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "count": torch.cuda.device_count(),
            "matmul": float((x @ x).sum().item()),
        }

    def consume(self, arr):
        t = torch.from_numpy(arr).to("cuda", non_blocking=True)
        return float(t.sum().item())


def test_gpus_detected_and_each_actor_sees_its_own(gpu_rt):
    n = torch.cuda.device_count()
    assert tk.cluster_resources()["GPU"] == n
    actors = [GpuUser.options(num_gpus=1).remote() for _ in range(n)]
    infos = tk.get([a.info.remote() for a in actors], timeout=120)
    assert sorted(i["ids"][0] for i in infos) == list(range(n))
    for info in infos:
        assert info["count"] == 1 and info["visible"] == str(info["ids"][0])
        assert info["matmul"] == 1024.0 ** 3


def test_fractional_actors_share_one_device(gpu_rt):
    a, b = (GpuUser.options(num_gpus=0.5).remote() for _ in range(2))
    ia, ib = tk.get([a.info.remote(), b.info.remote()], timeout=120)
    assert ia["ids"] == ib["ids"] and ia["count"] == ib["count"] == 1


def test_gpu_task_worker_is_not_reused_after_cuda_init(gpu_rt):
    @tk.remote(num_gpus=1)
    def use_gpu():
        torch.zeros(1, device="cuda")
        return os.getpid()

    @tk.remote
    def cpu_pid():
        return os.getpid()

    gpu_pid = tk.get(use_gpu.remote(), timeout=120)
    assert gpu_pid not in set(tk.get([cpu_pid.remote() for _ in range(20)]))


def test_object_store_feeds_a_gpu_actor_in_a_placement_group(gpu_rt):
    pg = placement_group([{"GPU": 1, "CPU": 1}])
    assert pg.wait(30)
    actor = GpuUser.options(num_gpus=1, num_cpus=1, scheduling_strategy=
                            PlacementGroupSchedulingStrategy(pg, 0)).remote()
    arr = np.ones(4 << 20, dtype=np.float32)
    ref = tk.put(arr)
    assert tk.get(actor.consume.remote(ref), timeout=120) == float(4 << 20)
    remove_placement_group(pg)
