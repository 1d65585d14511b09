"""The transcripts and master-key commands as an operator runs them: subprocesses over a data dir that a
real gateway run filled (create_app + the real detector + the fake upstream, driven by the openai SDK).

Each CLI run imports the whole gateway (Presidio included: several seconds), so independent read-only
commands run concurrently, in rounds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.crypto import key_id_of, load_key_provider
from gateway.detector import PresidioDetector
from gateway.envelope import DataKeys
from gateway.exchange import Exchange
from gateway.keys import KeyRing
from gateway.metrics import Metrics
from gateway.settings import Settings, TranscriptSettings, bundled_policies_dir
from gateway.spool import Spool
from gateway.store.sqlite import SqliteStore
from gateway.transcripts import TranscriptReader, TranscriptRecorder
from tests.fake_upstream import FakeUpstream

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]

#: The test process's environment without any gateway setting, so only what a test passes applies.
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PII_GATEWAY_")}
NAME = "Maria Gonzalez"
PROMPT = f"Hi, I'm {NAME} (maria.gonzalez@example.com). Please summarise my last invoice."
OLD_ROWS = 520  # more than one export page (500), so keyset pagination is crossed
OLD_AGE = 40 * 86400


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def ok(self) -> Run:
        assert self.returncode == 0, f"{self.args}: exit {self.returncode}\n{self.stderr[-3000:]}"
        return self

    def listed_ids(self) -> list[str]:
        """The id column of ``transcripts list`` (after the header line)."""
        return [line.split()[0] for line in self.stdout.splitlines()[1:] if line.strip()]

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


async def cli(*args: str, env: Mapping[str, str] | None = None, seconds: float = 120) -> Run:
    """``python -m gateway <args>`` with only the given gateway settings in its environment."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**BASE_ENV, **(env or {})},
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise
    assert proc.returncode is not None
    return Run(tuple(args), proc.returncode, out.decode(), err.decode())


async def cli_all(*commands: Sequence[str], env: Mapping[str, str] | None = None) -> list[Run]:
    return list(await asyncio.gather(*(cli(*c, env=env) for c in commands)))


