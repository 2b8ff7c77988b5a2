"""``Checkpoint``: a folder of files a training loop reports and later resumes from."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING
from typing import Any

from trainkit.train import _storage

if TYPE_CHECKING:
    import pyarrow.fs  # type: ignore[import-untyped]


class Checkpoint:
    """A folder holding a training state, on a local or a remote filesystem.

    A loop makes one with ``Checkpoint.from_directory(d)`` and passes it to ``report()``;
    each rank uploads the folder to the run's storage, so ``d`` may be a temporary folder
    that is deleted right after ``report()`` returns. ``get_checkpoint()`` and ``Result``
    give back persisted checkpoints, which may live in object storage: read them with
    ``as_directory()`` (the folder itself when local, else a temporary download) or copy
    them out with ``to_directory()``.

    Args:
        path: the folder: a local path, a URI (``s3://bucket/run/checkpoint_000001``), or a
            path on ``filesystem``.
        filesystem: the ``pyarrow.fs.FileSystem`` that holds it (default: the one the URI
            names, else the local filesystem).

    Example:
        >>> ckpt = Checkpoint("bucket/run/checkpoint_000001", filesystem=s3)
        >>> with ckpt.as_directory() as d:
        ...     state = torch.load(os.path.join(d, "model.pt"))
    """

    __slots__ = ("_filesystem", "path")

    def __init__(self, path: str | os.PathLike[str],
                 filesystem: pyarrow.fs.FileSystem | None = None) -> None:
        text = os.fspath(path)
        scheme, _ = _storage.split_uri(text)
        if scheme is None and (filesystem is None or _is_local_fs(filesystem)):
            self.path = os.path.abspath(text)
            self._filesystem: pyarrow.fs.FileSystem | None = None
            return
        location = _storage.resolve(text, filesystem)
        self.path = location.path
        self._filesystem = None if location.is_local else location.filesystem

    @property
    def filesystem(self) -> pyarrow.fs.FileSystem:
        """Where the checkpoint lives; ``path`` is a path on it."""
        if self._filesystem is None:
            import pyarrow.fs

            return pyarrow.fs.LocalFileSystem()
        return self._filesystem

    @property
    def is_local(self) -> bool:
        return self._filesystem is None

    @property
    def location(self) -> _storage.StorageLocation:
        if self._filesystem is None:
            return _storage.local_location(self.path)
        return _storage.StorageLocation(self._filesystem, self.path,
                                        f"{self._filesystem.type_name}://{self.path}")

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> Checkpoint:
        """The local folder ``path`` as a checkpoint to report."""
        if not os.path.isdir(path):
            raise ValueError(f"Checkpoint.from_directory({os.fspath(path)!r}): no such folder")
        return cls(path)

    def to_directory(self, path: str | os.PathLike[str] | None = None) -> str:
        """Copy (download, when remote) the checkpoint's files into the local folder ``path``
        (a new temporary folder if None); returns that folder."""
        target = tempfile.mkdtemp(prefix="trainkit-checkpoint-") if path is None else \
            os.fspath(path)
        if self._filesystem is None:
            shutil.copytree(self.path, target, dirs_exist_ok=True)
        else:
            _storage.download_dir(self.location, target)
        return target

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        """A local folder with the checkpoint's files, to read from (do not modify it): the
        folder itself when local; a temporary download, deleted on exit, when remote."""
        if self._filesystem is None:
            yield self.path
            return
        local = self.to_directory()
        try:
            yield local
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def __fspath__(self) -> str:
        if self._filesystem is not None:
            raise TypeError(f"{self!r} is on {self._filesystem.type_name}, not a local folder: "
                            "use checkpoint.as_directory() or to_directory()")
        return self.path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Checkpoint) and other.path == self.path and \
            _storage.same(self._filesystem, other._filesystem)

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        if self._filesystem is None:
            return f"Checkpoint({self.path!r})"
        return f"Checkpoint({self.path!r}, filesystem={self._filesystem.type_name})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Checkpoint, (self.path, self._filesystem))


def _is_local_fs(filesystem: Any) -> bool:
    import pyarrow.fs

    return isinstance(filesystem, pyarrow.fs.LocalFileSystem)
