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

from bench.fault_upstream import cut


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


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
    #: Put before every chat echo, so that an answer is not the very text it echoes.
    reply_prefix: str = ""

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
        text = self.reply_prefix + last_user_text(body)
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


def last_user_text_any(body: dict[str, Any]) -> str:
    """The last user text for chat, Responses and Anthropic shaped requests."""
    value = body.get("input")
    if isinstance(value, str):
        return value
    items = value if isinstance(value, list) else body.get("messages") or []
    for item in reversed(items):
        if not isinstance(item, dict) or item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            return content
        texts = []
        for part in content or []:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                texts.append(part["text"])
            if isinstance(part, dict) and part.get("type") == "tool_result":
                inner = part.get("content")
                texts.append(inner if isinstance(inner, str) else "")
        return "".join(texts)
    return ""


@dataclass
class MultiUpstream(FakeUpstream):
    """Chat (also at Azure paths), legacy completions, embeddings, models, Responses and Anthropic Messages."""

    paths: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_recorded)
        app.router.add_post("/openai/deployments/{d}/chat/completions", self._chat_recorded)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/messages", self._messages)
        return app

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body: dict[str, Any] = await request.json(loads=orjson.loads)
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.paths.append(request.path_qs)
        return body

    async def _chat_recorded(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path_qs)
        return await self._chat(request)

    async def _models(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        return web.json_response(
            {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]}
        )

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2]} for i in range(len(inputs))]
        usage = {"prompt_tokens": 3, "total_tokens": 3}
        return web.json_response({"object": "list", "data": data, "model": body.get("model"), "usage": usage})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        text = body["prompt"] if isinstance(body["prompt"], str) else "".join(body["prompt"])
        base = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": body.get("model", "m")}
        if not body.get("stream"):
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
            return web.json_response(
                {**base, "choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in cut(text, random.Random(self.seed)):
            chunk = {**base, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        final = {**base, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]}
        await response.write(b"data: " + orjson.dumps(final) + b"\n\ndata: [DONE]\n\n")
        return response

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        text = last_user_text_any(body)
        tools = bool(body.get("tools"))
        args = orjson.dumps({"text": text}).decode()
        message = {
            "type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }  # fmt: skip
        call = {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "echo",
            "arguments": args,
            "status": "completed",
        }
        item = call if tools else message
        usage = {
            "input_tokens": 5, "output_tokens": 7, "total_tokens": 12,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0},
        }  # fmt: skip
        resp = {
            "id": "resp_1", "object": "response", "created_at": 1, "status": "completed",
            "model": body.get("model", "m"), "output": [item], "usage": usage, "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": [],
            "error": None, "incomplete_details": None, "instructions": None, "metadata": {}, "temperature": 1.0,
            "top_p": 1.0, "text": {"format": {"type": "text"}}, "truncation": "disabled",
        }  # fmt: skip
        if not body.get("stream"):
            return web.json_response(resp)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        seq = 0

        async def send(kind: str, **data: Any) -> None:
            nonlocal seq
            seq += 1
            payload = orjson.dumps({"type": kind, "sequence_number": seq, **data})
            await response.write(b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n")

        await send("response.created", response={**resp, "status": "in_progress", "output": []})
        if tools:
            await send(
                "response.output_item.added", output_index=0, item={**call, "arguments": "", "status": "in_progress"}
            )
            for piece in cut(args, random.Random(self.seed)):
                await send("response.function_call_arguments.delta", item_id="fc_1", output_index=0, delta=piece)
            await send("response.function_call_arguments.done", item_id="fc_1", output_index=0, arguments=args)
        else:
            empty = {**message, "content": [], "status": "in_progress"}
            await send("response.output_item.added", output_index=0, item=empty)
            part = {"type": "output_text", "text": "", "annotations": []}
            await send("response.content_part.added", item_id="msg_1", output_index=0, content_index=0, part=part)
            for piece in cut(text, random.Random(self.seed)):
                await send(
                    "response.output_text.delta",
                    item_id="msg_1",
                    output_index=0,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                )
            await send(
                "response.output_text.done", item_id="msg_1", output_index=0, content_index=0, text=text, logprobs=[]
            )
            done_part = {**part, "text": text}
            await send("response.content_part.done", item_id="msg_1", output_index=0, content_index=0, part=done_part)
        await send("response.output_item.done", output_index=0, item=item)
        await send("response.completed", response=resp)
        return response

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        text = last_user_text_any(body)
        tools = bool(body.get("tools"))
        block: dict[str, Any] = (
            {"type": "tool_use", "id": "toolu_1", "name": "echo", "input": {"text": text}}
            if tools
            else {"type": "text", "text": text}
        )
        message = {
            "id": "msg_1", "type": "message", "role": "assistant", "model": body.get("model", "m"), "content": [block],
            "stop_reason": "tool_use" if tools else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 7},
        }  # fmt: skip
        if not body.get("stream"):
            return web.json_response(message)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(kind: str, **data: Any) -> None:
            await response.write(
                b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"
            )

        start = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 1}}
        await send("message_start", message=start)
        if tools:
            await send("content_block_start", index=0, content_block={**block, "input": {}})
            for piece in cut(orjson.dumps({"text": text}).decode(), random.Random(self.seed)):
                await send("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": piece})
        else:
            await send("content_block_start", index=0, content_block={"type": "text", "text": ""})
            await send("ping")
            for piece in cut(text, random.Random(self.seed)):
                await send("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
        await send("content_block_stop", index=0)
        await send(
            "message_delta",
            delta={"stop_reason": message["stop_reason"], "stop_sequence": None},
            usage={"output_tokens": 7},
        )
        await send("message_stop")
        return response
