"""Soak: many concurrent clients -> the real gateway (``python -m gateway serve``) -> the fault upstream.

    python -m bench.soak                      # 20,000 requests at concurrency 64
    python -m bench.soak --quick              # 500 requests: a smoke run
    python -m bench.soak --requests 5000 --concurrency 32 --json soak.json

It starts ``bench/fault_upstream.py`` and the gateway as subprocesses on 127.0.0.1 (two-second upstream
timeouts, two detector workers, a fresh data dir, a gateway key, an upstream key, log output to a file
in the work dir), sends a seeded mix of plain, streamed and tool-call requests whose prompts are full of
Faker personal data, then stops both and reports. Everything is bounded: the number of requests, each
request's time (``--timeout``, client side), and the whole run (``--max-seconds``).

Each answer is put in one bucket: ``ok`` (the echo, restored exactly to the prompt), ``failed_clean``
(an error in the API's JSON shape, or a stream that ends with one SSE error event), ``relayed_malformed``
(the upstream's own broken answer, passed on as the gateway's fail-open rule says), ``hung`` (the
client's timeout fired) or ``unclean`` (anything else: a reset, a truncated stream, a non-JSON 500).

Gates, each reported; the exit status is 1 when one fails:
- ``hung`` and ``unclean`` are 0;
- one transcript row per request sent;
- no request the gateway refused reached the upstream; no gateway key reached the upstream;
- no labelled value the gateway replaced in a request also reached the upstream in that same request
  (such *partial leaks* are written in full to ``partial_leaks.jsonl`` in the work dir);
- no labelled value and no key appears in the gateway's log; every log line is JSON; every exchange
  line has a request_id;
- the gateway's RSS (main process) grows less than 10% from after warm-up to the end (runs of 5,000
  requests or more; the detector cache is sized to be full by then).

Values the detector never saw are reported by entity type but are no gate: they measure the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from faker import Faker

from gateway.keys import KeyRing
from gateway.sse import SSEDecoder

ROOT = Path(__file__).resolve().parent.parent
#: Error codes the gateway itself answers with before forwarding: such a request must not reach the upstream.
REFUSALS = frozenset(
    {
        "invalid_api_key", "pii_detection_failed", "pii_detection_timeout", "pii_blocked", "invalid_json",
        "invalid_request", "payload_too_large", "transcripts_unavailable", "unscannable_content",
        "policy_not_allowed", "forbidden", "gateway_overloaded",
    }
)  # fmt: skip
#: Log lines that concern the process, not a request: they need no request_id.
LIFECYCLE = ("listening", "detector ready", "DEV MODE", "shutting down", "stopped", "policies reloaded")
KINDS = {"plain": 0.40, "stream": 0.34, "tools": 0.12, "tools_stream": 0.12, "bad_key": 0.02}
TOOLS = [{"type": "function", "function": {"name": "echo", "parameters": {"type": "object"}}}]
TEMPLATES = (
    "Hi, I'm {name}. Please email me at {email} or call {phone}. Thanks, {name}.",
    "Customer {name} ({email}) says the card {card} was charged twice. Reply to {email} today.",
    "Server {ip} logged a login by {name}; the IBAN on file is {iban}. Ask {name} to confirm.",
    "Ship the order for {name} to {street}, and text {phone} when it leaves. Address again: {street}.",
    "Draft a note to {name} and {name2}: the meeting moved to Friday. Copy {email2} and {email}.",
    "Refund {card} for {name}; the confirmation goes to {email} and to {phone}.",
    "Summarise: {name} called from {phone} about invoice 4471, then wrote from {email} (IP {ip}).",
)


@dataclass(frozen=True)
class Person:
    name: str
    email: str
    phone: str
    card: str
    ip: str
    iban: str
    street: str


LABELS = {"name": "PERSON", "email": "EMAIL_ADDRESS", "phone": "PHONE_NUMBER", "card": "CREDIT_CARD",
          "ip": "IP_ADDRESS", "iban": "IBAN_CODE", "street": "LOCATION"}  # fmt: skip


def people(seed: int, count: int) -> list[Person]:
    fake = Faker("en_US")
    fake.seed_instance(seed)
    cards = ("visa16", "mastercard", "amex", "discover")
    return [
        Person(
            name=f"{fake.first_name()} {fake.last_name()}",
            email=fake.email(),
            phone=fake.phone_number(),
            card=fake.credit_card_number(card_type=cards[i % len(cards)]),
            ip=fake.ipv4_public(),
            iban=fake.iban(),
            street=fake.street_address(),
        )
        for i in range(count)
    ]


@dataclass(frozen=True)
class Prompt:
    text: str
    #: (entity type, value, occurrences in the text)
    values: tuple[tuple[str, str, int], ...]


def make_prompt(rng: random.Random, pool: Sequence[Person]) -> Prompt:
    template = rng.choice(TEMPLATES)
    first, second = rng.sample(list(pool), 2)
    fields: dict[str, str] = {k: getattr(first, k) for k in LABELS}
    fields |= {f"{k}2": getattr(second, k) for k in LABELS}
    text = template.format(**fields)
    values: dict[str, tuple[str, str, int]] = {}
    for slot, value in fields.items():
        if "{" + slot + "}" in template:
            values[value] = (LABELS[slot.rstrip("2")], value, text.count(value))
    return Prompt(text, tuple(values.values()))


def json_inner(value: str) -> str:
    """``value`` as it appears inside a JSON string the gateway wrote (orjson: non-ASCII as is)."""
    return json.dumps(value, ensure_ascii=False)[1:-1]


# --- one request -----------------------------------------------------------------------------------


@dataclass
class Result:
    soak_id: str
    kind: str
    category: str
    detail: str
    status: int | None = None
    fault: str | None = None


def _error_code(body: Any) -> str | None:
    """The code of an error in the API's shape, or None if ``body`` is not one."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        if isinstance(error.get("message"), str) and isinstance(error.get("type"), str):
            return str(error.get("code") or error.get("type"))
    return None


