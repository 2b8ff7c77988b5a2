"""Where a run's files live: a folder on a ``pyarrow.fs`` filesystem, local or remote.

Every file Train and Tune write or read in storage goes through this module, so a cluster
needs no shared disk: ``RunConfig(storage_path="s3://bucket/runs")`` (or ``gs://...``, or a
local path, or a bare ``bucket/runs`` with ``storage_filesystem=...``) is resolved once into
a ``StorageLocation`` (a filesystem and a URI-less path on it) before any worker starts;
the location pickles, so each worker uploads its own checkpoint files to it.

What is atomic: ``write_file`` (locally a write to a temporary file and a rename; on object
storage a single object put, which readers see whole or not at all). A folder is never
atomic on object storage, so a checkpoint counts only once the run's index names it (see
``_checkpoint_manager``). ``move_dir`` is a rename locally and a server-side copy plus a
delete on object storage.

Not thread-safe by contract, but holds no state: a ``StorageLocation`` is immutable and every
function opens what it needs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

from trainkit._atomic import write_atomic

if TYPE_CHECKING:
    import pyarrow.fs  # type: ignore[import-untyped]

# Schemes trainkit opens without a filesystem given; anything else needs storage_filesystem.
_KNOWN_SCHEMES = ("s3", "gs", "gcs", "file")
# Where GCS's default credentials come from (the order google-auth looks them up in).
_GCS_CREDENTIALS = ("the GOOGLE_APPLICATION_CREDENTIALS environment variable",
                    "~/.config/gcloud/application_default_credentials.json "
                    "(gcloud auth application-default login)",
                    "a GCE metadata server (GCE_METADATA_HOST)")


def split_uri(path: str) -> tuple[str | None, str]:
    """(scheme, the rest) of ``s3://bucket/x``; (None, path) for a path with no scheme."""
    if "://" not in path:
        return None, path
    scheme, rest = path.split("://", 1)
    return scheme.lower(), rest


def check_scheme(storage_path: str, has_filesystem: bool) -> None:
    """A ``ValueError`` for a scheme trainkit cannot open, naming it and the fix (pure)."""
    scheme, _ = split_uri(storage_path)
    if scheme is None or has_filesystem or scheme in _KNOWN_SCHEMES:
        return
    raise ValueError(
        f"`storage_path` is {storage_path!r}, whose scheme {scheme + '://'!r} trainkit cannot "
        "open: use s3://bucket/prefix, gs://bucket/prefix or a local folder, or pass "
        "RunConfig(storage_filesystem=<a pyarrow.fs.FileSystem>) to open it yourself")


@dataclass(frozen=True, slots=True)
class StorageLocation:
    """A folder ``path`` (no URI scheme) on ``filesystem``; see the module docstring."""

    filesystem: pyarrow.fs.FileSystem
    path: str
    uri: str  # how messages show it: ``s3://bucket/runs/exp``, or the local path

    @property
    def is_local(self) -> bool:
        import pyarrow.fs

        return isinstance(self.filesystem, pyarrow.fs.LocalFileSystem)

    def join(self, *parts: str) -> StorageLocation:
        join = os.path.join if self.is_local else posixpath.join
        return StorageLocation(self.filesystem, join(self.path, *parts), join(self.uri, *parts))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def __str__(self) -> str:
        return self.uri


def local_location(path: str | os.PathLike[str]) -> StorageLocation:
    import pyarrow.fs

    p = os.path.abspath(os.path.expanduser(os.fspath(path)))
    return StorageLocation(pyarrow.fs.LocalFileSystem(), p, p)


def resolve(storage_path: str | os.PathLike[str],
            filesystem: pyarrow.fs.FileSystem | None = None) -> StorageLocation:
    """Resolve ``RunConfig(storage_path=..., storage_filesystem=...)`` once.

    With a filesystem, the path is a URI (its scheme is dropped) or a bare path on it, as
    Ray takes them. Without one, a URI picks the filesystem (``s3://``, ``gs://``) and any
    other path is a local folder.

    Raises:
        ValueError: an unknown scheme, or a ``gs://`` path with no GCS credentials.
    """
    import pyarrow.fs

    text = os.fspath(storage_path)
    scheme, rest = split_uri(text)
    check_scheme(text, filesystem is not None)
    if filesystem is not None:
        if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
            return local_location(rest)
        rest = rest.rstrip("/")
        shown = f"{scheme}://{rest}" if scheme else f"{filesystem.type_name}://{rest}"
        return StorageLocation(filesystem, rest, shown)
    if scheme is None or scheme == "file":
        return local_location(rest)
    if scheme in ("gs", "gcs"):
        _check_gcs_credentials(text)
    fs, path = pyarrow.fs.FileSystem.from_uri(text)
    path = path.rstrip("/")
    return StorageLocation(fs, path, f"{scheme}://{path}")


