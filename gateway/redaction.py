"""Redactor: finds personal data in a request's text slots and rewrites them, per policy, before forwarding.

The steps, in order (the order is the contract ``docs/policies.md`` documents):

1. Reserve every placeholder-shaped string already in the request, so numbering cannot collide with it.
2. Analyse every slot whose role the policy scans (off the event loop; fail closed). Steps 3-7 run in a
   thread too when the request is large (``OFFLOAD_CHARS``).
3. Keep findings whose entity the policy names and whose score reaches its threshold; drop allow-listed
   values.
4. Resolve overlaps: overlapping findings merge into one span covering all of them, and the strongest
   action among them applies (block > redact > mask > hash > pseudonymize > allow; ties: higher score).
5. Block: if any span's action is ``block``, the request is refused, naming entity types only.
6. Propagate: a value found once is replaced wherever else it appears in the request.
7. Replace, numbering placeholders by first occurrence in request order.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson

from .detector import Detector, Finding
from .errors import PolicyBlocked
from .placeholders import Redactions, json_escaped, placeholders_in, restored_spans
from .policy import Action, MaskSpec, Policy

_T = TypeVar("_T")


@dataclass
class Slot:
    """One piece of request text the upstream would read, and how to write its redacted form back.

    ``kind`` is ``json`` for text that is itself JSON (tool-call arguments): spans are widened so they
    never cut an escape sequence, and values are stored decoded.
    """

    text: str
    role: str | None
    write: Callable[[str], None]
    kind: Literal["text", "json"] = "text"

    @classmethod
    def detached(cls, text: str, role: str | None = None) -> Slot:
        """A slot that is not part of a request body: the redacted text ends up in ``slot.text``."""
        slot = cls(text, role, lambda _: None)

        def write(new: str) -> None:
            slot.text = new

        slot.write = write
        return slot


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    entity_type: str
    action: Action
    score: float


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_SEPARATORS = frozenset(" -./@_:()+")


class Redactor:
    """Applies a policy to a request's slots. One instance per app; holds no per-request state."""

    def __init__(self, detector: Detector, hash_keys: bytes | Callable[[str], Awaitable[bytes]]) -> None:
        """``hash_keys`` gives the ``hash`` action's key per tenant (or is one fixed key, for tools)."""
        self.detector = detector
        self._hash_keys = hash_keys

    async def _hash_key(self, tenant: str) -> bytes:
        if isinstance(self._hash_keys, bytes):
            return self._hash_keys
        return await self._hash_keys(tenant)

    async def redact(self, slots: Sequence[Slot], policy: Policy, tenant: str = "default") -> Redactions:
        """Rewrite ``slots`` in place and return the request's placeholder table.

        Raises ``DetectionFailed`` (nothing may be forwarded) or ``PolicyBlocked``.
        """
        redactions = Redactions(reserved=set().union(*(placeholders_in(s.text) for s in slots)))
        scanned = [s for s in slots if s.text and (s.role is None or s.role in policy.roles)]
        if not scanned or policy.detects_nothing:
            return redactions
        findings = await self.detector.analyze([s.text for s in scanned], policy.detection_spec())
        # Resolving, propagating and rewriting are linear in the text but not free: about a second of CPU
        # at the largest body the limits admit. Above OFFLOAD_CHARS they run in a thread, so the event loop
        # (other requests' streams) gets the interpreter back every switch interval instead of waiting.
        offload = sum(len(s.text) for s in scanned) >= OFFLOAD_CHARS
        spans = await _run(offload, self._spans, scanned, findings, policy, redactions)
        needs_hash = any(sp.action is Action.HASH for per_slot in spans for sp in per_slot)
        hash_key = await self._hash_key(tenant) if needs_hash else b""
        await _run(offload, self._rewrite_all, scanned, spans, policy, redactions, hash_key)
        return redactions

    def _spans(
        self, scanned: Sequence[Slot], findings: Sequence[list[Finding]], policy: Policy, redactions: Redactions
    ) -> list[list[Span]]:
        spans = [self._resolve(slot, found, policy) for slot, found in zip(scanned, findings, strict=True)]
        blocked = [sp.entity_type for per_slot in spans for sp in per_slot if sp.action is Action.BLOCK]
        if blocked:
            found = Counter((sp.entity_type, sp.action.value) for per_slot in spans for sp in per_slot)
            raise PolicyBlocked(blocked, found)
        return _propagate(scanned, spans) if policy.propagate else spans

    def _rewrite_all(
        self, scanned: Sequence[Slot], spans: list[list[Span]], policy: Policy, redactions: Redactions, hash_key: bytes
    ) -> None:
        for slot, per_slot in zip(scanned, spans, strict=True):
            if per_slot:
                slot.write(self._rewrite(slot, per_slot, policy, redactions, hash_key))

    def remember_answers(
        self, texts: Sequence[str], redactions: Redactions, table: Mapping[str, str], policy: Policy
    ) -> None:
        """Tell the detector what it would find in these answers once restored, so the next turn is free.

        ``texts`` are an answer's messages as the upstream wrote them, with this request's placeholders;
        ``table`` is what the client got restored (empty when the policy does not restore). A client
        re-sends each message as it got it, as an assistant turn of its next request; analysing it again
        would cost as much as a new message, turn after turn. Its findings are known already: the values
        that restoration put back, with their entity types. Whatever else the text holds came from the
        upstream, so sending it back tells the upstream nothing new.
        """
        if policy.detects_nothing:
            return
        spec = policy.detection_spec()
        for text in texts:
            restored, spans = restored_spans(text, table)
            findings = []
            for start, end, placeholder in spans:
                entity_type = redactions.entity_type(placeholder)
                if entity_type is not None:
                    findings.append(Finding(start, end, entity_type, 1.0, "restored_answer"))
            self.detector.remember(restored, spec, findings)

    def _resolve(self, slot: Slot, findings: list[Finding], policy: Policy) -> list[Span]:
        kept: list[Span] = []
        for f in findings:
            start, end = (f.start, f.end) if slot.kind == "text" else _json_safe(slot.text, f.start, f.end)
            if skip_reason(f, _value(slot, start, end), policy) is None:
                kept.append(Span(start, end, f.entity_type, policy.entities[f.entity_type].action, f.score))
        return _merge(kept)

    def _rewrite(self, slot: Slot, spans: list[Span], policy: Policy, redactions: Redactions, hash_key: bytes) -> str:
        text = slot.text
        parts: list[str] = []
        cursor = 0
        for span in spans:
            raw = text[span.start : span.end]
            value = _value(slot, span.start, span.end)
            redactions.counts[(span.entity_type, span.action.value)] += 1
            match span.action:
                case Action.PSEUDONYMIZE:
                    out = redactions.placeholder_for(span.entity_type, value, restorable=policy.restore_answers)
                case Action.REDACT:
                    out = redactions.placeholder_for(span.entity_type, value, restorable=False)
                case Action.MASK:
                    masked = mask(value, policy.entities[span.entity_type].mask)
                    out = json_escaped(masked) if slot.kind == "json" else masked
                case Action.HASH:
                    out = hash_token(hash_key, span.entity_type, value)
                case Action.ALLOW:
                    out = raw
                case Action.BLOCK:  # handled before rewriting; kept for exhaustiveness
                    raise PolicyBlocked([span.entity_type])
            parts.append(text[cursor : span.start])
            parts.append(out)
            cursor = span.end
        parts.append(text[cursor:])
        return "".join(parts)


