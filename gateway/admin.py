"""Admin endpoints and the shared dry run: explain what a policy would do to a text, and reload.

The dry run forwards nothing. It shows the values it found, since the caller sent them, which is why
it needs an admin key; neither the text nor the findings are logged or recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .auth import require_admin
from .detector import DetectionSpec, Detector, Finding
from .errors import BadRequest, PolicyBlocked
from .placeholders import Redactions, placeholders_in
from .policy import Action, Policy
from .redaction import Redactor, Slot, Span, _merge, _propagate, mask, skip_reason

if TYPE_CHECKING:
    from .pipeline import Gateway
    from .reloader import Reloader


@dataclass(frozen=True)
class FindingReport:
    entity_type: str
    start: int
    end: int
    #: The finding as the caller typed it (the dry run shows nothing else of the text).
    value: str
    score: float
    recognizer: str
    #: What the policy says about this finding on its own: its action, or ``ignored: <why>``.
    rule: str
    #: What happens to the text of this finding in the end, after overlaps are merged and values
    #: propagated (steps 4 and 6 of docs/policies.md): the action applied to the span that covers it,
    #: or the rule when nothing covers it. A finding inside a redacted span is ``redact`` here.
    decision: str
    #: Why ``decision`` differs from ``rule``; None when it does not.
    because: str | None
    #: What replaces the span covering this finding: a placeholder (``<PERSON_1>``), the masked text,
    #: the hash token's shape (``<EMAIL_ADDRESS:…>``); None when the text stays or is blocked.
    replacement: str | None
    #: The replacement in words: restored or not, masked, keyed token, blocked, unchanged.
    outcome: str


@dataclass(frozen=True)
class Explanation:
    policy: str
    findings: list[FindingReport]
    output: str | None
    blocked: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "findings": [f.__dict__ for f in self.findings],
            "output": self.output,
            "blocked": self.blocked,
        }


@dataclass(frozen=True)
class _Outcome:
    span: Span
    replacement: str | None
    outcome: str


async def explain(text: str, policy: Policy, detector: Detector, redactor: Redactor) -> Explanation:
    """Every finding of every entity type, what the policy does with it and why, and the result.

    The final decisions are worked out from the policy's own analysis, exactly as the Redactor
    resolves it (threshold, allow-list, overlap merging, propagation); the output is the Redactor's.
    """
    spec = policy.detection_spec()
    everything = DetectionSpec(language=spec.language, regions=spec.regions, recognizers=spec.recognizers)
    (findings,) = await detector.analyze([text], everything)
    slot = Slot.detached(text)
    outcomes = _outcomes(text, await detector.analyze([text], spec) if not policy.detects_nothing else [[]], policy)
    reports = []
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        value = text[f.start : f.end]
        reason = skip_reason(f, value, policy)
        rule = f"ignored: {reason}" if reason else policy.entities[f.entity_type].action.value
        covering = [o for o in outcomes if o.span.start < f.end and f.start < o.span.end]
        final = max(covering, key=lambda o: o.span.action.strength, default=None)
        if final is None:
            reports.append(
                FindingReport(
                    f.entity_type, f.start, f.end, value, round(f.score, 3), f.recognizer, rule, rule, None, None,
                    "unchanged" if reason else "unchanged (not found by the policy's own analysis)",
                )
            )  # fmt: skip
            continue
        decision = final.span.action.value
        because = None
        if decision != rule or (final.span.start, final.span.end) != (f.start, f.end):
            because = _because(f.entity_type, f.start, f.end, final.span, reason)
        reports.append(
            FindingReport(
                f.entity_type, f.start, f.end, value, round(f.score, 3), f.recognizer, rule, decision, because,
                final.replacement, final.outcome,
            )
        )  # fmt: skip
    try:
        await redactor.redact([slot], policy)
    except PolicyBlocked as exc:
        return Explanation(policy.name, reports, None, exc.entity_types)
    return Explanation(policy.name, reports, slot.text, [])


def _outcomes(text: str, findings: list[list[Finding]], policy: Policy) -> list[_Outcome]:
    """The spans the Redactor would replace in ``text``, each with its replacement's shape."""
    (found,) = findings
    kept = [
        Span(f.start, f.end, f.entity_type, policy.entities[f.entity_type].action, f.score)
        for f in found
        if skip_reason(f, text[f.start : f.end], policy) is None
    ]
    spans = _merge(kept)
    if policy.propagate:
        (spans,) = _propagate([Slot.detached(text)], [spans])
    blocked = any(sp.action is Action.BLOCK for sp in spans)
    redactions = Redactions(reserved=placeholders_in(text))
    out = []
    for span in spans:
        value = text[span.start : span.end]
        replacement: str | None = None
        match span.action:
            case _ if blocked:
                outcome = "the request is refused (block)" if span.action is Action.BLOCK else "not sent: blocked"
            case Action.PSEUDONYMIZE:
                replacement = redactions.placeholder_for(span.entity_type, value, restorable=policy.restore_answers)
                outcome = (
                    "placeholder, restored in the answer"
                    if policy.restore_answers
                    else "placeholder, not restored (restore_answers: false)"
                )
            case Action.REDACT:
                replacement = redactions.placeholder_for(span.entity_type, value, restorable=False)
                outcome = "placeholder, never restored"
            case Action.MASK:
                replacement = mask(value, policy.entities[span.entity_type].mask)
                outcome = "masked"
            case Action.HASH:
                replacement = f"<{span.entity_type}:…>"
                outcome = "keyed HMAC token (12 hex digits), stable per tenant, never restored"
            case _:
                outcome = "unchanged, counted"
        out.append(_Outcome(span, replacement, outcome))
    return out


