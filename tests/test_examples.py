"""The examples run as a user runs them: a fresh interpreter, from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_runs() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "quickstart.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "squares: [0, 1, 4, 9, 16]" in proc.stdout


def test_train_ddp_runs_and_resumes(tmp_path: Path) -> None:
    script = str(REPO / "examples" / "train_ddp.py")
    first = subprocess.run([sys.executable, script, "--storage-path", str(tmp_path),
                            "--epochs", "2"], capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr
    assert "final metrics: {'epoch': 1" in first.stdout
    again = subprocess.run([sys.executable, script, "--storage-path", str(tmp_path),
                            "--epochs", "3"], capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert "resuming run 'train_ddp_example'" in again.stdout  # progress: stdout
    assert "final metrics: {'epoch': 2" in again.stdout


def test_train_fsdp_example_resumes(tmp_path: Path) -> None:
    script = str(REPO / "examples" / "train_fsdp.py")
    for epochs in ("2", "3"):
        proc = subprocess.run([sys.executable, script, "--storage-path", str(tmp_path),
                               "--epochs", epochs], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert "loaded epoch 2 in one process" in proc.stdout


def test_tune_asha_optuna_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "tune_asha_optuna.py"),
                           "--storage-path", str(tmp_path), "--num-samples", "6"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "best config: {'lr':" in proc.stdout


def test_tune_pbt_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "tune_pbt.py"),
                           "--storage-path", str(tmp_path)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "best score:" in proc.stdout
    assert "exploits: 0" not in proc.stdout