def keep_originals_policies(folder: Path) -> Path:
    """The shipped policies plus ``keep``: the default policy but ``transcript: original``."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in bundled_policies_dir().glob("*.yaml"):
        (folder / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    default = (bundled_policies_dir() / "default.yaml").read_text(encoding="utf-8")
    keep = default.replace("name: default", "name: keep").replace("transcript: redacted", "transcript: original")
    assert "transcript: original" in keep
    (folder / "keep.yaml").write_text(keep, encoding="utf-8")
    return folder


@dataclass
class Traffic:
    """Request ids the client saw (X-Request-Id), by what they should match in the store."""

    by_tenant: dict[str, list[str]] = field(default_factory=dict)
    by_model: dict[str, list[str]] = field(default_factory=dict)
    by_status: dict[int, list[str]] = field(default_factory=dict)
    streamed: list[str] = field(default_factory=list)

    def add(self, request_id: str, tenant: str, model: str, status: int, stream: bool = False) -> None:
        self.by_tenant.setdefault(tenant, []).append(request_id)
        self.by_model.setdefault(model, []).append(request_id)
        self.by_status.setdefault(status, []).append(request_id)
        if stream:
            self.streamed.append(request_id)

    @property
    def ids(self) -> set[str]:
        return {i for ids in self.by_tenant.values() for i in ids}


async def chat(base_url: str, api_key: str, model: str, *, stream: bool = False, text: str = PROMPT) -> tuple[str, int]:
    """One chat request through the SDK; (request id, status)."""
    messages: Any = [{"role": "user", "content": text}]
    async with openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0) as client:
        try:
            raw = await client.chat.completions.with_raw_response.create(model=model, messages=messages, stream=stream)
        except openai.APIStatusError as exc:
            return exc.response.headers["x-request-id"], exc.status_code
        reply = raw.parse()
        if isinstance(reply, openai.AsyncStream):
            async for _ in reply:
                pass
        else:
            assert reply.choices[0].message.content == text  # the echo came back restored
        return raw.headers["x-request-id"], raw.status_code


def gateway_settings(upstream: str, data_dir: Path, policies: Path) -> Settings:
    return Settings(
        upstream=upstream, data_dir=data_dir, policies_dir=policies,
        detector={"workers": 0}, transcripts={"retention_days": 0},  # type: ignore[arg-type]
    )  # fmt: skip


async def run_gateway(
    settings: Settings,
    detector: PresidioDetector,
    aiohttp_server: ServerFactory,
    requests: Callable[[str], Awaitable[None]],
) -> None:
    """Start the real gateway, run ``requests(base_url)``, then close it (which drains the recorder)."""
    server = await aiohttp_server(create_app(settings, detector=detector))
    try:
        await requests(str(server.make_url("/v1")))
    finally:
        await server.close()


async def record_old(data_dir: Path, count: int, tenant: str = "acme") -> list[str]:
    """Backdated transcripts, written the way the gateway writes them (TranscriptRecorder, dev key).

    Three rows share each timestamp, so export's keyset pagination must break ties by id.
    """
    provider, _ = load_key_provider(None, None, data_dir, production=False)
    store = SqliteStore(data_dir / "transcripts.db")
    settings = TranscriptSettings(retention_days=0)
    recorder = TranscriptRecorder(
        store, DataKeys(store, provider), Spool(data_dir / "spool", provider), settings, Metrics()
    )
    await recorder.start()
    base = time.time() - OLD_AGE
    ids = []
    for i in range(count):
        ex = Exchange(
            route="chat.completions", request_id=f"req_old_{i:05d}", tenant=tenant, started_wall=base - i // 3
        )
        ex.status, ex.model, ex.policy, ex.duration_seconds = 200, "gpt-old", "default", 0.01
        ex.capture.keep = "redacted"
        ex.capture.request_upstream = f"old request {i} from <PERSON_1>".encode()
        ex.capture.add("response_upstream", b"old answer")
        recorder.record(ex)
        ids.append(ex.request_id)
    await recorder.close()
    return ids


@pytest.fixture
def policies_dir(tmp_path: Path) -> Path:
    return keep_originals_policies(tmp_path / "policies")


def make_keys(data_dir: Path, tenants: Mapping[str, str | None]) -> dict[str, str]:
    """Gateway API keys in the data dir's key file: tenant -> key (bound to the given policy)."""
    ring = KeyRing.load(data_dir / "keys.yaml")
    keys = {}
    for tenant, policy in tenants.items():
        ring, keys[tenant] = ring.create(tenant, policy)
    ring.save(data_dir / "keys.yaml")
    return keys


