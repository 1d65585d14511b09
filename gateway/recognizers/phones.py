"""PHONE_NUMBER: international and national phone numbers, for the regions a policy names.

Candidates are digit runs shaped like phone numbers (7 to 15 digits, with ``+``/``00``/``011``, spaces,
dashes, dots, parentheses and an optional extension ``x89``/``ext. 1234``). Each candidate is then
decided by ``phonenumbers``:

* ``+44 20 7946 0958``, ``0044 ...``, ``011 ...``: valid for its country code (any region): 0.75.
* a national number: ``PhoneNumberMatcher`` with ``Leniency.STRICT_GROUPING`` for each policy region,
  so that the digit groups must be the region's own (``2024-000123`` is a valid US number but not
  grouped like one): 0.6, or 0.25 for a bare digit run, which needs a phone word to pass.
* North American shapes ``(415) 555-0132``, ``415-555-0132``, ``415.555.0132``, ``+1 ...`` are phone
  numbers even when the area code is not assigned (examples, fictional numbers): 0.55.
* With a phone word near, any phone-shaped candidate: 0.45 (fictional UK ``0113 496 0771``, new ranges,
  regions the policy does not name).

A phone word nearby (``call``, ``phone``, ``tel``, ``mobile``... before it, ``office``/``fax`` after) adds
0.25. An identifier word just before the digits (``Order #``, ``ticket``, ``invoice``, ``ID:``, ``IBAN``)
drops the candidate, as do dates, IP addresses, versions, decimals, amounts and card-length digit runs.

This recognizer supersedes Presidio's ``PhoneRecognizer`` (see ``SUPERSEDED`` in the package), which
validates with ``Leniency.VALID`` in eight fixed regions and so reads order ids and IBAN fragments as
phone numbers.

Overlap with UK_NHS: Presidio's ``NhsRecognizer`` reads any 3-3-4 digit group whose mod-11 check digit
works out as an NHS number, with score 1.0, which is one US phone number in eleven. When this
recognizer finds a phone number covering that span and no health context word is near, it lowers the
NHS finding to 0 in ``enhance_using_context`` (the hook Presidio gives recognizers to weigh each
other's findings), so the number is reported once, as PHONE_NUMBER.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import phonenumbers
from phonenumbers import Leniency, PhoneNumberMatcher
from presidio_analyzer import EntityRecognizer, RecognizerResult

from .rules import RuleRecognizer, window

ENTITY = "PHONE_NUMBER"

#: Beyond this many candidates in one text, the rest are not validated one by one but reported by shape
#: alone: hostile input costs linear time, and detection fails towards hiding, not leaking.
MAX_VALIDATED = 500

_CANDIDATE = re.compile(
    r"(?<![\w+@/.#$£€%\[{\\-])"
    r"(?P<num>(?:\+|\b00|\b011)?[ \t]?(?:\(\+?\d{1,5}\)|\d)[\d \t().\-/]{4,24}\d)"
    r"(?P<ext>[ \t]{0,2}(?:ext\.?|extension|x|#)[ \t]{0,2}\d{1,6})?"
    r"(?![\w@\]}]|[.,:]\d)"
)
_DECIMAL = re.compile(r"\d+\.\d+")
_NANP = re.compile(r"(?:(?:\+|00|011)?[ .-]?1[ .-]?)?(?:\(\d{3}\)[ ]?|\d{3}[-.])\d{3}[-.]\d{4}")
_DATE_SEPARATOR = re.compile(r"[-./]")
_DIGIT_GROUP = re.compile(r"\d+")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
#: IPv4 addresses and versions (1.2.3456, 10.0.0.1); a dotted phone number starts with three digits or more groups.
_DOTTED = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}|\d{1,2}(?:\.\d{1,4}){1,3}")
_PHONE_WORDS = re.compile(
    r"\b(?:phone|phones|tel|tele|telephone|mobile|mob|cell|cellphone|call|called|calling|fax|whatsapp|sms|text|"
    r"txt|texts|texting|message|messages|voicemail|answering|ringing|dialed|dialled|calls|contact|reach|dial|ring|"
    r"landline|hotline|helpline|number|numbers|telefon|telefono|teléfono|téléphone|"
    r"portable|handy|móvil|movil|cellulare|tlf)\b|\b(?:m|t|p|ph|mob|tel|fax)[.:]"
)
_NOT_PHONE = re.compile(
    r"\b(?:order|orders|invoice|inv|ticket|case|ref|reference|tracking|track|id|sku|serial|transaction|txn|account|"
    r"acct|iban|ssn|card|po|build|version|ver|isbn|ean|upc|confirmation|booking|pnr|policy|claim|member|customer|"
    r"user|nhs|patient|zip|postcode|amount|total|balance|qty|quantity|item|part|model|license|licence|routing|"
    r"swift|bic|sort code|passport|tax|vat|ein|tin|receipt|shipment|parcel|package|awb|mrn)"
    r"\b[ \t]*(?:number|num|nr|no|#|code|id)?[ \t]*[.:#=]?[ \t]*(?:is[ \t]+)?$"
)
#: A label after the number: "0380 7558505 office", "+44 7700 900123 (mobile)".
_PHONE_AFTER = re.compile(
    r"[ \t]*[-(,]?[ \t]*(?i:office|fax|mobile|mob|cell|home|work|tel|phone|direct|landline|whatsapp)\b"
)
_NHS_CONTEXT = re.compile(r"\b(?:nhs|health|patient|hospital|gp|medical|clinic|nhs number)\b")


class RegionalPhoneRecognizer(RuleRecognizer):
    """Phone numbers validated for the policy's regions, with extensions; see the module docstring."""

    def __init__(self, language: str, regions: tuple[str, ...]) -> None:
        self.regions = tuple(r for r in regions if r in phonenumbers.SUPPORTED_REGIONS)
        # phonenumbers compiles its metadata's patterns as it goes and, by default, leaves them to ``re``'s
        # cache of 512, which ten regions' patterns and ours overflow: a number would cost fresh regex
        # parses. Its own cache keeps them (bounded by the metadata; process-wide, like the library).
        enable_cache = getattr(phonenumbers, "enable_pattern_cache", None)
        if enable_cache is not None:
            enable_cache()
        super().__init__(ENTITY, (), name="RegionalPhoneRecognizer", language=language)

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[RecognizerResult]:
        if entities and ENTITY not in entities:
            return []
        results = [self.result(s, e, score, rule) for s, e, score, rule in self.spans(text)]
        return list(EntityRecognizer.remove_duplicates(results))

    def spans(self, text: str) -> Iterator[tuple[int, int, float, str]]:
        if sum(map(str.isdigit, text)) < 7:
            return
        for count, m in enumerate(_CANDIDATE.finditer(text)):
            number = m.group("num").strip()
            start = m.start("num") + (len(m.group("num")) - len(m.group("num").lstrip()))
            end = m.end("ext") if m.group("ext") else start + len(number)
            if not _plausible(number) or _NOT_PHONE.search(window(text, start, 40)):
                continue
            if count >= MAX_VALIDATED:
                if _separated(number) or number.startswith("+") or 10 <= _digits(number) <= 11:
                    yield start, end, 0.4, "phone_shape_unvalidated"
                continue
            context = _PHONE_WORDS.search(window(text, start, 40)) is not None or _PHONE_AFTER.match(text, end)
            found = self._decide(text, start, end, number, bool(context))
            if found is None:
                continue
            s, e, score, rule = found
            yield s, e, min(score + (0.25 if context else 0.0), 1.0), rule

    def _decide(
        self, text: str, start: int, end: int, number: str, context: bool
    ) -> tuple[int, int, float, str] | None:
        snippet = text[start:end]
        if number.startswith(("+", "00", "011")):
            for match in PhoneNumberMatcher(snippet, "US" if number.startswith("011") else "GB", Leniency.VALID):
                return start + match.start, start + match.end, 0.75, "international"
            if number.startswith("+") and (_separated(number) or _digits(number) >= 10):
                return start, end, 0.5, "international_shape"
            if _NANP.fullmatch(number):
                return start, end, 0.55, "north_american_shape"
            if context:
                return start, end, 0.45, "international_shape_in_context"
            return None
        for region in self.regions:
            for match in PhoneNumberMatcher(snippet, region, Leniency.STRICT_GROUPING):
                if match.end - match.start < len(number) - 1:
                    continue  # only part of the candidate: an id with a phone-like piece
                # A bare digit run is as often an id or a timestamp: it needs a phone word to pass a 0.3 threshold.
                separated = _separated(match.raw_string)
                return start + match.start, start + match.end, 0.6 if separated else 0.25, f"national_{region}"
        if _NANP.fullmatch(number):
            return start, end, 0.55, "north_american_shape"
        if context and (_separated(number) or 10 <= _digits(number) <= 11):
            # "call me on 0113 496 0771": a number shaped like a phone number where the text says it is one,
            # even when no region's metadata knows the range (fictional, new or foreign numbers)
            return start, end, 0.45, "phone_shape_in_context"
        return None

    def enhance_using_context(
        self,
        text: str,
        raw_recognizer_results: list[RecognizerResult],
        other_raw_recognizer_results: list[RecognizerResult],
        nlp_artifacts: Any,
        context: list[str] | None = None,
    ) -> list[RecognizerResult]:
        """Lower an NHS finding inside the span of a phone number when no health word is near."""
        phones = [(r.start, r.end) for r in raw_recognizer_results]
        for other in other_raw_recognizer_results:
            if other.entity_type != "UK_NHS" or not any(s <= other.start and other.end <= e for s, e in phones):
                continue
            if _NHS_CONTEXT.search(window(text, other.start, 60)):
                continue
            other.score = 0.0
            other.append_analysis_explanation_text(f"Lowered by `{self.name}`: a phone number, no health context")
        return raw_recognizer_results


