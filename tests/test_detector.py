"""The detector's NLP layer with the trimmed spaCy pipeline: lemmas, keywords and context still work.

Also what keeps a long-running detector's memory flat: the memory zone around each analysis, the findings
cache's byte budget (and how well it counts), and workers recycled without a wrong or lost answer.
"""

from __future__ import annotations

import asyncio
import os
import random
import tracemalloc
from typing import Any

import pytest

from gateway.detector import (
    DISABLED_COMPONENTS,
    DetectionSpec,
    Finding,
    PresidioDetector,
    _Cache,
    _cache_key,
    analyze_rows,
    build_engine,
    keep_tldextract_offline,
    load_nlp,
)
from gateway.recognizers.names import LAZY_TAGGER, pos, tag_tokens
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


#: Texts with context words next to findings, tokens spaCy splits (``536-22-8174``), runs of spaces and
#: colons inside words: what the engine's own artifacts and enhancer must handle as Presidio's do.
CONTEXT_TEXTS = (
    "My ssn is 536-22-8174 for the form.",
    "Re:ssn   536-22-8174, and the  card:\t4111 1111 1111 1111 (visa).",
    "Routing number 021000021, account 12345678; phone: 212-555-0101.\n\nDriver license: A1234567 (WA).",
    "",
)


@pytest.mark.parametrize("text", CONTEXT_TEXTS)
def test_keywords_are_presidios_own(engine: Any, text: str) -> None:
    """The artifacts are built in one pass, but the keywords are what ``NlpArtifacts.set_keywords`` derives."""
    from presidio_analyzer.nlp_engine import NlpArtifacts

    artifacts = engine.nlp_engine.process_text(text, "en")
    doc = artifacts.tokens
    assert artifacts.tokens_indices == [t.idx for t in doc]
    assert artifacts.lemmas == [t.lemma_ or t.lower_ for t in doc]
    assert artifacts.keywords == set(NlpArtifacts.set_keywords(engine.nlp_engine, artifacts.lemmas, "en"))


@pytest.mark.parametrize("text", CONTEXT_TEXTS)
def test_the_context_enhancer_scores_as_presidios_does(engine: Any, text: str) -> None:
    """Same findings, scores and supporting words as Presidio's LemmaContextAwareEnhancer (which deep-copies
    the results and walks the tokens from the start for each finding)."""
    from presidio_analyzer import AnalyzerEngine

    stock = AnalyzerEngine(registry=engine.registry, nlp_engine=engine.nlp_engine, supported_languages=["en"])

    def found(analyzer: Any) -> list[tuple[int, int, str, float, str | None]]:
        results = analyzer.analyze(text=text, language="en", return_decision_process=True)
        return sorted(
            (r.start, r.end, r.entity_type, r.score, r.analysis_explanation.supportive_context_word) for r in results
        )

    assert found(engine) == found(stock)


def test_the_token_at_a_finding_is_the_one_presidios_walk_finds(engine: Any) -> None:
    """Every offset, token starts and the middle of tokens and of runs of spaces alike."""
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

    text = "Call  me on 212-555-0101,\n\n  or e-mail  ops:team (my ssn: 536-22-8174)."
    artifacts = engine.nlp_engine.process_text(text, "en")
    ours, stock = engine.context_aware_enhancer, LemmaContextAwareEnhancer()
    for start in range(len(text)):
        expected = stock._extract_surrounding_words(artifacts, text[start:], start)
        assert sorted(ours._extract_surrounding_words(artifacts, text[start:], start)) == sorted(expected)


def test_the_context_enhancer_raises_scores_in_place(engine: Any) -> None:
    """No deep copy: the results handed in are fresh from one analysis and nothing else reads them."""
    from presidio_analyzer import RecognizerResult

    text = "My ssn is 536-22-8174 for the form."
    artifacts = engine.nlp_engine.process_text(text, "en")
    recognizers = engine.registry.get_recognizers(language="en", all_fields=True)
    ssn = next(r for r in recognizers if r.name == "UsSsnRecognizer")
    raw = ssn.analyze(text=text, entities=["US_SSN"], nlp_artifacts=artifacts)
    for r in raw:
        r.recognition_metadata[RecognizerResult.RECOGNIZER_IDENTIFIER_KEY] = ssn.id
    before = [r.score for r in raw]
    enhanced = engine.context_aware_enhancer.enhance_using_context(text, raw, artifacts, recognizers)
    assert all(a is b for a, b in zip(enhanced, raw, strict=True))
    assert [r.score for r in raw] > before  # "ssn" nearby


