"""The gateway's own Presidio recognizers, added beside Presidio's predefined ones.

``build(language, regions)`` returns recognizer instances for one engine. ``ENTITY_TYPES`` lists every
entity type they can produce, so that policies may name them. ``docs/entities.md`` documents each
recognizer, its rules and scores.

Presidio runs a recognizer only when the request asks for one of its entity types, so a policy that
does not name ``SECRET`` pays nothing for the secret rules.
"""

from __future__ import annotations

from typing import Any

from . import addresses, credentials, financial, lexicon, names, phones

#: Entity types produced by the recognizers in this package (policies may name these).
ENTITY_TYPES: frozenset[str] = frozenset({credentials.ENTITY, addresses.ENTITY})

#: Predefined Presidio recognizers that ours replace everywhere: ``RegionalPhoneRecognizer`` covers
#: ``PhoneRecognizer`` without reading order ids and invoice numbers as phone numbers.
SUPERSEDED: frozenset[str] = frozenset({"PhoneRecognizer"})


def superseded(regions: tuple[str, ...]) -> frozenset[str]:
    """Names of predefined recognizers an engine for ``regions`` should not load (``build_engine`` removes them).

    Besides ``SUPERSEDED``: ``NhsRecognizer`` reads any 3-3-4 digit group whose mod-11 check digit works
    out as a UK NHS number, which is one US phone number in eleven, so it stays only for policies naming GB.
    """
    extra = set()
    if "GB" not in regions:
        extra.add("NhsRecognizer")
    return SUPERSEDED | extra


def build(language: str, regions: tuple[str, ...]) -> list[Any]:
    """Recognizers for one analyzer engine. ``regions`` are ISO 3166 codes the policy names (may be empty)."""
    return [
        *credentials.recognizers(language),
        *addresses.recognizers(language),
        *phones.recognizers(language, regions),
        *financial.recognizers(language),
        *names.recognizers(language),
        *lexicon.recognizers(language),
    ]
