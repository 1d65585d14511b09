"""Envelope encryption: master keys and their ids, wrapping data keys, and the sealed-record format. Nothing else.

Master keys come from ``PII_GATEWAY_MASTER_KEY`` (base64 of 32 bytes; several, comma-separated, the
first is current) or from ``master_key_file`` (one base64 key per line, the first is current). In dev
mode with neither, a key is generated into ``<data_dir>/master.key`` (mode 0600) with a loud warning;
in production mode start-up refuses. A key's id is ``mk-`` + the first 16 hex digits of its SHA-256.

A cloud KMS plugs in by implementing :class:`KeyProvider`: wrap and unwrap by key id, nothing else.
The rest of the code never sees master key bytes (the spool has its own data key, wrapped like a
tenant's; see spool.py). A provider read from a key file (the dev key, or ``master_key_file``) re-reads
the file when it changes, so a running gateway follows ``keys rotate --generate`` and
``transcripts forget`` (which retires master keys) without a restart.

A wrapped data key (the ``wrapped`` column, and the spool key) is ``nonce (12 bytes) | AES-256-GCM
ciphertext+tag`` under the master key named next to it, with :func:`data_key_aad` as associated data.

Sealed record, version 1 (all integers big-endian)::

    b"PGT" | version u8 = 1 | key-id length u8 | key id (ASCII) | nonce (12 bytes) | AES-256-GCM ciphertext+tag

The associated data binds a record to its tenant, transcript id and schema version, so a row copied to
another tenant or id fails to decrypt. Changing any of this breaks old records: the known-answer
tests in ``tests/test_crypto.py`` pin the record, the key id, the wrapped-key layout and the HKDF info
strings to catch that.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .durable import write_private

log = logging.getLogger(__name__)

MAGIC = b"PGT"
RECORD_VERSION = 1
NONCE_BYTES = 12


class CryptoError(Exception):
    """Decryption or key handling failed. The message says what, never a key or plaintext."""


class MasterKeyMissing(CryptoError):
    pass


class KeyProvider(Protocol):
    """Wraps and unwraps data keys with a master key. A KMS implements this with two API calls.

    ``wrap`` uses the current master key and says which one it used; ``unwrap`` takes that id back.
    Nothing here hands out key material, so a KMS that never exposes its keys can implement it.
    """

    @property
    def current_id(self) -> str: ...

    def key_ids(self) -> list[str]: ...

    def wrap(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]: ...

    def unwrap(self, key_id: str, blob: bytes, aad: bytes) -> bytes: ...


def key_id_of(key: bytes) -> str:
    return "mk-" + hashlib.sha256(key).hexdigest()[:16]


def _validated(keys: list[bytes]) -> tuple[dict[str, bytes], str]:
    if not keys:
        raise MasterKeyMissing("no master key")
    for key in keys:
        if len(key) != 32:
            raise CryptoError("a master key must be 32 bytes (base64 of 32 random bytes)")
    return {key_id_of(k): k for k in keys}, key_id_of(keys[0])


class LocalKeyProvider:
    """Master keys held in memory, from the environment or a file. The first is current.

    With ``source`` (the key file they came from), the file is read again when it changes: before
    every ``wrap`` (so a new data key is never wrapped by a key that was retired meanwhile), when an
    unknown key id is asked for, and at most once a second for ``current_id``. A key removed from the
    file is dropped from memory too. A changed file that cannot be read keeps the keys loaded before.
    """

    def __init__(self, keys: list[bytes], source: Path | None = None) -> None:
        self._state = _validated(keys)
        self.source = source
        self._stamp = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int] | None:
        if self.source is None:
            return None
        try:
            st = self.source.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self, *, force: bool = False) -> None:
        if self.source is None or (not force and time.monotonic() - self._checked < 1.0):
            return
        self._checked = time.monotonic()
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            state = _validated(parse_keys(self.source.read_text(encoding="utf-8"), str(self.source)))
        except (OSError, CryptoError) as exc:
            log.error(
                "the master key file changed but cannot be used; keeping the keys loaded before",
                extra={"key_file": str(self.source), "error": type(exc).__name__},
            )
            return
        if state[0].keys() != self._state[0].keys() or state[1] != self._state[1]:
            log.warning(
                "master keys reloaded from the key file",
                extra={"current": state[1], "retired": sorted(set(self._state[0]) - set(state[0]))},
            )
        self._state = state

    @property
    def current_id(self) -> str:
        self.refresh()
        return self._state[1]

    def key_ids(self) -> list[str]:
        self.refresh()
        return list(self._state[0])

    def wrap(self, plaintext: bytes, aad: bytes, *, nonce: bytes | None = None) -> tuple[str, bytes]:
        self.refresh(force=True)
        keys, current = self._state
        nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        return current, nonce + AESGCM(keys[current]).encrypt(nonce, plaintext, aad)

    def unwrap(self, key_id: str, blob: bytes, aad: bytes) -> bytes:
        key = self._key(key_id)
        try:
            return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise CryptoError(f"a data key wrapped by {key_id} failed authentication") from None

    def legacy_spool_key(self, key_id: str) -> bytes:
        """The key of a version-1 spool file (``PGS1``): HKDF of a master key. Read-only support;
        new spool files have their own wrapped data key, which a KMS can provide too."""
        return hkdf(self._key(key_id), SPOOL_V1_INFO)

    def _key(self, key_id: str) -> bytes:
        key = self._state[0].get(key_id)
        if key is None:
            self.refresh(force=True)
            key = self._state[0].get(key_id)
        if key is None:
            raise CryptoError(f"master key {key_id} is not available (retired, or a different key was given)")
        return key


#: HKDF info strings. Changing one makes what was derived with it unreadable: pinned in test_crypto.py.
HASH_ACTION_INFO = b"pii-gateway/hash-action/v1"
SPOOL_V1_INFO = b"pii-gateway/spool/v1"


def hkdf(key: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


def parse_keys(text: str, source: str) -> list[bytes]:
    keys = []
    for part in text.replace(",", "\n").splitlines():
        part = part.strip()
        if not part or part.startswith("#"):
            continue
        try:
            keys.append(base64.b64decode(part, validate=True))
        except (binascii.Error, ValueError):
            raise CryptoError(f"{source}: a master key is not valid base64") from None
    return keys


def load_key_provider(
    env_value: str | None, key_file: Path | None, data_dir: Path, production: bool, *, generate: bool = True
) -> tuple[LocalKeyProvider, bool]:
    """The master keys, and whether they are a generated dev key. Never logs a key.

    Without ``generate`` (every command but ``serve``) a missing dev key is an error, never created:
    a mistyped ``--data-dir`` must not produce a fresh key that reads nothing.
    """
    if env_value:
        return LocalKeyProvider(parse_keys(env_value, "PII_GATEWAY_MASTER_KEY")), False
    if key_file is not None:
        try:
            return LocalKeyProvider(parse_keys(key_file.read_text(encoding="utf-8"), str(key_file)), key_file), False
        except OSError as exc:
            raise MasterKeyMissing(f"master key file {key_file} cannot be read ({exc.strerror})") from exc
    if production:
        raise MasterKeyMissing(
            "production mode needs a master key: set PII_GATEWAY_MASTER_KEY or --master-key-file "
            '(create one with: python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())")'
        )
    dev_file = data_dir / "master.key"
    if not dev_file.exists():
        if not generate:
            raise MasterKeyMissing(
                f"no master key: {dev_file} does not exist. Give the gateway's own --data-dir, or set "
                "PII_GATEWAY_MASTER_KEY or --master-key-file (this command never creates a key)"
            )
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(dev_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    log.warning(
        "DEV MODE: transcripts are encrypted with a generated key kept next to the data "
        "(anyone who copies the data dir can read them). Set PII_GATEWAY_MASTER_KEY or "
        "--master-key-file, and --production, for real use.",
        extra={"key_file": str(dev_file)},
    )
    return LocalKeyProvider(parse_keys(dev_file.read_text(encoding="utf-8"), str(dev_file)), dev_file), True


def write_key_file(path: Path, keys: list[bytes]) -> None:
    """Replace a master key file (one base64 key per line, the first current): temp file, fsync,
    rename, fsync of the folder, so a crash leaves the old file or the new one, never half of one.

    The old file's blocks are not overwritten: a retired key may linger on the disk until they are
    reused (see docs/transcripts.md, "Forgetting a tenant").
    """
    text = "".join(base64.b64encode(k).decode() + "\n" for k in keys)
    write_private(path, text.encode("utf-8"))


def associated_data(tenant: str, record_id: str, schema_version: int) -> bytes:
    return b"pii-gateway/transcript\x00" + b"\x00".join(
        [tenant.encode("utf-8"), record_id.encode("utf-8"), str(schema_version).encode("ascii")]
    )


def data_key_aad(tenant: str, key_id: str) -> bytes:
    return b"pii-gateway/data-key\x00" + tenant.encode("utf-8") + b"\x00" + key_id.encode("ascii")


@dataclass(frozen=True)
class Sealed:
    version: int
    key_id: str
    nonce: bytes
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        kid = self.key_id.encode("ascii")
        return MAGIC + bytes([self.version, len(kid)]) + kid + self.nonce + self.ciphertext

    @classmethod
    def from_bytes(cls, blob: bytes) -> Sealed:
        if len(blob) < 5 or blob[:3] != MAGIC:
            raise CryptoError("not a sealed record (bad magic)")
        version, kid_len = blob[3], blob[4]
        if version != RECORD_VERSION:
            raise CryptoError(f"unsupported record version {version}")
        start = 5 + kid_len
        if len(blob) < start + NONCE_BYTES + 16:
            raise CryptoError("sealed record is truncated")
        try:
            key_id = blob[5:start].decode("ascii")
        except UnicodeDecodeError:
            raise CryptoError("sealed record has a corrupt key id") from None
        return cls(version, key_id, blob[start : start + NONCE_BYTES], blob[start + NONCE_BYTES :])


def seal(key: bytes, key_id: str, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
    nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
    return Sealed(RECORD_VERSION, key_id, nonce, AESGCM(key).encrypt(nonce, plaintext, aad)).to_bytes()


def open_sealed(key: bytes, sealed: Sealed, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, aad)
    except InvalidTag:
        raise CryptoError(
            "the record failed authentication: it was altered, or belongs to another tenant or id"
        ) from None
