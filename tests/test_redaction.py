"""Every action, end to end through the real gateway with the openai SDK, plus allow- and deny-lists."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import PARTS, create_app
from gateway.detector import DetectionSpec, Finding, PresidioDetector
from gateway.errors import PolicyBlocked
from gateway.keys import KeyRing
from gateway.policy import Action, MaskSpec, load_policy_dir, parse_policy
from gateway.redaction import OFFLOAD_CHARS, Redactor, Slot, Span, _merge, _name_parts, _propagate, hash_token, mask
from gateway.settings import Settings
from tests.fake_upstream import FakeUpstream

ACTIONS = """\
name: actions
score_threshold: 0.3
entities:
  PERSON: pseudonymize
  EMAIL_ADDRESS: hash
  CREDIT_CARD: {action: mask, mask: {keep_last: 4}}
  IP_ADDRESS: redact
  US_SSN: block
  LOCATION: allow
  PROJECT_CODENAME: redact
recognizers:
  - name: codenames
    entity: PROJECT_CODENAME
    deny_list: [Bluebird, Nightjar]
allow_list:
  - Ada Lovelace
  - {regex: '.*@example-corp\\.com'}
"""
DEFAULT = "name: default\nentities:\n  PERSON: pseudonymize\n"


def actions_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "actions.yaml").write_text(ACTIONS)
    (folder / "default.yaml").write_text(DEFAULT)
    return folder


@pytest.fixture
async def actions_server(
    settings: Settings, detector: PresidioDetector, tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> TestServer:
    app: web.Application = create_app(
        settings.model_copy(update={"policies_dir": actions_folder(tmp_path), "default_policy": "actions"}),
        detector=detector,
        hash_key=b"k" * 32,
    )
    return await aiohttp_server(app)


@pytest.fixture
async def actions_client(actions_server: TestServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=str(actions_server.make_url("/v1")), api_key="sk-x", max_retries=0) as c:
        yield c


async def ask(client: openai.AsyncOpenAI, text: str, **kw: Any) -> str:
    reply = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], **kw)
    return reply.choices[0].message.content or ""


def sent(fake: FakeUpstream) -> str:
    content: str = fake.requests[-1]["messages"][-1]["content"]
    return content


async def test_pseudonymize_hides_and_restores(actions_client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    text = "Please ask John Smith about it."
    assert await ask(actions_client, text) == text
    assert "John Smith" not in sent(fake_upstream)
    assert "<PERSON_1>" in sent(fake_upstream)


async def test_hash_is_stable_across_requests_and_never_restored(
    actions_client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    text = "Customer ann.lee@example.org wrote again."
    first = await ask(actions_client, text)
    token = sent(fake_upstream).split()[1]
    assert token.startswith("<EMAIL_ADDRESS:")
    assert first == sent(fake_upstream)  # the answer keeps the token: hashing is one-way
    await ask(actions_client, "Is ann.lee@example.org a VIP?")
    assert token in sent(fake_upstream)


async def test_mask_keeps_the_last_four(actions_client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    answer = await ask(actions_client, "Refund card 4111 1111 1111 1111 now.")
    assert sent(fake_upstream) == "Refund card **** **** **** 1111 now."
    assert answer == "Refund card **** **** **** 1111 now."


async def test_redact_is_never_restored(actions_client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    answer = await ask(actions_client, "Server 10.20.30.40 is down.")
    assert "10.20.30.40" not in sent(fake_upstream)
    assert answer == sent(fake_upstream)
    assert "<IP_ADDRESS_1>" in answer


async def test_block_refuses_naming_the_type_never_the_value(
    actions_client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await ask(actions_client, "My SSN is 536-22-8174, John Smith.")
    body: Any = info.value.body
    assert body["code"] == "pii_blocked"
    assert "US_SSN" in body["message"]
    assert "536" not in orjson.dumps(body).decode()
    assert fake_upstream.requests == []


async def test_allow_is_never_changed(actions_client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    text = "We met in Paris last spring."
    assert await ask(actions_client, text) == text
    assert sent(fake_upstream) == text


async def test_allow_is_counted_and_an_unlisted_type_is_not(
    actions_server: TestServer, actions_client: openai.AsyncOpenAI, detector: PresidioDetector
) -> None:
    """``allow``: detected and counted (action="allow"); a type the policy does not list: not counted at all."""
    text = "We met in Paris on 3 May 2024."
    (found,) = await detector.analyze([text], DetectionSpec())
    assert {"LOCATION", "DATE_TIME"} <= {f.entity_type for f in found}  # both are really detected
    assert await ask(actions_client, text) == text
    assert actions_server.app is not None
    registry = actions_server.app[PARTS].metrics.registry

    def counted(entity_type: str) -> dict[str, float]:
        return {
            s.labels["action"]: s.value
            for metric in registry.collect()
            if metric.name == "gateway_entities"
            for s in metric.samples
            if s.name == "gateway_entities_total" and s.labels["entity_type"] == entity_type
        }

    for _ in range(100):  # observed once the exchange completes
        if counted("LOCATION"):
            break
        await asyncio.sleep(0.01)
    assert counted("LOCATION") == {"allow": 1.0}
    assert counted("DATE_TIME") == {}


async def test_hash_tokens_come_from_each_tenants_own_key(
    settings: Settings,
    detector: PresidioDetector,
    tmp_path: Path,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    fake_upstream: FakeUpstream,
) -> None:
    """Through the real key path (no fixed key): stable for one tenant across requests, different across tenants."""
    ring, acme = KeyRing({}).create("acme", None)
    ring, globex = ring.create("globex", None)
    ring.save(settings.resolved_keys_file())
    app = create_app(
        settings.model_copy(update={"policies_dir": actions_folder(tmp_path), "default_policy": "actions"}),
        detector=detector,
    )
    server = await aiohttp_server(app)

    async def token(key: str, text: str) -> str:
        async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=key, max_retries=0) as c:
            await ask(c, text)
        found: list[str] = re.findall(r"<EMAIL_ADDRESS:[0-9a-f]{12}>", sent(fake_upstream))
        assert len(found) == 1
        return found[0]

    first = await token(acme, "Customer ann.lee@example.org wrote again.")
    again = await token(acme, "Is ann.lee@example.org a VIP?")
    other = await token(globex, "Customer ann.lee@example.org wrote again.")
    assert first == again
    assert other != first
    assert "ann.lee" not in "".join(orjson.dumps(r).decode() for r in fake_upstream.requests)


async def test_allow_list_and_deny_list(actions_client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    text = "Ada Lovelace from help@example-corp.com asked about Bluebird and John Smith."
    # The code name is redacted (never restored); the rest comes back as sent.
    assert await ask(actions_client, text) == text.replace("Bluebird", "<PROJECT_CODENAME_1>")
    upstream = sent(fake_upstream)
    assert "Ada Lovelace" in upstream
    assert "help@example-corp.com" in upstream
    assert "Bluebird" not in upstream
    assert "<PROJECT_CODENAME_1>" in upstream
    assert "John Smith" not in upstream


OVERLAP = """\
name: overlap
entities:
  ORDER_REF: {left}
  ACCOUNT: {right}
