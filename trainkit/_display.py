"""Live output in a Jupyter notebook: a display handle that can be updated in place."""

from __future__ import annotations

import sys
from typing import Any


class Text:
    """Shown as plain preformatted text by IPython's display."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def notebook_handle() -> Any:
    """A display handle when running in a Jupyter kernel, else None."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return None
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]
        from IPython.display import display  # type: ignore[import-not-found]

        ip = get_ipython()
        if ip is None or type(ip).__name__ != "ZMQInteractiveShell":
            return None
        return display(Text(""), display_id=True)
    except Exception:
        return None
