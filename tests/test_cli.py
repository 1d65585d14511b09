"""The command line as a user runs it: serve (both entry points), demo, and start-up failures."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.fake_upstream import FakeUpstream

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 90) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(int(seconds * 10)):
            if proc.poll() is not None:
                raise AssertionError(f"gateway exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                async with session.get(url + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("gateway never became ready")


@pytest.mark.parametrize("entry", [[str(BIN / "pii-gateway")], [sys.executable, "-m", "gateway"]])
async def test_serve_proxies_and_stops_cleanly_on_sigterm(
    entry: list[str], upstream_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    port = free_port()
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [*entry, "serve", "--upstream", upstream_url, "--port", str(port), "--data-dir", str(data), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("PII_GATEWAY_")},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url, proc)
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-x", max_retries=0) as client:
            reply = await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "Hi, I am Maria Gonzalez, write to maria.g@example.com."}],
            )
        assert reply.choices[0].message.content == "Hi, I am Maria Gonzalez, write to maria.g@example.com."
        assert "Maria Gonzalez" not in str(fake_upstream.requests[-1])
        assert data.is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"Maria" not in err  # logs carry no values
    assert b'"message":"stopped"' in err


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PII_GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
        check=False,
    )


def test_missing_spacy_model_stops_start_up_naming_what_to_install(tmp_path: Path) -> None:
    result = run_cli("serve", "--nlp-model", "en_core_web_lg", "--data-dir", str(tmp_path), "--port", "0")
    assert result.returncode == 2
    assert "en_core_web_lg" in result.stderr
    assert "will not be downloaded" in result.stderr
    assert "en-core-web-lg" in result.stderr


def test_bad_setting_stops_start_up_naming_it() -> None:
    result = run_cli("serve", "--port", "99999")
    assert result.returncode == 2
    assert "setting 'port'" in result.stderr


def test_demo_shows_the_three_views_offline() -> None:
    result = run_cli("demo", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "The upstream (the AI provider) received" in out
    upstream_view = out.split("== 2.")[1].split("== 3.")[0]
    assert "John Smith" not in upstream_view
    assert "<PERSON_" in upstream_view
    client_view = out.split("== 3.")[1]
    assert "John Smith" in client_view


def test_policy_check_passes_shipped_policies_and_fails_a_broken_example(tmp_path: Path) -> None:
    from gateway.settings import bundled_policies_dir

    shipped = sorted(str(p) for p in bundled_policies_dir().glob("*.yaml"))
    ok = run_cli("policy", "check", *shipped)
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "name: broken\nentities:\n  PERSON: pseudonymize\n"
        "examples:\n  - {text: 'Say hi to John Smith.', kept: ['John Smith']}\n"
    )
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: typo\nentities:\n  PERSON: pseudonymise\n")
    bad = run_cli("policy", "check", str(broken), str(typo))
    assert bad.returncode == 1
    assert "broken.yaml: examples[0]: 'John Smith' would not reach the upstream unchanged" in bad.stderr
    assert "typo.yaml:3: entities.PERSON.action" in bad.stderr


def test_policy_explain_shows_scores_recognizers_and_decisions() -> None:
    result = run_cli("policy", "explain", "--policy", "default", "Email Maria Gonzalez at maria@example.com")
    assert result.returncode == 0, result.stderr
    assert "PERSON" in result.stdout
    assert "SpacyRecognizer" in result.stdout
    assert "-> pseudonymize" in result.stdout
    result_line = result.stdout.split("result: ")[1]
    assert "<PERSON_1>" in result_line
    assert "<EMAIL_ADDRESS_1>" in result_line
    assert "Gonzalez" not in result_line


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    created = run_cli("keys", "create", "--tenant", "sales", "--policy", "strict", *data)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("pgw_")
    assert key not in (tmp_path / "keys.yaml").read_text()
    listed = run_cli("keys", "list", *data)
    key_id = key.split("_")[1]
    assert key_id in listed.stdout
    assert "active" in listed.stdout
    assert key not in listed.stdout
    assert run_cli("keys", "revoke", key_id, *data).returncode == 0
    assert "revoked" in run_cli("keys", "list", *data).stdout
    assert run_cli("keys", "create", "--tenant", "x", "--policy", "nope", *data).returncode == 2


async def test_sighup_reloads_policies(upstream_url: str, tmp_path: Path) -> None:
    from gateway.settings import bundled_policies_dir

    folder = tmp_path / "policies"
    folder.mkdir()
    for p in bundled_policies_dir().glob("*.yaml"):
        (folder / p.name).write_text(p.read_text())
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--upstream", upstream_url, "--port", str(port),
         "--data-dir", str(tmp_path / "d"), "--workers", "0", "--policies-dir", str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PII_GATEWAY_")},
             "PII_GATEWAY_RELOAD_INTERVAL_SECONDS": "0"},
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url, proc)
        (folder / "extra.yaml").write_text("name: extra\nentities:\n  PERSON: redact\n")
        proc.send_signal(signal.SIGHUP)
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                async with session.get(url + "/readyz") as r:
                    if "extra" in (await r.json())["policies"]:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("SIGHUP did not reload the policies")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_a_broken_policy_or_missing_key_file_stops_start_up_with_the_reason(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "default.yaml").write_text("name: default\nentities:\n  PERSON: pseudonymise\n")
    broken = run_cli("serve", "--policies-dir", str(folder), "--data-dir", str(tmp_path / "d"), "--port", "0")
    assert broken.returncode == 2
    assert "default.yaml:3: entities.PERSON.action" in broken.stderr
    assert "Traceback" not in broken.stderr
    missing = run_cli(
        "serve", "--master-key-file", str(tmp_path / "nope.key"), "--data-dir", str(tmp_path / "d"), "--port", "0"
    )
    assert missing.returncode == 2
    assert "nope.key cannot be read" in missing.stderr
    assert "Traceback" not in missing.stderr
