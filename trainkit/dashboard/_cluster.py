"""``ClusterView``: the cluster page's data, asked of a running cluster through the public API.

With ``trainkit dashboard --address ...`` the dashboard process joins the cluster as a driver
(``trainkit.init(address=...)``) and asks ``nodes()``, ``cluster_resources()``,
``available_resources()``, ``util.placement_group_table()`` and
``util.list_named_actors(all_namespaces=True)`` when a page wants them: at most once per
``min_interval_s`` (the answers are kept that long), so many open pages cost the cluster one
set of questions per interval. Nothing runs between requests. Thread-safe (a lock around the
questions); the runtime is imported only here, so a dashboard without ``--address`` never
loads it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from trainkit.dashboard._model import cluster_model


class ClusterView:
    """See the module docstring.

    Args:
        address: what ``trainkit.init(address=...)`` takes ("auto", "HOST:PORT").
        min_interval_s: how long one set of answers is shown before asking again.
    """

    def __init__(self, address: str, min_interval_s: float = 1.0) -> None:
        self.address = address
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._asked = -float("inf")
        self._model: dict[str, Any] | None = None
        self._error: str | None = None
        self._owns_runtime = False

    def connect(self) -> None:
        """Join the cluster (or use this process's runtime, if it already has one).

        Raises:
            Exception: what ``trainkit.init`` raises for an address it cannot reach.
        """
        import trainkit as tk

        if not tk.is_initialized():
            tk.init(address=self.address, log_to_driver=False)
            self._owns_runtime = True

    def snapshot(self) -> tuple[dict[str, Any] | None, str | None]:
        """(the cluster page's data, an error to show); the last good data stays shown
        beside the error when the cluster stops answering."""
        with self._lock:
            now = time.monotonic()
            if now - self._asked < self.min_interval_s:
                return self._model, self._error
            self._asked = now
            try:
                self._model, self._error = self._ask(), None
            except Exception as e:  # the cluster went away: say it, keep the last answer
                self._error = (f"the cluster at {self.address} did not answer "
                               f"({type(e).__name__}: {e}); showing its last known state")
            return self._model, self._error

    def close(self) -> None:
        if self._owns_runtime:
            import trainkit as tk

            self._owns_runtime = False
            tk.shutdown()

    @staticmethod
    def _ask() -> dict[str, Any]:
        import trainkit as tk

        return cluster_model(tk.nodes(), tk.util.placement_group_table(),
                             tk.util.list_named_actors(all_namespaces=True),
                             tk.cluster_resources(), tk.available_resources())
