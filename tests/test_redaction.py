"""Every action, end to end through the real gateway with the openai SDK, plus allow- and deny-lists."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.detector import PresidioDetector
from gateway.policy import Action, MaskSpec, load_policy_dir
from gateway.redaction import Redactor, Slot, Span, _merge, _propagate, mask
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


@pytest.fixture
async def actions_client(
    settings: Settings, detector: PresidioDetector, tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> AsyncIterator[openai.AsyncOpenAI]:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "actions.yaml").write_text(ACTIONS)
    (folder / "default.yaml").write_text(DEFAULT)
    app: web.Application = create_app(
        settings.model_copy(update={"policies_dir": folder, "default_policy": "actions"}),
        detector=detector,
        hash_key=b"k" * 32,
    )
    server = await aiohttp_server(app)
    async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-x", max_retries=0) as c:
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


async def test_overlapping_findings_take_the_strongest_action(detector: PresidioDetector, tmp_path: Path) -> None:
    """A span that is both a phone number (pseudonymize) and an SSN (block) is blocked."""
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "default.yaml").write_text(
        "name: default\nscore_threshold: 0.0\nentities:\n  PHONE_NUMBER: pseudonymize\n  US_SSN: block\n"
    )
    policy = load_policy_dir(folder, "default").default_policy
    slot = Slot.detached("SSN 536-22-8174")
    with pytest.raises(Exception, match="US_SSN"):
        await Redactor(detector, b"k").redact([slot], policy)


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
