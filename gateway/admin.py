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
from .detector import DetectionSpec, Detector
from .errors import BadRequest, PolicyBlocked
from .policy import Policy
from .redaction import Redactor, Slot, skip_reason

if TYPE_CHECKING:
    from .pipeline import Gateway
    from .reloader import Reloader


@dataclass(frozen=True)
class FindingReport:
    entity_type: str
    start: int
    end: int
    value: str
    score: float
    recognizer: str
    decision: str


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


async def explain(text: str, policy: Policy, detector: Detector, redactor: Redactor) -> Explanation:
    """Every finding of every entity type, what the policy does with it and why, and the result."""
    spec = policy.detection_spec()
    everything = DetectionSpec(language=spec.language, regions=spec.regions, recognizers=spec.recognizers)
    (findings,) = await detector.analyze([text], everything)
    reports = []
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        value = text[f.start : f.end]
        reason = skip_reason(f, value, policy)
        decision = f"ignored: {reason}" if reason else f"{policy.entities[f.entity_type].action.value}"
        reports.append(FindingReport(f.entity_type, f.start, f.end, value, round(f.score, 3), f.recognizer, decision))
    slot = Slot.detached(text)
    try:
        await redactor.redact([slot], policy)
    except PolicyBlocked as exc:
        return Explanation(policy.name, reports, None, exc.entity_types)
    return Explanation(policy.name, reports, slot.text, [])


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
