"""``trainkit run``: an unmodified torchrun script, the same results as torchrun, its exit
status, restarts of the whole group, and bad input refused at once."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import os, sys
    import torch, torch.distributed as dist
    from torch import nn

    dist.init_process_group("gloo")  # from torchrun's environment: nothing else is passed
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1000 + rank)
    for step in range(20):
        x = torch.randn(16, 8, generator=g)
        opt.zero_grad()
        loss = ((ddp(x) - x.sum(1, keepdim=True)) ** 2).mean()
        loss.backward()
        opt.step()
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    print(f"rank {rank} of {world}, local {os.environ['LOCAL_RANK']}: {w.tolist()}")
    with open(f"weights-{rank}.txt", "w") as f:  # torchrun interleaves the ranks' stdout
        f.write(repr(w.tolist()))
    dist.destroy_process_group()
    restart = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    fail_until = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    sys.exit(3 if rank == 1 and restart < fail_until else 0)
""")


def _run(*argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _weights(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("weights-*.txt"))}


def test_the_same_results_as_torchrun_and_each_line_prefixed_with_its_rank(
        tmp_path: Path) -> None:
    for side in ("ours", "theirs"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "train.py").write_text(SCRIPT)
    ours = _run("-m", "trainkit.cli", "run", "--nproc-per-node", "2", "train.py",
                cwd=tmp_path / "ours")
    assert ours.returncode == 0, ours.stderr[-3000:]
    theirs = _run("-m", "torch.distributed.run", "--nproc-per-node", "2", "train.py",
                  cwd=tmp_path / "theirs")
    assert theirs.returncode == 0, theirs.stderr[-3000:]
    assert _weights(tmp_path / "ours") == _weights(tmp_path / "theirs")
    assert len(_weights(tmp_path / "ours")) == 2
    assert re.search(r"^\(rank 1\) rank 1 of 2, local 1: ", ours.stdout, re.M)


def test_a_failed_rank_restarts_the_group_and_its_status_is_the_exit_status(
        tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    once = _run("-m", "trainkit.cli", "run", "--nproc-per-node", "2", "--max-restarts", "1",
                "train.py", "1", cwd=tmp_path)  # rank 1 fails the first attempt only
    assert once.returncode == 0, once.stderr[-3000:]
    assert "restarting the group (1 restart left)" in once.stderr
    always = _run("-m", "trainkit.cli", "run", "--nproc-per-node", "2", "--max-restarts", "1",
                  "train.py", "9", cwd=tmp_path)
    assert always.returncode == 3, always.stderr[-3000:]


@pytest.mark.parametrize("argv, message", [
    (["--nproc-per-node", "2", "missing.py"], "the script 'missing.py' does not exist"),
    (["--nproc-per-node", "0", "train.py"], "--nproc-per-node is 0; it must be >= 1"),
    (["--nproc-per-node", "1", "--nnodes", "3:1", "train.py"], "--nnodes is 3:1"),
    (["--nproc-per-node", "1", "--nnodes", "x", "train.py"], "--nnodes is 'x'"),
    (["--nproc-per-node", "1", "--max-restarts", "-1", "train.py"], "--max-restarts is -1"),
])
def test_bad_input_is_refused_at_once_naming_the_value(tmp_path: Path, argv: list[str],
                                                       message: str) -> None:
    (tmp_path / "train.py").write_text("print('never runs')\n")
    got = _run("-m", "trainkit.cli", "run", *argv, cwd=tmp_path, timeout=30)
    assert got.returncode == 2 and message in got.stderr, got.stderr
    assert "never runs" not in got.stdout


def test_ray_s_spelling_torch_trainer_is_the_trainer() -> None:
    from trainkit.train import Trainer
    from trainkit.train.torch import TorchTrainer

    assert TorchTrainer is Trainer