recognizers:
  - {{name: orders, entity: ORDER_REF, patterns: [{{regex: 'ORD-\\d{{6}}', score: 0.9}}]}}
  - {{name: accounts, entity: ACCOUNT, patterns: [{{regex: '\\d{{6}}-\\d{{4}}', score: 0.8}}]}}
"""
#: ORD-123456 (ORDER_REF) and 123456-7890 (ACCOUNT) share 123456.
OVERLAPPING = "Refund ORD-123456-7890 today."
PAIRS = list(zip(list(Action)[:-1], list(Action)[1:], strict=True))  # (stronger, weaker), as documented


@pytest.mark.parametrize("left_stronger", [True, False], ids=["left-stronger", "right-stronger"])
@pytest.mark.parametrize(("strong", "weak"), PAIRS, ids=[f"{s.value}>{w.value}" for s, w in PAIRS])
async def test_overlapping_findings_take_the_strongest_action(
    detector: PresidioDetector, strong: Action, weak: Action, left_stronger: bool
) -> None:
    """Two findings that really overlap merge into one span, and the stronger action applies to all of it."""
    left, right = (strong, weak) if left_stronger else (weak, strong)
    policy = parse_policy(OVERLAP.format(left=left.value, right=right.value), "overlap.yaml")
    (found,) = await detector.analyze([OVERLAPPING], policy.detection_spec())
    assert sorted((f.entity_type, f.start, f.end) for f in found) == [("ACCOUNT", 11, 22), ("ORDER_REF", 7, 17)]
    entity = "ORDER_REF" if left_stronger else "ACCOUNT"
    # Both hide: the merged span covers both. With allow, the hiding span stays as it is (never widened).
    start, end = (7, 22) if weak is not Action.ALLOW else ((7, 17) if left_stronger else (11, 22))
    value = OVERLAPPING[start:end]
    slot = Slot.detached(OVERLAPPING)
    if strong is Action.BLOCK:
        with pytest.raises(PolicyBlocked) as info:
            await Redactor(detector, b"k" * 32).redact([slot], policy)
        assert info.value.entity_types == [entity]
        return
    redactions = await Redactor(detector, b"k" * 32).redact([slot], policy)
    replacement = {
        Action.REDACT: f"<{entity}_1>",
        Action.MASK: mask(value, MaskSpec()),
        Action.HASH: hash_token(b"k" * 32, entity, value),
        Action.PSEUDONYMIZE: f"<{entity}_1>",
    }[strong]
    assert slot.text == OVERLAPPING[:start] + replacement + OVERLAPPING[end:]
    assert dict(redactions.restorable) == ({replacement: value} if strong is Action.PSEUDONYMIZE else {})
    assert dict(redactions.counts) == {(entity, strong.value): 1}


def test_mask_never_shows_a_value_whole() -> None:
    assert mask("4111 1111 1111 1111", MaskSpec(keep_last=4)) == "**** **** **** 1111"
    assert mask("DE89370400440532013000", MaskSpec(keep_first=2, keep_last=4)) == "DE****************3000"
    assert mask("1234", MaskSpec(keep_last=4)) == "****"
    assert mask("a-b", MaskSpec(keep_last=0, char="#")) == "#-#"


async def test_parts_of_a_name_are_hidden_where_they_recur(detector: PresidioDetector, tmp_path: Path) -> None:
    """A name found in full once hides its parts later on, but never its particles or plain words."""
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "default.yaml").write_text(
        "name: default\nentities:\n  PERSON: pseudonymize\n"
        "recognizers:\n  - name: staff\n    entity: PERSON\n    deny_list: [Zorvath van der Quill]\n"
    )
    policy = load_policy_dir(folder, "default").default_policy
    out: list[str] = []
    slots = [
        Slot.detached("Escalated by Zorvath van der Quill yesterday."),
        Slot("ok, so zorvath-42 and Quill's van is parked: ask Zorvath", "user", out.append),
    ]
    redactions = await Redactor(detector, b"k" * 32).redact(slots, policy)
    assert out == ["ok, so zorvath-42 and <PERSON_2>'s van is parked: ask <PERSON_3>"]
    assert redactions.restorable == {
        "<PERSON_1>": "Zorvath van der Quill",
        "<PERSON_2>": "Quill",
        "<PERSON_3>": "Zorvath",
    }


def _regex_propagate(slots: list[Slot], spans: list[list[Span]]) -> list[list[Span]]:
    """The former implementation (a regex of the present values per slot): the reference for coverage."""
    found: dict[str, Span] = {}
    for slot, per_slot in zip(slots, spans, strict=True):
        for span in per_slot:
            value = slot.text[span.start : span.end]
            if len(value.strip()) >= 2:
                found.setdefault(value, span)
    out = []
    for slot, per_slot in zip(slots, spans, strict=True):
        present = [v for v in found if v in slot.text]
        extra = []
        if present:
            alternation = "|".join(re.escape(v) for v in sorted(present, key=len, reverse=True))
            for m in re.finditer(r"(?<!\w)(?:" + alternation + r")(?!\w)", slot.text):
                origin = found[m.group(0)]
                extra.append(Span(m.start(), m.end(), origin.entity_type, origin.action, origin.score))
        out.append([*per_slot, *extra])
    return out


def _covered(spans: list[Span]) -> set[int]:
    return {i for span in spans for i in range(span.start, span.end)}


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(st.text(alphabet="ab _-+.'é\n", min_size=0, max_size=40), min_size=1, max_size=4),
    picks=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 39), st.integers(1, 8)), max_size=6),
)
def test_propagation_hides_at_least_what_a_regex_of_the_values_finds(
    texts: list[str], picks: list[tuple[int, int, int]]
) -> None:
    slots = [Slot.detached(t) for t in texts]
    spans: list[list[Span]] = [[] for _ in slots]
    for which, start, length in picks:
        text = texts[which % len(texts)]
        if start + length <= len(text):
            spans[which % len(texts)].append(Span(start, start + length, "X", Action.PSEUDONYMIZE, 0.5))
    spans = [_merge(s) for s in spans]
    ours = _propagate(slots, spans)
    reference = _regex_propagate(slots, spans)
    for mine, theirs in zip(ours, reference, strict=True):
        assert _covered(theirs) <= _covered(mine)


def test_a_possessive_ends_the_name_whose_parts_are_hidden_elsewhere() -> None:
    text = "Verses from Daniel Payne's Cautionary Tales. Early Payne is the best; the Tales are long."
    slots = [Slot.detached(text)]
    start = text.index("Daniel")
    found = [[Span(start, text.index(". Early"), "PERSON", Action.PSEUDONYMIZE, 0.85)]]
    (spans,) = _propagate(slots, found)
    hidden = [text[sp.start : sp.end] for sp in spans]
    assert hidden == ["Daniel Payne's Cautionary Tales", "Payne"]  # "Tales" alone is no part of the name
    assert _name_parts("PERSON", "Daniel Payne's Cautionary Tales") == ("Daniel", "Payne")


class _ScriptedDetector:
    """Returns findings fixed in advance, at once: what this test measures is the redactor's own work after
    detection, which must not depend on how long a real analysis of 200 kB takes."""

    def __init__(self, findings: list[list[Finding]]) -> None:
        self.findings = findings

    async def analyze(self, texts: Sequence[str], spec: DetectionSpec) -> list[list[Finding]]:
        return self.findings

    def remember(self, text: str, spec: DetectionSpec, findings: list[Finding]) -> None:
        """Nothing to remember."""

    @property
    def ready(self) -> bool:
        return True

    async def start(self, region_sets: Iterable[tuple[str, ...]] = ((),)) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Nothing to close."""


@pytest.mark.parametrize("chars", [OFFLOAD_CHARS // 10, OFFLOAD_CHARS * 2])
async def test_post_detection_work_on_a_large_request_runs_off_the_event_loop(chars: int) -> None:
    unit = "Ask Maria Gonzalez{} at desk 4. "
    text = "".join(unit.format(i) for i in range(chars // len(unit) + 1))
    found = [Finding(m.start(), m.end(), "PERSON", 0.9, "scripted") for m in re.finditer(r"Maria Gonzalez\d+", text)]
    redactor = Redactor(_ScriptedDetector([found]), b"k" * 32)
    policy = parse_policy("name: p\nentities:\n  PERSON: pseudonymize\n", "p.yaml")
    slot = Slot.detached(text, "user")
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    redactions = await redactor.redact([slot], policy)
    during = ticks - before
    done.set()
    await task
    assert "Maria Gonzalez" not in slot.text
    assert len(redactions.counts) == 1
    if chars >= OFFLOAD_CHARS:
        assert during > 2, "the event loop did not run while a large request was rewritten"
    else:
        assert during <= 1, "a small request should be rewritten inline, without a thread hop"
