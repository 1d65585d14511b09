"""UpstreamClient: the one ClientSession to the provider, header hygiene, timeouts, and ownership of replies.

``send()`` is an async context manager: the reply is always released when the block exits, whether the
answer was relayed in full, the client went away (the handler is cancelled) or an error was raised.
Releasing an unfinished reply closes its connection, which tells the upstream to stop generating.

Timeouts: ``connect`` (TCP/TLS set-up), ``first_byte`` (request sent -> response headers) and
``stream_idle`` (the longest gap between two body chunks, enforced by :meth:`Reply.chunks`). There is
no total timeout: a long, steadily flowing stream is fine.
"""

from __future__ import annotations

import asyncio
import fnmatch
import io
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import UpstreamError, UpstreamTimeout
from .settings import RetrySettings, Secret, UpstreamTimeouts

#: Never forwarded in either direction (RFC 9110 section 7.6.1, plus framing the gateway redoes itself).
#: Nor is any header that a message's own ``Connection`` header names: see :func:`connection_options`.
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
        "trailer", "transfer-encoding", "upgrade", "host", "content-length", "content-encoding",
    }
)  # fmt: skip
#: Client headers that are not forwarded: framing the gateway redoes, and credentials it replaces.
_NOT_FORWARDED = HOP_BY_HOP | {"accept-encoding", "cookie", "x-forwarded-for", "forwarded"}
_CREDENTIALS = frozenset({"authorization", "api-key", "x-api-key"})
#: Statuses worth another try before the client has seen anything: rate limited or briefly unavailable.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class _IdleWatchdog:
    """Cancels the task reading an upstream body when one read has waited ``timeout`` seconds.

    ``reading()`` before each read and ``idle()`` after it cost a clock read and two stores. One timer
    runs per reply: when it fires during a read that started less than ``timeout`` ago, it is set again
    for that read's deadline; when no read is waiting, for ``timeout`` from now. ``fired()`` tells the
    reader that a cancellation was the watchdog's (and takes it back from the task, as
    ``asyncio.timeout`` does), so any other cancellation, such as a client going away, stays one.
    """

    def __init__(self, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.timeout = timeout
        self.since: float | None = None
        self.expired = False
        self.handle: asyncio.TimerHandle | None = self.loop.call_at(self.loop.time() + timeout, self._check)

    def reading(self) -> None:
        self.since = self.loop.time()

    def idle(self) -> None:
        self.since = None

    def _check(self) -> None:
        now = self.loop.time()
        if self.since is not None and now - self.since >= self.timeout and self.task is not None:
            self.expired = True
            self.handle = None
            self.task.cancel()
            return
        deadline = self.since + self.timeout if self.since is not None else now + self.timeout
        self.handle = self.loop.call_at(deadline, self._check)

    def fired(self) -> bool:
        if self.expired and self.task is not None:
            self.expired = False
            return self.task.uncancel() == 0
        return False

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


@dataclass
class Reply:
    """An upstream response whose body has not been read yet."""

    response: aiohttp.ClientResponse
    idle_timeout: float

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self.response.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive; raises UpstreamTimeout after ``idle_timeout`` of silence.

        Silence is timed only while a read waits (a slow client the chunk is being written to is not
        the upstream's silence), by one :class:`_IdleWatchdog` per reply rather than a timer per read:
        a stream of 300 small events would otherwise create and cancel 300 timers (about 4.5 µs each).
        """
        content = self.response.content
        watchdog = _IdleWatchdog(self.idle_timeout)
        try:
            while True:
                watchdog.reading()
                try:
                    chunk = await content.readany()
                except asyncio.CancelledError:
                    if watchdog.fired():
                        raise UpstreamTimeout(
                            "The upstream stopped sending in the middle of the answer.", reason="timeout_stream_idle"
                        ) from None
                    raise
                except aiohttp.ClientError as exc:
                    raise UpstreamError(
                        "The upstream connection broke in the middle of the answer.", reason="broken_stream"
                    ) from exc
                watchdog.idle()
                if not chunk:
                    return
                yield chunk
        finally:
            watchdog.stop()

    async def read(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise UpstreamError("The upstream answer is larger than the gateway accepts.", reason="too_large")
            parts.append(chunk)
        return b"".join(parts)


class UpstreamClient:
    """Sends redacted requests to one upstream over the shared session.

    ``kind`` decides the credential header the gateway's own key goes in (``Authorization: Bearer``,
    Azure's ``api-key``, Anthropic's ``x-api-key``) and how an API's path maps onto the base URL.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        timeouts: UpstreamTimeouts,
        api_key: Secret | None = None,
        *,
        name: str = "default",
        kind: str = "openai",
        models: Sequence[str] = (),
        routes: Sequence[str] = (),
        azure_api_version: str = "2024-10-21",
        retries: RetrySettings | None = None,
    ) -> None:
        self.retries = retries or RetrySettings(attempts=0)
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts
        self.api_key = api_key
        self.name = name
        self.kind = kind
        self.models = tuple(models)
        self.routes = tuple(routes)
        self.azure_api_version = azure_api_version

    def serves(self, route: str, model: str | None) -> bool:
        if self.routes and route not in self.routes:
            return False
        if not self.models:
            return True
        return model is not None and any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def target(self, api_path: str, incoming_path: str, query: str, model: str | None) -> tuple[str, str]:
        """(path under the base URL, query) for one request."""
        if self.kind != "azure":
            return api_path, query
        if incoming_path.startswith("/openai/"):
            return incoming_path, query
        deployment = quote(model or "", safe="")
        version = query or f"api-version={quote(self.azure_api_version)}"
        return f"/openai/deployments/{deployment}{api_path}", version

    def outbound_headers(self, incoming: Mapping[str, str]) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        hop_by_hop = connection_options(incoming)
        for name, value in incoming.items():
            lower = name.lower()
            if lower in _NOT_FORWARDED or lower in hop_by_hop:
                continue
            if self.api_key is not None and lower in _CREDENTIALS:
                continue
            if lower == "x-gateway-key" or lower == "x-pii-policy" or _is_gateway_key(lower, value):
                continue  # the gateway's own credentials and controls never go upstream
            headers.add(name, value)
        if self.api_key is not None:
            if self.kind == "azure":
                headers["api-key"] = self.api_key.reveal()
            elif self.kind == "anthropic":
                headers["x-api-key"] = self.api_key.reveal()
            else:
                headers["Authorization"] = f"Bearer {self.api_key.reveal()}"
        if self.kind == "anthropic" and "anthropic-version" not in headers:
            headers["anthropic-version"] = "2023-06-01"
        return headers

    @asynccontextmanager
    async def send(
        self, path: str, query: str, body: bytes | None, incoming: Mapping[str, str], method: str = "POST"
    ) -> AsyncIterator[Reply]:
        url = f"{self.base_url}{path}" + (f"?{query}" if query else "")
        headers = self.outbound_headers(incoming)
        if body is not None:
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            try:
                response = await self._request(method, url, body, headers)
            except UpstreamError as exc:
                # Nothing reached the upstream's model yet (no connection): safe to try again.
                if attempt >= self.retries.attempts or exc.reason not in ("unreachable", "timeout_connect"):
                    raise
                await asyncio.sleep(self._backoff(attempt, None))
                attempt += 1
                continue
            if response.status in RETRY_STATUSES and attempt < self.retries.attempts:
                wait = self._backoff(attempt, response.headers.get("Retry-After"))
                if wait <= self.retries.max_wait_seconds:
                    response.release()
                    await asyncio.sleep(wait)
                    attempt += 1
                    continue
            break
        try:
            yield Reply(response, self.timeouts.stream_idle_seconds)
        finally:
            # An unread body means the client left or we failed: close the connection so the upstream
            # stops generating, instead of returning a half-read connection to the pool.
            if not response.content.at_eof():
                response.close()
            response.release()

    async def _request(
        self, method: str, url: str, body: bytes | None, headers: CIMultiDict[str]
    ) -> aiohttp.ClientResponse:
        try:
            async with asyncio.timeout(self.timeouts.first_byte_seconds):
                return await self.session.request(
                    method,
                    url,
                    # A BytesIO payload is streamed out in pieces rather than written in one blocking call.
                    data=io.BytesIO(body) if body is not None and len(body) > 256 * 1024 else body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect_seconds),
                )
        except aiohttp.ConnectionTimeoutError as exc:  # a TimeoutError too: catch it first
            raise UpstreamTimeout("The upstream could not be reached in time.", reason="timeout_connect") from exc
        except TimeoutError as exc:
            raise UpstreamTimeout("The upstream did not answer in time.", reason="timeout_first_byte") from exc
        except aiohttp.ClientConnectorError as exc:  # no connection: the request never left
            raise UpstreamError(f"The upstream could not be reached ({type(exc).__name__}).") from exc
        except aiohttp.ClientError as exc:  # the request may have arrived: never retried
            raise UpstreamError(f"The upstream connection failed ({type(exc).__name__}).", reason="broken") from exc

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        """Full-jitter exponential backoff, or the upstream's own Retry-After (seconds) when it gives one."""
        if retry_after is not None:
            try:
                return max(float(retry_after), 0.0)
            except ValueError:
                pass
        return random.uniform(0, self.retries.backoff_seconds * (2**attempt))  # noqa: S311 - jitter, not crypto