#: Scanned characters from which a request's post-detection work runs in a thread (see ``Redactor.redact``).
OFFLOAD_CHARS = 100_000


async def _run(offload: bool, func: Callable[..., _T], /, *args: Any) -> _T:
    return await asyncio.to_thread(func, *args) if offload else func(*args)


def hash_token(key: bytes, entity_type: str, value: str) -> str:
    """A keyed HMAC token: stable for the same value under the tenant's key, unlinkable across tenants."""
    digest = hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return f"<{entity_type}:{digest[:12]}>"


def skip_reason(finding: Finding, value: str, policy: Policy) -> str | None:
    """Why a finding is ignored under ``policy``, or None when it is acted on (step 3)."""
    if finding.entity_type not in policy.entities:
        return "the policy does not list this entity type"
    threshold = policy.threshold(finding.entity_type)
    if finding.score < threshold:
        return f"score {finding.score:.2f} is below the threshold {threshold:.2f}"
    if policy.allow_list and policy.allowed(value):
        return "the value is on the policy's allow-list"
    return None


def _value(slot: Slot, start: int, end: int) -> str:
    raw = slot.text[start:end]
    if slot.kind != "json" or "\\" not in raw:
        return raw
    try:
        decoded: str = orjson.loads(b'"' + raw.encode("utf-8") + b'"')
    except orjson.JSONDecodeError:
        return raw
    return decoded


