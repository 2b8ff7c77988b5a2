"""Live output in a Jupyter notebook: a display handle that can be updated in place."""

from __future__ import annotations

import importlib
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
    if sys.modules.get("IPython") is None:
        return None
    try:
        # Looked up, not imported by name: IPython is optional (and untyped where present).
        ipython: Any = importlib.import_module("IPython")
        display: Any = importlib.import_module("IPython.display")
        ip = ipython.get_ipython()
        if ip is None or type(ip).__name__ != "ZMQInteractiveShell":
            return None
        return display.display(Text(""), display_id=True)
    except Exception:
        return None
