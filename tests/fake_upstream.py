"""A fake OpenAI server for the tests: records every request it gets and echoes the prompt back.

Echo rules (so a test can check that the answer comes back byte-identical to what the client sent):
- the answer's content is the last user message's text, unchanged;
- with ``tools`` in the request, the answer is one tool call whose ``arguments`` are
  ``{"text": <that text>}``;
- with ``n`` > 1, every choice carries the same echo;
- streamed answers are cut into events of 1 to 4 characters (seeded, so a failure replays).

``mode`` switches the behaviour for failure tests: ``status`` (answer ``status``/``error_body``),
``hang`` (never answer), ``break`` (cut the stream after a few events), ``slow_stream`` (sleep between
events, recording whether the gateway closed the connection).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def cut(text: str, rng: random.Random, low: int = 1, high: int = 4) -> list[str]:
    pieces = []
    i = 0
    while i < len(text):
        size = rng.randint(low, high)
        pieces.append(text[i : i + size])
        i += size
    return pieces


@dataclass
class FakeUpstream:
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    mode: str = "echo"
    status: int = 200
    error_body: bytes = b""
    seed: int = 7
    stream_closed_early: asyncio.Event = field(default_factory=asyncio.Event)
    extra_fields: dict[str, Any] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json(loads=orjson.loads)
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.mode == "status":
            return web.Response(status=self.status, body=self.error_body, content_type="application/json")
        if self.mode == "hang":
            await asyncio.sleep(3600)
        text = last_user_text(body)
        n = int(body.get("n") or 1)
        tools = bool(body.get("tools"))
        if body.get("stream"):
            return await self._stream(request, body, text, n, tools)
        choices = []
        for i in range(n):
            message: dict[str, Any] = {"role": "assistant", "content": None if tools else text}
            if tools:
                args = orjson.dumps({"text": text}).decode()
                message["tool_calls"] = [
                    {"id": f"call_{i}", "type": "function", "function": {"name": "echo", "arguments": args}}
                ]
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if tools else "stop",
                }
            )
        answer = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "system_fingerprint": "fp_fake",
            "choices": choices,
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            **self.extra_fields,
        }
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def _stream(
        self, request: web.Request, body: dict[str, Any], text: str, n: int, tools: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        rng = random.Random(self.seed)
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "system_fingerprint": "fp_fake",
            **self.extra_fields,
        }

        async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            await response.write(b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n")

        try:
            for i in range(n):
                first: dict[str, Any] = {"role": "assistant", "content": "" if not tools else None}
                if tools:
                    first["tool_calls"] = [
                        {
                            "index": 0,
                            "id": f"call_{i}",
                            "type": "function",
                            "function": {"name": "echo", "arguments": ""},
                        }
                    ]
                await send([{"index": i, "delta": first, "finish_reason": None}])
            payload = orjson.dumps({"text": text}).decode() if tools else text
            sent = 0
            for piece in cut(payload, rng):
                for i in range(n):
                    if tools:
                        delta: dict[str, Any] = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                    else:
                        delta = {"content": piece}
                    await send([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
                sent += 1
                if self.mode == "break" and sent >= 3:
                    raise ConnectionResetError  # the handler dies; aiohttp drops the connection
                if self.mode == "slow_stream":
                    await asyncio.sleep(0.05)
            for i in range(n):
                await send([{"index": i, "delta": {}, "finish_reason": "tool_calls" if tools else "stop"}])
            if (body.get("stream_options") or {}).get("include_usage"):
                await send([], usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.stream_closed_early.set()
            raise
        return response
