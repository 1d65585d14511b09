"""Policies: the YAML model, its validation (file, line, field), and the PolicyBook that holds the live set.

A policy is validated entirely when it is loaded: an unknown key, action or entity type is an error,
never ignored. The book is replaced as a whole (``PolicyBook`` is immutable); a request keeps the
``Policy`` object it started with, so a reload never changes a request in flight.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from . import recognizers
from .detector import DetectionSpec, PatternDef, RecognizerDef
from .errors import WeakerPolicy
from .settings import PolicyBindingSettings

#: Entity types Presidio's predefined recognizers and the spaCy NER mapping can produce.
PRESIDIO_ENTITIES = frozenset(
    {
        "AGE", "CREDIT_CARD", "CRYPTO", "DATE_TIME", "EMAIL_ADDRESS", "IBAN_CODE", "IP_ADDRESS",
        "LOCATION", "MAC_ADDRESS", "MEDICAL_LICENSE", "NRP", "ORGANIZATION", "PERSON", "PHONE_NUMBER",
        "UK_NHS", "URL", "US_BANK_NUMBER", "US_DRIVER_LICENSE", "US_ITIN", "US_PASSPORT", "US_SSN", "UUID",
    }
)  # fmt: skip

#: Every entity type a policy may name without defining it: what the detector can produce.
KNOWN_ENTITIES: frozenset[str] = PRESIDIO_ENTITIES | recognizers.ENTITY_TYPES


class Action(StrEnum):
    """What happens to a finding. Listed strongest first: on overlap the strongest action wins."""

    BLOCK = "block"
    REDACT = "redact"
    MASK = "mask"
    HASH = "hash"
    PSEUDONYMIZE = "pseudonymize"
    ALLOW = "allow"

    @property
    def strength(self) -> int:
        return _STRENGTH[self]


ACTION_ORDER: tuple[Action, ...] = tuple(Action)
_STRENGTH: dict[Action, int] = {action: len(ACTION_ORDER) - i for i, action in enumerate(ACTION_ORDER)}


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MaskSpec(_Strict):
    char: str = Field(default="*", min_length=1, max_length=1)
    #: Characters left visible at the end (``**** **** **** 1111``).
    keep_last: int = Field(default=4, ge=0)
    keep_first: int = Field(default=0, ge=0)
    #: Keep spaces, dashes, dots and ``@`` as they are, so the shape stays readable.
    keep_separators: bool = True


def _rule_shorthand(value: Any) -> Any:
    return {"action": value} if isinstance(value, str) else value


class EntityRule(_Strict):
    action: Action = Action.PSEUDONYMIZE
    #: Findings scoring below this are ignored. None: the policy's ``score_threshold``.
    threshold: float | None = Field(default=None, ge=0, le=1)
    mask: MaskSpec = MaskSpec()


class AllowTerm(_Strict):
    exact: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one(self) -> AllowTerm:
        if (self.exact is None) == (self.regex is None):
            raise ValueError("give exactly one of 'exact' or 'regex'")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from exc
        return self


def _term_shorthand(value: Any) -> Any:
    return {"exact": value} if isinstance(value, str) else value


class PatternSpec(_Strict):
    regex: str
    score: float = Field(default=0.6, ge=0, le=1)
    name: str = "pattern"

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"does not compile: {exc}") from exc
        return value


class RecognizerSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$")
    entity: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    patterns: list[PatternSpec] = []
    #: Terms that are always this entity (project code names, internal hostnames).
    deny_list: list[str] = []
    #: Words near a match that raise its score.
    context: list[str] = []
    validator: Literal["luhn", "iban"] | None = None

    @model_validator(mode="after")
    def _something(self) -> RecognizerSpec:
        if not self.patterns and not self.deny_list:
            raise ValueError("a recognizer needs 'patterns' or a 'deny_list'")
        return self


class Example(_Strict):
    text: str
    #: Substrings that must not reach the upstream.
    hidden: list[str] = []
    #: Substrings that must reach the upstream unchanged.
    kept: list[str] = []
    #: Set when the policy must refuse this text with a block.
    blocked: bool = False


Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class Policy(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    description: str = ""
    languages: list[str] = Field(default=["en"], min_length=1)
    #: ISO 3166 codes (``US``, ``GB``, ``DE``) whose national formats (phones, IDs) are looked for.
    regions: list[Annotated[str, Field(pattern=r"^[A-Z]{2}$")]] = [
        "US",
        "GB",
        "DE",
        "FR",
        "ES",
        "IT",
        "NL",
        "CA",
        "AU",
        "IN",
    ]
    #: Default minimum score for every entity without its own threshold.
    score_threshold: float = Field(default=0.35, ge=0, le=1)
    entities: dict[str, Annotated[EntityRule, BeforeValidator(_rule_shorthand)]] = {}
    recognizers: list[RecognizerSpec] = []
    allow_list: list[Annotated[AllowTerm, BeforeValidator(_term_shorthand)]] = []
    roles: list[Role] = ["system", "developer", "user", "assistant", "tool", "function"]
    #: Put original values back into answers. False: the client sees the placeholders.
    restore_answers: bool = True
    #: What the transcript keeps: both sides in full, only what the upstream saw, or no content at all.
    transcript: Literal["original", "redacted", "none"] = "redacted"
    #: Images, audio and files cannot be scanned: refuse them (default) or pass them through unscanned.
    unscannable_content: Literal["refuse", "pass"] = "refuse"
    #: A detected value is also replaced wherever else it appears in the request.
    propagate: bool = True
    examples: list[Example] = []

    @field_validator("languages")
    @classmethod
    def _one_language(cls, value: list[str]) -> list[str]:
        if len(set(value)) > 1:
            raise ValueError(
                "name one language: the gateway analyses each text once, with the one NLP model it runs "
                "(setting nlp.language), so a second language would never be analysed"
            )
        return value

    @model_validator(mode="after")
    def _entities_known(self) -> Policy:
        # parse_policy reports these with their line and field; this keeps Policy(...) itself strict.
        unknown = unknown_entities(self.entities, [r.entity for r in self.recognizers])
        if unknown:
            raise PydanticCustomError(
                "unknown_entity", "unknown entity type(s) in 'entities': {names}", {"names": ", ".join(unknown)}
            )
        return self

    def rule(self, entity_type: str) -> EntityRule | None:
        return self.entities.get(entity_type)

    def threshold(self, entity_type: str) -> float:
        rule = self.entities.get(entity_type)
        if rule is not None and rule.threshold is not None:
            return rule.threshold
        return self.score_threshold

    def detection_spec(self) -> DetectionSpec:
        recognizers = tuple(
            RecognizerDef(
                name=r.name,
                entity_type=r.entity,
                patterns=tuple(PatternDef(p.regex, p.score, p.name) for p in r.patterns),
                deny_list=tuple(r.deny_list),
                context=tuple(r.context),
                validator=r.validator,
            )
            for r in self.recognizers
        )
        thresholds = [self.threshold(e) for e in self.entities] or [self.score_threshold]
        return DetectionSpec(
            language=self.languages[0],
            regions=tuple(sorted(self.regions)),
            entities=tuple(sorted(self.entities)),
            recognizers=recognizers,
            min_score=min(thresholds),
        )

    def allowed(self, value: str) -> bool:
        for term in self.allow_list:
            if term.exact is not None and term.exact.casefold() == value.casefold():
                return True
            if term.regex is not None and re.fullmatch(term.regex, value):
                return True
        return False

    @property
    def detects_nothing(self) -> bool:
        return not self.entities

    def at_least_as_strict_as(self, other: Policy) -> bool:
        """True when this policy hides everything ``other`` hides, at least as hard and as readily.

        Compared: every non-allow entity of ``other`` (action strength and threshold), the roles
        scanned, the recognizers and the allow-list (a longer allow-list is weaker), unscannable
        content and value propagation. Restoring answers does not change what the upstream sees.
        """
        for name, theirs in other.entities.items():
            if theirs.action is Action.ALLOW:
                continue
            mine = self.entities.get(name)
            if mine is None or mine.action.strength < theirs.action.strength:
                return False
            if self.threshold(name) > other.threshold(name):
                return False
        if not set(other.roles) <= set(self.roles):
            return False
        if not {r.name for r in other.recognizers} <= {r.name for r in self.recognizers}:
            return False
        if not set(self.allow_list) <= set(other.allow_list):
            return False
        if other.unscannable_content == "refuse" and self.unscannable_content != "refuse":
            return False
        return self.propagate or not other.propagate


def unknown_entities(names: Iterable[object], custom: Iterable[object]) -> list[str]:
    """The names under ``entities`` that are neither a known type nor defined by the policy's recognizers."""
    defined = {c for c in custom if isinstance(c, str)}
    return [n for n in names if isinstance(n, str) and n not in KNOWN_ENTITIES and n not in defined]


