"""``Checkpoint``: a folder of files a training loop reports and later resumes from."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


class Checkpoint:
    """A folder holding a training state.

    A loop makes one with ``Checkpoint.from_directory(d)`` and passes it to ``report()``; the
    trainer copies the folder into the run's storage, so ``d`` may be a temporary folder that
    is deleted right after ``report()`` returns. ``get_checkpoint()`` and ``Result`` give back
    persisted checkpoints; read them with ``as_directory()`` (no copy) or copy them out with
    ``to_directory()``.
    """

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> Checkpoint:
        if not os.path.isdir(path):
            raise ValueError(f"Checkpoint.from_directory({os.fspath(path)!r}): no such folder")
        return cls(path)

    def to_directory(self, path: str | os.PathLike[str] | None = None) -> str:
        """Copy the checkpoint's files into ``path`` (a new temporary folder if None)."""
        target = tempfile.mkdtemp(prefix="trainkit-checkpoint-") if path is None else \
            os.fspath(path)
        shutil.copytree(self.path, target, dirs_exist_ok=True)
        return target

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        """The checkpoint's folder itself, to read from (do not modify it)."""
        yield self.path

    def __fspath__(self) -> str:
        return self.path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Checkpoint) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r})"

    def __reduce__(self) -> tuple[type[Checkpoint], tuple[str]]:
        return (Checkpoint, (self.path,))
