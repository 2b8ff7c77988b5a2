"""An experiment's fingerprint: what makes a rerun "the same experiment".

A rerun of a script or notebook cell with the same experiment name resumes only when the
fingerprint stored in the experiment folder matches: a hash of the trainable's code (its
source where Python can find it, its bytecode otherwise, and the same for the functions and
classes of the user's module it calls), the search space (domains by their parameters,
``sample_from`` functions by their code) and the search definition (metric, mode, the
searcher's and scheduler's types and the searcher's own space). ``num_samples``, the time
budget and the stop criteria are left out: raising them and rerunning continues the sweep.

Pure: no runtime, no files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from trainkit._code_digest import canonical
from trainkit._code_digest import code_of


def fingerprint(trainable: Any, param_space: Mapping[str, Any], tune_config: Any) -> str:
    """A short hex digest of the experiment's definition."""
    h = hashlib.sha256()
    h.update(code_of(trainable, set(), 0).encode())
    h.update(b"\0space\0")
    h.update(canonical(param_space, set(), 0).encode())
    h.update(b"\0search\0")
    h.update(_search_definition(tune_config).encode())
    return h.hexdigest()[:16]


def _search_definition(tc: Any) -> str:
    searcher = getattr(tc, "search_alg", None)
    inner = getattr(searcher, "searcher", searcher)  # a ConcurrencyLimiter's searcher
    scheduler = getattr(tc, "scheduler", None)
    parts = [repr(getattr(tc, "metric", None)), repr(getattr(tc, "mode", None)),
             type(inner).__qualname__ if inner is not None else "default",
             type(scheduler).__qualname__ if scheduler is not None else "default"]
    for attr in ("_params", "_constants", "_define_by_run", "_space"):  # its own space
        own = getattr(inner, attr, None)
        if own is not None:
            parts.append(f"{attr}={canonical(own, set(), 0)}")
    return "|".join(parts)
