"""The performance benchmark's fake OpenAI upstream: answers at once, so that what is measured is the proxy.

    .venv/bin/python -m bench.perf_upstream --port PORT

``POST /v1/chat/completions`` (and ``/chat/completions``) answers with the last user message, prefixed
with ``Understood.``, so placeholders the gateway put in come back and must be restored:

- not streamed: one ``chat.completion`` JSON body;
- streamed: one role event, then ``max_tokens`` content events (default 300; the echo cut into that many
  small pieces, repeated if it is too short), a ``finish_reason`` event and ``[DONE]``. Nothing sleeps:
  events are written back to back, as fast as the event loop goes.

Unlike :mod:`tests.fake_upstream` it records nothing and pre-encodes what it can: it runs in its own
process and must stay the cheapest part of every measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

DEFAULT_CHUNKS = 300
_ID = b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench",'
_ROLE = b"data: " + _ID + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
_PIECE_HEAD = b"data: " + _ID + b'"choices":[{"index":0,"delta":{"content":'
_PIECE_TAIL = b'},"logprobs":null,"finish_reason":null}]}\n\n'
_STOP = b"data: " + _ID + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
_DONE = b"data: [DONE]\n\n"


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def answer_text(body: dict[str, Any]) -> str:
    return "Understood. " + last_user_text(body)


def pieces(text: str, count: int) -> list[str]:
    """``text`` cut into exactly ``count`` non-empty pieces (repeated when it is too short)."""
    if count <= 0:
        return []
    while len(text) < count:
        text = text + " " + text
    size, extra = divmod(len(text), count)
    out: list[str] = []
    i = 0
    for n in range(count):
        step = size + (1 if n < extra else 0)
        out.append(text[i : i + step])
        i += step
    return out


def completion(body: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer_text(body)},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 200, "completion_tokens": 150, "total_tokens": 350},
        }
    )


async def chat(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    if not body.get("stream"):
        return web.Response(body=completion(body), content_type="application/json")
    count = body.get("max_tokens")
    count = count if isinstance(count, int) and 0 < count <= 100_000 else DEFAULT_CHUNKS
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(_ROLE)
    for piece in pieces(answer_text(body), count):
        await response.write(_PIECE_HEAD + orjson.dumps(piece) + _PIECE_TAIL)
    await response.write(_STOP + _DONE)
    await response.write_eof()
    return response


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "bench", "object": "model", "owned_by": "bench"}]})


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.perf_upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, print=None, backlog=1024)
    return 0


if __name__ == "__main__":
    sys.exit(main())