def _check_gcs_credentials(storage_path: str) -> None:
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or os.environ.get("GCE_METADATA_HOST"):
        return
    adc = os.path.expanduser("~/.config/gcloud/application_default_credentials.json")
    if os.path.exists(adc):
        return
    raise ValueError(
        f"`storage_path` is {storage_path!r}, but no Google Cloud Storage credentials are "
        f"configured (none of {'; '.join(_GCS_CREDENTIALS)}): set one of them, or pass "
        "RunConfig(storage_filesystem=pyarrow.fs.GcsFileSystem(access_token=..., "
        "credential_token_expiration=...))")


def check_writable(location: StorageLocation) -> None:
    """Create ``location`` and write and delete a probe file in it, before any worker
    starts; the error names the folder, the cause and the fix.

    Raises:
        ValueError: the bucket does not exist.
        PermissionError: the storage refused the credentials, or the folder is read-only.
    """
    try:
        make_dirs(location)
        probe = location.join(".write_probe")
        write_file(probe, b"ok")
        location.filesystem.delete_file(probe.path)
    except OSError as e:
        text = str(e)
        if ("not found" in text.lower() and "bucket" in text.lower()) or "NoSuchBucket" in text:
            bucket = location.path.split("/", 1)[0]
            raise ValueError(
                f"storage_path {location.uri!r}: the bucket {bucket!r} does not exist ({text}); "
                "create it, or fix RunConfig(storage_path=...)") from e
        if any(code in text for code in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID",
                                         "SIGNATURE_DOES_NOT_MATCH", "AccessDenied",
                                         "InvalidAccessKeyId", "403")):
            raise PermissionError(
                f"storage_path {location.uri!r}: the storage refused the credentials ({text}); "
                "check the access key and secret (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or "
                "the access_key/secret_key of RunConfig(storage_filesystem=...)) and that they "
                "may write there") from e
        raise PermissionError(
            f"the run folder {location.uri} cannot be written ({text}); pass "
            "RunConfig(storage_path=...) a folder you can write") from e


# -- files ----------------------------------------------------------------------------------
def make_dirs(location: StorageLocation) -> None:
    if location.is_local:
        os.makedirs(location.path, exist_ok=True)
    else:
        location.filesystem.create_dir(location.path, recursive=True)


def write_file(location: StorageLocation, data: bytes) -> None:
    """Write a small file atomically (readers see the old content or the new, whole)."""
    if location.is_local:
        os.makedirs(os.path.dirname(location.path), exist_ok=True)
        write_atomic(location.path, data)
        return
    with location.filesystem.open_output_stream(location.path) as f:
        f.write(data)


