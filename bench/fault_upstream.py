"""An OpenAI-compatible upstream that misbehaves on purpose: the far end of the soak (bench/soak.py).

Each request gets one *fault*, drawn from ``random.Random(f"{seed}:{key}#{attempt}")`` where ``key`` is
the ``X-Soak-Id`` request header (else a counter) and ``attempt`` counts how often that key was seen, so
a run replays whatever the concurrency, and a retry by the gateway draws again (a 429 may be followed
by an answer). An ``X-Fault`` request header forces a fault on every attempt (tests use it). When
headers go out, ``X-Fault`` names the fault and its variant.

Faults:
- ``reset``: a TCP RST before the answer, or in the middle of it;
- ``stall_headers``: silence longer than the gateway's first-byte timeout, then the echo;
- ``stall_body``: part of the answer, silence longer than the gateway's idle timeout, then the rest;
- ``status_5xx`` / ``status_429``: an OpenAI-shaped error (429 with ``Retry-After``);
- ``bad_json``: 200 with truncated JSON, not JSON at all, or JSON of the wrong shape;
- ``bad_sse``: an event stream with broken framing, junk lines, no ``[DONE]`` or a huge line;
- ``bad_utf8``: invalid UTF-8 bytes inside the answer's content;
- ``slow_drip``: the echo, a few bytes at a time, each gap well inside the idle timeout.

Otherwise ``echo``: the last user message comes back as the answer, whole or streamed in small
pieces, or as one tool call with arguments ``{"text": ...}`` when the request has ``tools``.

Every request received is kept in memory; ``GET /_fault/received`` returns them as JSON lines and
``GET /_fault/stats`` the fault counts. It listens on 127.0.0.1 only.

Run: ``python -m bench.fault_upstream --port 0 --seed 1`` prints ``{"url": ...}`` on its first line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

FAULT_WEIGHTS: dict[str, float] = {
    "echo": 0.55,
    "slow_drip": 0.06,
    "reset": 0.05,
    "stall_headers": 0.04,
    "stall_body": 0.04,
    "status_5xx": 0.05,
    "status_429": 0.05,
    "bad_json": 0.05,
    "bad_sse": 0.05,
    "bad_utf8": 0.06,
}
FAULTS: tuple[str, ...] = tuple(FAULT_WEIGHTS)
#: Invalid UTF-8: a lone continuation byte, bytes never valid, a cut 3-byte sequence, an encoded surrogate.
INVALID_UTF8: tuple[bytes, ...] = (b"\x80", b"\xff\xfe", b"\xe2\x82", b"\xed\xa0\x80", b"\xc3\x28", b"\xf8\x88\x80")


@dataclass(frozen=True)
class Answer:
    """What the echo answers for one request."""

    text: str
    tools: bool
    stream: bool
    model: str
    usage: bool

    @classmethod
    def of(cls, body: dict[str, Any]) -> Answer:
        options = body.get("stream_options")
        return cls(
            text=last_user_text(body),
            tools=bool(body.get("tools")),
            stream=body.get("stream") is True,
            model=body["model"] if isinstance(body.get("model"), str) else "fault",
            usage=isinstance(options, dict) and options.get("include_usage") is True,
        )

    @property
    def payload(self) -> str:
        """The text that is streamed: the content, or the tool call's arguments."""
        return orjson.dumps({"text": self.text}).decode() if self.tools else self.text


def last_user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def completion(answer: Answer) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None if answer.tools else answer.text}
    if answer.tools:
        message["tool_calls"] = [
            {"id": "call_0", "type": "function", "function": {"name": "echo", "arguments": answer.payload}}
        ]
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if answer.tools else "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def sse(data: dict[str, Any] | bytes) -> bytes:
    return b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n"


