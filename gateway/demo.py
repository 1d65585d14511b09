"""`pii-gateway demo`: the gateway and the echo upstream in one process, one conversation, shown side by side.

Nothing leaves the machine and no key is needed. The example values below are invented.
"""

from __future__ import annotations

import asyncio
import shutil
import textwrap
from typing import Any

import aiohttp
from aiohttp import web

from .app import PARTS, create_app
from .echo_upstream import RECEIVED, bound_port, start_echo_upstream
from .settings import Settings

EXAMPLE = (
    "Hi, I'm Maria Gonzalez. Please draft a short reply to John Smith (john.smith@example.com, "
    "+1 415 555 0132) confirming that the refund to card 4111 1111 1111 1111 went through."
)


def _columns(titles: list[str], texts: list[str]) -> str:
    width = shutil.get_terminal_size((150, 40)).columns
    if width < 100:
        return "\n\n".join(f"== {t} ==\n{textwrap.fill(x, max(width, 40))}" for t, x in zip(titles, texts, strict=True))
    col = (width - 2 * (len(titles) - 1)) // len(titles)
    wrapped = [textwrap.wrap(x, col) or [""] for x in texts]
    height = max(len(w) for w in wrapped)
    lines = ["  ".join(t.ljust(col) for t in titles), "  ".join("-" * col for _ in titles)]
    for i in range(height):
        lines.append("  ".join((w[i] if i < len(w) else "").ljust(col) for w in wrapped).rstrip())
    return "\n".join(lines)


async def run_demo(settings: Settings) -> int:
    echo_runner, upstream_url = await start_echo_upstream()
    echo_app = echo_runner.app
    settings = settings.model_copy(
        update={
            "upstream": upstream_url,
            "detector": settings.detector.model_copy(update={"workers": 0}),
        }
    )
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = bound_port(runner)
    try:
        print("Loading the PII detector (spaCy + Presidio)...", flush=True)
        while not app[PARTS].detector.ready:  # noqa: ASYNC110 - the detector exposes a flag, not an event
            await asyncio.sleep(0.1)
        request: dict[str, Any] = {"model": "demo", "messages": [{"role": "user", "content": EXAMPLE}]}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=request) as response:
                answer = await response.json()
        received = echo_app[RECEIVED][-1]["messages"][-1]["content"]
        returned = answer["choices"][0]["message"]["content"]
        print()
        print(
            _columns(
                [
                    "1. The client sent",
                    "2. The upstream (the AI provider) received",
                    "3. The client got back",
                ],
                [EXAMPLE, received, returned],
            )
        )
        print()
        print("The provider saw only placeholders; the answer came back with the real values in place.")
        print("Run `pii-gateway serve --upstream https://api.openai.com/v1` to put it in front of a real provider.")
        return 0
    finally:
        await runner.cleanup()
        await echo_runner.cleanup()