async def test_list_show_export_purge_and_forget(
    detector: PresidioDetector, aiohttp_server: ServerFactory, upstream_url: str, fake_upstream: FakeUpstream,
    tmp_path: Path, policies_dir: Path,
) -> None:  # fmt: skip
    data = tmp_path / "data"
    keys = make_keys(data, {"acme": "keep", "globex": None})
    traffic = Traffic()

    async def requests(base: str) -> None:
        for stream in (False, False, True):
            rid, status = await chat(base, keys["acme"], "gpt-a", stream=stream)
            traffic.add(rid, "acme", "gpt-a", status, stream)
        for _ in range(2):
            rid, status = await chat(base, keys["globex"], "gpt-b")
            traffic.add(rid, "globex", "gpt-b", status)
        rid, status = await chat(base, "sk-passthrough", "gpt-a")  # no gateway key: tenant "default"
        traffic.add(rid, "default", "gpt-a", status)
        fake_upstream.mode, fake_upstream.status = "status", 500
        fake_upstream.error_body = b'{"error": {"message": "boom"}}'
        rid, status = await chat(base, "sk-passthrough", "gpt-a")
        traffic.add(rid, "default", "gpt-a", status)
        fake_upstream.mode = "echo"

    await run_gateway(gateway_settings(upstream_url, data, policies_dir), detector, aiohttp_server, requests)
    assert sorted(traffic.by_status) == [200, 500]
    old = await record_old(data, OLD_ROWS)
    recent = traffic.ids
    everything = recent | set(old)
    assert NAME.encode() not in (data / "transcripts.db").read_bytes()  # the original side is sealed

    d = ["--data-dir", str(data)]
    streamed = traffic.streamed[0]
    listed, acme_recent, gpt_b, failed, shown, missing, exported, master = await cli_all(
        ["transcripts", "list", "--limit", "1000", *d],
        ["transcripts", "list", "--tenant", "acme", "--since", "1d", *d],  # each filter alone would let more by
        ["transcripts", "list", "--model", "gpt-b", *d],
        ["transcripts", "list", "--status", "500", *d],
        ["transcripts", "show", streamed, *d],
        ["transcripts", "show", "req_does_not_exist", *d],
        ["transcripts", "export", "--format", "jsonl", "--progress", *d],
        ["keys", "master", *d],
    )
    assert set(listed.ok().listed_ids()) == everything
    assert len(listed.listed_ids()) == len(everything)
    assert set(acme_recent.ok().listed_ids()) == set(traffic.by_tenant["acme"])
    assert set(gpt_b.ok().listed_ids()) == set(traffic.by_model["gpt-b"])
    assert set(failed.ok().listed_ids()) == set(traffic.by_status[500])

    record = json.loads(shown.ok().stdout)
    assert (record["id"], record["tenant"], record["policy"], record["stream"]) == (streamed, "acme", "keep", True)
    assert record["has_content"] is True
    content = record["content"]
    assert NAME in content["request_client"]["text"]  # policy keep: the original side, decrypted
    assert NAME in content["response_client"]["text"]  # the restored answer the client got
    assert NAME not in content["request_upstream"]["text"]  # what the upstream saw was redacted
    assert "<PERSON_1>" in content["request_upstream"]["text"]
    assert content["response_upstream"]["text"].endswith("data: [DONE]\n\n")
    assert missing.returncode == 1
    assert "no transcript req_does_not_exist" in missing.stderr

    lines = exported.ok().json_lines()
    assert len(lines) == len(everything)  # one JSON line per transcript, none twice across pages
    assert {line["id"] for line in lines} == everything
    assert all(isinstance(line["content"], dict) and "error" not in line["content"] for line in lines)
    assert "exported 500 transcripts (" in exported.stderr  # --progress: a progress line per page
    assert f"exported {len(everything)} transcripts; 0 could not be decrypted" in exported.stderr
    assert "(current): wraps 3 data keys" in master.ok().stdout  # acme, globex, default

    purged = (await cli("transcripts", "purge", "--older-than", "30d", *d)).ok()
    assert f"purged {OLD_ROWS} transcripts older than 30d" in purged.stdout
    keep_rows, drop_rows = await cli_all(
        ["transcripts", "forget", "--tenant", "globex", "--keep-rows", *d],
        ["transcripts", "forget", "--tenant", "default", *d],
    )
    assert "tenant globex: data key destroyed" in keep_rows.ok().stdout
    assert "0 rows deleted" in keep_rows.stdout
    assert "tenant default: data key destroyed" in drop_rows.ok().stdout
    assert f"{len(traffic.by_tenant['default'])} rows deleted" in drop_rows.stdout

    globex_id = traffic.by_tenant["globex"][0]
    after, forgotten, exported = await cli_all(
        ["transcripts", "list", *d],
        ["transcripts", "show", globex_id, *d],
        ["transcripts", "export", "--format", "jsonl", *d],
    )
    # globex's rows stay (--keep-rows) but are unreadable; default's rows are gone.
    assert set(after.ok().listed_ids()) == set(traffic.by_tenant["acme"]) | set(traffic.by_tenant["globex"])
    assert forgotten.returncode == 1
    assert f"{globex_id}: cannot decrypt" in forgotten.stderr
    assert "destroyed" in forgotten.stderr
    assert exported.returncode == 1  # an export with undecryptable records says so in its exit code
    errors = {line["id"]: line["content"] for line in exported.json_lines() if "error" in line["content"]}
    assert set(errors) == set(traffic.by_tenant["globex"])
    assert all("destroyed" in e["error"] for e in errors.values())
    assert f"; {len(errors)} could not be decrypted" in exported.stderr