def read_file(location: StorageLocation) -> bytes | None:
    """The file's bytes; None if there is no such file."""
    if location.is_local:
        try:
            with open(location.path, "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
    if not is_file(location):
        return None
    with location.filesystem.open_input_stream(location.path) as f:
        data: bytes = f.read()
        return data


def is_file(location: StorageLocation) -> bool:
    import pyarrow.fs

    info = location.filesystem.get_file_info(location.path)
    return bool(info.type == pyarrow.fs.FileType.File)


def is_dir(location: StorageLocation) -> bool:
    import pyarrow.fs

    info = location.filesystem.get_file_info(location.path)
    return bool(info.type == pyarrow.fs.FileType.Directory)


def list_dir(location: StorageLocation) -> list[tuple[str, bool]]:
    """(name, is a folder) of each entry right under ``location``; [] if it does not exist."""
    import pyarrow.fs

    if location.is_local:
        try:
            return [(e.name, e.is_dir()) for e in os.scandir(location.path)]
        except (FileNotFoundError, NotADirectoryError):
            return []
    selector = pyarrow.fs.FileSelector(location.path, allow_not_found=True)
    return [(posixpath.basename(i.path), i.type == pyarrow.fs.FileType.Directory)
            for i in location.filesystem.get_file_info(selector)]


def delete_file(location: StorageLocation) -> None:
    """Delete one file; nothing if it does not exist."""
    if location.is_local:
        with contextlib.suppress(FileNotFoundError):
            os.remove(location.path)
        return
    if is_file(location):
        location.filesystem.delete_file(location.path)


def delete_dir(location: StorageLocation) -> None:
    """Delete the folder and all it holds; nothing if it does not exist."""
    if location.is_local:
        shutil.rmtree(location.path, ignore_errors=True)
        return
    if is_dir(location):
        location.filesystem.delete_dir(location.path)


# -- folders --------------------------------------------------------------------------------
def upload_dir(local_dir: str, dest: StorageLocation) -> None:
    """Copy the files of the local folder ``local_dir`` into ``dest`` (merged with what is
    there: ranks upload their parts of one checkpoint into the same folder)."""
    if dest.is_local:
        shutil.copytree(local_dir, dest.path, dirs_exist_ok=True)
        return
    import pyarrow.fs

    pyarrow.fs.copy_files(local_dir, dest.path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=dest.filesystem)


def move_into(local_dir: str, dest: StorageLocation,
              after_first: Callable[[], None] | None = None) -> None:
    """Move the files of the local folder ``local_dir`` into ``dest`` (merged with what is
    there), then delete ``local_dir``: on local storage each file is renamed when both are on
    one filesystem (else copied), on object storage uploaded. ``after_first`` runs once the
    first file is in place (a test's fault point)."""
    if not dest.is_local:
        if after_first is None:
            upload_dir(local_dir, dest)
        else:
            for i, name in enumerate(sorted(os.listdir(local_dir))):
                src, part = os.path.join(local_dir, name), dest.join(name)
                upload_dir(src, part) if os.path.isdir(src) else upload_file(src, part)
                if i == 0:
                    after_first()
        shutil.rmtree(local_dir, ignore_errors=True)
        return
    hook = after_first
    for root, _, files in os.walk(local_dir):
        target = os.path.join(dest.path, os.path.relpath(root, local_dir))
        os.makedirs(target, exist_ok=True)
        for name in sorted(files):
            src, dst = os.path.join(root, name), os.path.join(target, name)
            try:
                os.replace(src, dst)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                shutil.copy2(src, dst)
            if hook is not None:
                call, hook = hook, None
                call()
    shutil.rmtree(local_dir, ignore_errors=True)


def download_dir(source: StorageLocation, local_dir: str) -> None:
    """Copy every file under ``source`` into the local folder ``local_dir``."""
    if source.is_local:
        shutil.copytree(source.path, local_dir, dirs_exist_ok=True)
        return
    import pyarrow.fs

    os.makedirs(local_dir, exist_ok=True)
    pyarrow.fs.copy_files(source.path, local_dir, source_filesystem=source.filesystem,
                          destination_filesystem=pyarrow.fs.LocalFileSystem())


def upload_file(local_path: str, dest: StorageLocation) -> None:
    if dest.is_local:
        if os.path.abspath(local_path) != os.path.abspath(dest.path):
            shutil.copyfile(local_path, dest.path)
        return
    import pyarrow.fs

    pyarrow.fs.copy_files(local_path, dest.path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=dest.filesystem)


def move_dir(source: StorageLocation, dest: StorageLocation) -> None:
    """Make ``source`` the folder ``dest``: a rename locally; on object storage each file is
    copied server-side, then ``source`` is deleted."""
    if source.is_local:
        os.replace(source.path, dest.path)
        return
    import pyarrow.fs

    fs = source.filesystem
    prefix = source.path.rstrip("/") + "/"
    for info in fs.get_file_info(pyarrow.fs.FileSelector(source.path, recursive=True)):
        if info.type == pyarrow.fs.FileType.File:
            fs.copy_file(info.path, posixpath.join(dest.path, info.path[len(prefix):]))
    fs.delete_dir(source.path)


def numbered_folders(storage: StorageLocation, name: str) -> Iterator[StorageLocation]:
    """``<name>``, ``<name>-2``, ``<name>-3``, ... in ``storage``: where a rerun that must
    not continue an earlier run or sweep of that name goes (the first that holds none)."""
    yield storage.join(name)
    n = 2
    while True:
        yield storage.join(f"{name}-{n}")
        n += 1


def temp_dir(prefix: str) -> str:
    """A new local folder for a download or a local copy of remote files."""
    return tempfile.mkdtemp(prefix=prefix)


def same(a: Any, b: Any) -> bool:
    """Whether two filesystems are the same (None means the local one)."""
    import pyarrow.fs

    a = a if a is not None else pyarrow.fs.LocalFileSystem()
    b = b if b is not None else pyarrow.fs.LocalFileSystem()
    return bool(a.equals(b))
