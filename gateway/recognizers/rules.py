"""The base of our pattern recognizers: compiled rules whose match, or its ``value`` group, becomes a finding.

Presidio's ``PatternRecognizer`` reports the whole regex match. Most of our rules need context around
the value (``password=`` before it, a house number before a street name) that must not be part of
the span, and a check that can drop or rescore a candidate (Luhn, entropy, a JSON header). A
``RuleRecognizer`` reports each rule by name, so Presidio's explanation says which one fired.

Every regex here runs on untrusted text of any size, with the standard ``re`` engine and no timeout.
So each pattern starts at an anchor (a literal or a look-behind that fails fast), and every repeat
is bounded or cannot overlap its neighbour; ``tests/test_recognizers.py`` runs them all on 1 MB of
adversarial input.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from presidio_analyzer import AnalysisExplanation, EntityRecognizer, LocalRecognizer, RecognizerResult

#: Decides on one candidate: given the match and the candidate span in ``match.string``, the span to
#: report (narrowed or widened) and its score, or None to drop it.
Check = Callable[[re.Match[str], int, int], "tuple[int, int, float] | None"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One way of finding an entity. The finding is the first matched group named ``value*``, else the match."""

    name: str
    pattern: re.Pattern[str]
    score: float
    check: Check | None = None
    #: A non-empty ``prefilter``: the rule only runs when one of these substrings is in the text.
    prefilter: tuple[str, ...] = ()

    def spans(self, text: str) -> Iterable[tuple[int, int, float]]:
        value_groups = [g for g in self.pattern.groupindex if g.startswith("value")]
        for match in self.pattern.finditer(text):
            start, end = match.span()
            for group in value_groups:
                if match.group(group) is not None:
                    start, end = match.span(group)
                    break
            if end <= start:
                continue
            if self.check is None:
                yield start, end, self.score
                continue
            decided = self.check(match, start, end)
            if decided is not None and decided[1] > decided[0] and decided[2] > 0:
                yield decided


class RuleRecognizer(LocalRecognizer):
    """A Presidio recognizer for one entity type made of named rules."""

    name: str

    def __init__(
        self,
        entity: str,
        rules: Sequence[Rule],
        *,
        name: str,
        language: str = "en",
        context: list[str] | None = None,
    ) -> None:
        self.rules = tuple(rules)
        super().__init__(supported_entities=[entity], name=name, supported_language=language, context=context)

    def load(self) -> None:
        """Nothing to load: the rules are compiled when their module is imported."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[RecognizerResult]:
        if entities and not set(entities) & set(self.supported_entities):
            return []
        lowered: str | None = None
        results: list[RecognizerResult] = []
        for rule in self.rules:
            if rule.prefilter:
                if lowered is None:
                    lowered = text.lower()
                if not any(p in lowered for p in rule.prefilter):
                    continue
            for start, end, score in rule.spans(text):
                results.append(self.result(start, end, min(score, 1.0), rule.name, rule.pattern.pattern))
        return list(EntityRecognizer.remove_duplicates(results))

    def result(self, start: int, end: int, score: float, rule: str, pattern: str = "") -> RecognizerResult:
        explanation = AnalysisExplanation(
            recognizer=self.name,
            original_score=score,
            pattern_name=rule,
            pattern=pattern,
            textual_explanation=f"Detected by `{self.name}` using rule `{rule}`",
        )
        return RecognizerResult(
            entity_type=self.supported_entities[0],
            start=start,
            end=end,
            score=score,
            analysis_explanation=explanation,
            recognition_metadata={
                RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
            },
        )


def words(spec: str) -> frozenset[str]:
    """A set of words written as one whitespace-separated string (long lists read better that way)."""
    return frozenset(spec.split())


def window(text: str, start: int, size: int) -> str:
    """The ``size`` characters before ``start``, lower-cased: where context words are looked for."""
    return text[max(0, start - size) : start].lower()


def phrase_regex(phrases: Iterable[str]) -> str:
    """A regex for a set of phrases, case-insensitive, each starting a word; a space matches spaces or tabs.

    Built for speed on long texts: it opens with one character class (the phrases' first letters in both
    cases), which lets the regex engine skip every other position without entering the pattern, checks
    the word start with a look-behind after that first character, and shares common prefixes in a trie
    so that each position tries few alternatives. Longer phrases win over their prefixes.
    """
    trie: dict[str, Any] = {}
    for phrase in phrases:
        node = trie
        for ch in " ".join(phrase.lower().split()):
            node = node.setdefault(ch, {})
        node[""] = {}
    firsts = sorted(k for k in trie if k)
    branches = [f"(?<={_either_case(ch)}){_trie_body(trie[ch])}" for ch in firsts]
    first_class = "[" + "".join(_class_members(ch) for ch in firsts) + "]"
    return rf"(?:{first_class}(?<![\w'’.-].)(?:{'|'.join(branches)}))"


def _either_case(ch: str) -> str:
    return f"[{_class_members(ch)}]" if ch != ch.upper() and len(ch.upper()) == 1 else re.escape(ch)


def _class_members(ch: str) -> str:
    upper = ch.upper()
    members = ch + upper if upper != ch and len(upper) == 1 else ch
    return "".join("\\" + m if m in "\\]^-[" else m for m in members)


def _trie_body(node: dict[str, Any]) -> str:
    # Children start with different characters, so at most one alternative can go on: no backtracking
    # between them, and the optional group after a complete phrase prefers the longer phrase.
    alternatives = [(r"[ \t]+" if ch == " " else _either_case(ch)) + _trie_body(node[ch]) for ch in sorted(node) if ch]
    if not alternatives:
        return ""
    body = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
    return f"(?:{body})?" if "" in node else body
