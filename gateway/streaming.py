"""relay_stream(): upstream SSE bytes -> complete events -> per-choice restore -> client writes, chunk by chunk.

Nothing is buffered beyond one incomplete SSE event and, per choice, the tail that could still be the
start of one of this request's placeholders. Events that cannot contain a placeholder (no ``<`` and no
``\\u003c`` in their data, and nothing held back) are relayed as the exact bytes that came in; only the
others are parsed, restored and re-encoded. With nothing to restore, bytes are piped through unparsed.

Failure policy: restoration fails open. An event that does not parse is relayed unchanged. An upstream
failure after the headers went out reaches the client as one SSE error event, then the stream ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from .api import EventTransformer, WireApi
from .errors import GatewayError, UpstreamError
from .exchange import Exchange
from .sse import SSEDecoder, SSEEvent, encode_event
from .upstream import Reply, client_headers


class _EventRestorer:
    """Turns one upstream SSE event into the bytes the client gets."""

    def __init__(self, transformer: EventTransformer) -> None:
        self.transformer = transformer

    def event(self, event: SSEEvent) -> bytes:
        data = event.data
        if data is None:
            return event.raw
        if event.is_done:
            return self.leftovers() + event.raw
        if not self.transformer.holding and b"<" not in data and b"\\u003c" not in data and b"\\u003C" not in data:
            return event.raw
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return event.raw
        if not isinstance(parsed, dict):
            return event.raw
        try:
            out = self.transformer.transform(event.event, parsed)
        except (TypeError, AttributeError, KeyError, ValueError):
            return event.raw  # an event of a shape we do not understand: relayed as it came (fail open)
        return b"".join(encode_event(orjson.dumps(d), name) for name, d in out)

    def leftovers(self) -> bytes:
        return b"".join(encode_event(orjson.dumps(d), name) for name, d in self.transformer.finish())


class _AnswerCollector:
    """Gathers each choice's text as the upstream streamed it, for ``Redactor.remember_answers``.

    It reads the events after they were written to the client: it adds nothing to their latency.
    """

    def __init__(self, pieces_of: Callable[[dict[str, Any]], list[tuple[int, str]]]) -> None:
        self.pieces_of = pieces_of
        self.pieces: dict[int, list[str]] = {}

    def add(self, events: list[SSEEvent]) -> None:
        for event in events:
            if event.data is None or event.is_done or b'"content"' not in event.data:
                continue
            try:
                parsed = orjson.loads(event.data)
                pieces = self.pieces_of(parsed) if isinstance(parsed, dict) else []
            except (orjson.JSONDecodeError, TypeError, AttributeError, KeyError, ValueError):
                continue
            for index, piece in pieces:
                self.pieces.setdefault(index, []).append(piece)

    def texts(self) -> list[str]:
        return ["".join(self.pieces[i]) for i in sorted(self.pieces)]


def _note_usage(events: list[SSEEvent], exchange: Exchange) -> None:
    """Token usage from the events that carry it; parses only those.

    OpenAI chat: the last chunk (``stream_options.include_usage``); Responses: ``response.completed``;
    Anthropic: ``message_start`` (input) and ``message_delta`` (output).
    """
    for event in events:
        data = event.data
        if data is None or (b'"usage":{' not in data and b'"usage": {' not in data):
            continue
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(parsed, dict):
            continue
        usage = parsed.get("usage")
        for holder in ("response", "message"):
            if not isinstance(usage, dict) and isinstance(parsed.get(holder), dict):
                usage = parsed[holder].get("usage")
        if not isinstance(usage, dict):
            continue
        for key in ("prompt_tokens", "input_tokens"):
            if isinstance(usage.get(key), int) and usage[key] > 0:
                exchange.input_tokens = usage[key]
        for key in ("completion_tokens", "output_tokens"):
            if isinstance(usage.get(key), int) and usage[key] > 0:
                exchange.output_tokens = usage[key]


async def relay_stream(
    request: web.Request,
    reply: Reply,
    exchange: Exchange,
    table: Mapping[str, str],
    api: WireApi,
    *,
    collect: bool = False,
) -> web.StreamResponse:
    """Relay an upstream stream; with ``collect``, also gather the answer's texts (``exchange.answer_texts``)."""
    response = web.StreamResponse(status=reply.status, headers=client_headers(reply.headers))
    response.headers["X-Request-Id"] = exchange.request_id
    await response.prepare(request)
    exchange.status = reply.status
    restorer = _EventRestorer(api.stream_restorer(table)) if table and api.restores else None
    collector = _AnswerCollector(api.answer_pieces) if collect and api.answer_pieces is not None else None
    decoder = SSEDecoder()
    capture = exchange.capture
    try:
        async for chunk in reply.chunks():
            if capture.keeps_anything:
                capture.add("response_upstream", chunk)
            try:
                events = decoder.feed(chunk)
            except ValueError as exc:
                raise UpstreamError(
                    "An event from the upstream is larger than the gateway accepts.", reason="too_large"
                ) from exc
            _note_usage(events, exchange)
            out = chunk if restorer is None else b"".join(restorer.event(e) for e in events)
            if out:
                if exchange.first_token_seconds is None:
                    exchange.first_token_seconds = exchange.elapsed()
                if capture.keeps_original:
                    capture.add("response_client", out)
                await response.write(out)
            if collector is not None:
                collector.add(events)
        last = decoder.flush()
        _note_usage(last, exchange)
        if collector is not None:
            collector.add(last)
            exchange.answer_texts = collector.texts()
        if restorer is not None:
            tail = b"".join(restorer.event(e) for e in last) + restorer.leftovers()
            if tail:
                if capture.keeps_original:
                    capture.add("response_client", tail)
                await response.write(tail)
    except GatewayError as exc:
        exchange.outcome = "upstream_error"
        exchange.error_code = exc.code
        exchange.upstream_error = getattr(exc, "reason", "broken_stream")
        error_event = exc.to_sse(api.error_style, api.route)
        if capture.keeps_original:
            capture.add("response_client", error_event)
        await response.write(error_event)
    finally:
        if restorer is not None:
            exchange.placeholders_restored += restorer.transformer.restored
            exchange.placeholders_unresolved += restorer.transformer.unresolved
    await response.write_eof()
    exchange.finish(reply.status)
    return response
