"""The server's lifecycle as Kubernetes drives it: SIGTERM drains in-flight streams, flushes, exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.fake_upstream import FakeUpstream
from tests.test_cli import free_port, wait_ready


async def test_sigterm_lets_an_in_flight_stream_finish_then_exits_0(
    upstream_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    fake_upstream.mode = "slow_stream"  # 50 ms between events
    text = "Please forward this to Maria Gonzalez right away, thank you."
    port = free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PII_GATEWAY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--upstream", upstream_url, "--port", str(port),
         "--data-dir", str(data), "--workers", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, proc)
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": text}]}
        async with aiohttp.ClientSession() as session:
            response = await session.post(url + "/v1/chat/completions", json=body)
            first = await response.content.readany()
            assert first
            proc.send_signal(signal.SIGTERM)
            rest = await response.read()  # the stream keeps flowing to its end
            response.release()
            stream = (first + rest).decode()
            assert "[DONE]" in stream
            assert "Maria" in stream  # restored, not cut off
            # New connections are refused once the listener is closed.
            refused = False
            for _ in range(50):
                try:
                    async with session.get(url + "/readyz") as r:
                        refused = r.status == 503
                except aiohttp.ClientConnectionError:
                    refused = True
                if refused:
                    break
                await asyncio.sleep(0.05)
            assert refused
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b'"message":"stopped"' in err
    # The transcript of the drained stream was flushed to the store before exit.
    listed = subprocess.run(
        [sys.executable, "-m", "gateway", "transcripts", "list", "--data-dir", str(data)],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    rows = [line for line in listed.stdout.splitlines() if line.startswith("req_")]
    assert len(rows) == 1
    assert " 200 " in rows[0]
