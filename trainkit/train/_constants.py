"""Defaults that environment variables may supply; nothing else in train reads the environment
(except the test-only fault hook in ``_faults``)."""

from __future__ import annotations

import os

STORAGE_PATH_ENV = "TRAINKIT_STORAGE_PATH"
DEFAULT_STORAGE_PATH = "~/trainkit_results"


def storage_path() -> str:
    """The default ``RunConfig.storage_path``."""
    return os.environ.get(STORAGE_PATH_ENV) or DEFAULT_STORAGE_PATH

# How long a worker group waits for its placement group before it gives up, naming what it
# needs and what is free.
PLACEMENT_TIMEOUT_S = 300.0
# After one rank fails, how long the others get to report their own errors before the group
# is torn down (a peer of a dead rank usually fails its next collective at once).
FAILURE_GRACE_S = 2.0
