"""README's quick start is examples/quickstart.py, word for word, so the two cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_quick_start_is_the_example() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", readme, flags=re.DOTALL | re.MULTILINE)
    example = (REPO / "examples" / "quickstart.py").read_text()
    assert example in blocks, "README.md's quick start differs from examples/quickstart.py"
