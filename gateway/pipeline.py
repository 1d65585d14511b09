"""The request path, top to bottom. Read this file first.

    read the body -> pick the policy -> collect text slots -> redact (fail closed) -> forward
    -> relay the answer, restoring placeholders (fail open) -> observe the Exchange

Failure policy per stage:
- reading and parsing: a bad body is a 400/413 naming the problem; nothing is forwarded;
- detection: any error or timeout is a 503 and nothing is forwarded (fail closed);
- the upstream: unreachable or timed out is a 502/504; its own error statuses and bodies are passed
  through with placeholders restored;
- restoring: fails open; the client may see a placeholder, never another request's value;
- observers run in ``finally`` and never touch bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson
from aiohttp import web

from .api import WireApi
from .auth import Principal, authenticate
from .detector import Detector
from .errors import (
    DetectionFailed,
    GatewayError,
    InvalidJSON,
    NotFound,
    PayloadTooLarge,
    PolicyBlocked,
    RequestTimeout,
    TranscriptsUnavailable,
    UpstreamError,
)
from .exchange import Exchange
from .limits import Admission, RateLimiter
from .logs import request_context
from .metrics import Metrics
from .placeholders import PlaceholderRestorer
from .policy import Policy
from .redaction import Redactor
from .reloader import KeyHolder, PolicyHolder
from .settings import Settings
from .streaming import relay_stream
from .transcripts import TranscriptRecorder
from .upstream import Reply, Router, client_headers

log = logging.getLogger("gateway.access")

MAX_UPSTREAM_BODY = 64 * 1024 * 1024


@dataclass
class Gateway:
    """Everything the request path needs, built once per app (see app.py)."""

    settings: Settings
    policies: PolicyHolder
    keys: KeyHolder
    detector: Detector
    redactor: Redactor
    router: Router
    metrics: Metrics
    admission: Admission
    rate: RateLimiter
    recorder: TranscriptRecorder | None = None

    @cached_property
    def keys_required(self) -> bool:
        # Settings never change under a running app; this walks the upstreams, so once is enough.
        return self.settings.holds_upstream_keys or self.settings.auth.require_keys

    def authenticate(self, request: web.Request) -> Principal:
        return authenticate(request.headers, self.keys.ring, keys_required=self.keys_required)

    def select_policy(self, request: web.Request, principal: Principal, model: str | None, route: str) -> Policy:
        return self.policies.book.select(
            bound=principal.policy,
            model=model,
            route=route,
            bindings=self.settings.policy_bindings,
            requested=request.headers.get("X-PII-Policy"),
        )


async def handle(
    request: web.Request, gateway: Gateway, api: WireApi, model_from_path: str | None = None
) -> web.StreamResponse:
    """One request of any API, from the first byte read to the transcript queued."""
    exchange = Exchange(route=api.route)
    in_flight = gateway.metrics.in_flight.labels(exchange.route)
    in_flight.inc()
    with request_context(exchange.request_id):
        try:
            return await _handle(request, gateway, exchange, api, model_from_path)
        except GatewayError as exc:
            exchange.error_code = exc.code
            if isinstance(exc, UpstreamError):
                exchange.upstream_error = exc.reason
            if exchange.outcome == "ok":
                exchange.outcome = "client_error" if exc.status < 500 else "upstream_error"
            exchange.finish(exc.status)
            return error_response(exc, exchange, api.error_style)
        except (asyncio.CancelledError, ConnectionResetError):
            exchange.outcome = "client_disconnected"
            exchange.finish(499)
            raise
        finally:
            in_flight.dec()
            exchange.finish(500)
            gateway.metrics.observe(exchange)
            if gateway.recorder is not None:
                gateway.recorder.record(exchange)
            _log_exchange(exchange)


async def _handle(
    request: web.Request, gateway: Gateway, exchange: Exchange, api: WireApi, model_from_path: str | None
) -> web.StreamResponse:
    principal = gateway.authenticate(request)
    exchange.tenant = principal.tenant
    if gateway.recorder is not None and not gateway.recorder.accepting:
        raise TranscriptsUnavailable(
            "The transcript store is unavailable; requests are refused until it recovers.", retry_after=1
        )
    # The body is read before admission, under its own deadline, so slow uploads hold no slot.
    try:
        async with asyncio.timeout(gateway.settings.limits.body_read_seconds):
            raw, body = await read_json(request, gateway.settings.limits.max_body_bytes)
    except TimeoutError:
        raise RequestTimeout("The request body was not received in time.") from None
    limit_key = principal.key_id or f"tenant:{principal.tenant}"
    with gateway.admission.enter(limit_key):
        await gateway.rate.check(limit_key)
        try:
            return await _admitted(request, gateway, exchange, api, model_from_path, principal, raw, body)
        finally:
            await gateway.rate.spend(limit_key, (exchange.input_tokens or 0) + (exchange.output_tokens or 0))


async def _admitted(
    request: web.Request,
    gateway: Gateway,
    exchange: Exchange,
    api: WireApi,
    model_from_path: str | None,
    principal: Principal,
    raw: bytes,
    body: dict[str, Any],
) -> web.StreamResponse:
    limits = gateway.settings.limits
    exchange.model = model_from_path or (body["model"] if isinstance(body.get("model"), str) else None)
    exchange.stream = body.get("stream") is True
    upstream = gateway.router.select(api.route, exchange.model)
    if upstream is None:
        raise NotFound("No upstream is configured for this model and API.", param="model")

    policy = gateway.select_policy(request, principal, exchange.model, exchange.route)
    exchange.policy = policy.name
    capture = exchange.capture
    capture.keep = policy.transcript
    if capture.keeps_original:
        capture.request_client = raw
    slots, exchange.unscanned_parts = api.collect_slots(body, policy)
    if len(slots) > limits.max_messages:
        raise PayloadTooLarge(f"The request has {len(slots)} text parts; the limit is {limits.max_messages}.")
    chars = sum(len(s.text) for s in slots)
    if chars > limits.max_chars:
        raise PayloadTooLarge(f"The request has {chars} characters of text; the limit is {limits.max_chars}.")

    started = exchange.elapsed()
    try:
        redactions = await gateway.redactor.redact(slots, policy, exchange.tenant)
    except PolicyBlocked as exc:
        exchange.outcome = "blocked"
        exchange.entity_counts.update(exc.counts)
        raise
    except DetectionFailed:
        exchange.outcome = "detector_error"
        raise
    finally:
        exchange.detect_seconds = exchange.elapsed() - started
    exchange.redactions = redactions
    exchange.entity_counts = redactions.counts

    table = redactions.restorable if policy.restore_answers and api.restores else {}
    outbound = orjson.dumps(body)
    if capture.keeps_anything:
        capture.request_upstream = outbound
    exchange.forwarded_seconds = exchange.elapsed()
    path, query = upstream.target(api.upstream_path, request.path, request.query_string, exchange.model)
    async with upstream.send(path, query, outbound, request.headers) as reply:
        exchange.upstream_first_byte_seconds = exchange.elapsed()
        if reply.status < 400 and reply.headers.get("Content-Type", "").startswith("text/event-stream"):
            remember = not policy.detects_nothing
            response: web.StreamResponse = await relay_stream(request, reply, exchange, table, api, collect=remember)
        else:
            response = await relay_whole(reply, exchange, table, api)
    if exchange.answer_texts:
        # The next turn re-sends these answers: their findings are known now (see remember_answers).
        gateway.redactor.remember_answers(exchange.answer_texts, redactions, table, policy)
    return response


async def handle_models(request: web.Request, gateway: Gateway) -> web.StreamResponse:
    """``GET /v1/models``: passed through to the upstream that serves the ``models`` route."""
    exchange = Exchange(route="models")
    with request_context(exchange.request_id):
        try:
            principal = gateway.authenticate(request)
            exchange.tenant = principal.tenant
            upstream = gateway.router.select("models", None)
            if upstream is None:
                raise NotFound("No upstream serves the models list.")
            path, query = upstream.target("/models", request.path, request.query_string, None)
            async with upstream.send(path, query, None, request.headers, method="GET") as reply:
                return await relay_whole(reply, exchange, {}, None)
        except GatewayError as exc:
            exchange.error_code = exc.code
            exchange.finish(exc.status)
            return error_response(exc, exchange)
        finally:
            exchange.finish(500)
            gateway.metrics.observe(exchange)


async def read_json(request: web.Request, limit: int) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its JSON object; refuses an oversized body before reading it whole."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"The request body is {declared} bytes; the limit is {limit}.")
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        parts.append(chunk)
    raw = b"".join(parts)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(
            f"The request body is not valid JSON (line {exc.lineno}, column {exc.colno}).", param=None
        ) from None
    if not isinstance(body, dict):
        raise InvalidJSON("The request body must be a JSON object.")
    return raw, body


async def relay_whole(reply: Reply, exchange: Exchange, table: Mapping[str, str], api: WireApi | None) -> web.Response:
    """A non-streamed answer, or any upstream error: read, restore, send."""
    raw = await reply.read(MAX_UPSTREAM_BODY)
    exchange.first_token_seconds = exchange.elapsed()
    if exchange.capture.keeps_anything:
        exchange.capture.add("response_upstream", raw)
    body = raw
    is_json = reply.headers.get("Content-Type", "").startswith("application/json")
    if api is not None and reply.status < 400 and is_json:
        body = _restore_json_answer(raw, exchange, table, api)
    elif table and raw:
        body = _restore_text(raw, table, json_escape=is_json, exchange=exchange)
    if reply.status >= 400:
        exchange.outcome = "upstream_error"
        exchange.upstream_error = f"status_{reply.status // 100}xx"
    exchange.finish(reply.status)
    if exchange.capture.keeps_original:
        exchange.capture.add("response_client", body)
    headers = client_headers(reply.headers)
    headers["X-Request-Id"] = exchange.request_id
    return web.Response(status=reply.status, body=body, headers=headers)


def _restore_json_answer(raw: bytes, exchange: Exchange, table: Mapping[str, str], api: WireApi) -> bytes:
    """Usage is read from every answer; the body is re-serialised only when there is something to restore."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _restore_text(raw, table, json_escape=True, exchange=exchange) if table else raw
    if not isinstance(answer, dict):
        return raw
    try:
        exchange.input_tokens, exchange.output_tokens = api.usage(answer)
        exchange.answer_texts = api.answer_texts(answer)
        if not table:
            return raw
        restored, unresolved = api.restore_body(answer, table)
    except (TypeError, AttributeError, KeyError, ValueError):
        # An answer of a shape we do not understand: relay it as it came (restoring fails open).
        log.warning("an upstream answer could not be restored; relayed unchanged")
        return raw
    exchange.placeholders_restored += restored
    exchange.placeholders_unresolved += unresolved
    return orjson.dumps(answer)


