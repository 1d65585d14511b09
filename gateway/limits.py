"""Admission: concurrency caps (overall and per key) and per-key request/token rate limits.

Past a cap the gateway answers at once, 503 (overall) or 429 (per key) with ``Retry-After``, rather
than queueing without bound. Rate limits count requests and tokens per key in one-minute windows:
in memory for one replica, in Redis (``limits.redis_url``) for several. If Redis cannot be reached,
the limit is not enforced for that request and the failure is logged: a limiter outage must not take
the whole gateway down (availability), and the privacy guarantees do not depend on it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import Overloaded, RateLimited
from .settings import LimitSettings

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60


class Admission:
    """In-flight counts. One per app; only touched on the event loop, so plain ints suffice."""

    def __init__(self, limits: LimitSettings) -> None:
        self.limits = limits
        self.total = 0
        self.per_key: Counter[str] = Counter()

    @contextmanager
    def enter(self, key: str) -> Iterator[None]:
        if self.total >= self.limits.max_concurrent:
            raise Overloaded("The gateway is at its concurrency limit; retry shortly.", retry_after=1)
        if self.per_key[key] >= self.limits.max_concurrent_per_key:
            raise RateLimited("Too many concurrent requests for this key; retry shortly.", retry_after=1)
        self.total += 1
        self.per_key[key] += 1
        try:
            yield
        finally:
            self.total -= 1
            self.per_key[key] -= 1
            if self.per_key[key] <= 0:
                del self.per_key[key]


class RateLimiter:
    """Requests and tokens per key per minute window; memory or Redis."""

    def __init__(self, limits: LimitSettings, redis: Any = None) -> None:
        self.limits = limits
        self.redis = redis
        self._counts: dict[tuple[str, str, int], int] = {}

    @property
    def active(self) -> bool:
        return self.limits.requests_per_minute is not None or self.limits.tokens_per_minute is not None

    @staticmethod
    def _window(now: float) -> tuple[int, int]:
        window = int(now // WINDOW_SECONDS)
        return window, int(WINDOW_SECONDS - now % WINDOW_SECONDS) + 1

    async def check(self, key: str) -> None:
        """Count one request; refuse if this key is over its request or token budget for the window."""
        if not self.active:
            return
        window, retry = self._window(time.time())
        requests = await self._add(key, "req", window, 1)
        tokens = await self._add(key, "tok", window, 0)
        if self.limits.requests_per_minute is not None and requests > self.limits.requests_per_minute:
            raise RateLimited("Request rate limit reached for this key.", retry_after=retry)
        if self.limits.tokens_per_minute is not None and tokens >= self.limits.tokens_per_minute:
            raise RateLimited("Token rate limit reached for this key.", retry_after=retry)

    async def spend(self, key: str, tokens: int) -> None:
        if self.limits.tokens_per_minute is None or tokens <= 0:
            return
        window, _ = self._window(time.time())
        await self._add(key, "tok", window, tokens)

    async def _add(self, key: str, kind: str, window: int, amount: int) -> int:
        if self.redis is not None:
            name = f"pii-gateway:rl:{kind}:{key}:{window}"
            try:
                pipe = self.redis.pipeline()
                pipe.incrby(name, amount)
                pipe.expire(name, WINDOW_SECONDS * 2)
                value, _ = await pipe.execute()
                return int(value)
            except Exception as exc:  # noqa: BLE001 - any Redis failure: fail open on rate limiting only
                log.warning("rate limiter store unavailable; not enforcing", extra={"error": type(exc).__name__})
                return 0
        for stale in [k for k in self._counts if k[2] < window]:
            del self._counts[stale]
        slot = (key, kind, window)
        self._counts[slot] = self._counts.get(slot, 0) + amount
        return self._counts[slot]