class Router:
    """Picks the upstream for a request: the first that serves its route and model."""

    def __init__(self, clients: Sequence[UpstreamClient]) -> None:
        self.clients = list(clients)

    def select(self, route: str, model: str | None) -> UpstreamClient | None:
        return next((c for c in self.clients if c.serves(route, model)), None)


def _is_gateway_key(name: str, value: str) -> bool:
    if name not in _CREDENTIALS:
        return False
    token = value.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    return token.startswith("pgw_")


def connection_options(headers: Mapping[str, str]) -> frozenset[str]:
    """The (lower-cased) header names a message's ``Connection`` header lists.

    RFC 9110 section 7.6.1: a proxy must drop every header that ``Connection`` names, as well as
    ``Connection`` itself, before forwarding; those fields describe this one hop (a sender may put,
    say, a hop-local token there and expect it to go no further). Every ``Connection`` line counts,
    when a multidict holds several.
    """
    names: set[str] = set()
    for name, value in headers.items():
        if name.lower() == "connection":
            names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return frozenset(names)


def client_headers(upstream: Mapping[str, str]) -> CIMultiDict[str]:
    """Upstream response headers that may be relayed to the client."""
    out: CIMultiDict[str] = CIMultiDict()
    hop_by_hop = connection_options(upstream)
    for name, value in upstream.items():
        lower = name.lower()
        if lower not in HOP_BY_HOP and lower not in hop_by_hop and lower != "set-cookie":
            out.add(name, value)
    return out
