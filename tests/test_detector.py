"""The detector's NLP layer with the trimmed spaCy pipeline: lemmas, keywords and context still work."""

from __future__ import annotations

import os
from typing import Any

import pytest

from gateway.detector import DISABLED_COMPONENTS, build_engine, keep_tldextract_offline, load_nlp
from gateway.recognizers.names import pos
from tests.conftest import MODEL


@pytest.fixture(scope="module")
def engine() -> Any:
    return build_engine(MODEL, "en", ("US",))


def test_the_pipeline_runs_without_the_components_detection_does_not_read() -> None:
    nlp = load_nlp(MODEL, DISABLED_COMPONENTS)
    assert nlp.pipe_names == ["ner"]
    assert "tagger" in nlp.component_names  # kept, for names.pos() to run on demand


def test_the_tagger_runs_only_when_a_rule_asks_and_then_tags_as_the_full_pipeline_does(engine: Any) -> None:
    text = "Escalated to Priyanka R Venkataraman in legal; she signs off on refunds over 5k."
    artifacts = engine.nlp_engine.process_text(text, "en")
    doc = artifacts.tokens
    assert all(not t.tag_ for t in doc)  # not tagged with the pipeline
    assert pos(doc[3]) == "PROPN"  # the first question tags the whole doc
    full = load_nlp(MODEL, ("parser",))(text)
    assert [t.tag_ for t in doc] == [t.tag_ for t in full]
    assert [pos(t) for t in doc] == [t.pos_ for t in full]


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


def test_tldextract_is_kept_offline_even_when_imported_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing Presidio imports tldextract, whose module-wide extractor would fetch the suffix list."""
    import tldextract
    import tldextract.tldextract as module

    monkeypatch.delenv("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", raising=False)
    online = module.TLDExtract()  # what an import before the variable was set builds
    assert online.suffix_list_urls
    monkeypatch.setattr(module, "TLD_EXTRACTOR", online)
    keep_tldextract_offline()
    assert module.TLD_EXTRACTOR.suffix_list_urls == ()
    assert os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] == ""  # and for the worker processes
    assert tldextract.extract("mail.example.co.uk").suffix == "co.uk"  # from the bundled snapshot