def _digits(value: str) -> int:
    return sum(c.isdigit() for c in value)


def _separated(value: str) -> bool:
    return any(c in " -.()/" for c in value.strip().lstrip("+"))


def _starts_with_date(number: str) -> bool:
    """``2024-03-15``, ``15.03.2024 ...``: a leading date whose day and month are possible.

    ``03.91.12.17.13`` (a French number) and ``40-91-98-72`` start with three digit groups too, but
    no calendar has a month 91: those stay candidates.
    """
    m = _DATE.match(number)
    if m is None:
        return False
    fields = _DATE_SEPARATOR.split(m.group())
    parts = [int(f) for f in fields]
    year_first = len(fields[0]) == 4
    a, b = (parts[1], parts[2]) if year_first else (parts[0], parts[1])
    return (1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)


def _plausible(number: str) -> bool:
    """Cheap shape checks before any parsing: length, dates, IPs/versions, card-like runs."""
    digits = _digits(number)
    if not 7 <= digits <= 15:
        return False
    if _starts_with_date(number) or _DOTTED.fullmatch(number) or _DECIMAL.fullmatch(number):
        return False
    groups = _DIGIT_GROUP.findall(number)
    if sum(len(g) == 1 for g in groups) > 2 or number.count("/") > 1:
        return False
    # Unseparated digit runs: 10-11 digits national, more only with an international prefix.
    return not (len(groups) == 1 and digits > 11 and not number.startswith("+"))


def recognizers(language: str, regions: tuple[str, ...]) -> list[RuleRecognizer]:
    return [RegionalPhoneRecognizer(language, regions)]