def test_tokens_tagged_in_windows_get_the_whole_docs_tags(engine: Any) -> None:
    """A token's tag depends on the few tokens around it (``LazyTagger.reach``): tagged in a window around
    it, it gets the tag the whole doc gives, so the names rules decide as before, at a fraction of the cost."""
    text = (
        "Hi Team,\n\nEscalated to Priyanka R Venkataraman in legal; she signs off on refunds over 5k. "
        "Customer: Jörg Lindqvist (ref 4411), wants a callback from Dr. Amara Okafor after 3pm, cc Anna, Ben and Chen."
        "\n\nBest,\nlars"
    )
    full = load_nlp(MODEL, ("parser",))(text)
    for step in (20, 25, 31):
        doc = engine.nlp_engine.process_text(text, "en").tokens
        assert doc.user_data[LAZY_TAGGER].reach  # known for spaCy's CNN pipelines
        asked = list(range(step // 2, len(doc), step))
        tag_tokens(doc, asked)
        assert LAZY_TAGGER in doc.user_data  # not by tagging the whole doc
        assert [doc[i].tag_ for i in asked] == [full[i].tag_ for i in asked]
        assert not all(t.tag_ for t in doc)
        pos(doc[0])  # and the rest on demand, as before
        assert [t.tag_ for t in doc] == [t.tag_ for t in full]


# --- Memory over a long run ---------------------------------------------------------------------------


def fresh_texts(count: int, seed: int) -> list[str]:
    """Texts full of words no vocabulary has seen: invented names, addresses and numbers."""
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4)))

    return [
        f"Please ask {word().title()} {word().title()} at {word()}.{word()}@{word()}.org or call "
        f"415-555-{rng.randint(1000, 9999)}; the parcel goes to {rng.randint(1, 999)} {word().title()} Street."
        for _ in range(count)
    ]


def test_an_analysis_leaves_the_vocabulary_as_it_found_it(engine: Any) -> None:
    spec = DetectionSpec(regions=("US",))
    nlp = load_nlp(MODEL, DISABLED_COMPONENTS)
    analyze_rows(MODEL, ["warm up: John Smith, 415-555-0100"], spec, DISABLED_COMPONENTS)
    before = len(nlp.vocab.strings)
    texts = fresh_texts(40, seed=1)
    rows = analyze_rows(MODEL, texts, spec, DISABLED_COMPONENTS)
    # Without the memory zone every new word stayed in the string store: ~14 KiB a fresh text, for ever.
    assert len(nlp.vocab.strings) == before
    # And the findings are those of the same engine analysing outside a zone.
    for text, found in zip(texts, rows, strict=True):
        expected = [
            (r.start, r.end, r.entity_type, float(r.score), r.recognition_metadata["recognizer_name"])
            for r in engine.analyze(text=text, language="en")
        ]
        assert sorted(found) == sorted(expected)
    assert any(found for found in rows)


def sample_findings(rng: random.Random, count: int) -> list[Finding]:
    types = ("PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "LOCATION", "US_SSN")
    return [
        Finding(rng.randrange(10_000), rng.randrange(10_000), rng.choice(types), rng.random(), rng.choice(types) + "R")
        for _ in range(count)
    ]


def test_the_cache_counts_what_its_entries_really_cost() -> None:
    rng = random.Random(3)
    cache = _Cache(capacity=1_000_000)
    cache.put(_cache_key("names", b"k"), sample_findings(rng, 50))  # every name in the table already
    batch = [(f"text {i}", sample_findings(rng, rng.randrange(30))) for i in range(5_000)]
    counted_before = cache.size_bytes
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for text, findings in batch:
            cache.put(_cache_key(text, b"k"), findings)
        measured = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    counted = cache.size_bytes - counted_before
    assert 0.85 <= measured / counted <= 1.15, (measured, counted)


def test_the_cache_stays_within_its_byte_budget_and_drops_the_oldest_first() -> None:
    rng = random.Random(4)
    cache = _Cache(capacity=1_000_000, budget_bytes=100_000)
    written = {}
    for i in range(2_000):
        key = _cache_key(f"text {i}", b"k")
        written[key] = sample_findings(rng, rng.randrange(1, 20))
        cache.put(key, written[key])
        assert cache.size_bytes <= 100_000
        if i == 10:
            assert cache.get(_cache_key("text 0", b"k")) == written[_cache_key("text 0", b"k")]
    assert sum(_Cache.cost(k, v) for k, v in cache.entries.items()) == cache.size_bytes
    assert 100 < len(cache.entries) < 2_000
    # What is left is the newest, and comes back exactly as it went in.
    kept = list(cache.entries)
    assert kept == list(written)[-len(kept) :]
    for key in kept:
        assert cache.get(key) == written[key]
    # An entry larger than the whole budget is not cached (and pushes nothing out).
    cache.put(_cache_key("huge", b"k"), sample_findings(rng, 10_000))
    assert list(cache.entries) == kept


def test_the_cache_still_bounds_its_entries() -> None:
    cache = _Cache(capacity=3)
    for i in range(10):
        cache.put(_cache_key(str(i), b"k"), [])
    assert [cache.get(_cache_key(str(i), b"k")) for i in range(10)] == [None] * 7 + [[], [], []]


async def test_a_recycled_worker_answers_as_the_first_one_did() -> None:
    texts = fresh_texts(2, seed=5)
    detector = PresidioDetector(MODEL, workers=1, timeout=120, cache_entries=0, recycle_after_jobs=1)
    await detector.start([("US",)])
    try:
        spec = DetectionSpec(regions=("US",))
        first = await detector.analyze(texts, spec)
        answers = [first]
        # The worker retires after each job; its replacement starts while it serves on. Two recycles mean
        # that a replacement has answered too; no analysis failed on the way.
        async with asyncio.timeout(240):
            while detector.recycled_workers < 2:
                answers.append(await detector.analyze(texts, spec))
                await asyncio.sleep(0.05)
        assert all(answer == first for answer in answers)
        assert any(first)
    finally:
        await detector.close()
