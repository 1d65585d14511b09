"""relay_stream(): upstream SSE bytes -> complete events -> per-choice restore -> client writes, chunk by chunk.

Nothing is buffered beyond one incomplete SSE event and, per choice, the tail that could still be the
start of one of this request's placeholders. Events that cannot contain a placeholder (no ``<`` and no
``\\u003c`` in their data, and nothing held back) are relayed as the exact bytes that came in; only the
others are parsed, restored and re-encoded. With nothing to restore, bytes are piped through unparsed.

Failure policy: restoration fails open. An event that does not parse is relayed unchanged. An upstream
failure after the headers went out reaches the client as one SSE error event, then the stream ends.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

from .api.chat import ChatStreamRestorer
from .errors import GatewayError
from .exchange import Exchange
from .sse import SSEDecoder, SSEEvent, encode_event
from .upstream import Reply, client_headers


class _EventRestorer:
    """Turns one upstream SSE event into the bytes the client gets."""

    def __init__(self, table: Mapping[str, str]) -> None:
        self.chunks = ChatStreamRestorer(table)

    def event(self, event: SSEEvent) -> bytes:
        data = event.data
        if data is None:
            return event.raw
        if event.is_done:
            return self.leftovers() + event.raw
        if not self.chunks.holding and b"<" not in data and b"\\u003c" not in data and b"\\u003C" not in data:
            return event.raw
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return event.raw
        if not isinstance(chunk, dict):
            return event.raw
        return encode_event(orjson.dumps(self.chunks.transform(chunk)), event.event)

    def leftovers(self) -> bytes:
        return b"".join(encode_event(orjson.dumps(c)) for c in self.chunks.finish())


async def relay_stream(
    request: web.Request, reply: Reply, exchange: Exchange, table: Mapping[str, str]
) -> web.StreamResponse:
    response = web.StreamResponse(status=reply.status, headers=client_headers(reply.headers))
    response.headers["X-Request-Id"] = exchange.request_id
    await response.prepare(request)
    exchange.status = reply.status
    restorer = _EventRestorer(table) if table else None
    decoder = SSEDecoder()
    try:
        async for chunk in reply.chunks():
            if restorer is None:
                out = chunk
            else:
                out = b"".join(restorer.event(e) for e in decoder.feed(chunk))
            if out:
                if exchange.first_token_seconds is None:
                    exchange.first_token_seconds = exchange.elapsed()
                await response.write(out)
        if restorer is not None:
            tail = b"".join(restorer.event(e) for e in decoder.flush()) + restorer.leftovers()
            if tail:
                await response.write(tail)
    except GatewayError as exc:
        exchange.outcome = "upstream_error"
        exchange.error_code = exc.code
        exchange.upstream_error = getattr(exc, "reason", "broken_stream")
        await response.write(exc.to_sse())
    finally:
        if restorer is not None:
            exchange.placeholders_restored += restorer.chunks.restored
            exchange.placeholders_unresolved += restorer.chunks.unresolved
    await response.write_eof()
    exchange.finish(reply.status)
    return response
