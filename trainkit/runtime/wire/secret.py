"""The cluster's shared secret: where it comes from, and how a new one is written.

A secret comes from the first of: an explicit file (``--secret-file PATH``), the environment
variable ``TRAINKIT_CLUSTER_SECRET`` (its value is the secret), or the default file
``~/.trainkit/cluster_secret``, which ``trainkit start --head`` creates. A secret file must be
private to its owner (no group or other permission bits). The secret is the text stripped of
surrounding whitespace; it needs at least 16 characters. No message here ever contains it.

Inside a cluster the secret never travels through an environment, where every task and
its subprocesses could read it: a launcher writes it to the node service's stdin
(``hand_secret``, read back with ``receive_secret``), the node service hands it to its
worker forkserver over their socket, and a forked worker gets it in memory.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import IO

SECRET_ENV = "TRAINKIT_CLUSTER_SECRET"
MIN_SECRET_CHARS = 16


class ClusterSecretError(ValueError):
    """No usable cluster secret; the message says what is wrong and how to fix it."""


def default_secret_path() -> Path:
    """``~/.trainkit/cluster_secret``."""
    return Path.home() / ".trainkit" / "cluster_secret"


def load_secret(
    secret_file: str | os.PathLike[str] | None = None, *, create: bool = False
) -> bytes:
    """The cluster secret, from ``secret_file``, else the environment, else the default file.

    Args:
        secret_file: A file holding the secret; it must exist unless ``create`` is set.
        create: Write a new random secret to ``secret_file`` (or, when neither it nor the
            environment variable is given, to the default file) if that file does not exist.

    Returns:
        The secret, stripped of surrounding whitespace and encoded as UTF-8.

    Raises:
        ClusterSecretError: There is no secret, or it is unreadable, exposed, empty or short.
    """
    if secret_file is not None:
        path = Path(secret_file)
        missing = (
            f"cluster secret file {path} does not exist; "
            "pass --secret-file PATH naming the cluster's secret file"
        )
        return _from_file(path, create, missing)
    value = os.environ.get(SECRET_ENV)
    if value is not None:
        fix = f"set {SECRET_ENV} to the cluster's secret, or unset it to use a secret file"
        return _checked(value, SECRET_ENV, fix)
    path = default_secret_path()
    missing = (
        f"no cluster secret: pass --secret-file PATH, set {SECRET_ENV}, "
        f"or run `trainkit start --head` to create {path}"
    )
    return _from_file(path, create, missing)


def write_secret(path: str | os.PathLike[str]) -> bytes:
    """Write a new random secret to ``path``, which must not exist yet.

    The file gets 64 hex characters and a newline, mode 0600. It appears complete or not at
    all: it is written under a temporary name and then linked into place, so that of two
    processes creating it at once, one wins and the other gets ``FileExistsError``. A missing
    parent folder is created with mode 0700.

    Args:
        path: Where to write the secret.

    Returns:
        The secret, as ``load_secret`` will read it back.

    Raises:
        FileExistsError: ``path`` exists.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = secrets.token_hex(32)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink()
    return text.encode()


def _from_file(path: Path, create: bool, missing: str) -> bytes:
    try:
        return _read_file(path)
    except FileNotFoundError:
        if not create:
            raise ClusterSecretError(missing) from None
    try:
        return write_secret(path)
    except FileExistsError:
        return _read_file(path)
    except OSError as e:
        raise ClusterSecretError(
            f"cannot create cluster secret file {path}: {e.strerror or type(e).__name__}; "
            "pass --secret-file PATH naming a writable location"
        ) from None


def _read_file(path: Path) -> bytes:
    """The secret in ``path``; ``FileNotFoundError`` if there is no such file."""
    try:
        with path.open("rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if mode & 0o077:
                raise ClusterSecretError(
                    f"cluster secret file {path} is accessible by group or others "
                    f"(mode {mode:04o}); run: chmod 600 {path}"
                )
            data = f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ClusterSecretError(
            f"cannot read cluster secret file {path}: {e.strerror or type(e).__name__}; "
            "make it a file readable by this user, or pass --secret-file PATH"
        ) from None
    fix = f"write the cluster's secret into {path}, or pass --secret-file PATH"
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ClusterSecretError(f"cluster secret file {path} is not UTF-8 text; {fix}") from None
    return _checked(text, f"cluster secret file {path}", fix)


def _checked(text: str, source: str, fix: str) -> bytes:
    secret = text.strip()
    if not secret:
        raise ClusterSecretError(f"{source} is empty; {fix}")
    if len(secret) < MIN_SECRET_CHARS:
        raise ClusterSecretError(
            f"{source} is shorter than {MIN_SECRET_CHARS} characters; a secret needs "
            f"at least {MIN_SECRET_CHARS} characters: {fix}"
        )
    return secret.encode()


def hand_secret(pipe: IO[bytes], secret: bytes) -> None:
    """Write ``secret`` to a child's stdin (one line) and close it. A child that already
    exited is not an error here: the launcher learns that from its exit."""
    try:
        pipe.write(secret + b"\n")
        pipe.close()
    except BrokenPipeError:
        pass


def receive_secret(fd: int = 0) -> bytes:
    """The secret ``hand_secret`` wrote to ``fd``; ``fd`` then reads /dev/null.

    Raises:
        ClusterSecretError: Nothing usable came (the launcher did not hand one over).
    """
    data = b""
    while not data.endswith(b"\n") and len(data) < 4096:
        chunk = os.read(fd, 4096 - len(data))
        if not chunk:
            break
        data += chunk
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, fd)
    os.close(null)
    fix = "start cluster services with `trainkit start`, which hands them the secret"
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ClusterSecretError(f"the secret on stdin is not UTF-8 text; {fix}") from None
    return _checked(text, "the secret on stdin", fix)
