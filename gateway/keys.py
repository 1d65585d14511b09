"""Gateway API keys: created once and shown once, stored only as SHA-256 digests, revocable, expiring.

A key looks like ``pgw_<id>_<secret>``: the 8-hex-digit id finds the record, the whole key is checked
against the stored digest with a constant-time comparison. Keys carry 256 bits of randomness, so a
fast digest is enough (a slow password hash protects low-entropy secrets, which these are not).

The key file (YAML, mode 0600) is written atomically (temp file + rename), so a running gateway that
re-reads it on change never sees half a file.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import yaml

from .durable import write_private

Role = Literal["client", "admin"]
SECRET_ALPHABET = string.ascii_letters + string.digits
KEY_SHAPE = re.compile(r"^pgw_([0-9a-f]{8})_[A-Za-z0-9_\-]{43}$")


@dataclass(frozen=True)
class KeyRecord:
    id: str
    digest: str
    tenant: str
    policy: str | None
    role: Role
    created: float
    expires: float | None = None
    revoked: float | None = None
    description: str = ""

    def usable(self, now: float) -> bool:
        return self.revoked is None and (self.expires is None or now < self.expires)


class KeyFileError(Exception):
    """A key file problem; names the file, never a key."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


_DUMMY_DIGEST = digest("pgw_00000000_" + "A" * 43)


class KeyRing:
    """The set of keys in one file. Immutable; ``load`` again to see changes."""

    def __init__(self, records: Mapping[str, KeyRecord], path: Path | None = None, mtime: float = 0.0) -> None:
        self.records = dict(records)
        self.path = path
        self.mtime = mtime

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        if not path.exists():
            return cls({}, path)
        try:
            mtime = path.stat().st_mtime
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            rows = data.get("keys") or []
            records = {row["id"]: KeyRecord(**row) for row in rows}
        except (OSError, yaml.YAMLError, TypeError, KeyError, AttributeError) as exc:
            raise KeyFileError(f"{path}: the key file cannot be read ({type(exc).__name__})") from None
        return cls(records, path, mtime)

    def verify(self, presented: str, now: float | None = None) -> KeyRecord | None:
        """The record for a presented key, or None. Constant-time in the secret part."""
        now = time.time() if now is None else now
        match = KEY_SHAPE.match(presented)
        record = self.records.get(match.group(1)) if match else None
        expected = record.digest if record is not None else _DUMMY_DIGEST
        ok = hmac.compare_digest(digest(presented), expected)
        if record is None or not ok or not record.usable(now):
            return None
        return record

    def __bool__(self) -> bool:
        return any(r.revoked is None for r in self.records.values())

    def create(
        self,
        tenant: str,
        policy: str | None,
        role: Role = "client",
        expires_in: float | None = None,
        description: str = "",
    ) -> tuple[KeyRing, str]:
        """A new ring with one more key, and the key itself (to show once, never store)."""
        while True:
            key_id = secrets.token_hex(4)
            if key_id not in self.records:
                break
        # 43 characters of [A-Za-z0-9] carry 256 bits, and without "_" or "-" the key splits one way only
        secret = "".join(secrets.choice(SECRET_ALPHABET) for _ in range(43))
        key = f"pgw_{key_id}_{secret}"
        now = time.time()
        record = KeyRecord(
            id=key_id,
            digest=digest(key),
            tenant=tenant,
            policy=policy,
            role=role,
            created=now,
            expires=now + expires_in if expires_in else None,
            description=description,
        )
        return KeyRing({**self.records, key_id: record}, self.path), key

    def revoke(self, key_id: str) -> KeyRing:
        record = self.records.get(key_id)
        if record is None:
            raise KeyFileError(f"no key with id {key_id}")
        return KeyRing({**self.records, key_id: replace(record, revoked=time.time())}, self.path)

    def save(self, path: Path | None = None) -> None:
        target = path or self.path
        if target is None:
            raise KeyFileError("no key file to save to")
        target.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump({"keys": [asdict(r) for r in self.records.values()]}, sort_keys=False)
        write_private(target, text.encode("utf-8"))


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 12h, 90m)")
    factor = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return float(match.group(1)) * factor
