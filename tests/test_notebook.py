"""In a real Jupyter kernel (nbclient): the Trainer's progress is one display updated in
place, not stderr; a worker's tqdm bar comes out as a few lines, not one per refresh."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install nbclient ipykernel (the "
                               "test extra has them)")
nbclient = pytest.importorskip("nbclient", reason="pip install nbclient ipykernel")
pytest.importorskip("ipykernel", reason="pip install ipykernel")


def _run(cells: list[str], cwd: Path) -> list[list[dict[str, Any]]]:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in cells]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return [cell.outputs for cell in nb.cells]


def _stream(outputs: list[dict[str, Any]], name: str) -> str:
    return "".join(o["text"] for o in outputs if o["output_type"] == "stream"
                   and o["name"] == name)


def test_trainer_progress_and_worker_bars_in_a_notebook(tmp_path: Path) -> None:
    setup, fit, bar, stop = _run([
        """
        import trainkit as tk
        from trainkit import train
        from trainkit.train import RunConfig, ScalingConfig, Trainer
        tk.init(num_cpus=2, num_gpus=0)
        """,
        f"""
        def loop(config):
            for step in range(4):
                train.report({{"step": step, "loss": 1.0 / (step + 1)}})

        result = Trainer(loop, scaling_config=ScalingConfig(num_workers=1),
                         run_config=RunConfig(name="nb", storage_path={str(tmp_path)!r})).fit()
        print("final step", result.metrics["step"])
        """,
        """
        @tk.remote
        def bar():
            from tqdm import tqdm
            for _ in tqdm(range(3000), mininterval=0, miniters=1, desc="steps"):
                pass
            return "ok"

        print(tk.get(bar.remote()))
        """,
        "tk.shutdown()",
    ], tmp_path)
    assert not [o for o in setup if o["output_type"] == "error"]

    displays = [o for o in fit if o["output_type"] == "display_data"]
    assert len(displays) == 1, fit  # one display, updated in place (nbclient applies updates)
    shown = displays[0]["data"]["text/plain"]
    assert "[trainkit] nb: iter 4" in shown and "step=3" in shown
    assert "final step 3" in _stream(fit, "stdout")
    assert _stream(fit, "stderr") == "", fit  # nothing there but warnings, and there are none

    # Output is forwarded as it comes, after the task's result maybe: shutdown() prints
    # what is left, in the next cell.
    err = _stream(bar + stop, "stderr")
    finished = [ln for ln in err.split("\n") if "steps:" in ln]
    assert finished and len(finished) <= 2, repr(err[-3000:])  # its end, not 3,000 lines
    assert "3000/3000" in finished[-1].rsplit("\r", 1)[-1], repr(err[-3000:])
    assert "ok" in _stream(bar, "stdout")
    assert not [o for o in stop if o["output_type"] == "error"]
