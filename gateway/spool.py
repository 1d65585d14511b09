"""Spool: encrypted, append-only local files for transcripts the store could not take, and the thread
that writes them.

Used by ``on_store_failure: buffer``. The spool has its own 256-bit data key, stored next to the
files only wrapped by the master key provider (``spool.key``), so any :class:`KeyProvider`, a KMS
included, can protect it. Formats (integers big-endian)::

    spool.key:  b"PGSK" | version u8 = 1 | spool key id length u8 | spool key id (ASCII)
                | master key id length u8 | master key id (ASCII) | wrapped key (nonce 12 | ciphertext+tag)
    *.spool:    b"PGS2" | spool key id length u8 | spool key id (ASCII)
                | frames: (u32 length | sealed record, crypto.py, under the spool key, AAD FRAME_AAD)

A file is written as ``*.spool.tmp``, fsynced, then renamed and its folder fsynced, so a replay never
sees one that is still being written; a frame cut short by a crash is ignored, never half-read.
Version-1 files (``PGS1``: the master key id, then frames under a key derived from that master key by
HKDF) are still read, with a local key provider. The known-answer tests in tests/test_crypto.py pin
all of this.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .crypto import NONCE_BYTES, CryptoError, KeyProvider, Sealed, open_sealed, seal
from .durable import fsync_dir, write_private

log = logging.getLogger(__name__)

MAGIC_V1 = b"PGS1"
MAGIC = b"PGS2"
KEY_MAGIC = b"PGSK"
KEY_FILE = "spool.key"
FRAME_AAD = b"pii-gateway/spool-frame"


def spool_key_aad(spool_key_id: str) -> bytes:
    return b"pii-gateway/spool-key\x00" + spool_key_id.encode("ascii")


def _write_atomically(path: Path, data: bytes) -> None:
    write_private(path, data, temp=path.with_name(path.name + ".tmp"))


def _short(text: str) -> bytes:
    raw = text.encode("ascii")
    return bytes([len(raw)]) + raw


class SpoolKeyFile:
    """The parsed ``spool.key``."""

    def __init__(self, key_id: str, master_key_id: str, wrapped: bytes) -> None:
        self.key_id = key_id
        self.master_key_id = master_key_id
        self.wrapped = wrapped

    def to_bytes(self) -> bytes:
        return KEY_MAGIC + b"\x01" + _short(self.key_id) + _short(self.master_key_id) + self.wrapped

    @classmethod
    def from_bytes(cls, data: bytes) -> SpoolKeyFile:
        if data[:4] != KEY_MAGIC or len(data) < 7 or data[4] != 1:
            raise CryptoError(f"{KEY_FILE}: not a spool key file (bad magic or version)")
        try:
            kid_end = 6 + data[5]
            key_id = data[6:kid_end].decode("ascii")
            mk_end = kid_end + 1 + data[kid_end]
            master_key_id = data[kid_end + 1 : mk_end].decode("ascii")
        except (IndexError, UnicodeDecodeError):
            raise CryptoError(f"{KEY_FILE} is corrupt") from None
        wrapped = data[mk_end:]
        if len(wrapped) < NONCE_BYTES + 16:
            raise CryptoError(f"{KEY_FILE} is truncated")
        return cls(key_id, master_key_id, wrapped)


class Spool:
    """The spool folder. ``append``, ``read`` and ``rewrite`` block: call them off the event loop
    (:class:`SpoolWriter` does, for the recorder)."""

    def __init__(self, directory: Path, provider: KeyProvider) -> None:
        self.directory = directory
        self.provider = provider
        self._lock = threading.Lock()
        self._key: tuple[str, bytes, str] | None = None  # spool key id, key, id of the master key wrapping it
        self._seq = itertools.count()

    # --- the spool key ---------------------------------------------------------------------------

    def _load_key(self, *, create: bool) -> tuple[str, bytes, str] | None:
        with self._lock:
            if self._key is not None:
                return self._key
            path = self.directory / KEY_FILE
            if path.exists():
                stored = SpoolKeyFile.from_bytes(path.read_bytes())
                key = self.provider.unwrap(stored.master_key_id, stored.wrapped, spool_key_aad(stored.key_id))
                self._key = (stored.key_id, key, stored.master_key_id)
            elif create:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                key_id, key = "sk-" + secrets.token_hex(8), os.urandom(32)
                master_id, wrapped = self.provider.wrap(key, spool_key_aad(key_id))
                _write_atomically(path, SpoolKeyFile(key_id, master_id, wrapped).to_bytes())
                self._key = (key_id, key, master_id)
            return self._key

    def rewrap_key(self) -> bool:
        """Re-wrap ``spool.key`` under the provider's current master key if another one wraps it.

        Run by ``keys rotate`` and ``transcripts forget`` for their data dir, and by the recorder's
        replay loop, so a retired master key never strands spooled transcripts. True if rewritten.
        """
        if not (self.directory / KEY_FILE).exists():
            return False
        loaded = self._load_key(create=False)
        assert loaded is not None
        key_id, key, master_id = loaded
        if master_id == self.provider.current_id:
            return False
        with self._lock:
            new_master, wrapped = self.provider.wrap(key, spool_key_aad(key_id))
            _write_atomically(self.directory / KEY_FILE, SpoolKeyFile(key_id, new_master, wrapped).to_bytes())
            self._key = (key_id, key, new_master)
        return True

    @property
    def key_master_id(self) -> str | None:
        """The master key that wraps the spool key, or None while there is no spool key."""
        path = self.directory / KEY_FILE
        return SpoolKeyFile.from_bytes(path.read_bytes()).master_key_id if path.exists() else None

    # --- files -----------------------------------------------------------------------------------

    def append(self, payloads: list[bytes]) -> Path:
        """Write payloads to a new spool file, fsynced and renamed into place. Returns the file."""
        loaded = self._load_key(create=True)
        assert loaded is not None
        key_id, key, _ = loaded
        name = f"{time.time_ns():020d}-{next(self._seq):08d}-{secrets.token_hex(4)}.spool"
        path = self.directory / name
        body = [MAGIC, _short(key_id)]
        for payload in payloads:
            frame = seal(key, key_id, payload, FRAME_AAD)
            body.append(struct.pack(">I", len(frame)) + frame)
        _write_atomically(path, b"".join(body))
        return path

    def recover(self) -> int:
        """At start-up: put files a crash left half-renamed (``*.spool.tmp``) back in the replay;
        their torn tail, if any, is skipped on read. Returns how many."""
        if not self.directory.is_dir():
            return 0
        found = 0
        for tmp in self.directory.glob("*.spool.tmp"):
            tmp.rename(tmp.with_suffix(""))
            found += 1
        return found

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*.spool"))

    def read(self, path: Path) -> Iterator[bytes]:
        data = path.read_bytes()
        magic = data[:4]
        if magic not in (MAGIC, MAGIC_V1) or len(data) < 5:
            raise CryptoError(f"{path.name}: not a spool file")
        kid_len = data[4]
        try:
            kid = data[5 : 5 + kid_len].decode("ascii")
        except UnicodeDecodeError:
            raise CryptoError(f"{path.name}: corrupt key id") from None
        if magic == MAGIC:
            loaded = self._load_key(create=False)
            if loaded is None or loaded[0] != kid:
                raise CryptoError(f"{path.name}: its spool key {kid} is not in {KEY_FILE}")
            key = loaded[1]
        else:
            legacy = getattr(self.provider, "legacy_spool_key", None)
            if legacy is None:
                raise CryptoError(f"{path.name}: a version-1 spool file needs a local master key to replay")
            key = legacy(kid)
        offset = 5 + kid_len
        while offset + 4 <= len(data):
            (size,) = struct.unpack(">I", data[offset : offset + 4])
            frame = data[offset + 4 : offset + 4 + size]
            if len(frame) < size:
                return  # a frame cut short by a crash: it was never acknowledged
            yield open_sealed(key, Sealed.from_bytes(frame), FRAME_AAD)
            offset += 4 + size

    def rewrite(self, keep: Callable[[bytes], bool]) -> int:
        """Drop every payload for which ``keep`` is False (``transcripts forget``); version-1 files are
        rewritten in the current format either way. Returns how many payloads were dropped."""
        dropped = 0
        for path in self.files():
            try:
                payloads = list(self.read(path))
            except FileNotFoundError:
                continue  # replayed meanwhile
            kept = [p for p in payloads if keep(p)]
            if len(kept) == len(payloads) and path.read_bytes()[:4] == MAGIC:
                continue
            if kept:
                self.append(kept)  # written before the old file goes: a crash duplicates, never loses
            path.unlink(missing_ok=True)
            dropped += len(payloads) - len(kept)
        if dropped:
            fsync_dir(self.directory)
        return dropped

    def pending(self) -> int:
        return len(self.files())


class SpoolWriter:
    """Appends to a :class:`Spool` on one thread of its own, so its fsyncs never run on the event loop.

    Batches are written in the order they were submitted; the batches that wait while one is written
    go together into the next file (one fsync for all). ``on_done(count, error)`` runs on the writer
    thread after each file: ``error`` is None when the payloads are on disk. Nothing is dropped without
    ``on_done`` hearing of it.
    """

    def __init__(self, spool: Spool, on_done: Callable[[int, BaseException | None], None]) -> None:
        self.spool = spool
        self.on_done = on_done
        self._pending: list[tuple[list[bytes], concurrent.futures.Future[None]]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last: concurrent.futures.Future[None] | None = None

    def submit(self, payloads: list[bytes]) -> concurrent.futures.Future[None]:
        """Queue payloads for the spool; never blocks on disk. After ``close`` it writes inline."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._cond:
            if not self._closed:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="transcript-spool", daemon=True)
                    self._thread.start()
                self._pending.append((payloads, done))
                self._last = done
                self._cond.notify()
                return done
        self._write([(payloads, done)])
        return done

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
            self._write(batch)

    def _write(self, batch: list[tuple[list[bytes], concurrent.futures.Future[None]]]) -> None:
        payloads = [p for group, _ in batch for p in group]
        error: BaseException | None = None
        try:
            self.spool.append(payloads)
        except Exception as exc:  # noqa: BLE001 - reported to on_done (logged, counted as lost), never swallowed
            error = exc
        try:
            self.on_done(len(payloads), error)
        finally:
            for _, done in batch:
                done.set_result(None)

    @property
    def busy(self) -> bool:
        return self._last is not None and not self._last.done()

    async def drain(self) -> None:
        """Wait until everything submitted so far is written (or reported lost)."""
        last = self._last
        if last is not None:
            await asyncio.wrap_future(last)

    async def close(self) -> None:
        """Write what is pending, then stop the thread. Later submits write inline."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)
