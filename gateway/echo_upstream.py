"""A tiny local OpenAI-compatible upstream that echoes the last user message: the built-in demo upstream.

It lets a newcomer run the gateway with no key and no network, and shows exactly what a provider
would receive. It answers ``/v1/chat/completions`` (whole or streamed in small pieces) and
``/v1/models``, and keeps the last few requests it received in memory (never on disk) for the demo.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import orjson
from aiohttp import web

RECEIVED = web.AppKey("received", deque)


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _chunks(text: str, sizes: tuple[int, ...] = (1, 3, 2, 4)) -> list[str]:
    out, i, k = [], 0, 0
    while i < len(text):
        size = sizes[k % len(sizes)]
        out.append(text[i : i + size])
        i += size
        k += 1
    return out


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json(loads=orjson.loads)
    request.app[RECEIVED].append(body)
    text = "You said: " + _last_user_text(body)
    created = int(time.time())
    model = body.get("model", "echo")
    if not body.get("stream"):
        return web.json_response(
            {
                "id": "chatcmpl-echo",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": len(text.split()),
                    "completion_tokens": len(text.split()),
                    "total_tokens": 0,
                },
            },
            dumps=lambda o: orjson.dumps(o).decode(),
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    base = {"id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": created, "model": model}
    first = {
        **base,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
    }
    await response.write(b"data: " + orjson.dumps(first) + b"\n\n")
    for piece in _chunks(text):
        chunk = {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await asyncio.sleep(0)
    last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    await response.write(b"data: " + orjson.dumps(last) + b"\n\ndata: [DONE]\n\n")
    await response.write_eof()
    return response


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "echo", "object": "model", "owned_by": "pii-gateway"}]})


def create_echo_app() -> web.Application:
    app = web.Application()
    app[RECEIVED] = deque(maxlen=16)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    return app


async def start_echo_upstream(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start the echo upstream; returns its runner and its base URL (``http://127.0.0.1:PORT/v1``)."""
    app = create_echo_app()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, f"http://{host}:{bound_port(runner)}/v1"


def bound_port(runner: web.AppRunner) -> int:
    """The port a runner's first site listens on (useful with port 0)."""
    address = runner.addresses[0]
    return int(address[1])
