"""The transcripts and master-key commands as an operator runs them: subprocesses over a data dir that a
real gateway run filled (create_app + the real detector + the fake upstream, driven by the openai SDK).

Each CLI run costs about 2 s of imports, so independent read-only commands run concurrently, in rounds.
The forget procedure (master-key retirement, a backup made before it) runs the command's own code in
this process.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
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

from gateway import cli_transcripts
from gateway.app import create_app
from gateway.crypto import CryptoError, KeyProvider, LocalKeyProvider, key_id_of, load_key_provider
from gateway.detector import PresidioDetector
from gateway.envelope import DataKeys
from gateway.exchange import Exchange
from gateway.keys import KeyRing
from gateway.metrics import Metrics
from gateway.settings import Secret, Settings, TranscriptSettings, bundled_policies_dir
from gateway.spool import Spool
from gateway.store import Query, TranscriptRow
from gateway.store.sqlite import SqliteStore
from gateway.transcripts import Draft, TranscriptReader, TranscriptRecorder
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


async def record_old(
    data_dir: Path,
    count: int,
    tenant: str = "acme",
    *,
    prefix: str = "req_old",
    age: float = OLD_AGE,
    provider: KeyProvider | None = None,
) -> list[str]:
    """Backdated transcripts, written the way the gateway writes them (TranscriptRecorder, dev key).

    Three rows share each timestamp, so export's keyset pagination must break ties by id.
    """
    if provider is None:
        provider, _ = load_key_provider(None, None, data_dir, production=False)
    store = SqliteStore(data_dir / "transcripts.db")
    settings = TranscriptSettings(retention_days=0)
    recorder = TranscriptRecorder(
        store, DataKeys(store, provider), Spool(data_dir / "spool", provider), settings, Metrics()
    )
    await recorder.start()
    base = time.time() - age
    ids = []
    for i in range(count):
        ex = Exchange(
            route="chat.completions", request_id=f"{prefix}_{i:05d}", tenant=tenant, started_wall=base - i // 3
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
    # --progress off a terminal: plain lines with the total (from a count query), percentage, rate and ETA.
    assert re.search(rf"exported \d+/{len(everything)} transcripts \(\d+%, \d+/s, ETA \d:\d\d:\d\d\)", exported.stderr)
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
    # Both rotated the dev key file (one after the other, under its lock): one key is left, and it reads.
    assert len((data / "master.key").read_text().split()) == 1
    assert "is now the only key in" in keep_rows.stdout and "DEV MODE" in keep_rows.stdout

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


async def _contents(store_path: Path, provider: KeyProvider) -> dict[str, object]:
    """Each row's decrypted content, or the CryptoError it raised."""
    store = SqliteStore(store_path, create=False)
    await store.open()
    try:
        reader = TranscriptReader(DataKeys(store, provider))
        found: dict[str, object] = {}
        for row in await store.query(Query(limit=1000)):
            try:
                found[row.id] = await reader.content(row)
            except CryptoError as exc:
                found[row.id] = exc
        return found
    finally:
        await store.close()


def _draft(rid: str, tenant: str) -> bytes:
    row = TranscriptRow(id=rid, created=time.time(), tenant=tenant, route="chat.completions", status=200, outcome="ok")
    return Draft(row, {"request_upstream": {"text": "hello", "bytes": 5, "truncated": False}}).to_bytes()


