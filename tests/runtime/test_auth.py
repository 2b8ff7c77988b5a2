"""Frame authentication and the cluster secret: pure unit tests, no runtime processes."""

from __future__ import annotations

import array
import errno
import hashlib
import hmac
import os
import stat
import struct
import threading
from pathlib import Path

import pytest
import zmq

from trainkit.runtime.wire.auth import FRAME_OVERHEAD_BYTES
from trainkit.runtime.wire.auth import REASONS
from trainkit.runtime.wire.auth import AuthError
from trainkit.runtime.wire.auth import FrameAuth
from trainkit.runtime.wire.secret import SECRET_ENV
from trainkit.runtime.wire.secret import ClusterSecretError
from trainkit.runtime.wire.secret import default_secret_path
from trainkit.runtime.wire.secret import load_secret
from trainkit.runtime.wire.secret import write_secret

SECRET = b"0123456789abcdef-cluster-secret"
PORT = 6380
HEADER = struct.Struct("!B16sQdI")
NO_REJECTIONS = dict.fromkeys(REASONS, 0)


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _pair(max_frame_bytes: int = 2**20) -> tuple[FrameAuth, FrameAuth]:
    return (
        FrameAuth(SECRET, max_frame_bytes=max_frame_bytes),
        FrameAuth(SECRET, max_frame_bytes=max_frame_bytes),
    )


def _rejects(
    auth: FrameAuth, frames: list[bytes | memoryview], reason: str, port: int = PORT
) -> None:
    with pytest.raises(AuthError) as info:
        auth.verify(frames, port)
    assert info.value.reason == reason
    assert str(info.value) == f"frame rejected: {reason}"