def _answer_text(message: Any, tools: bool) -> str | None:
    try:
        if tools:
            text = json.loads(message["tool_calls"][0]["function"]["arguments"])["text"]
        else:
            text = message["content"]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return text if isinstance(text, str) else None


def classify(kind: str, prompt: str, status: int, headers: Any, raw: bytes) -> tuple[str, str]:
    tools = kind.startswith("tools")
    fault = headers.get("X-Fault", "")
    malformed = fault.startswith("bad_")
    if status >= 400:
        try:
            code = _error_code(json.loads(raw))
        except ValueError:
            code = None
        return ("failed_clean", code) if code is not None else ("unclean", f"{status} not in the API's error shape")
    if headers.get("Content-Type", "").startswith("text/event-stream"):
        decoder = SSEDecoder()
        events = decoder.feed(raw) + decoder.flush()
        text, done, error = [], False, None
        for event in events:
            if event.data is None:
                continue
            if event.is_done:
                done = True
                continue
            try:
                chunk = json.loads(event.data)
            except ValueError:
                continue
            if not isinstance(chunk, dict):
                continue
            if _error_code(chunk) is not None:
                error = _error_code(chunk)
                continue
            choices = chunk.get("choices")
            # A malformed upstream chunk is relayed as it came: any shape can turn up here.
            for choice in choices if isinstance(choices, list) else []:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if not isinstance(delta, dict):
                    continue
                if tools:
                    calls = delta.get("tool_calls")
                    for call in calls if isinstance(calls, list) else []:
                        function = call.get("function") if isinstance(call, dict) else None
                        arguments = function.get("arguments") if isinstance(function, dict) else None
                        text.append(arguments if isinstance(arguments, str) else "")
                else:
                    content = delta.get("content")
                    text.append(content if isinstance(content, str) else "")
        if error is not None:
            return "failed_clean", f"sse:{error}"
        joined = "".join(text)
        got = _answer_text({"tool_calls": [{"function": {"arguments": joined}}]}, True) if tools else joined
        if got == prompt and (done or fault == "bad_sse:no_done") and kind.endswith("stream"):
            return "ok", fault or "echo"
        if malformed:
            return "relayed_malformed", fault
        return "unclean", f"stream: done={done} restored={got == prompt} fault={fault or '-'}"
    try:
        answer = json.loads(raw)
        got = _answer_text(answer["choices"][0]["message"], tools)
    except (ValueError, KeyError, IndexError, TypeError):
        got = None
    if got == prompt and not kind.endswith("stream"):
        return "ok", fault or "echo"
    if malformed:
        return "relayed_malformed", fault
    return "unclean", f"200 answer not restored to the prompt (fault={fault or '-'})"