def _restore_text(raw: bytes, table: Mapping[str, str], *, json_escape: bool, exchange: Exchange) -> bytes:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    restorer = PlaceholderRestorer(table, json_escape=json_escape)
    out = restorer.restore(text)
    exchange.placeholders_restored += restorer.restored
    exchange.placeholders_unresolved += restorer.unresolved
    return out.encode("utf-8")


def error_response(exc: GatewayError, exchange: Exchange | None = None, style: str = "openai") -> web.Response:
    headers = {"X-Request-Id": exchange.request_id} if exchange is not None else {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, UpstreamError | DetectionFailed | TranscriptsUnavailable):
        headers["Retry-After"] = "1"
    return web.Response(status=exc.status, body=exc.to_json(style), content_type="application/json", headers=headers)


def _log_exchange(exchange: Exchange) -> None:
    """One access-log line: ids, route, status, timings, entity *types* and counts. Never values or text."""
    log.info(
        "exchange",
        extra={
            "route": exchange.route,
            "status": exchange.status,
            "outcome": exchange.outcome,
            "error_code": exchange.error_code,
            "policy": exchange.policy,
            "stream": exchange.stream,
            "entities": {f"{t}:{a}": n for (t, a), n in sorted(exchange.entity_counts.items())},
            "placeholders_restored": exchange.placeholders_restored,
            "detect_ms": round(exchange.detect_seconds * 1000, 2) if exchange.detect_seconds is not None else None,
            "duration_ms": round((exchange.duration_seconds or 0) * 1000, 2),
        },
    )