def _flip(data: bytes | memoryview, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def test_round_trip_returns_the_payload_uncopied() -> None:
    sender, receiver = _pair()
    payload = b"x" * 200
    frames = sender.sign(payload, PORT)
    assert len(frames) == 3
    assert frames[1] is payload
    assert len(frames[0]) == 37
    assert len(frames[2]) == 32
    got = receiver.verify(frames, PORT)
    assert type(got) is memoryview
    assert got.obj is payload
    assert got.tobytes() == payload
    assert receiver.rejected == NO_REJECTIONS


def test_header_layout_and_mac() -> None:
    clock = FakeClock(1234.5)
    sender = FrameAuth(SECRET, clock=clock)
    first = sender.sign(b"one", 5555)
    second = sender.sign(b"two", 5555)
    version, sender_id, counter, timestamp, port = HEADER.unpack(first[0])
    assert (version, counter, timestamp, port) == (1, 1, 1234.5, 5555)
    assert len(sender_id) == 16
    assert HEADER.unpack(second[0]) == (1, sender_id, 2, 1234.5, 5555)
    assert HEADER.unpack(FrameAuth(SECRET).sign(b"", 1)[0])[1] != sender_id

    key = hashlib.sha256(b"trainkit-frame-v1\0" + SECRET).digest()
    assert first[2] == hmac.new(key, bytes(first[0]) + b"one", "sha256").digest()


def test_memoryview_and_zmq_frame_inputs() -> None:
    sender, receiver = _pair()
    buffer = bytearray(b"abc" * 100)
    frames = sender.sign(memoryview(buffer), PORT)
    got = receiver.verify([memoryview(bytes(f)) for f in frames], PORT)
    assert got.tobytes() == bytes(buffer)

    doubles = array.array("d", [1.5, 2.5, 3.5])
    frames = sender.sign(memoryview(doubles), PORT)
    got = receiver.verify([zmq.Frame(bytes(f)) for f in frames], PORT)
    assert got.tobytes() == doubles.tobytes()
    assert got.nbytes == 24
    assert receiver.rejected == NO_REJECTIONS


@pytest.mark.parametrize(("frame", "index"), [(0, 20), (1, 0), (1, 199), (2, 31)])
def test_tampered_frame_is_bad_mac(frame: int, index: int) -> None:
    sender, receiver = _pair()
    frames = sender.sign(b"p" * 200, PORT)
    frames[frame] = _flip(frames[frame], index)
    _rejects(receiver, frames, "bad_mac")
    assert receiver.rejected == {**NO_REJECTIONS, "bad_mac": 1}


def test_wrong_secret_is_bad_mac() -> None:
    frames = FrameAuth(b"another-secret-of-enough-length").sign(b"hello", PORT)
    receiver = FrameAuth(SECRET)
    _rejects(receiver, frames, "bad_mac")
    assert receiver.rejected == {**NO_REJECTIONS, "bad_mac": 1}


def test_wrong_destination_port_is_bad_mac() -> None:
    sender, receiver = _pair()
    _rejects(receiver, sender.sign(b"hello", PORT + 1), "bad_mac")
    assert receiver.verify(sender.sign(b"hello", PORT), PORT).tobytes() == b"hello"
    assert receiver.rejected == {**NO_REJECTIONS, "bad_mac": 1}


def test_replay_is_rejected_and_the_next_frame_passes() -> None:
    sender, receiver = _pair()
    frames = sender.sign(b"once", PORT)
    assert receiver.verify(frames, PORT).tobytes() == b"once"
    _rejects(receiver, frames, "replay")
    assert receiver.verify(sender.sign(b"next", PORT), PORT).tobytes() == b"next"
    assert receiver.rejected == {**NO_REJECTIONS, "replay": 1}


def test_older_counter_is_rejected() -> None:
    sender, receiver = _pair()
    older = sender.sign(b"older", PORT)
    newer = sender.sign(b"newer", PORT)
    assert receiver.verify(newer, PORT).tobytes() == b"newer"
    _rejects(receiver, older, "replay")
    assert receiver.rejected == {**NO_REJECTIONS, "replay": 1}


def test_counters_are_tracked_per_destination_port() -> None:
    sender, receiver = _pair()
    to_a = sender.sign(b"a", PORT)
    to_b = sender.sign(b"b", PORT + 1)
    assert receiver.verify(to_b, PORT + 1).tobytes() == b"b"
    assert receiver.verify(to_a, PORT).tobytes() == b"a"
    _rejects(receiver, to_a, "replay")
    _rejects(receiver, to_b, "replay", port=PORT + 1)
    assert receiver.rejected == {**NO_REJECTIONS, "replay": 2}


@pytest.mark.parametrize(
    ("receiver_time", "reason"),
    [
        (1300.0, None),
        (700.0, None),
        (1300.5, "stale"),
        (699.5, "stale"),
    ],
)
def test_timestamp_window(receiver_time: float, reason: str | None) -> None:
    sender = FrameAuth(SECRET, clock=FakeClock(1000.0))
    receiver = FrameAuth(SECRET, clock=FakeClock(receiver_time), window_s=300.0)
    frames = sender.sign(b"tick", PORT)
    if reason is None:
        assert receiver.verify(frames, PORT).tobytes() == b"tick"
        assert receiver.rejected == NO_REJECTIONS
    else:
        _rejects(receiver, frames, reason)
        assert receiver.rejected == {**NO_REJECTIONS, reason: 1}


def test_stale_frame_does_not_consume_its_counter() -> None:
    clock = FakeClock(1000.0)
    sender = FrameAuth(SECRET, clock=FakeClock(1000.0))
    receiver = FrameAuth(SECRET, clock=clock, window_s=10.0)
    frames = sender.sign(b"late", PORT)
    clock.now = 1011.0
    _rejects(receiver, frames, "stale")
    clock.now = 1005.0
    assert receiver.verify(frames, PORT).tobytes() == b"late"


def test_oversize_is_rejected_before_hashing() -> None:
    sender, receiver = _pair(max_frame_bytes=FRAME_OVERHEAD_BYTES + 10)
    assert FRAME_OVERHEAD_BYTES == 69
    assert receiver.verify(sender.sign(b"x" * 10, PORT), PORT).tobytes() == b"x" * 10
    frames = sender.sign(b"x" * 11, PORT)
    _rejects(receiver, frames, "oversize")
    frames[2] = bytes(32)
    _rejects(receiver, frames, "oversize")
    assert receiver.rejected == {**NO_REJECTIONS, "oversize": 2}


def _malformed_cases() -> dict[str, list[bytes | memoryview]]:
    header, payload, mac = FrameAuth(SECRET).sign(b"body", PORT)
    assert isinstance(header, bytes)
    assert isinstance(mac, bytes)
    return {
        "two frames": [header, payload],
        "four frames": [header, payload, mac, b""],
        "short header": [header[:-1], payload, mac],
        "long header": [header + b"\0", payload, mac],
        "short mac": [header, payload, mac[:-1]],
        "version 2": [b"\x02" + header[1:], payload, mac],
        "version 0": [b"\x00" + header[1:], payload, mac],
        "strided payload": [header, memoryview(b"body" * 2)[::2], mac],
    }


@pytest.mark.parametrize("case", list(_malformed_cases()))
def test_malformed(case: str) -> None:
    receiver = FrameAuth(SECRET)
    _rejects(receiver, _malformed_cases()[case], "malformed")
    assert receiver.rejected == {**NO_REJECTIONS, "malformed": 1}


def test_rejected_counts_every_reason_exactly() -> None:
    clock = FakeClock(1000.0)
    sender = FrameAuth(SECRET, clock=clock)
    receiver = FrameAuth(SECRET, clock=FakeClock(1000.0), max_frame_bytes=1000, window_s=5.0)
    good = sender.sign(b"ok", PORT)
    assert receiver.verify(good, PORT).tobytes() == b"ok"
    _rejects(receiver, good, "replay")
    _rejects(receiver, good, "replay")
    _rejects(receiver, good[:2], "malformed")
    _rejects(receiver, sender.sign(b"z" * 1000, PORT), "oversize")
    _rejects(receiver, sender.sign(b"ok", PORT + 7), "bad_mac")
    clock.now = 2000.0
    _rejects(receiver, sender.sign(b"ok", PORT), "stale")
    _rejects(receiver, sender.sign(b"ok", PORT), "stale")
    _rejects(receiver, sender.sign(b"ok", PORT), "stale")
    assert receiver.rejected == {
        "malformed": 1,
        "bad_mac": 1,
        "replay": 2,
        "stale": 3,
        "oversize": 1,
    }
    assert list(receiver.rejected) == list(REASONS)


def test_repr_hides_secret_and_key() -> None:
    auth = FrameAuth(SECRET)
    key = hashlib.sha256(b"trainkit-frame-v1\0" + SECRET).digest()
    text = repr(auth)
    for hidden in (SECRET.decode(), SECRET.hex(), repr(SECRET), key.hex(), repr(key)):
        assert hidden not in text
    assert text.startswith("FrameAuth(sender=")


def test_senders_are_forgotten_least_recently_seen_first() -> None:
    receiver = FrameAuth(SECRET, max_senders=2)
    a, b, c = FrameAuth(SECRET), FrameAuth(SECRET), FrameAuth(SECRET)
    for sender in (a, b, a, c):
        receiver.verify(sender.sign(b"hi", PORT), PORT)
    tracked = receiver._last_seen
    assert len(tracked) == 2
    assert [sender_id for sender_id, _port in tracked] == [a._sender, c._sender]
    assert list(tracked.values()) == [2, 1]


def test_counters_are_unique_across_threads() -> None:
    sender = FrameAuth(SECRET)
    counters: list[int] = []
    lock = threading.Lock()

    def sign_many() -> None:
        got = [HEADER.unpack(sender.sign(b"", PORT)[0])[2] for _ in range(500)]
        with lock:
            counters.extend(got)

    threads = [threading.Thread(target=sign_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(counters) == list(range(1, 2001))


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^the cluster secret must not be empty$"):
        FrameAuth(b"")


# --- the cluster secret ----------------------------------------------------------------------

FILE_SECRET = "file-secret-0123456789"
ENV_SECRET = "env-secret-0123456789"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(SECRET_ENV, raising=False)
    return home


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _refused(message: str, secret: str | None = None, **kwargs: object) -> None:
    with pytest.raises(ClusterSecretError) as info:
        load_secret(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message
    if secret is not None:
        assert secret not in str(info.value)
        assert secret not in repr(info.value)


def test_default_secret_path(home: Path) -> None:
    assert default_secret_path() == home / ".trainkit" / "cluster_secret"


def test_precedence_file_then_env_then_default(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit = _write(tmp_path / "explicit", f"  {FILE_SECRET}\n")
    _write(default_secret_path(), "default-secret-0123456789\n")
    monkeypatch.setenv(SECRET_ENV, f" {ENV_SECRET} ")
    assert load_secret(explicit) == FILE_SECRET.encode()
    assert load_secret(str(explicit)) == FILE_SECRET.encode()
    assert load_secret() == ENV_SECRET.encode()
    monkeypatch.delenv(SECRET_ENV)
    assert load_secret() == b"default-secret-0123456789"


def test_create_writes_a_private_default_file(home: Path) -> None:
    secret = load_secret(create=True)
    path = home / ".trainkit" / "cluster_secret"
    text = path.read_text()
    assert len(text) == 65
    assert text == secret.decode() + "\n"
    assert bytes.fromhex(secret.decode()).hex() == secret.decode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_secret() == secret
    assert load_secret(create=True) == secret
    assert sorted(p.name for p in path.parent.iterdir()) == ["cluster_secret"]


def test_create_writes_an_explicit_file(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "new" / "secret"
    secret = load_secret(path, create=True)
    assert path.read_text() == secret.decode() + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(path) == secret
    assert not default_secret_path().exists()


def test_create_does_not_override_the_environment(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, ENV_SECRET)
    assert load_secret(create=True) == ENV_SECRET.encode()
    assert not default_secret_path().exists()


def test_write_secret_never_replaces_a_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "secret", FILE_SECRET)
    with pytest.raises(FileExistsError):
        write_secret(path)
    assert path.read_text() == FILE_SECRET
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_no_source(home: Path) -> None:
    _refused(
        f"no cluster secret: pass --secret-file PATH, set {SECRET_ENV}, "
        f"or run `trainkit start --head` to create {home}/.trainkit/cluster_secret"
    )


def test_missing_explicit_file(home: Path, tmp_path: Path) -> None:
    _write(default_secret_path(), FILE_SECRET)
    path = tmp_path / "absent"
    _refused(
        f"cluster secret file {path} does not exist; "
        "pass --secret-file PATH naming the cluster's secret file",
        secret_file=path,
    )


@pytest.mark.parametrize("text", ["", " \n\t "])
def test_empty_file(home: Path, text: str) -> None:
    path = _write(default_secret_path(), text)
    _refused(
        f"cluster secret file {path} is empty; "
        f"write the cluster's secret into {path}, or pass --secret-file PATH"
    )


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_env(home: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    _write(default_secret_path(), FILE_SECRET)
    monkeypatch.setenv(SECRET_ENV, value)
    _refused(
        f"{SECRET_ENV} is empty; "
        f"set {SECRET_ENV} to the cluster's secret, or unset it to use a secret file"
    )


def test_short_file(home: Path, tmp_path: Path) -> None:
    short = "fifteen-chars-x"
    path = _write(tmp_path / "short", f"{short}\n")
    _refused(
        f"cluster secret file {path} is shorter than 16 characters; a secret needs at least "
        f"16 characters: write the cluster's secret into {path}, or pass --secret-file PATH",
        short,
        secret_file=path,
    )
    _write(path, short + "y")
    assert load_secret(path) == b"fifteen-chars-xy"


def test_short_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short = "fifteen-chars-x"
    monkeypatch.setenv(SECRET_ENV, short)
    _refused(
        f"{SECRET_ENV} is shorter than 16 characters; a secret needs at least 16 characters: "
        f"set {SECRET_ENV} to the cluster's secret, or unset it to use a secret file",
        short,
    )


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_file_open_to_others(home: Path, mode: int) -> None:
    path = _write(default_secret_path(), FILE_SECRET, mode)
    _refused(
        f"cluster secret file {path} is accessible by group or others "
        f"(mode {mode:04o}); run: chmod 600 {path}",
        FILE_SECRET,
    )


@pytest.mark.parametrize("mode", [0o400, 0o600, 0o700])
def test_file_private_to_its_owner_is_accepted(home: Path, mode: int) -> None:
    _write(default_secret_path(), FILE_SECRET, mode)
    assert load_secret() == FILE_SECRET.encode()


def test_directory_is_unreadable(home: Path, tmp_path: Path) -> None:
    _refused(
        f"cannot read cluster secret file {tmp_path}: Is a directory; "
        "make it a file readable by this user, or pass --secret-file PATH",
        secret_file=tmp_path,
    )


def test_permission_denied(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(default_secret_path(), FILE_SECRET)

    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "open", denied)
    _refused(
        f"cannot read cluster secret file {path}: Permission denied; "
        "make it a file readable by this user, or pass --secret-file PATH",
        FILE_SECRET,
    )


def test_not_utf8(home: Path) -> None:
    path = default_secret_path()
    path.parent.mkdir()
    path.write_bytes(b"\xff" * 20)
    path.chmod(0o600)
    _refused(
        f"cluster secret file {path} is not UTF-8 text; "
        f"write the cluster's secret into {path}, or pass --secret-file PATH"
    )


def test_create_that_loses_a_race_reads_the_winner(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = os.link

    def winner_first(src: Path, dst: Path) -> None:
        _write(Path(dst), "winner-secret-0123456789\n")
        link(src, dst)

    monkeypatch.setattr(os, "link", winner_first)
    assert load_secret(create=True) == b"winner-secret-0123456789"
    assert [p.name for p in default_secret_path().parent.iterdir()] == ["cluster_secret"]


def test_create_failure(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(src: Path, dst: Path) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dst))

    monkeypatch.setattr(os, "link", denied)
    path = default_secret_path()
    _refused(
        f"cannot create cluster secret file {path}: Permission denied; "
        "pass --secret-file PATH naming a writable location",
        create=True,
    )
    assert list(path.parent.iterdir()) == []