async def test_forget_retires_the_master_key_so_a_backup_made_before_no_longer_decrypts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    acme = await record_old(data, 3, "acme", prefix="req_acme", age=60)
    globex = await record_old(data, 2, "globex", prefix="req_globex", age=60)
    provider, _ = load_key_provider(None, None, data, production=False)
    Spool(data / "spool", provider).append([_draft("req_spooled_acme", "acme"), _draft("req_spooled_globex", "globex")])
    old_key = base64.b64decode((data / "master.key").read_text().strip())

    backup = tmp_path / "backup"  # a copy of the store file, as a backup would take it (closed: no WAL left)
    backup.mkdir()
    shutil.copy2(data / "transcripts.db", backup / "transcripts.db")
    assert not (data / "transcripts.db-wal").exists() or (data / "transcripts.db-wal").stat().st_size == 0
    before = await _contents(backup / "transcripts.db", LocalKeyProvider([old_key]))
    assert set(before) == {*acme, *globex} and all(isinstance(c, dict) for c in before.values())  # control

    settings = Settings(data_dir=data)
    assert await cli_transcripts.transcripts_forget(settings, "acme", keep_rows=False, grace_seconds=0) == 0

    now, _ = load_key_provider(None, None, data, production=False, generate=False)
    assert now.key_ids() == [now.current_id] != [key_id_of(old_key)]  # the old version is out of the file
    # The backup, with every key the operator still has: nothing in it decrypts, for any tenant.
    after = await _contents(backup / "transcripts.db", now)
    assert set(after) == {*acme, *globex}
    assert all(isinstance(c, CryptoError) and "not available" in str(c) for c in after.values()), after
    # The live store: acme is gone, globex reads under the new master key alone.
    live = await _contents(
        data / "transcripts.db", LocalKeyProvider([base64.b64decode((data / "master.key").read_text())])
    )
    assert set(live) == set(globex) and all(isinstance(c, dict) for c in live.values())
    # The spool: acme's spooled transcript dropped, globex's kept and readable under the new key.
    spool = Spool(data / "spool", now)
    assert spool.key_master_id == now.current_id
    assert [Draft.from_bytes(p).row.id for f in spool.files() for p in spool.read(f)] == ["req_spooled_globex"]


async def test_forget_with_keys_from_the_environment_says_backups_are_not_shredded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    key = b"\x07" * 32
    env_provider = LocalKeyProvider([key])
    await record_old(data, 2, "acme", prefix="req_acme", age=60, provider=env_provider)
    shutil.copy2(data / "transcripts.db", tmp_path / "backup.db")
    settings = Settings(data_dir=data, master_key=Secret(base64.b64encode(key).decode()))
    code = await cli_transcripts.transcripts_forget(settings, "acme", keep_rows=False, grace_seconds=0)
    out = capsys.readouterr()
    assert code == cli_transcripts.BACKUPS_NOT_SHREDDED == 3
    assert "tenant acme: data key destroyed" in out.out
    assert "backups made before now still decrypt" in out.err and key_id_of(key) in out.err
    assert "keys rotate" in out.err and "can no longer be decrypted" not in out.out + out.err
    # And that is the truth: the backup still decrypts with the key the environment holds.
    still = await _contents(tmp_path / "backup.db", env_provider)
    assert still and all(isinstance(c, dict) for c in still.values())


async def test_read_commands_never_create_a_key_or_a_store(tmp_path: Path) -> None:
    typo = tmp_path / "typo"
    keyed = tmp_path / "keyed"  # a master key but no store yet
    load_key_provider(None, None, keyed, production=False)
    runs = await cli_all(
        ["transcripts", "list", "--data-dir", str(typo)],
        ["transcripts", "show", "req_x", "--data-dir", str(typo)],
        ["transcripts", "export", "--data-dir", str(typo)],
        ["transcripts", "show", "req_x", "--data-dir", str(keyed)],
        ["keys", "master", "--data-dir", str(typo)],
    )
    for run in runs:
        assert run.returncode == 2, run
        assert "Traceback" not in run.stderr
    assert "no transcript store at" in runs[0].stderr
    assert "no master key" in runs[1].stderr and "never creates a key" in runs[1].stderr
    assert "no master key" in runs[2].stderr
    assert "no transcript store at" in runs[3].stderr
    assert not typo.exists()
    assert sorted(p.name for p in keyed.iterdir()) == ["master.key"]


def test_export_progress_bar_on_a_terminal() -> None:
    out = io.StringIO()
    progress = cli_transcripts.ExportProgress(1000, out, tty=True, lines=False)
    progress.started -= 10  # 250 rows in 10 s: 25/s, 750 left, 30 s
    progress.update(250)
    progress.finish(250, 0)
    text = out.getvalue()
    assert "\r[#######-----------------------]  25.0% 250/1000 25/s ETA 0:00:30" in text
    assert text.endswith("exported 250 transcripts; 0 could not be decrypted\n")
    plain = io.StringIO()
    quiet = cli_transcripts.ExportProgress(1000, plain, tty=False, lines=False)
    quiet.update(10)
    assert plain.getvalue() == ""  # off a terminal, only with --progress
