"""The name lexicon recognizer (``gateway.recognizers.lexicon``): its tables and its rules, without spaCy.

The texts it must handle in context, with the real engine, are in ``tests/texts/names.yaml`` and
``tests/texts/negatives.yaml``; these tests pin the rules themselves.
"""

from __future__ import annotations

import pytest

from gateway.lexicons import lexicon
from gateway.recognizers.lexicon import MAX_NAME_WORDS, NameLexiconRecognizer


@pytest.fixture(scope="module")
def recognizer() -> NameLexiconRecognizer:
    return NameLexiconRecognizer("en")


def found(recognizer: NameLexiconRecognizer, text: str, labels: dict[int, str] | None = None) -> list[str]:
    return [text[s:e] for s, e, _, _ in recognizer.spans(text, labels or {})]


def test_tables_tell_names_from_words() -> None:
    lex = lexicon()
    assert {"emily", "teresa", "gregory"} <= lex.given
    assert {"pritchett", "hernandez", "brown"} <= lex.surnames
    assert {"will", "mark", "rose", "brown", "little"} <= lex.wordy  # names that are English words
    assert not {"emily", "teresa", "hernandez"} & lex.wordy
    assert "sultygov" not in lex.known and "table" in lex.known


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("Why is Teresa so impulsive?", ["Teresa"]),
        ("we need to add Rhys Talbot as guardian", ["Rhys Talbot"]),
        ("Call Will Thompson today", ["Will Thompson"]),
        ("approved by Anja R Fuchs. Next", ["Anja R Fuchs"]),
        ("Gregory Pritchett's laptop was wiped", ["Gregory Pritchett"]),
        ("Dear Emily Brown, thanks", ["Emily Brown"]),  # a surname that is an English word, after a given name
        ("Maybe it's under Ludwig van der Rohe", ["Ludwig van der Rohe"]),
        ("transferred from Bibulat Sultygov yesterday", ["Bibulat Sultygov"]),
        ("a song by Stejskalová, sadly", ["Stejskalová"]),  # a script English does not use, unknown word
    ],
)
def test_names(recognizer: NameLexiconRecognizer, text: str, names: list[str]) -> None:
    assert found(recognizer, text) == names


@pytest.mark.parametrize(
    "text",
    [
        "The Marshall Plan and the Monroe Doctrine",  # a given name inside the name of a thing
        "Victoria Station is closed",
        "Will the May release ship? Mark the ticket as done.",  # given names that are words, alone
        "The Sanders report is due",  # a known surname alone
        "We run Grafana Loki and Prometheus Alertmanager on Kubernetes",
        "Quarterly Business Review For The Northern Region",
        "see @Emily and /home/emily and <PERSON_1>",  # handles, paths and placeholders are not prose
    ],
)
def test_not_names(recognizer: NameLexiconRecognizer, text: str) -> None:
    assert found(recognizer, text) == []


def test_spacy_place_vetoes_a_single_given_name(recognizer: NameLexiconRecognizer) -> None:
    text = "Jordan and Austin are both nice places"
    assert found(recognizer, text) == ["Jordan", "Austin"]
    assert found(recognizer, text, {0: "GPE", 11: "GPE"}) == []
    assert found(recognizer, text, {0: "DATE"}) == ["Austin"]


def test_rare_words_mean_names_only_in_english_text(recognizer: NameLexiconRecognizer) -> None:
    german = "Das Büro ist Unter den Linden, bitte die Rechnung an Frau Kučera schicken."
    assert not recognizer.english(german)
    assert [r.entity_type for r in recognizer.analyze(german, ["PERSON"])] == []
    english = "Please send the invoice to Kučera and Sultygov before the end of the week."
    assert recognizer.english(english)
    assert sorted(english[r.start : r.end] for r in recognizer.analyze(english, ["PERSON"])) == ["Kučera", "Sultygov"]


def test_long_runs_of_capitalised_names_are_not_read(recognizer: NameLexiconRecognizer) -> None:
    names = " ".join(["Emily"] * (MAX_NAME_WORDS + 1))
    assert found(recognizer, f"said {names} today") == []
    assert found(recognizer, f"said {' '.join(['Emily'] * MAX_NAME_WORDS)} today") != []


def test_only_asked_entities(recognizer: NameLexiconRecognizer) -> None:
    assert recognizer.analyze("Why is Teresa so impulsive?", ["EMAIL_ADDRESS"]) == []
