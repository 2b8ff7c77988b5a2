"""Notebook output: with a Jupyter kernel present, Data's progress and Tune's table update one
display in place (IPython is faked here; the environment has none)."""

from __future__ import annotations

import sys
import types

import pytest


class _Handle:
    def __init__(self) -> None:
        self.updates: list[str] = []

    def update(self, obj: object) -> None:
        self.updates.append(repr(obj))


@pytest.fixture
def notebook(monkeypatch: pytest.MonkeyPatch) -> _Handle:
    handle = _Handle()
    shell = type("ZMQInteractiveShell", (), {})()
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell  # type: ignore[attr-defined]
    display = types.ModuleType("IPython.display")
    display.display = lambda obj, display_id=False: handle  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    return handle


def test_data_progress_updates_a_notebook_display(notebook: _Handle, monkeypatch) -> None:
    import trainkit as tk
    from trainkit import data
    from trainkit.data import _executor

    monkeypatch.setattr(_executor._Progress, "DELAY_S", 0.0)
    monkeypatch.setattr(_executor._Progress, "PERIOD_S", 0.0)
    tk.init(num_cpus=2, num_gpus=0)
    try:
        assert data.range(1000, override_num_blocks=4).map(lambda r: r).count() == 1000
    finally:
        tk.shutdown()
    assert notebook.updates and "map(<lambda>)" in notebook.updates[-1]


def test_tune_table_updates_a_notebook_display(notebook: _Handle) -> None:
    from trainkit.tune._progress import TrialTable
    from trainkit.tune._runner import Trial

    table = TrialTable("sweep", 1, "loss", "min")
    trial = Trial("00000", "f_00000", {"lr": 0.1}, "/tmp/x", {"CPU": 1.0},
                  last_result={"loss": 0.5, "training_iteration": 3})
    table.refresh([trial], force=True)
    assert notebook.updates and "f_00000" in notebook.updates[-1]
    assert "best f_00000: loss=0.5" in notebook.updates[-1]
