"""The gateway's own Presidio recognizers, added beside Presidio's predefined ones.

``build(language, regions)`` returns recognizer instances for one engine. ``ENTITY_TYPES`` lists every
entity type they can produce, so that policies may name them.
"""

from __future__ import annotations

from typing import Any

#: Entity types produced by the recognizers in this package (policies may name these).
ENTITY_TYPES: frozenset[str] = frozenset()


def build(language: str, regions: tuple[str, ...]) -> list[Any]:
    """Recognizers for one analyzer engine. ``regions`` are ISO 3166 codes the policy names (may be empty)."""
    return []
