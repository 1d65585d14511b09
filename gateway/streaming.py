"""relay_stream(): upstream SSE bytes -> complete events -> per-choice restore -> client writes, chunk by chunk.

Nothing is buffered beyond one incomplete SSE event and, per choice, the tail that could still be the
start of one of this request's placeholders. With nothing to restore, bytes are piped through unparsed.

The work is done per upstream read, not per event: each read's complete events arrive as one block
(:meth:`SSEDecoder.feed_block`), and the block's bytes are searched once for what needs an event to be
parsed: a ``<`` or ``\\u003c`` (a placeholder may start there), a ``"usage":{``, a ``"content"`` for the
answer collector. A run of events without any is relayed as the exact bytes that came in, in one slice;
only the events that may hold a placeholder, or that follow one still held back, are parsed, restored
and re-encoded.

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
from .sse import SSEDecoder, SSEEvent, data_of, encode_event, parse_event
from .upstream import Reply, client_headers

#: Where a placeholder may start in an event's bytes: ``<``, or its JSON escape.
_ESCAPED_LT = (b"\\u003c", b"\\u003C")


class _EventRestorer:
    """Turns the upstream's events into the bytes the client gets."""

    def __init__(self, transformer: EventTransformer) -> None:
        self.transformer = transformer

    def block(self, block: bytes) -> bytes:
        """A block of complete events (:meth:`SSEDecoder.feed_block`) as the client gets it.

        While nothing is held back, the block is searched for the next possible placeholder start and
        everything before the event that holds it is copied in one slice; that event, and each event
        after it while text is held back, goes through :meth:`restore`.
        """
        transformer = self.transformer
        escaped = any(e in block for e in _ESCAPED_LT)
        out: list[bytes] = []
        pos, size = 0, len(block)
        while pos < size:
            holding = transformer.holding
            if not holding:
                marker = _next_marker(block, pos, escaped)
                if marker < 0:
                    out.append(block[pos:])
                    break
                start = block.rfind(b"\n\n", pos, marker)
                start = pos if start < 0 else start + 2
                if start > pos:
                    out.append(block[pos:start])
                    pos = start
            end = block.find(b"\n\n", pos)
            end = size if end < 0 else end
            piece = block[pos:end]
            pos = end + 2
            if piece[:6] == b"data: " and b"\n" not in piece:  # the usual event: one data line
                out.append(self.restore(piece + b"\n\n", piece[6:], None, holding))
            elif piece.strip(b"\n"):
                event = parse_event(piece.lstrip(b"\n"))
                out.append(self.restore(event.raw, event.data, event.event, holding))
        return b"".join(out)

    def event(self, event: SSEEvent) -> bytes:
        return self.restore(event.raw, event.data, event.event, self.transformer.holding)

    def restore(self, raw: bytes, data: bytes | None, name: bytes | None, holding: bool) -> bytes:
        """One event (its raw bytes, data and name) as the client gets it; ``holding``: is text held back."""
        if data is None:
            return raw
        if data == b"[DONE]":
            return self.leftovers() + raw
        if not holding and b"<" not in data and all(e not in data for e in _ESCAPED_LT):
            return raw
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return raw
        if not isinstance(parsed, dict):
            return raw
        try:
            out = self.transformer.transform(name, parsed)
        except (TypeError, AttributeError, KeyError, ValueError):
            return raw  # an event of a shape we do not understand: relayed as it came (fail open)
        if len(out) == 1:
            return encode_event(orjson.dumps(out[0][1]), out[0][0])
        return b"".join(encode_event(orjson.dumps(d), n) for n, d in out)

    def leftovers(self) -> bytes:
        return b"".join(encode_event(orjson.dumps(d), name) for name, d in self.transformer.finish())


def _next_marker(block: bytes, pos: int, escaped: bool) -> int:
    """The offset of the first ``<`` (or, when the block has any, ``\\u003c``) at or after ``pos``; -1 if none."""
    found = block.find(b"<", pos)
    if escaped:
        for marker in _ESCAPED_LT:
            at = block.find(marker, pos)
            if at >= 0 and (found < 0 or at < found):
                found = at
    return found