async def test_rotate_generate_puts_a_new_key_first_and_everything_stays_readable(
    detector: PresidioDetector, aiohttp_server: ServerFactory, upstream_url: str, tmp_path: Path, policies_dir: Path
) -> None:
    data = tmp_path / "data"
    keys = make_keys(data, {"acme": "keep", "initech": "keep"})
    settings = gateway_settings(upstream_url, data, policies_dir)
    before: list[str] = []
    after: dict[str, str] = {}

    async def first_run(base: str) -> None:
        before.append((await chat(base, keys["acme"], "gpt-a"))[0])

    await run_gateway(settings, detector, aiohttp_server, first_run)
    key_file = data / "master.key"
    old_text = key_file.read_text()
    old_key = base64.b64decode(old_text.strip())
    d = ["--data-dir", str(data)]

    rotated = (await cli("keys", "rotate", "--generate", *d)).ok()
    lines = key_file.read_text().splitlines()
    assert len(lines) == 2
    assert lines[1] == old_text.strip()  # the old key is kept, second
    new_key = base64.b64decode(lines[0])
    new_id, old_id = key_id_of(new_key), key_id_of(old_key)
    assert f"new master key {new_id} written first in {key_file}" in rotated.stdout
    assert f"re-wrapped 1 data keys under {new_id} (0 already were)" in rotated.stdout
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"

    async def second_run(base: str) -> None:  # the gateway restarted: it reads the new key list
        after["acme"] = (await chat(base, keys["acme"], "gpt-a", stream=True))[0]
        after["initech"] = (await chat(base, keys["initech"], "gpt-a"))[0]  # a tenant created after rotation

    await run_gateway(settings, detector, aiohttp_server, second_run)
    only_new = {"PII_GATEWAY_MASTER_KEY": base64.b64encode(new_key).decode()}
    only_old = {"PII_GATEWAY_MASTER_KEY": old_text.strip()}
    master, with_file, retired_old, old_only, env_generate = await asyncio.gather(
        cli("keys", "master", *d),
        cli("transcripts", "export", "--format", "jsonl", *d),  # the key file: new, old
        cli("transcripts", "export", "--format", "jsonl", *d, env=only_new),  # the old key retired
        cli("transcripts", "show", before[0], *d, env=only_old),  # the old key alone no longer unwraps
        cli("keys", "rotate", "--generate", *d, env=only_new),
    )
    assert f"{new_id} (current): wraps 2 data keys" in master.ok().stdout
    assert f"{old_id}: wraps 0 data keys" in master.stdout
    for exported in (with_file, retired_old):
        lines_out = exported.ok().json_lines()
        assert {line["id"] for line in lines_out} == {before[0], *after.values()}  # old and new records
        assert all(NAME in line["content"]["request_client"]["text"] for line in lines_out)
        assert "0 could not be decrypted" in exported.stderr
    assert old_only.returncode == 1
    assert f"master key {new_id} is not available" in old_only.stderr
    assert env_generate.returncode == 2
    assert "PII_GATEWAY_MASTER_KEY" in env_generate.stderr


async def test_forget_while_the_gateway_runs_leaves_later_transcripts_readable(
    detector: PresidioDetector, aiohttp_server: ServerFactory, upstream_url: str, tmp_path: Path, policies_dir: Path
) -> None:
    from gateway import cli_transcripts as cli_commands  # the command's own code, in this process: one CLI start saved

    data = tmp_path / "data"
    keys = make_keys(data, {"acme": "keep"})
    settings = gateway_settings(upstream_url, data, policies_dir)
    later: list[str] = []

    async def requests(base: str) -> None:
        await chat(base, keys["acme"], "gpt-a")  # acme's data key is created and cached
        assert await cli_commands.transcripts_forget(settings, "acme", keep_rows=False) == 0
        later.append((await chat(base, keys["acme"], "gpt-a"))[0])  # new traffic after the forget

    await run_gateway(settings, detector, aiohttp_server, requests)
    provider, _ = load_key_provider(None, None, data, production=False)
    store = SqliteStore(data / "transcripts.db")
    await store.open()
    try:
        row = await store.get(later[0])
        assert row is not None
        content = await TranscriptReader(DataKeys(store, provider)).content(row)
        assert content is not None
    finally:
        await store.close()