def _because(entity_type: str, start: int, end: int, span: Span, reason: str | None) -> str:
    where = f"the {span.entity_type} span at {span.start}-{span.end}"
    if reason is not None:
        return f"ignored on its own ({reason}), but it lies inside {where}, which is acted on as a whole"
    if span.entity_type != entity_type or span.start > start or span.end < end:
        return (
            f"it overlaps {where}, whose action applies to the whole merged span "
            "(block > redact > mask > hash > pseudonymize > allow)"
        )
    return f"merged with overlapping or repeated findings into {where}"


async def handle_explain(request: web.Request, gateway: Gateway) -> web.Response:
    principal = gateway.authenticate(request)
    require_admin(principal)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise BadRequest('The body must be JSON: {"text": "...", "policy": "name"}.') from None
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str):
        raise BadRequest("'text' must be a string.", param="text")
    name = body.get("policy") or gateway.settings.default_policy
    policy = gateway.policies.book.policies.get(name) if isinstance(name, str) else None
    if policy is None:
        raise BadRequest("Unknown policy.", param="policy")
    result = await explain(text, policy, gateway.detector, gateway.redactor)
    return web.Response(body=orjson.dumps(result.to_dict()), content_type="application/json")


async def handle_reload(request: web.Request, gateway: Gateway, reloader: Reloader) -> web.Response:
    require_admin(gateway.authenticate(request))
    ok, message = await reloader.reload()
    return web.json_response({"reloaded": ok, "message": message}, status=200 if ok else 422)


@dataclass(frozen=True)
class ExampleResult:
    index: int
    problems: list[str]


async def run_examples(policy: Policy, detector: Detector, redactor: Redactor) -> list[ExampleResult]:
    """A policy's own tests: each example's ``hidden`` must not reach the upstream, ``kept`` must."""
    results = []
    for i, example in enumerate(policy.examples):
        problems: list[str] = []
        slot = Slot.detached(example.text, "user")
        try:
            await redactor.redact([slot], policy)
            blocked = False
        except PolicyBlocked:
            blocked = True
        if example.blocked and not blocked:
            problems.append("expected the request to be blocked, but it was forwarded")
        if blocked and not example.blocked:
            problems.append("the request was blocked, but the example does not expect it")
        if not blocked:
            out = slot.text
            problems += [f"'{h}' would reach the upstream" for h in example.hidden if h in out]
            problems += [f"'{k}' would not reach the upstream unchanged" for k in example.kept if k not in out]
        results.append(ExampleResult(i, problems))
    return results