def _json_safe(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen a span inside JSON text so that it never cuts an escape sequence."""
    raw = text[start:end]
    if "\\" not in raw and not (start > 0 and text[start - 1] == "\\"):
        return start, end
    try:
        orjson.loads(b'"' + raw.encode("utf-8") + b'"')
        if not (start > 0 and text[start - 1] == "\\"):
            return start, end
    except orjson.JSONDecodeError:
        pass
    for m in _JSON_STRING.finditer(text):
        inner_start, inner_end = m.start() + 1, m.end() - 1
        if inner_start <= start < m.end():
            return inner_start, max(inner_end, min(end, inner_end))
    return start, end


def _merge(spans: list[Span]) -> list[Span]:
    """Merge overlapping spans into one covering span; the strongest action (then score) wins.

    ``allow`` spans never widen a span that hides something: they are kept (to be counted) only
    where they overlap nothing else.
    """
    hiding = [s for s in spans if s.action is not Action.ALLOW]
    allowed = [s for s in spans if s.action is Action.ALLOW and not any(_overlaps(s, h) for h in hiding)]
    spans = _merge_overlapping(hiding) + _merge_overlapping(allowed)
    spans.sort(key=lambda s: s.start)
    return spans


def _overlaps(a: Span, b: Span) -> bool:
    return a.start < b.end and b.start < a.end


def _merge_overlapping(spans: list[Span]) -> list[Span]:
    if not spans:
        return []
    spans.sort(key=lambda s: (s.start, -s.end))
    merged: list[Span] = []
    cluster = [spans[0]]
    end = spans[0].end
    for span in spans[1:]:
        if span.start < end:
            cluster.append(span)
            end = max(end, span.end)
            continue
        merged.append(_winner(cluster, end))
        cluster, end = [span], span.end
    merged.append(_winner(cluster, end))
    return merged


def _winner(cluster: list[Span], end: int) -> Span:
    best = max(cluster, key=lambda s: (s.action.strength, s.score, s.end - s.start))
    return Span(cluster[0].start, end, best.entity_type, best.action, best.score)


#: Parts of a name that identify nobody on their own: particles, titles and suffixes.
_NAME_PARTICLES = frozenset(
    (
        *("van", "von", "der", "den", "de", "del", "della", "di", "da", "das", "dos", "du", "la", "le"),
        *("al", "el", "bin", "ibn", "ben", "mac", "mr", "mrs", "ms", "miss", "dr", "prof", "sir", "jr", "sr"),
    )
)


def _name_parts(entity_type: str, value: str) -> tuple[str, ...]:
    """The capitalised words of a several-word PERSON value: "Maria van der Berg" -> "Maria", "Berg".

    A name written in full once is often written in part later ("Thanks, Maria"): hiding the parts
    wherever they recur keeps the later mention from leaking. Only capitalised words of three or more
    letters are taken, so particles and initials are never propagated on their own; a possessive ends the
    name ("Daniel Payne's Cautionary Tales" -> "Daniel", "Payne").
    """
    if entity_type != "PERSON":
        return ()
    words: list[str] = []
    for word in value.split():
        owner = _POSSESSIVE.sub("", word)
        words.append(owner)
        if owner != word:
            break  # "Daniel Payne's Cautionary Tales": the name ends at its possessive
    if len(words) < 2:
        return ()
    return tuple(
        w for w in words if len(w) >= 3 and w[0].isupper() and w.isalpha() and w.lower() not in _NAME_PARTICLES
    )


def _propagate(slots: Sequence[Slot], spans: list[list[Span]]) -> list[list[Span]]:
    """Add a span wherever a value found anywhere in the request appears again as a whole word.

    Parts of names count as values too (see ``_name_parts``).
    """
    found: dict[str, Span] = {}
    for slot, per_slot in zip(slots, spans, strict=True):
        for span in per_slot:
            if span.action is Action.ALLOW:
                continue
            value = _value(slot, span.start, span.end)
            for needle in (value, *_name_parts(span.entity_type, value)):
                if len(needle.strip()) >= 2:
                    previous = found.get(needle)
                    if previous is None or span.action.strength > previous.action.strength:
                        found[needle] = span
    if not found:
        return spans
    # Per slot kind (plain text or JSON source), each value as it is written there, indexed by its first
    # word: a value found at a word boundary starts with a whole word of the text, so only the values
    # whose first word the slot has are searched for. (Compiling a regex of the values for every slot,
    # as this did before, cost tens of milliseconds on the event loop for a 40-message conversation.)
    index_by_kind: dict[str, tuple[dict[str, list[tuple[str, str]]], list[tuple[str, str]]]] = {}
    out: list[list[Span]] = []
    for slot, per_slot in zip(slots, spans, strict=True):
        index = index_by_kind.get(slot.kind)
        if index is None:
            by_first: dict[str, list[tuple[str, str]]] = {}
            unindexed: list[tuple[str, str]] = []  # values that start with punctuation ("+1 415 ...")
            for value in found:
                needle = json_escaped(value) if slot.kind == "json" else value
                first = _WORDS.match(needle)
                if first is None:
                    unindexed.append((needle, value))
                else:
                    by_first.setdefault(first.group(), []).append((needle, value))
            index = index_by_kind[slot.kind] = (by_first, unindexed)
        by_first, unindexed = index
        text = slot.text
        candidates = [c for word in set(_WORDS.findall(text)) for c in by_first.get(word, ())]
        # per_slot is merged: sorted and disjoint. An occurrence inside one of its spans, with no stronger
        # action, changes nothing (most are the slot's own findings, found again): skipped, so that
        # only slots that gain something are merged again.
        starts = [sp.start for sp in per_slot]
        extra = []
        for needle, value in (*candidates, *unindexed):
            if needle not in text:
                continue
            origin = found[value]
            for start in _whole_word_occurrences(text, needle):
                end = start + len(needle)
                i = bisect.bisect_right(starts, start) - 1
                if i >= 0 and per_slot[i].end >= end and per_slot[i].action.strength >= origin.action.strength:
                    continue
                extra.append(Span(start, end, origin.entity_type, origin.action, origin.score))
        out.append(_merge([*per_slot, *extra]) if extra else per_slot)
    return out


_WORDS = re.compile(r"\w+")
_POSSESSIVE = re.compile(r"['’]s$")


def _whole_word_occurrences(text: str, needle: str) -> Iterator[int]:
    """Where ``needle`` occurs with no word character right before or after it (``\\b``-like, any script)."""
    start = text.find(needle)
    while start != -1:
        end = start + len(needle)
        if (start == 0 or not _is_word_char(text[start - 1])) and (end == len(text) or not _is_word_char(text[end])):
            yield start
        start = text.find(needle, start + 1)


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def mask(value: str, spec: MaskSpec) -> str:
    """``4111 1111 1111 1111`` -> ``**** **** **** 1111``: hide all but the first/last characters."""
    significant = [i for i, ch in enumerate(value) if not (spec.keep_separators and ch in _SEPARATORS)]
    keep = set(significant[: spec.keep_first]) | set(significant[len(significant) - spec.keep_last :])
    if spec.keep_last == 0:
        keep = set(significant[: spec.keep_first])
    hidden = [i for i in significant if i not in keep]
    if not hidden and significant:  # never show a value in full
        hidden = significant
    chars = list(value)
    for i in hidden:
        chars[i] = spec.char
    return "".join(chars)
