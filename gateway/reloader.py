"""Reloader: swaps in changed policies and keys without a restart, all or nothing.

Triggers: a change seen by polling the policies folder and the key file every
``reload_interval_seconds``, SIGHUP, and the admin ``/v1/gateway/reload`` endpoint.

The new policy set is validated as a whole before anything changes; an invalid set is rejected,
logged with the reason (file, line, field) and counted, and the old set stays in force. A set is
invalid too when it drops a policy that something in force refers to: the default policy, a
binding in the settings, or an active key in the key file (keys are read before policies, so a key
file and a policy folder changed together are checked against each other).

A key file is never rejected for naming a policy that is not loaded (that would also hold back
revocations in the same change): the reload is logged as a warning, and requests with such a key are
refused with 403 ``policy_not_allowed`` until the policy is loaded or the key rebound (fail closed). The swap is
one assignment to ``holder.book``: a request keeps the Policy object it started with, so requests in
flight finish under the policy they began with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from .keys import KeyFileError, KeyRing
from .metrics import Metrics
from .policy import PolicyBook, PolicyError, load_policy_dir
from .settings import PolicyBindingSettings

log = logging.getLogger(__name__)


class PolicyHolder:
    """The live PolicyBook. Reloading replaces ``book`` in one assignment."""

    def __init__(self, book: PolicyBook) -> None:
        self.book = book


class KeyHolder:
    """The live KeyRing, replaced in one assignment when the key file changes."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring


def keys_bound_to_missing(ring: KeyRing, policies: Collection[str]) -> dict[str, int]:
    """Active keys per policy name they are bound to that is not in ``policies`` (revoked/expired ones don't count)."""
    now = time.time()
    return dict(
        Counter(
            r.policy
            for r in ring.records.values()
            if r.policy is not None and r.usable(now) and r.policy not in policies
        )
    )


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
    #: Languages the NLP engine analyses (``nlp.language``); None: not checked.
    languages: Collection[str] | None = None
    #: ``policy_bindings`` from the settings: a new set must still hold each binding's policy.
    bindings: tuple[PolicyBindingSettings, ...] = ()

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
            book = self._load()
        except PolicyError as exc:
            self.metrics.policy_reloads.labels("failure").inc()
            log.error("policy reload rejected; the previous policies stay in force", extra={"reason": str(exc)})
            return False, str(exc)
        self.policies.book = book
        self.metrics.policy_reloads.labels("success").inc()
        log.info("policies reloaded", extra={"policies": sorted(book.policies), "version": book.version})
        return True, f"loaded {len(book.policies)} policies"

    def _load(self) -> PolicyBook:
        """The new set, validated as a whole and against what refers to it; raises PolicyError."""
        book = load_policy_dir(
            self.policies_dir,
            self.default_policy,
            version=self.policies.book.version + 1,
            languages=self.languages,
            bindings=self.bindings,
        )
        # Only what the change drops: a key already bound to a policy that was never loaded fails closed
        # on its own requests (see the module docstring) and must not hold back every later reload.
        dropped = set(self.policies.book.policies) - set(book.policies)
        missing = {n: c for n, c in keys_bound_to_missing(self.keys.ring, book.policies).items() if n in dropped}
        if missing:
            raise PolicyError(
                "\n".join(
                    f"{self.keys_file}: {count} active key(s) are bound to policy '{name}', which the new set "
                    "drops (see pii-gateway keys list)"
                    for name, count in sorted(missing.items())
                )
            )
        return book

    def _reload_keys(self) -> None:
        self._key_stamp = _file_stamp(self.keys_file)
        try:
            self.keys.ring = KeyRing.load(self.keys_file)
        except KeyFileError as exc:
            log.error("key file reload rejected; the previous keys stay in force", extra={"reason": str(exc)})
            return
        for name, count in sorted(keys_bound_to_missing(self.keys.ring, self.policies.book.policies).items()):
            log.warning(
                "active keys are bound to a policy that is not loaded; their requests are refused (403)",
                extra={"policy": name, "keys": count},
            )

    async def watch(self, interval: float) -> None:
        """Poll for changes until cancelled."""
        while True:
            await asyncio.sleep(interval)
            async with self._lock:
                if _file_stamp(self.keys_file) != self._key_stamp:
                    self._reload_keys()
                if _fingerprint(self.policies_dir) != self._policy_stamp:
                    self._reload_policies()