def _unknown_entity_message(name: str, custom: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(KNOWN_ENTITIES | set(custom)), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return (
        f"unknown entity type '{name}'{hint} (known: the types in docs/policies.md, or one defined under 'recognizers')"
    )


def binding_matches(binding: PolicyBindingSettings, model: str | None, route: str) -> bool:
    """A binding matches when every condition it sets holds (and it sets at least one)."""
    if binding.route is not None and binding.route != route:
        return False
    if binding.model is not None and (model is None or not fnmatch.fnmatchcase(model, binding.model)):
        return False
    return binding.route is not None or binding.model is not None


class PolicyError(Exception):
    """A policy file is wrong; the message names the file, the line and the field."""


def _line_of(node: yaml.Node | None, loc: Iterable[str | int]) -> int | None:
    """The 1-based line in the YAML source of the value at ``loc``, as far as it can be followed."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    node, line = value, key.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def parse_policy(text: str, source: str, *, languages: Collection[str] | None = None) -> Policy:
    """Parse and validate one policy; errors name ``source``, the line and the field.

    Every mistake is reported at once, one per line, in file order. ``languages``: the languages the
    gateway's NLP engine analyses (None: not checked, as when only the schema is of interest).
    """
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise PolicyError(f"{source}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{source}:1: a policy must be a mapping with at least 'name'")
    # Checks the model cannot place or would skip once another field fails: each names its own field.
    problems: list[tuple[int, str]] = []
    for loc, message in _reference_problems(data, languages):
        line = _line_of(node, loc) or 1
        problems.append((line, f"{source}:{line}: {_dotted(loc)}: {message}"))
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            if error["type"] == "unknown_entity":
                continue  # reported above, at the entity's own line
            loc = [p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
            line = _line_of(node, loc) or 1
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            message = message.removeprefix("Value error, ")
            problems.append((line, f"{source}:{line}: {_dotted(loc) or '(policy)'}: {message}"))
    else:
        if not problems:
            return policy
    problems.sort(key=lambda p: p[0])
    raise PolicyError("\n".join(message for _, message in problems))


def _dotted(loc: Iterable[str | int]) -> str:
    return ".".join(str(p) for p in loc)


def _reference_problems(
    data: Mapping[str, Any], languages: Collection[str] | None
) -> list[tuple[list[str | int], str]]:
    """Entity names and languages that are well-formed but name nothing this gateway has."""
    problems: list[tuple[list[str | int], str]] = []
    entities = data.get("entities")
    specs = data.get("recognizers")
    custom = [r.get("entity") for r in specs if isinstance(r, dict)] if isinstance(specs, list) else []
    if isinstance(entities, dict):
        for name in unknown_entities(entities, custom):
            problems.append(
                (["entities", name], _unknown_entity_message(name, [c for c in custom if isinstance(c, str)]))
            )
    if languages is not None:
        listed = data.get("languages", ["en"])
        if isinstance(listed, list):
            analysed = ", ".join(sorted(languages))
            for i, language in enumerate(listed):
                if isinstance(language, str) and language not in languages:
                    where: list[str | int] = ["languages", i] if "languages" in data else ["languages"]
                    problems.append((
                        where,
                        f"'{language}' is not analysed by this gateway: its NLP engine analyses {analysed} "
                        f"(settings nlp.language and nlp.model); a policy may name only that language",
                    ))  # fmt: skip
    return problems


def load_policy_file(path: Path, *, languages: Collection[str] | None = None) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot be read ({exc.strerror})") from exc
    return parse_policy(text, str(path), languages=languages)


@dataclass(frozen=True)
class PolicyBook:
    """The whole set of policies in force, swapped atomically on reload."""

    policies: Mapping[str, Policy]
    default: str
    version: int = 1

    def __post_init__(self) -> None:
        if self.default not in self.policies:
            raise PolicyError(
                f"setting 'default_policy': the default policy '{self.default}' is not among the loaded "
                f"policies: {sorted(self.policies)}"
            )

    def get(self, name: str) -> Policy:
        return self.policies[name]

    def select(
        self,
        *,
        bound: str | None,
        model: str | None,
        route: str,
        bindings: Sequence[PolicyBindingSettings],
        requested: str | None = None,
    ) -> Policy:
        """The policy for one request.

        1. The key's policy, if the key binds one; otherwise the first binding that matches the
           route or model; otherwise the default.
        2. A matching binding replaces a key's policy only if it is at least as strict.
        3. A policy the request asks for (``X-PII-Policy``) applies only if it is at least as strict
           as the one from steps 1-2; asking for a weaker one is refused (403), never silently ignored.
        """
        rule = next((b.policy for b in bindings if binding_matches(b, model, route)), None)
        if bound is not None:
            chosen = self._named(bound, "this API key")
            if rule is not None and self._named(rule, "a policy binding").at_least_as_strict_as(chosen):
                chosen = self._named(rule, "a policy binding")
        else:
            chosen = self._named(rule, "a policy binding") if rule is not None else self.default_policy
        if requested is not None and requested != chosen.name:
            asked = self.policies.get(requested)
            if asked is None:
                raise WeakerPolicy(f"Unknown policy '{requested[:64]}'.")
            if not asked.at_least_as_strict_as(chosen):
                raise WeakerPolicy(
                    f"Policy '{asked.name}' is weaker than '{chosen.name}', which applies to this request."
                )
            chosen = asked
        return chosen

    def _named(self, name: str, bound_by: str) -> Policy:
        policy = self.policies.get(name)
        if policy is None:
            # A key or binding names a policy that is not loaded (a key file edited by hand, or a
            # binding the start-up check could not see): falling back to the default could weaken
            # it, so the request is refused (fail closed) until the policy is loaded or rebound.
            raise WeakerPolicy(
                f"The policy '{name[:64]}' that {bound_by} requires is not loaded, so the request is refused. "
                "Ask the gateway's administrator to load that policy or to rebind the key."
            )
        return policy

    @property
    def default_policy(self) -> Policy:
        return self.policies[self.default]


def load_policy_dir(
    directory: Path,
    default: str,
    version: int = 1,
    *,
    languages: Collection[str] | None = None,
    bindings: Sequence[PolicyBindingSettings] = (),
) -> PolicyBook:
    """Load and validate every ``*.yaml`` in ``directory`` as one set; any error rejects the whole set.

    The set must also hold every policy the settings refer to: ``default`` and each binding's policy.
    ``languages`` are those the NLP engine analyses (None: not checked).
    """
    if not directory.is_dir():
        raise PolicyError(f"{directory}: the policies folder does not exist")
    policies: dict[str, Policy] = {}
    problems: list[str] = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            policy = load_policy_file(path, languages=languages)
        except PolicyError as exc:
            problems.append(str(exc))
            continue
        if policy.name in policies:
            problems.append(f"{path}:1: name: policy '{policy.name}' is defined twice")
        policies[policy.name] = policy
    if problems:
        raise PolicyError("\n".join(problems))
    problems = missing_bound_policies(policies, bindings)
    if problems:
        raise PolicyError("\n".join(problems))
    return PolicyBook(policies=policies, default=default, version=version)


def missing_bound_policies(policies: Collection[str], bindings: Sequence[PolicyBindingSettings]) -> list[str]:
    """One message per binding in the settings whose policy is not in ``policies``."""
    loaded = ", ".join(sorted(policies))
    return [
        f"setting 'policy_bindings.{i}.policy': no policy named '{b.policy}' is loaded (loaded: {loaded})"
        for i, b in enumerate(bindings)
        if b.policy not in policies
    ]
