"""The recognizer layer (``gateway.recognizers``): hand-written real-world texts through the real engine.

The cases live in ``tests/texts/*.yaml``: each text lists the values that must be found (``hidden``)
and the strings our recognizers must not touch (``kept``). They run through a real ``AnalyzerEngine``
from ``gateway.detector.build_engine`` with the default policy's entities and thresholds, and once
through ``Redactor`` with the real ``PresidioDetector``.

"Hidden" counts every finding the policy acts on, whoever made it. "Kept" looks at this package's
recognizers only: the predefined ones are not this layer's to fix (those it supersedes, such as
Presidio's ``PhoneRecognizer`` that reads order ids as phone numbers, are for ``build_engine`` to drop),
and neither are spaCy's mistakes.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import recognizers
from gateway.detector import PresidioDetector, build_engine
from gateway.policy import Policy, PolicyBook
from gateway.recognizers import credentials
from gateway.redaction import Redactor, Slot
from tests.conftest import MODEL

TEXTS = Path(__file__).parent / "texts"
OURS = {r.name for r in recognizers.build("en", ("US",))}


@dataclass(frozen=True)
class Case:
    file: str
    name: str
    text: str
    hidden: tuple[str, ...]
    kept: tuple[str, ...]
    #: The entity type the hidden values must come out as (None: any type of the policy).
    entity: str | None

    @property
    def id(self) -> str:
        return f"{self.file}:{self.name}"


#: The entity a file's values must have unless a case says otherwise.
FILE_ENTITIES = {"secrets": "SECRET", "addresses": None, "phones": "PHONE_NUMBER", "financial": None, "names": None}


def load_cases(stem: str) -> list[Case]:
    raw = yaml.safe_load((TEXTS / f"{stem}.yaml").read_text(encoding="utf-8"))
    return [
        Case(
            stem,
            item["name"],
            item["text"],
            tuple(item.get("hidden", ())),
            tuple(item.get("kept", ())),
            item.get("entity", FILE_ENTITIES.get(stem)),
        )
        for item in raw
    ]


POSITIVE = [c for stem in ("secrets", "addresses", "phones", "financial", "names") for c in load_cases(stem)]
NEGATIVE = load_cases("negatives")


@pytest.fixture(scope="module")
def policy(policy_book: PolicyBook) -> Policy:
    return policy_book.get("default")


@pytest.fixture(scope="module")
def engine(policy: Policy) -> Any:
    return build_engine(MODEL, "en", tuple(sorted(policy.regions)))


def findings(engine: Any, policy: Policy, text: str) -> list[Any]:
    """What the policy would act on: findings of its entities at or above its thresholds."""
    results = engine.analyze(text=text, language="en", entities=sorted(policy.entities), score_threshold=0.0)
    return [r for r in results if r.score >= policy.threshold(r.entity_type)]


def recognizer_of(result: Any) -> str:
    return str((result.recognition_metadata or {}).get("recognizer_name", ""))


def occurrences(text: str, value: str) -> Iterator[tuple[int, int]]:
    assert value in text, f"test data: {value!r} is not in the text"
    for m in re.finditer(re.escape(value), text):
        yield m.start(), m.end()


@pytest.mark.parametrize("case", POSITIVE, ids=lambda c: c.id)
def test_hidden_values_are_found(engine: Any, policy: Policy, case: Case) -> None:
    found = findings(engine, policy, case.text)
    for value in case.hidden:
        for start, end in occurrences(case.text, value):
            covering = [r for r in found if r.start < end and start < r.end]
            covered = set().union(*(range(r.start, r.end) for r in covering))
            assert set(range(start, end)) <= covered, f"{value!r} not (fully) found: {_show(case.text, found)}"
            if case.entity is not None:
                # As Redactor resolves overlaps: the strongest action, then the score, then the length.
                best = max(
                    covering, key=lambda r: (policy.entities[r.entity_type].action.strength, r.score, r.end - r.start)
                )
                assert best.entity_type == case.entity, f"{value!r}: {_show(case.text, covering)}"


@pytest.mark.parametrize("case", POSITIVE + NEGATIVE, ids=lambda c: c.id)
def test_kept_strings_are_not_touched(engine: Any, policy: Policy, case: Case) -> None:
    found = [r for r in findings(engine, policy, case.text) if recognizer_of(r) in OURS]
    for value in case.kept:
        for start, end in occurrences(case.text, value):
            touching = [r for r in found if r.start < end and start < r.end]
            assert not touching, f"{value!r} was flagged: {_show(case.text, touching)}"


def _show(text: str, results: list[Any]) -> str:
    return "; ".join(f"{r.entity_type} {text[r.start : r.end]!r} {r.score:.2f} {recognizer_of(r)}" for r in results)


def test_every_rule_reports_itself_in_the_explanation(engine: Any, policy: Policy) -> None:
    text = "export GH_TOKEN=ghp_4fRt8Yu1Io5Pl9Kj3Hg7Fd2Sa6Qw0Er4Ty8U and ship to 12 Oak Street, Austin, TX 78701"
    results = engine.analyze(
        text=text, language="en", entities=["SECRET", "STREET_ADDRESS"], return_decision_process=True
    )
    explained = {
        (r.entity_type, r.analysis_explanation.recognizer, r.analysis_explanation.pattern_name) for r in results
    }
    assert ("SECRET", "VendorTokenRecognizer", "github_token") in explained
    assert ("STREET_ADDRESS", "StreetAddressRecognizer", "street_number_first") in explained


def test_entity_types_are_declared_for_policies() -> None:
    assert {"SECRET", "STREET_ADDRESS"} <= recognizers.ENTITY_TYPES
    produced = {e for r in recognizers.build("en", ("US", "GB")) for e in r.supported_entities}
    assert produced <= recognizers.ENTITY_TYPES | {"PERSON", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE"}


def test_nhs_recognizer_is_superseded_only_outside_gb() -> None:
    assert "NhsRecognizer" in recognizers.superseded(("US", "DE"))
    assert "NhsRecognizer" not in recognizers.superseded(("US", "GB"))
    assert "PhoneRecognizer" in recognizers.superseded(())


def test_superseded_recognizers_are_what_flags_ids(policy: Policy) -> None:
    # What build_engine gains by dropping the superseded recognizers: ids stay ids.
    regions = tuple(sorted(policy.regions))
    engine = build_engine(MODEL, "en", regions)
    text = "Order #4155550132 shipped; invoice INV-2024-000123 paid."
    before = {recognizer_of(r) for r in findings(engine, policy, text) if r.entity_type == "PHONE_NUMBER"}
    if any(r.name == "PhoneRecognizer" for r in engine.registry.recognizers):  # until build_engine drops it
        assert before == {"PhoneRecognizer"}
    for name in recognizers.superseded(regions):
        engine.registry.remove_recognizer(name)
    assert not [r for r in findings(engine, policy, text) if r.entity_type == "PHONE_NUMBER"]


def test_phone_regions_follow_the_policy(engine: Any) -> None:
    only_us = build_engine(MODEL, "en", ("US",))
    text = "Ruf mich an: 030 901820."  # a Berlin number, national format
    theirs = [
        r
        for r in only_us.analyze(text=text, language="en", entities=["PHONE_NUMBER"])
        if recognizer_of(r) == "RegionalPhoneRecognizer"
    ]
    ours = [
        r
        for r in engine.analyze(text=text, language="en", entities=["PHONE_NUMBER"])
        if recognizer_of(r) == "RegionalPhoneRecognizer"
    ]
    assert not theirs
    assert [text[r.start : r.end] for r in ours] == ["030 901820"]


@pytest.mark.parametrize(
    ("identifier", "kind"),
    [
        ("DB_PASSWORD", "password"),
        ("dbPassword", "password"),
        ("PGPASSWORD", "password"),
        ("--password", "password"),
        ("AWS_SECRET_ACCESS_KEY", "token"),
        ("apiKey", "token"),
        ("x-api-key", "token"),
        ("client_secret", "token"),
        ("GITHUB_TOKEN", "token"),
        ("password_file", None),
        ("max_tokens", None),
        ("tokenizer", None),
        ("primary_key", None),
        ("secret_name", None),
        ("bypass", None),
    ],
)
def test_credential_names(identifier: str, kind: str | None) -> None:
    assert credentials.secret_kind(identifier) == kind


@pytest.mark.parametrize(
    ("value", "random"),
    [
        ("Zq8vT3kLm0Pw9xYb2Rn5Hc7Jd4Fs6Ga1Eu0Io3Kl", True),
        ("5f2b9c8e1d7a4f3b6c0e9d8a7b2c1f4e", True),
        ("ExtraordinaryCircumstances2024", False),
        ("user_profile_settings_v2", False),
        ("my-service-account-2024", False),
        ("123e4567-e89b-12d3-a456-426614174000", False),
        ("aaaaaaaaaaaaaaaaaaaaaaaaaaaa1", False),
        ("/usr/local/lib/python3.11/site-packages", False),
    ],
)
def test_random_tokens_are_told_from_identifiers(value: str, random: bool) -> None:
    assert credentials.looks_random(value) is random


async def test_redactor_hides_found_values_everywhere_and_never_restores_secrets(
    detector: PresidioDetector, policy: Policy
) -> None:
    first = textwrap.dedent(
        """\
        Hi priya, my colleague Wanjiru Kamau set up the staging box.
        Ship the key fob to 4821 Oakwood Ave Apt 3B, Columbus, OH 43214 or call +44 20 7946 0958.
        DATABASE_URL=postgresql://billing:Wint3r!sComing@db-primary.internal:5432/billing
        """
    )
    second = "Can Wanjiru Kamau rotate Wint3r!sComing today? Wanjiru said priya knows where 4821 Oakwood Ave Apt 3B is."
    out: dict[str, str] = {}
    slots = [
        Slot(first, "user", lambda t: out.__setitem__("first", t)),
        Slot(second, "user", lambda t: out.__setitem__("second", t)),
    ]
    redactions = await Redactor(detector, b"k" * 32).redact(slots, policy)

    sent = out["first"] + "\n" + out["second"]
    for value in ("priya", "Wanjiru", "Kamau", "Oakwood", "43214", "7946 0958", "Wint3r!sComing"):
        assert value not in sent, value
    for value in ("staging box", "db-primary.internal", "rotate", "knows where"):
        assert value in sent, value
    # The password is replaced by the same placeholder in both messages, and that one is never restored.
    secret = [p for p in re.findall(r"<SECRET_\d+>", sent)]
    assert len(secret) == 2 and len(set(secret)) == 1
    assert secret[0] not in redactions.restorable
    assert "Wint3r!sComing" not in redactions.restorable.values()
    # Names and addresses are restorable placeholders.
    assert any(v == "Wanjiru Kamau" for v in redactions.restorable.values())
    assert any(v.startswith("4821 Oakwood Ave") for v in redactions.restorable.values())


# --- hostile input ---------------------------------------------------------------------------------------

MEGABYTE = 1_000_000
ADVERSARIAL: dict[str, str] = {
    "letters": "a",
    "digits": "1",
    "at signs": "@",
    "equals": "=",
    "spaces": " ",
    "newlines": "\n",
    "spaced digits": "1 ",
    "title words": "Aa ",
    "password assignments": "password=",
    "yaml passwords": "password: ",
    "pem headers": "-----BEGIN PRIVATE KEY-----\n",
    "jwt heads": "eyJhbGciOi.",
    "url credentials": "https://a:",
    "street starts": "123 Main ",
    "greetings": "Hi John ",
    "phone pieces": "+1 (415) 555-",
    "card groups": "4111 ",
    "iban groups": "DE89 ",
    "token prefixes": "ghp_sk-xoxb-",
    "german streets": "Hauptstraße ",
    "french streets": "12 rue de la ",
    "italian streets": "Via Roma ",
    "address lines": "12 Main St, Springfield,\n",
    "quotes and escapes": '"a\\"',
    "dotted digits": "1.",
    "dashed digits": "1-",
}


def _adversarial_worker(part: int, parts: int) -> None:
    """Run in a subprocess: build the engine, then time every ``parts``-th input through our recognizers alone."""
    import time

    regions = ("AU", "CA", "DE", "ES", "FR", "GB", "IN", "IT", "NL", "US")
    engine = build_engine(MODEL, "en", regions)
    # Only this package's recognizers: the predefined ones are not ours to bound.
    engine.registry.recognizers = [r for r in engine.registry.recognizers if r.name in OURS]
    tiny = engine.nlp_engine.process_text("x", "en")  # spaCy itself is not under test here
    entities = sorted({e for r in engine.registry.recognizers for e in r.supported_entities})
    for name, unit in list(ADVERSARIAL.items())[part::parts]:
        text = (unit * (MEGABYTE // len(unit) + 1))[:MEGABYTE]
        started = time.perf_counter()
        engine.analyze(text=text, language="en", entities=entities, nlp_artifacts=tiny)
        print(f"{name}\t{time.perf_counter() - started:.2f}", flush=True)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("Customer: Erle Olsen. Later Erle called, Erle-Marie too, and O'Erle, Erle's and Erle_2 did not.", [(10, 20)]),
        ("Dear Ms. Mary-Jane O'Neil,\nMary-Jane wrote; Mary and Jane didn't. O'Neil.", [(9, 25)]),
        ("Anna van der Berg called. Berg, Anna and Annabel; van stays.", [(0, 17)]),
        ("No full name here: Erle.", [(19, 23)]),
    ],
)
def test_the_parts_of_a_name_are_found_alone_as_whole_words(text: str, names: list[tuple[int, int]]) -> None:
    """``_name_parts`` scans word runs rather than compiling the parts into a regex per text: the same spans."""
    import re

    from gateway.recognizers.names import NOT_NAMES, _is_particle, _name_parts

    parts = {
        w
        for s, e in names
        for w in re.findall(r"[^\W\d_][^\W\d_'’-]*(?:[-'’][^\W\d_]+)*", text[s:e])
        if len(re.findall(r"[^\W\d_][^\W\d_'’-]*(?:[-'’][^\W\d_]+)*", text[s:e])) >= 2
        and len(w) >= 3
        and w[0].isupper()
        and w.lower() not in NOT_NAMES
        and not _is_particle(w)
    }
    expected = []
    if parts:  # the regex this replaced
        alternatives = "|".join(re.escape(p) for p in sorted(parts, key=len, reverse=True))
        pattern = re.compile(r"(?<![\w'’-])(?:" + alternatives + r")(?![\w'’-])")
        expected = [m.span() for m in pattern.finditer(text) if not any(s <= m.start() < e for s, e in names)]
    assert list(_name_parts(text, names)) == expected


def test_recognizers_stay_linear_on_a_megabyte_of_hostile_input() -> None:
    # A hang guard, not a timing assertion: each input gets a generous 60 s (a few s is normal, on a busy
    # two-core machine) in a child process, which is
    # killed when it runs over, so catastrophic backtracking fails this test instead of hanging the suite.
    # Two children share the inputs, one per core.
    parts = 2
    lines: queue.Queue[tuple[int, str]] = queue.Queue()
    children = []
    for part in range(parts):
        child = subprocess.Popen(
            [sys.executable, "-c", f"from tests.test_recognizers import _adversarial_worker as w; w({part}, {parts})"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=Path(__file__).parent.parent,
            env={**os.environ, "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": ""},
        )
        children.append(child)
        threading.Thread(target=_forward, args=(child, part, lines), daemon=True).start()
    expected = [list(ADVERSARIAL)[part::parts] for part in range(parts)]
    done: list[list[str]] = [[] for _ in range(parts)]
    try:
        while any(len(d) < len(e) for d, e in zip(done, expected, strict=True)):
            waiting = [e[len(d)] for d, e in zip(done, expected, strict=True) if len(d) < len(e)]
            timeout = 120.0 if not any(done) else 60.0  # the first inputs also wait for the engine to load
            try:
                part, line = lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no result within {timeout:.0f} s for one of {waiting} (finished: {done})")
            done[part].append(line.split("\t")[0])
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert done == expected


def _forward(child: subprocess.Popen[str], part: int, lines: queue.Queue[tuple[int, str]]) -> None:
    assert child.stdout is not None
    with child.stdout:
        for line in child.stdout:
            lines.put((part, line))
