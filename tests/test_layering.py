"""The layers go one way (STYLE.md section 1): import-linter's contracts, and no torch at import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_LOADED_TORCH = 3  # exit code of the probe below


def test_import_linter_contracts_are_kept() -> None:
    # The lint-imports installed next to this interpreter, so the test never picks up another.
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), f"{lint_imports} is missing: run scripts/setup.sh"
    proc = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("module", ["trainkit", "trainkit.runtime", "trainkit.tune"])
def test_import_does_not_load_torch(module: str) -> None:
    # A fresh interpreter: in this one, another test may already have imported torch.
    code = (
        "import sys\n"
        f"import {module}\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(' '.join(loaded[:10]))\n"
        f"sys.exit({_LOADED_TORCH} if loaded else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != _LOADED_TORCH, (
        f"`import {module}` loaded torch ({proc.stdout.strip()}); the runtime and tune layers "
        "must stay torch-free"
    )
    assert proc.returncode == 0, f"`import {module}` failed:\n{proc.stderr}"


def test_the_runtime_has_no_import_cycles() -> None:
    """Module by module, what the runtime imports at run time forms no cycle (imports made
    only for type checking may point back)."""
    import grimp

    graph = grimp.build_graph("trainkit", exclude_type_checking_imports=True)
    modules = {m for m in graph.modules if m.startswith("trainkit.runtime")}
    edges = {m: graph.find_modules_directly_imported_by(m) & modules for m in modules}
    # Kahn: repeatedly drop modules that import nothing left; what remains is on cycles.
    left = dict(edges)
    while True:
        leaves = [m for m, deps in left.items() if not deps & left.keys()]
        if not leaves:
            break
        for m in leaves:
            del left[m]
    assert not left, f"import cycles among: {sorted(left)}"

