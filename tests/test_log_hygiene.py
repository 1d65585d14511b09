"""Log hygiene: a real ``python -m gateway serve --log-level debug`` subprocess serves requests of every kind.
Its whole log output is then searched for every test value and every key.

Kinds: plain, streamed, tool calls (both ways), the Responses and Anthropic formats, blocked by policy,
upstream failures (5xx, reset, first-byte timeout, idle timeout mid-stream), a wrong gateway key, a
provider key where a gateway key is required, a body that is not JSON, an unknown endpoint with personal
data in its path and query, and the admin dry run with a client key. None of the values and none of the
keys may appear in the log. Every line must be JSON, and every line about a request must carry its
request_id.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bench.fault_upstream import FaultUpstream
from gateway.keys import KeyRing
from tests.conftest import MODEL

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["Maria Gonzalez", "John Smith"]
EMAILS = ["maria.gonzalez@example.com", "john.smith@example.org"]
PHONE = "+1 415 555 0132"
CARD = "4111 1111 1111 1111"
VALUES = [*NAMES, *EMAILS, PHONE, "415 555 0132", "4155550132", CARD, CARD.replace(" ", "")]
PROMPT = (
    f"Hi, I'm {NAMES[0]} ({EMAILS[0]}). Please call {NAMES[1]} on {PHONE} or write to {EMAILS[1]}; "
    f"his card {CARD} was charged twice."
)
PROVIDER_KEY = "sk-provider-" + "Q7v9" * 8
UPSTREAM_KEY = "sk-upstream-" + "Zx31" * 8
#: Log lines about the process rather than one request.
LIFECYCLE = ("listening", "detector ready", "DEV MODE", "shutting down", "stopped", "policies reloaded")
#: Loggers whose lines, other than LIFECYCLE ones, are about a request. Libraries the detector calls
#: (tldextract's filelock, say) log from its worker, where no request context exists.
REQUEST_LOGGERS = ("gateway.", "aiohttp.")


@dataclass
class Served:
    log: str
    gateway_keys: list[str]
    wrong_key: str
    #: scenario -> (status, X-Request-Id or None)
    answers: dict[str, tuple[int, str | None]] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def scenarios(base: str, key: str, strict_key: str, wrong_key: str) -> dict[str, tuple[int, str | None]]:
    bearer = {"Authorization": f"Bearer {key}"}
    tools = [{"type": "function", "function": {"name": "echo", "parameters": {"type": "object"}}}]
    chat: dict[str, tuple[dict[str, str], Any]] = {
        "plain": (bearer, {}),
        "stream": (bearer, {"stream": True}),
        "tools": (bearer, {"tools": tools}),
        "tools_stream": (bearer, {"tools": tools, "stream": True}),
        "blocked": ({"Authorization": f"Bearer {strict_key}"}, {}),  # the strict policy refuses card numbers
        "upstream_5xx": ({**bearer, "X-Fault": "status_5xx"}, {}),
        "upstream_reset": ({**bearer, "X-Fault": "reset", "X-Soak-Id": "r2"}, {"stream": True}),
        "upstream_first_byte_timeout": ({**bearer, "X-Fault": "stall_headers"}, {}),
        "upstream_idle_timeout": ({**bearer, "X-Fault": "stall_body"}, {"stream": True}),
        "wrong_gateway_key": ({"Authorization": f"Bearer {wrong_key}"}, {}),
        "provider_key_only": ({"Authorization": f"Bearer {PROVIDER_KEY}"}, {}),
        "provider_key_with_gateway_key": ({"Authorization": f"Bearer {PROVIDER_KEY}", "X-Gateway-Key": key}, {}),
    }
    answers: dict[str, tuple[int, str | None]] = {}
    async with aiohttp.ClientSession() as session:
        for name, (headers, extra) in chat.items():
            body = {"model": "gpt-test", "messages": [{"role": "user", "content": PROMPT}], **extra}
            async with session.post(base + "/v1/chat/completions", json=body, headers=headers) as r:
                await r.read()
                answers[name] = (r.status, r.headers.get("X-Request-Id"))
        # Other wire formats: scanned and forwarded the same way (this upstream answers them 404).
        other_apis: dict[str, tuple[str, dict[str, Any]]] = {
            "responses": ("/v1/responses", {"model": "gpt-test", "input": PROMPT}),
            "anthropic_messages": (
                "/v1/messages",
                {"model": "claude-x", "max_tokens": 16, "messages": [{"role": "user", "content": PROMPT}]},
            ),
        }
        for name, (path, body) in other_apis.items():
            async with session.post(base + path, json=body, headers=bearer) as r:
                await r.read()
                answers[name] = (r.status, r.headers.get("X-Request-Id"))
        not_json = f'{{"model": "m", "messages": [{{"content": "{PROMPT}"'.encode()
        async with session.post(base + "/v1/chat/completions", data=not_json, headers=bearer) as r:
            answers["not_json"] = (r.status, r.headers.get("X-Request-Id"))
        async with session.get(f"{base}/v1/users/{EMAILS[0]}?name={NAMES[0]}&card={CARD}", headers=bearer) as r:
            answers["unknown_endpoint"] = (r.status, None)
        async with session.post(base + "/v1/gateway/explain", json={"text": PROMPT}, headers=bearer) as r:
            answers["explain_without_admin"] = (r.status, None)
    return answers


async def serve_and_drive(tmp: Path) -> Served:
    data_dir = tmp / "data"
    ring, key = KeyRing({}).create(tenant="acme", policy=None, description="log hygiene")
    ring, strict_key = ring.create(tenant="acme", policy="strict", description="log hygiene, strict")
    ring.save(data_dir / "keys.yaml")
    wrong_key = key[:-8] + "AAAAAAAA"
    upstream = FaultUpstream(seed=5, stall_seconds=2.0, weights={"echo": 1.0})
    runner = web.AppRunner(upstream.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PII_GATEWAY_")}
    env |= {
        "PII_GATEWAY_UPSTREAM": upstream_url,
        "PII_GATEWAY_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "PII_GATEWAY_DATA_DIR": str(data_dir),
        "PII_GATEWAY_NLP__MODEL": MODEL,
        "PII_GATEWAY_DETECTOR__WORKERS": "0",
        "PII_GATEWAY_TIMEOUTS__FIRST_BYTE_SECONDS": "1",
        "PII_GATEWAY_TIMEOUTS__STREAM_IDLE_SECONDS": "1",
        "PII_GATEWAY_RELOAD_INTERVAL_SECONDS": "0",
        "PII_GATEWAY_SHUTDOWN_GRACE_SECONDS": "5",
    }
    log_path = tmp / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--log-level", "debug"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_ready(base, process)
            answers = await scenarios(base, key, strict_key, wrong_key)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            await runner.cleanup()
    served = Served(log_path.read_text(encoding="utf-8", errors="replace"), [key, strict_key], wrong_key, answers)
    assert process.returncode == 0, served.log[-2000:]
    return served


async def wait_ready(base: str, process: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(240):
            assert process.poll() is None, "the gateway exited during start-up"
            try:
                async with session.get(base + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.25)
    raise AssertionError("the gateway was not ready within 60 s")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return asyncio.run(serve_and_drive(tmp_path_factory.mktemp("log-hygiene")))


def lines(served: Served) -> list[dict[str, Any]]:
    return [json.loads(line) for line in served.log.splitlines() if line.strip()]


def test_every_scenario_was_answered_as_expected(served: Served) -> None:
    """The log checks below mean something only if every path really ran."""
    status = {name: answer[0] for name, answer in served.answers.items()}
    assert status == {
        "plain": 200,
        "stream": 200,
        "tools": 200,
        "tools_stream": 200,
        "blocked": 400,
        "upstream_5xx": status["upstream_5xx"],
        "upstream_reset": status["upstream_reset"],
        "upstream_first_byte_timeout": 504,
        "upstream_idle_timeout": 200,  # the headers went out; the stream ends with an SSE error event
        "wrong_gateway_key": 401,
        "provider_key_only": 401,
        "provider_key_with_gateway_key": 200,
        "not_json": 400,
        "responses": 404,  # from the upstream, which serves chat only
        "anthropic_messages": 404,
        "unknown_endpoint": 404,
        "explain_without_admin": 403,
    }
    assert status["upstream_5xx"] in (500, 502, 503)
    assert status["upstream_reset"] in (200, 502)


def test_no_personal_value_is_logged(served: Served) -> None:
    log = served.log.lower()
    for value in VALUES:
        assert value.lower() not in log, value
        assert json.dumps(value)[1:-1].lower() not in log, value


def test_no_key_is_logged(served: Served) -> None:
    secrets = {"provider key": PROVIDER_KEY, "wrong gateway key": served.wrong_key, "upstream key": UPSTREAM_KEY}
    for i, key in enumerate(served.gateway_keys):
        secrets[f"gateway key {i}"] = key
        secrets[f"gateway key {i}, secret part"] = key.split("_", 2)[2]
    for name, secret in secrets.items():
        assert secret not in served.log, name


def test_every_line_is_json(served: Served) -> None:
    for line in served.log.splitlines():
        if line.strip():
            entry = json.loads(line)
            assert isinstance(entry, dict) and {"time", "level", "logger", "message"} <= set(entry), line


def test_every_request_line_carries_its_request_id(served: Served) -> None:
    entries = lines(served)
    for entry in entries:
        if str(entry["logger"]).startswith(REQUEST_LOGGERS) and not str(entry["message"]).startswith(LIFECYCLE):
            assert "request_id" in entry, entry
    exchanges = {e["request_id"]: e for e in entries if e["message"] == "exchange"}
    for name, (status, request_id) in served.answers.items():
        if request_id is None:
            continue
        assert request_id in exchanges, name
        assert exchanges[request_id]["status"] == status, name