class _AnswerCollector:
    """Gathers each choice's text as the upstream streamed it, for ``Redactor.remember_answers``.

    It reads the events after they were written to the client: it adds nothing to their latency. Only
    events with a ``"content"`` in their bytes are parsed.
    """

    def __init__(self, pieces_of: Callable[[dict[str, Any]], list[tuple[int, str]]]) -> None:
        self.pieces_of = pieces_of
        self.pieces: dict[int, list[str]] = {}

    def add(self, block: bytes) -> None:
        if b'"content"' not in block:
            return
        loads, pieces_of, collected = orjson.loads, self.pieces_of, self.pieces
        for piece in block.split(b"\n\n"):
            if b'"content"' not in piece:
                continue
            if piece[:6] == b"data: " and b"\n" not in piece:  # the usual event: one data line
                data = piece[6:]
            else:
                parsed_data = data_of(piece)
                if parsed_data is None or b'"content"' not in parsed_data:
                    continue
                data = parsed_data
            try:
                parsed = loads(data)
                pieces = pieces_of(parsed) if isinstance(parsed, dict) else []
            except (orjson.JSONDecodeError, TypeError, AttributeError, KeyError, ValueError):
                continue
            for index, text in pieces:
                found = collected.get(index)
                if found is None:
                    collected[index] = [text]
                else:
                    found.append(text)

    def texts(self) -> list[str]:
        return ["".join(self.pieces[i]) for i in sorted(self.pieces)]


_USAGE = (b'"usage":{', b'"usage": {')


def _note_usage(block: bytes, exchange: Exchange) -> None:
    """Token usage from the events that carry it; parses only those.

    OpenAI chat: the last chunk (``stream_options.include_usage``); Responses: ``response.completed``;
    Anthropic: ``message_start`` (input) and ``message_delta`` (output).
    """
    if all(marker not in block for marker in _USAGE):
        return
    for piece in block.split(b"\n\n"):
        if all(marker not in piece for marker in _USAGE):
            continue
        data = data_of(piece)
        if data is None or all(marker not in data for marker in _USAGE):
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


class StreamRelay:
    """What the relay does to the bytes, without the sockets: ``feed()`` per upstream read, then ``flush()``.

    ``feed(chunk)`` returns the bytes for the client now; ``collect()`` then hands the events of that
    read to the answer collector (after they were written); ``flush()`` returns the last bytes when the
    upstream ended; ``close()`` counts the placeholders restored, whatever happened.
    """

    def __init__(self, exchange: Exchange, table: Mapping[str, str], api: WireApi, *, collect: bool = False) -> None:
        self.exchange = exchange
        self.restorer = _EventRestorer(api.stream_restorer(table)) if table and api.restores else None
        self.collector = _AnswerCollector(api.answer_pieces) if collect and api.answer_pieces is not None else None
        self.decoder = SSEDecoder()
        self._block = b""
        self._closed = False

    def feed(self, chunk: bytes) -> bytes:
        try:
            block = self._block = self.decoder.feed_block(chunk)
        except ValueError as exc:
            raise UpstreamError(
                "An event from the upstream is larger than the gateway accepts.", reason="too_large"
            ) from exc
        if block:
            _note_usage(block, self.exchange)
        if self.restorer is None:
            return chunk
        return self.restorer.block(block) if block else b""

    def collect(self) -> None:
        if self.collector is not None and self._block:
            self.collector.add(self._block)
        self._block = b""

    def flush(self) -> bytes:
        block = self.decoder.flush_block()
        _note_usage(block, self.exchange)
        if self.collector is not None:
            self.collector.add(block)
            self.exchange.answer_texts = self.collector.texts()
        if self.restorer is None:
            return b""
        return (self.restorer.block(block) if block else b"") + self.restorer.leftovers()

    def close(self) -> None:
        if self.restorer is not None and not self._closed:
            self._closed = True
            transformer = self.restorer.transformer
            transformer.finish()  # counts what restorers still open (a broken stream) restored so far
            self.exchange.placeholders_restored += transformer.restored
            self.exchange.placeholders_unresolved += transformer.unresolved


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
    relay = StreamRelay(exchange, table, api, collect=collect)
    capture = exchange.capture
    try:
        async for chunk in reply.chunks():
            if capture.keeps_anything:
                capture.add("response_upstream", chunk)
            out = relay.feed(chunk)
            if out:
                if exchange.first_token_seconds is None:
                    exchange.first_token_seconds = exchange.elapsed()
                if capture.keeps_original:
                    capture.add("response_client", out)
                await response.write(out)
            relay.collect()
        tail = relay.flush()
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
        relay.close()
    await response.write_eof()
    exchange.finish(reply.status)
    return response
