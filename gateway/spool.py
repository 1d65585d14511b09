"""Spool: an encrypted, append-only local file for transcripts the store could not take.

Used by ``on_store_failure: buffer``. Each file starts with ``PGS1``, the master key id its key is
derived from, and then frames of (4-byte length, sealed record). A frame is sealed with a key derived
from the master key, so the file is as unreadable as the store. Frames are fsynced before
``append`` returns; a frame cut short by a crash is ignored on replay, never half-read.
"""

from __future__ import annotations

import os
import secrets
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from .crypto import CryptoError, KeyProvider, Sealed, open_sealed, seal

MAGIC = b"PGS1"
PURPOSE = b"pii-gateway/spool/v1"
AAD = b"pii-gateway/spool-frame"


def fsync_dir(directory: Path) -> None:
    """Make a file's creation or rename in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, directory: Path, provider: KeyProvider) -> None:
        self.directory = directory
        self.provider = provider

    def append(self, payloads: list[bytes]) -> Path:
        """Write payloads to a new spool file, fsynced. Returns the file."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        kid = self.provider.current_id
        key = self.provider.derive(PURPOSE, kid)
        path = self.directory / f"{time.time_ns()}-{secrets.token_hex(4)}.spool"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(MAGIC + bytes([len(kid)]) + kid.encode("ascii"))
            for payload in payloads:
                frame = seal(key, kid, payload, AAD)
                handle.write(struct.pack(">I", len(frame)) + frame)
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(self.directory)
        return path

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*.spool"))

    def read(self, path: Path) -> Iterator[bytes]:
        data = path.read_bytes()
        if data[:4] != MAGIC:
            raise CryptoError(f"{path.name}: not a spool file")
        kid_len = data[4]
        kid = data[5 : 5 + kid_len].decode("ascii")
        key = self.provider.derive(PURPOSE, kid)
        offset = 5 + kid_len
        while offset + 4 <= len(data):
            (size,) = struct.unpack(">I", data[offset : offset + 4])
            frame = data[offset + 4 : offset + 4 + size]
            if len(frame) < size:
                return  # a frame cut short by a crash: it was never acknowledged
            yield open_sealed(key, Sealed.from_bytes(frame), AAD)
            offset += 4 + size

    def pending(self) -> int:
        return len(self.files())