def request_body(kind: str, prompt: str, rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-soak", "messages": [{"role": "user", "content": prompt}]}
    if kind.endswith("stream"):
        body["stream"] = True
        if rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
    if kind.startswith("tools"):
        body["tools"] = TOOLS
    return body


async def send_one(
    session: aiohttp.ClientSession, url: str, key: str, soak_id: str, kind: str, prompt: Prompt,
    rng: random.Random, limit: float,
) -> Result:  # fmt: skip
    headers = {"Authorization": f"Bearer {key}", "X-Soak-Id": soak_id}
    body = request_body(kind, prompt.text, rng)
    try:
        async with asyncio.timeout(limit):
            async with session.post(url, json=body, headers=headers) as response:
                raw = await response.read()
                category, detail = classify(kind, prompt.text, response.status, response.headers, raw)
                fault = response.headers.get("X-Fault")
                return Result(soak_id, kind, category, detail, response.status, fault)
    except TimeoutError:
        return Result(soak_id, kind, "hung", f"no complete answer within {limit:g} s")
    except aiohttp.ClientError as exc:
        return Result(soak_id, kind, "unclean", type(exc).__name__)


# --- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    try:
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return children + [d for c in children for d in descendants(c)]


@dataclass
class Memory:
    main_kib: int
    workers_kib: int

    @classmethod
    def of(cls, pid: int) -> Memory:
        return cls(rss_kib(pid), sum(rss_kib(c) for c in descendants(pid)))


def stop_process(process: subprocess.Popen[bytes], wait: float) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


@dataclass
class Run:
    workdir: Path
    gateway_key: str
    upstream_key: str
    bad_keys: list[str] = field(default_factory=list)


def start_upstream(run: Run, seed: int, log: TextIO) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.fault_upstream", "--port", "0", "--seed", str(seed), "--stall-seconds", "3.5"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        stop_process(process, 5)
        raise SystemExit("soak: the fault upstream did not start (see fault_upstream.log)")
    url: str = json.loads(line)["url"]
    return process, url


def start_gateway(run: Run, upstream_url: str, port: int, log_level: str, log: TextIO) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PII_GATEWAY_")}
    env |= {
        "PII_GATEWAY_UPSTREAM": upstream_url,
        "PII_GATEWAY_UPSTREAM_API_KEY": run.upstream_key,
        "PII_GATEWAY_DATA_DIR": str(run.workdir / "data"),
        "PII_GATEWAY_TIMEOUTS__CONNECT_SECONDS": "2",
        "PII_GATEWAY_TIMEOUTS__FIRST_BYTE_SECONDS": "2",
        "PII_GATEWAY_TIMEOUTS__STREAM_IDLE_SECONDS": "2",
        "PII_GATEWAY_DETECTOR__WORKERS": "2",
        # Small, so the cache is full before the warm-up RSS sample and its growth is not mistaken for a leak.
        "PII_GATEWAY_DETECTOR__CACHE_ENTRIES": "1000",
        "PII_GATEWAY_SHUTDOWN_GRACE_SECONDS": "10",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--log-level", log_level],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


async def wait_ready(base: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"soak: the gateway exited with {process.returncode} (see gateway.log)")
            try:
                async with session.get(base + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.5)
    raise SystemExit(f"soak: the gateway was not ready within {seconds:g} s")


# --- the run ---------------------------------------------------------------------------------------


@dataclass
class Options:
    requests: int
    concurrency: int
    seed: int
    timeout: float
    max_seconds: float
    log_level: str
    workdir: Path | None


async def drive(
    opts: Options, run: Run, base: str, gateway: subprocess.Popen[bytes]
) -> tuple[list[Result], dict[str, Prompt], list[tuple[int, Memory]], float]:
    rng = random.Random(opts.seed)
    pool = people(opts.seed, 300)
    plan = []
    for i in range(opts.requests):
        kind = rng.choices(list(KINDS), list(KINDS.values()))[0]
        plan.append((f"s{i}", kind, make_prompt(rng, pool), random.Random(rng.random())))
    prompts = {sid: prompt for sid, _, prompt, _ in plan}
    results: list[Result] = []
    memory: list[tuple[int, Memory]] = []
    warmup = max(50, opts.requests // 10)
    step = max(1, opts.requests // 10)
    deadline = time.monotonic() + opts.max_seconds
    started = time.monotonic()
    url = base + "/v1/chat/completions"
    queue = iter(plan)

    connector = aiohttp.TCPConnector(limit=opts.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for sid, kind, prompt, req_rng in queue:
                if time.monotonic() > deadline:
                    return
                key = run.gateway_key
                if kind == "bad_key":
                    key = run.gateway_key[:-6] + "AAAAAA"
                    run.bad_keys.append(key)
                results.append(await send_one(session, url, key, sid, kind, prompt, req_rng, opts.timeout))
                done = len(results)
                if done == warmup:
                    memory.insert(0, (done, Memory.of(gateway.pid)))
                if done % step == 0:
                    memory.append((done, Memory.of(gateway.pid)))
                    rate = done / (time.monotonic() - started)
                    bad = sum(r.category in ("hung", "unclean") for r in results)
                    print(f"soak: {done}/{opts.requests} ({rate:.0f}/s, {bad} hung/unclean)", file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(opts.concurrency)))
    memory.append((len(results), Memory.of(gateway.pid)))
    return results, prompts, memory, time.monotonic() - started


async def fetch_received(upstream_url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(upstream_url.removesuffix("/v1") + "/_fault/received") as r:
            raw = await r.read()
    return [json.loads(line) for line in raw.splitlines() if line]


def transcript_rows(data_dir: Path) -> tuple[int, Counter[str], int]:
    db = data_dir / "transcripts.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        total = conn.execute("SELECT count(*) FROM transcripts").fetchone()[0]
        outcomes = Counter(dict(conn.execute("SELECT outcome, count(*) FROM transcripts GROUP BY outcome").fetchall()))
    conn.close()
    spooled = len(list((data_dir / "spool").glob("*.spool"))) if (data_dir / "spool").is_dir() else 0
    return total, outcomes, spooled


def analyse_leaks(
    prompts: dict[str, Prompt], received: list[dict[str, Any]], results: list[Result], run: Run
) -> dict[str, Any]:
    by_id = {r.soak_id: r for r in results}
    partial: list[dict[str, str]] = []
    misses: Counter[str] = Counter()
    labelled: Counter[str] = Counter()
    detected_values: set[str] = set()
    missed_values: set[str] = set()
    refused_forwarded = 0
    key_upstream = 0
    wrong_auth = 0
    for record in received:
        sid = record["id"]
        headers = record["headers"]
        if any("pgw_" in v for v in headers.values()):
            key_upstream += 1
        if headers.get("Authorization") != f"Bearer {run.upstream_key}":
            wrong_auth += 1
        result = by_id.get(sid)
        if result is not None and result.category == "failed_clean" and result.detail in REFUSALS:
            refused_forwarded += 1
        prompt = prompts.get(sid)
        if prompt is None:
            continue
        body = record["body"]
        for entity, value, count in prompt.values:
            labelled[entity] += 1
            seen = body.count(json_inner(value))
            if seen == 0:
                detected_values.add(value)
            elif seen >= count:
                misses[entity] += 1
                missed_values.add(value)
            else:
                partial.append({"id": sid, "entity": entity, "value": value, "prompt": prompt.text, "upstream": body})
    return {
        "labelled_values_forwarded": dict(labelled),
        "partial_leaks": len(partial),
        "partial_leak_examples": [f"{p['id']}:{p['entity']}" for p in partial[:10]],
        "partial_leak_records": partial,
        "detection_misses_by_type": dict(misses),
        "values_detected_in_one_request_missed_in_another": len(detected_values & missed_values),
        "refused_but_forwarded": refused_forwarded,
        "gateway_key_seen_upstream": key_upstream,
        "upstream_auth_not_the_upstream_key": wrong_auth,
    }


def analyse_log(log_path: Path, prompts: dict[str, Prompt], run: Run) -> dict[str, Any]:
    text = log_path.read_text(encoding="utf-8", errors="replace")
    values = {v for p in prompts.values() for _, v, _ in p.values}
    leaked = sorted(v for v in values if v in text or json_inner(v) in text)
    secrets = [run.gateway_key, run.gateway_key.rsplit("_", 1)[1], run.upstream_key, *set(run.bad_keys)]
    keys_leaked = sum(1 for s in secrets if s in text)
    not_json = 0
    exchanges = 0
    no_request_id = 0
    other = 0
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            not_json += 1
            continue
        if not isinstance(entry, dict):
            not_json += 1
            continue
        if entry.get("message") == "exchange":
            exchanges += 1
        elif not str(entry.get("message", "")).startswith(LIFECYCLE):
            other += 1
        if not str(entry.get("message", "")).startswith(LIFECYCLE) and "request_id" not in entry:
            no_request_id += 1
    return {
        "lines": len(text.splitlines()),
        "values_in_log": len(leaked),
        "value_examples": [v[:3] + "…" for v in leaked[:5]],
        "keys_in_log": keys_leaked,
        "non_json_lines": not_json,
        "exchange_lines": exchanges,
        "other_lines": other,
        "request_lines_without_request_id": no_request_id,
    }


def report(summary: dict[str, Any]) -> list[str]:
    """The gates that failed."""
    failed = []
    counts = summary["results"]
    if counts.get("hung", 0) or counts.get("unclean", 0):
        failed.append("hung/unclean answers")
    if summary["transcripts"]["rows"] != summary["sent"]:
        failed.append("transcript rows != requests sent")
    leaks = summary["leaks"]
    for gate in ("partial_leaks", "refused_but_forwarded", "gateway_key_seen_upstream",
                 "upstream_auth_not_the_upstream_key"):  # fmt: skip
        if leaks[gate]:
            failed.append(gate)
    log = summary["log"]
    for gate in ("values_in_log", "keys_in_log", "non_json_lines", "request_lines_without_request_id"):
        if log[gate]:
            failed.append(f"log: {gate}")
    rss = summary["rss"]
    if rss["gated"] and rss["main_growth_pct"] >= 10:
        failed.append("RSS growth >= 10%")
    return failed


async def soak(opts: Options) -> dict[str, Any]:
    """Run the soak; the summary, with ``failed_gates`` empty when every gate passed."""
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="pii-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    ring, key = KeyRing({}).create(tenant="soak", policy=None, description="soak")
    ring.save(data_dir / "keys.yaml")
    run = Run(workdir, key, "sk-soak-upstream-" + os.urandom(12).hex())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    print(f"soak: work dir {workdir}", file=sys.stderr)
    with (workdir / "fault_upstream.log").open("w") as up_log, (workdir / "gateway.log").open("w") as gw_log:
        upstream, upstream_url = start_upstream(run, opts.seed, up_log)
        gateway = start_gateway(run, upstream_url, port, opts.log_level, gw_log)
        try:
            await wait_ready(base, gateway, 300)
            results, prompts, memory, seconds = await drive(opts, run, base, gateway)
            received = await fetch_received(upstream_url)
        finally:
            gateway_rc = stop_process(gateway, 60)
            stop_process(upstream, 10)

    categories = Counter(r.category for r in results)
    by_fault: dict[str, Counter[str]] = defaultdict(Counter)
    fault_of = {r["id"]: r["fault"] for r in received}
    for r in results:
        by_fault[fault_of.get(r.soak_id, "not_forwarded")][r.category] += 1
    unclean = Counter(r.detail for r in results if r.category in ("hung", "unclean"))
    clean_codes = Counter(r.detail for r in results if r.category == "failed_clean")
    rows, outcomes, spooled = transcript_rows(data_dir)
    warm, end = memory[0][1], memory[-1][1]
    growth = 100.0 * (end.main_kib - warm.main_kib) / max(warm.main_kib, 1)
    summary: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "requests": opts.requests,
        "concurrency": opts.concurrency,
        "seconds": round(seconds, 1),
        "rate_per_second": round(len(results) / max(seconds, 1e-9), 1),
        "sent": len(results),
        "kinds": dict(Counter(r.kind for r in results)),
        "results": dict(categories),
        "by_fault": {k: dict(v) for k, v in sorted(by_fault.items())},
        "failed_clean_codes": dict(clean_codes.most_common()),
        "hung_or_unclean_details": dict(unclean.most_common(20)),
        "gateway_exit_code": gateway_rc,
        "transcripts": {"rows": rows, "by_outcome": dict(outcomes), "spool_files": spooled},
        "upstream_received": len(received),
        "upstream_distinct_requests": len(fault_of),
        "upstream_retried_requests": sum(1 for n in Counter(r["id"] for r in received).values() if n > 1),
        "leaks": analyse_leaks(prompts, received, results, run),
        "log": analyse_log(workdir / "gateway.log", prompts, run),
        "rss": {
            "warmup_after": memory[0][0],
            "main_warm_mib": round(warm.main_kib / 1024, 1),
            "main_end_mib": round(end.main_kib / 1024, 1),
            "main_growth_pct": round(growth, 2),
            "workers_warm_mib": round(warm.workers_kib / 1024, 1),
            "workers_end_mib": round(end.workers_kib / 1024, 1),
            "samples_mib": [(n, round(m.main_kib / 1024, 1)) for n, m in memory],
            "gated": opts.requests >= 5000,
        },
        "workdir": str(workdir),
    }
    # Synthetic values only: kept next to the run so a partial leak can be read in full.
    records = summary["leaks"].pop("partial_leak_records")
    with (workdir / "partial_leaks.jsonl").open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    summary["failed_gates"] = report(summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="500 requests: a smoke run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0, help="client-side limit for one request, seconds")
    parser.add_argument("--max-seconds", type=float, default=3 * 3600, help="stop sending after this long")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    opts = Options(
        requests=500 if args.quick else args.requests, concurrency=args.concurrency, seed=args.seed,
        timeout=args.timeout, max_seconds=args.max_seconds, log_level=args.log_level, workdir=args.workdir,
    )  # fmt: skip
    summary = asyncio.run(soak(opts))
    text = json.dumps(summary, indent=2, ensure_ascii=False)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 1 if summary["failed_gates"] else 0


if __name__ == "__main__":
    sys.exit(main())
