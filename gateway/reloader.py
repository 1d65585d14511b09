"""Reloader: swaps in changed policies and keys without a restart, all or nothing.

Triggers: a change seen by polling the policies folder and the key file every
``reload_interval_seconds``, SIGHUP, and the admin ``/v1/gateway/reload`` endpoint.

The new policy set is validated as a whole before anything changes; an invalid set is rejected,
logged with the reason (file, line, field) and counted, and the old set stays in force. The swap is
one assignment to ``holder.book``: a request keeps the Policy object it started with, so requests in
flight finish under the policy they began with.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from .keys import KeyFileError, KeyRing
from .metrics import Metrics
from .policy import PolicyBook, PolicyError, load_policy_dir

log = logging.getLogger(__name__)


class PolicyHolder:
    """The live PolicyBook. Reloading replaces ``book`` in one assignment."""

    def __init__(self, book: PolicyBook) -> None:
        self.book = book


class KeyHolder:
    """The live KeyRing, replaced in one assignment when the key file changes."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring


def _fingerprint(directory: Path) -> tuple[tuple[str, float, int], ...]:
    try:
        entries = [*directory.glob("*.yaml"), *directory.glob("*.yml")]
        return tuple(sorted((p.name, p.stat().st_mtime, p.stat().st_size) for p in entries))
    except OSError:
        return ()


def _file_stamp(path: Path) -> tuple[float, int]:
    try:
        stat = path.stat()
    except OSError:
        return (0.0, 0)
    return (stat.st_mtime, stat.st_size)


@dataclass
class Reloader:
    policies: PolicyHolder
    keys: KeyHolder
    policies_dir: Path
    keys_file: Path
    default_policy: str
    metrics: Metrics

    def __post_init__(self) -> None:
        self._policy_stamp = _fingerprint(self.policies_dir)
        self._key_stamp = _file_stamp(self.keys_file)
        self._lock = asyncio.Lock()

    async def reload(self) -> tuple[bool, str]:
        """Reload policies and keys now. Returns (policies accepted, message)."""
        async with self._lock:
            self._reload_keys()
            return self._reload_policies()

    def _reload_policies(self) -> tuple[bool, str]:
        self._policy_stamp = _fingerprint(self.policies_dir)
        try:
            book = load_policy_dir(self.policies_dir, self.default_policy, version=self.policies.book.version + 1)
        except PolicyError as exc:
            self.metrics.policy_reloads.labels("failure").inc()
            log.error("policy reload rejected; the previous policies stay in force", extra={"reason": str(exc)})
            return False, str(exc)
        self.policies.book = book
        self.metrics.policy_reloads.labels("success").inc()
        log.info("policies reloaded", extra={"policies": sorted(book.policies), "version": book.version})
        return True, f"loaded {len(book.policies)} policies"

    def _reload_keys(self) -> None:
        self._key_stamp = _file_stamp(self.keys_file)
        try:
            self.keys.ring = KeyRing.load(self.keys_file)
        except KeyFileError as exc:
            log.error("key file reload rejected; the previous keys stay in force", extra={"reason": str(exc)})

    async def watch(self, interval: float) -> None:
        """Poll for changes until cancelled."""
        while True:
            await asyncio.sleep(interval)
            async with self._lock:
                if _file_stamp(self.keys_file) != self._key_stamp:
                    self._reload_keys()
                if _fingerprint(self.policies_dir) != self._policy_stamp:
                    self._reload_policies()
