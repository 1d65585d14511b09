"""The detector's NLP layer with the trimmed spaCy pipeline: lemmas, keywords and context still work."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.detector import DISABLED_COMPONENTS, build_engine, load_nlp
from tests.conftest import MODEL


@pytest.fixture(scope="module")
def engine() -> Any:
    return build_engine(MODEL, "en", ("US",))


def test_the_pipeline_runs_without_the_components_detection_does_not_read() -> None:
    nlp = load_nlp(MODEL, DISABLED_COMPONENTS)
    assert not set(DISABLED_COMPONENTS) & set(nlp.pipe_names)
    assert "ner" in nlp.pipe_names and "tagger" in nlp.pipe_names


def test_lemmas_fall_back_to_lower_case_words_and_feed_the_keywords(engine: Any) -> None:
    artifacts = engine.nlp_engine.process_text("Please EMAIL Maria about the Invoices", "en")
    assert artifacts.lemmas == ["please", "email", "maria", "about", "the", "invoices"]
    # Stop words are not keywords; the rest are, as Presidio's context enhancer expects.
    assert {"email", "maria", "invoices"} <= set(artifacts.keywords)
    assert "the" not in artifacts.keywords


def test_a_context_word_still_raises_a_score(engine: Any) -> None:
    def score(text: str) -> float:
        found = [r for r in engine.analyze(text=text, language="en") if r.entity_type == "US_SSN"]
        assert found, text
        return float(max(r.score for r in found))

    # Presidio's SSN recognizer gives a bare pattern a low score and lifts it with "ssn" nearby.
    assert score("My ssn is 536-22-8174 for the form.") > score("The code 536-22-8174 for the form.")