def chunk(answer: Answer, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def piece_delta(answer: Answer, piece: str) -> dict[str, Any]:
    if answer.tools:
        return {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
    return {"content": piece}


def cut(text: str, rng: random.Random, low: int = 1, high: int = 4) -> list[str]:
    """``text`` in pieces of ``low`` to ``high`` characters (the tests' fake upstreams use this too)."""
    pieces: list[str] = []
    i = 0
    while i < len(text):
        size = rng.randint(low, high)
        pieces.append(text[i : i + size])
        i += size
    return pieces


def stream_events(answer: Answer, rng: random.Random, *, done: bool = True, finish: bool = True) -> list[bytes]:
    """The echo as SSE events: role, the payload in small pieces, finish, usage, ``[DONE]``."""
    first: dict[str, Any] = {"role": "assistant", "content": None if answer.tools else ""}
    if answer.tools:
        first["tool_calls"] = [
            {"index": 0, "id": "call_0", "type": "function", "function": {"name": "echo", "arguments": ""}}
        ]
    events = [sse(chunk(answer, first))]
    events += [sse(chunk(answer, piece_delta(answer, p))) for p in cut(answer.payload, rng, high=8)]
    if finish:
        events.append(sse(chunk(answer, {}, "tool_calls" if answer.tools else "stop")))
    if answer.usage:
        usage = {**chunk(answer, {}), "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7}}
        events.append(sse(usage))
    if done:
        events.append(b"data: [DONE]\n\n")
    return events


def group(events: Sequence[bytes], rng: random.Random) -> list[bytes]:
    """Events joined into writes of one to three, so the gateway sees varied chunking."""
    writes: list[bytes] = []
    i = 0
    while i < len(events):
        n = rng.randint(1, 3)
        writes.append(b"".join(events[i : i + n]))
        i += n
    return writes


def reset_connection(request: web.Request) -> None:
    """Abort with a TCP RST (SO_LINGER 0), not a polite FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class FaultUpstream:
    def __init__(
        self,
        seed: int = 0,
        stall_seconds: float = 3.5,
        weights: dict[str, float] | None = None,
        drip_pause: float = 0.02,
    ) -> None:
        self.seed = seed
        self.stall_seconds = stall_seconds
        #: The longest pause between two writes of a slow drip.
        self.drip_pause = drip_pause
        weights = weights or FAULT_WEIGHTS
        self._faults = [f for f in FAULTS if weights.get(f, 0) > 0]
        self._weights = [weights[f] for f in self._faults]
        self._counter = itertools.count()
        self._attempts: Counter[str] = Counter()
        self.received: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/_fault/received", self._received)
        app.router.add_get("/_fault/stats", self._stats)
        return app

    def choose(self, request: web.Request) -> tuple[str, random.Random]:
        key = request.headers.get("X-Soak-Id") or f"n{next(self._counter)}"
        attempt = self._attempts[key]
        self._attempts[key] += 1
        rng = random.Random(f"{self.seed}:{key}#{attempt}")
        forced = request.headers.get("X-Fault")
        if forced in FAULT_WEIGHTS:
            return forced, rng
        return rng.choices(self._faults, self._weights)[0], rng

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        fault, rng = self.choose(request)
        self.counts[fault] += 1
        self.received.append(
            {
                "id": request.headers.get("X-Soak-Id", ""),
                "fault": fault,
                "headers": {str(k): v for k, v in request.headers.items()},
                "body": raw.decode("utf-8", "replace"),
            }
        )
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = {}
        answer = Answer.of(body if isinstance(body, dict) else {})
        handler = getattr(self, "_" + fault)
        try:
            response: web.StreamResponse = await handler(request, answer, rng)
        except ConnectionError:
            # The gateway gave up on us (a timeout it enforces, or its client left): nothing to send.
            return web.Response()
        return response

    async def _received(self, request: web.Request) -> web.Response:
        return web.Response(body=b"".join(orjson.dumps(r) + b"\n" for r in self.received))

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"received": len(self.received), "faults": dict(self.counts)})

    # --- answers ----------------------------------------------------------------------------------

    async def _start(
        self, request: web.Request, fault: str, content_type: str, length: int | None = None, status: int = 200
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Type": content_type, "X-Fault": fault})
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        return response

    async def _echo(self, request: web.Request, answer: Answer, rng: random.Random) -> web.StreamResponse:
        if not answer.stream:
            body = orjson.dumps(completion(answer))
            return web.Response(body=body, content_type="application/json", headers={"X-Fault": "echo"})
        response = await self._start(request, "echo", "text/event-stream")
        for write in group(stream_events(answer, rng), rng):
            await response.write(write)
        return response

    async def _slow_drip(self, request: web.Request, answer: Answer, rng: random.Random) -> web.StreamResponse:
        if answer.stream:
            data = b"".join(stream_events(answer, rng))
            response = await self._start(request, "slow_drip", "text/event-stream")
        else:
            data = orjson.dumps(completion(answer))
            response = await self._start(request, "slow_drip", "application/json", len(data))
        # About 150 writes with short pauses: slow, bounded, and well inside any idle timeout.
        size = max(1, len(data) // 150)
        i = 0
        while i < len(data):
            step = rng.randint(1, 2 * size)
            await response.write(data[i : i + step])
            i += step
            await asyncio.sleep(rng.uniform(0, self.drip_pause))
        return response

    async def _reset(self, request: web.Request, answer: Answer, rng: random.Random) -> web.StreamResponse:
        if rng.random() < 0.3:
            reset_connection(request)
            return web.Response()  # aiohttp finds the transport closed and drops this quietly
        if answer.stream:
            events = stream_events(answer, rng)
            response = await self._start(request, "reset:mid_stream", "text/event-stream")
            await response.write(b"".join(events[: rng.randint(1, max(1, len(events) // 2))]))
        else:
            data = orjson.dumps(completion(answer))
            response = await self._start(request, "reset:mid_body", "application/json", len(data))
            await response.write(data[: len(data) // 2])
        await asyncio.sleep(0.05)  # let the first part leave before the RST discards the send buffer
        reset_connection(request)
        return response

    async def _stall_headers(self, request: web.Request, answer: Answer, rng: random.Random) -> web.StreamResponse:
        await asyncio.sleep(self.stall_seconds)
        return await self._echo(request, answer, rng)

    async def _stall_body(self, request: web.Request, answer: Answer, rng: random.Random) -> web.StreamResponse:
        if answer.stream:
            events = stream_events(answer, rng)
            half = max(1, len(events) // 2)
            response = await self._start(request, "stall_body", "text/event-stream")
            await response.write(b"".join(events[:half]))
            await asyncio.sleep(self.stall_seconds)
            await response.write(b"".join(events[half:]))
        else:
            data = orjson.dumps(completion(answer))
            response = await self._start(request, "stall_body", "application/json", len(data))
            await response.write(data[: len(data) // 2])
            await asyncio.sleep(self.stall_seconds)
            await response.write(data[len(data) // 2 :])
        return response

    async def _status_5xx(self, request: web.Request, answer: Answer, rng: random.Random) -> web.StreamResponse:
        status = rng.choice((500, 502, 503))
        # The message quotes the (redacted) request, as real providers sometimes do: the gateway restores it.
        error = {"message": f"The model failed on: {answer.text[:60]}", "type": "server_error", "code": None}
        return web.Response(
            status=status, body=orjson.dumps({"error": error}), content_type="application/json",
            headers={"X-Fault": f"status_5xx:{status}"},
        )  # fmt: skip

    async def _status_429(self, request: web.Request, answer: Answer, rng: random.Random) -> web.StreamResponse:
        error = {"message": "Rate limit reached; try again later.", "type": "requests", "code": "rate_limit_exceeded"}
        return web.Response(
            status=429, body=orjson.dumps({"error": error}), content_type="application/json",
            headers={"X-Fault": "status_429", "Retry-After": str(rng.randint(1, 30))},
        )  # fmt: skip

    async def _bad_json(self, request: web.Request, answer: Answer, rng: random.Random) -> web.StreamResponse:
        variant = rng.choice(("truncated", "not_json", "wrong_shape"))
        if answer.stream:
            events = stream_events(answer, rng)
            if variant == "truncated":
                events = [e[: len(e) // 2] + b"\n\n" if i % 3 == 1 else e for i, e in enumerate(events)]
            elif variant == "not_json":
                events.insert(len(events) // 2, b"data: {not json <PERSON_1>\n\n")
            else:
                # Carries a placeholder, so the gateway has to parse it.
                events.insert(len(events) // 2, sse({"id": "x", "choices": 3, "note": "<PERSON_1>"}))
            response = await self._start(request, f"bad_json:{variant}", "text/event-stream")
            for write in group(events, rng):
                await response.write(write)
            return response
        if variant == "truncated":
            data = orjson.dumps(completion(answer))
            body = data[: rng.randint(1, len(data) - 1)]
        elif variant == "not_json":
            body = b"<html><body>upstream proxy error</body></html>"
        else:
            body = orjson.dumps({**completion(answer), "choices": 1})
        return web.Response(body=body, content_type="application/json", headers={"X-Fault": f"bad_json:{variant}"})

    async def _bad_sse(self, request: web.Request, answer: Answer, rng: random.Random) -> web.StreamResponse:
        variant = rng.choice(("no_blank_lines", "cr_only", "junk_lines", "no_done", "huge_line"))
        events = stream_events(answer, rng, done=variant != "no_done", finish=variant != "no_done")
        if variant == "no_blank_lines":
            data = b"".join(e.replace(b"\n\n", b"\n") for e in events)
        elif variant == "cr_only":
            data = b"".join(events).replace(b"\n", b"\r")
        elif variant == "junk_lines":
            junk = (b": comment\n", b"retry: soon\n", b"id: \x00\n", b"data:\n", b"event:\n", b"garbage line\n", b"\n")
            data = b"".join(rng.choice(junk) + e for e in events)
        elif variant == "huge_line":
            data = b"data: " + b"x" * (256 * 1024) + b"\n" + b"".join(events)
        else:
            data = b"".join(events)
        # Sent whether or not the request asked for a stream: a confused upstream does that too.
        response = await self._start(request, f"bad_sse:{variant}", "text/event-stream")
        step = max(1, len(data) // rng.randint(1, 8))
        for i in range(0, len(data), step):
            await response.write(data[i : i + step])
        return response

    async def _bad_utf8(self, request: web.Request, answer: Answer, rng: random.Random) -> web.StreamResponse:
        junk = rng.choice(INVALID_UTF8)
        if not answer.stream:
            data = orjson.dumps(completion(answer))
            at = data.find(b'"content":') + 11 if not answer.tools else data.find(b'"arguments":"') + 13
            body = data[:at] + junk + data[at:]
            return web.Response(body=body, content_type="application/json", headers={"X-Fault": "bad_utf8"})
        events = stream_events(answer, rng)
        at = rng.randint(1, max(1, len(events) - 2))
        marker = b'"content":"' if not answer.tools else b'"arguments":"'
        event = events[at]
        if marker in event:
            i = event.index(marker) + len(marker)
            events[at] = event[:i] + junk + event[i:]
        else:
            events.insert(at, sse(b'{"choices":[{"index":0,"delta":{"content":"' + junk + b'"}}]}'))
        response = await self._start(request, "bad_utf8", "text/event-stream")
        for write in group(events, rng):
            await response.write(write)
        return response


async def serve(port: int, seed: int, stall_seconds: float, max_seconds: float) -> None:
    upstream = FaultUpstream(seed=seed, stall_seconds=stall_seconds)
    runner = web.AppRunner(upstream.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    print(json.dumps({"url": f"http://127.0.0.1:{bound}/v1"}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), max_seconds)
    except TimeoutError:
        print("fault upstream: --max-seconds reached, stopping", file=sys.stderr)
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stall-seconds", type=float, default=3.5, help="longer than the gateway's timeouts")
    parser.add_argument("--max-seconds", type=float, default=4 * 3600, help="stop by itself after this long")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.seed, args.stall_seconds, args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
