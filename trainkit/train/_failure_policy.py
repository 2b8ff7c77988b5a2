"""``FailurePolicy``: after a worker group fails, restart it or give up."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from trainkit.train._config import FailureConfig


class FailureDecision(enum.Enum):
    RESTART = "restart"  # a new group resumes from the latest checkpoint
    RAISE = "raise"  # the budget is spent: fit() raises TrainingFailedError


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    config: FailureConfig

    def decide(self, failures: int) -> tuple[FailureDecision, str]:
        """The decision after the ``failures``-th failure of the run, and why."""
        limit = self.config.max_failures
        if limit == -1:
            return FailureDecision.RESTART, f"failure {failures}; max_failures=-1 (no limit)"
        if failures <= limit:
            return FailureDecision.RESTART, f"failure {failures} of at most {limit} allowed"
        return FailureDecision.RAISE, (f"failure {failures}, but FailureConfig(max_failures="
                                       f"{limit}) allows {limit}")


# -- the hang doctor (pure): which silent rank is stuck, and where ---------------------------
class FrameKind(enum.Enum):
    """Where one frame of a rank's loop thread runs."""

    USER = "user"  # the user's code: the script, its own modules, a notebook cell
    WAIT = "wait"  # waiting on the other ranks: a torch.distributed collective, barrier or
    # store, DDP's buffer broadcast, or trainkit's report() waiting for its commit
    LIBRARY = "library"  # the standard library, site-packages, trainkit itself


# A frame in one of these is a rank waiting for its peers, not a rank that is stuck.
_WAIT_PARTS: tuple[str, ...] = ("/torch/distributed/", "/torch/nn/parallel/distributed.py",
                                "/trainkit/train/_uploader.py")


def classify_frame(filename: str, library_roots: tuple[str, ...]) -> FrameKind:
    """The kind of a frame from its file: waits first (they live inside libraries), then
    anything under ``library_roots`` (the worker's stdlib, site-packages and trainkit
    folders), then user code. Frozen and generated code (``<...>``) is library."""
    path = filename.replace("\\", "/")
    if any(part in path for part in _WAIT_PARTS):
        return FrameKind.WAIT
    if path.startswith("<") or any(path.startswith(root) for root in library_roots):
        return FrameKind.LIBRARY
    return FrameKind.USER


@dataclass(frozen=True, slots=True)
class Frame:
    filename: str
    lineno: int
    function: str
    kind: FrameKind

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


@dataclass(frozen=True, slots=True)
class RankProbe:
    """What a silent rank says when asked (``TrainWorker.probe``): how many times its loop
    called ``report()``, its loop thread's frames (outermost first; empty when the loop
    is not running) and every thread's stack as text."""

    reports: int
    frames: tuple[Frame, ...]
    text: str

    @property
    def waiting(self) -> bool:
        """The loop's innermost frame waits on the other ranks."""
        return bool(self.frames) and self.frames[-1].kind is FrameKind.WAIT

    @property
    def user_frame(self) -> Frame | None:
        """The innermost frame in user code."""
        return next((f for f in reversed(self.frames) if f.kind is FrameKind.USER), None)


@dataclass(frozen=True, slots=True)
class HangDiagnosis:
    """Which silent ranks are hung: ``stuck`` (best suspect first; empty: none) and
    ``waiting`` (ranks waiting for them); ``alive``: silent ranks that did call report()
    since the driver last heard from them (their reports are still uploading), which are
    not hung."""

    stuck: tuple[int, ...]
    waiting: tuple[int, ...]
    alive: tuple[int, ...]


def diagnose_hang(silent: list[int], probes: dict[int, RankProbe],
                  seen: dict[int, int]) -> HangDiagnosis:
    """Tell the stuck ranks among ``silent`` from those waiting for them.

    A hang in one rank silences every rank that meets it in a collective, so silence alone
    names the wrong ranks. A rank whose loop's innermost frame waits on its peers (see
    ``FrameKind.WAIT``) is waiting; any other silent rank is stuck, those with their
    innermost frame in user code first (a ``time.sleep`` or a deadlocked lock in the loop
    beats a rank busy inside a library). ``seen[r]`` is how many reports of rank ``r`` the
    driver has; a rank whose loop called ``report()`` more often is alive. When every silent
    rank is waiting (e.g. ranks calling different collectives), all of them are ``stuck``:
    there is nobody else to blame. A rank that did not answer the probe is stuck."""
    alive = tuple(r for r in silent if r in probes and probes[r].reports > seen.get(r, 0))
    candidates = [r for r in silent if r not in alive]
    waiting = tuple(r for r in sorted(probes) if probes[r].waiting and r not in alive)
    stuck = [r for r in candidates if r not in waiting]
    if not stuck:
        stuck = list(candidates)

    def in_user_code(rank: int) -> bool:
        frames = probes[rank].frames if rank in probes else ()
        return bool(frames) and frames[-1].kind is FrameKind.USER

    stuck.sort(key=lambda r: (not in_user_code(r), r))
    return HangDiagnosis(tuple(stuck), tuple(r for r in waiting if r not in stuck), alive)
