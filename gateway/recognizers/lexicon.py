"""PERSON: capitalised words that a name lexicon and English word frequencies call a name.

spaCy's small model misses names in short or unusual sentences ("Why is Teresa so impulsive?",
"Sometimes people call me Virpi") and names from outside its training data ("Bibulat Sultygov"), and
no cue stands next to them. This recognizer reads each run of capitalised words (with particles and
initials between them) and asks two tables shipped in ``gateway/lexicons`` (``README.md`` there has
the sources and licences; nothing comes from Faker or presidio-evaluator):

* the US Census Bureau's 1990 given names and surnames (public domain);
* English unigram frequencies (spaCy's ``en_lexeme_prob``), which tell an ordinary word that is also a
  name (``Will``, ``Rose``, ``Brown``: *wordy*) from a name (``Emily``), and a rare word (*unknown*:
  ``Sultygov``, ``Kučera``) from a known one.

A run is cut at wordy words, at words the cue rules know are not names (``NOT_NAMES``), at company and
street-type words, at acronyms and at identifiers. What is left is a name when:

* it holds a given name and another name word: ``Gregory Pritchett``, ``Anja R Fuchs`` (0.7);
* it is a given name alone: ``Teresa`` (0.6), unless spaCy calls it a place (it is then LOCATION);
* a wordy given name opens it before a surname or an unknown word: ``Mark Hermansen`` (0.65);
* it is two or three surnames or unknown words: ``Bibulat Sultygov``, ``Czcibor Borkowski`` (0.55);
* it is one unknown word written with letters English does not use, or with a surname ending of a
  language that has them (``-ović``, ``-ski``, ``-dóttir``): ``Stejskalová``, ``Janíček`` (0.4).

Single surnames that are known words (``Thompson``, ``Sanders``) are not taken on their own: "the
Sanders report" is as likely as "ask Sanders". A name found here is hidden everywhere else in the
request by propagation, like any other.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from presidio_analyzer import EntityRecognizer, RecognizerResult

from ..lexicons import Lexicon, lexicon
from .addresses import STRONG_TYPES, UNIT_WORDS, WEAK_TYPES
from .names import _COMPANY_WORDS, _VETO_LABELS, DEMONYMS, NOT_NAMES, _is_identifier, _is_particle
from .rules import RuleRecognizer, words

ENTITY = "PERSON"


#: A word: letters, with inner hyphens or apostrophes (Jean-Luc, O'Brien), and a dot after an initial.
_TOKEN = re.compile(r"[^\W\d_]+(?:[-'’][^\W\d_]+)*\.?")
_POSSESSIVE = re.compile(r"['’]s$")
_NAME_JOINERS = re.compile(r"[-'’]")
#: Between two words of one run: spaces or tabs only. A line break, a comma or a bracket ends the run.
_GAP = re.compile(r"[ \t]{1,3}")
#: Surname endings of languages whose surnames carry them; only for words English does not know.
_SURNAME_ENDING = re.compile(
    r"(?:ović|ovič|evič|ević|ić|ič|ski|ska|sky|ská|ský|cki|cka|wicz|czyk|czak|enko|chuk|czuk|yuk|escu|eanu|"
    r"poulos|opoulou|akis|idis|oglu|oğlu|zadeh|ishvili|shvili|adze|dze|yan|ian|sson|sdóttir|dóttir|"
    r"ov|ova|ev|eva|ová|ek|ák|ik|ny|nen|lä|inen)$"
)
#: Words never part of a name here, beyond ``NOT_NAMES``: company and place words, and units.
_STOP = (
    NOT_NAMES
    | _COMPANY_WORDS
    | STRONG_TYPES
    | WEAK_TYPES
    | UNIT_WORDS
    | DEMONYMS
    | words(
        """street avenue road north south east west new saint san santa st mount lake river city county state
        republic kingdom united republic province region district island islands bay port fort"""
    )
)
#: Rules that trust "a word English does not know": only where the text around is English.
_ENGLISH_ONLY = frozenset({"lexicon_name_pair", "lexicon_rare_name"})
_LOWER_WORD = re.compile(r"(?<![\w'’-])[a-z]{2,}(?![\w'’-])")
_FUNCTION_WORDS = words(
    "the a an is are was were be been of to in on at for with from by and or but not my your his her our their "
    "this that it i you he she we they me him us them do does did have has had will would can could should"
)
#: The share of lower-case words that must be English function words (prose has 0.3 to 0.6).
_ENGLISH_FUNCTION_SHARE = 0.2
#: How much of a text the language check reads.
_ENGLISH_SAMPLE = 4000
_PLACE_LABELS = frozenset({"GPE", "LOC", "FAC"})


@dataclass(frozen=True, slots=True)
class _Word:
    start: int
    end: int
    capital: bool
    kind: str  # given, given_wordy, surname, surname_wordy, unknown, rare_script, known, initial, particle, stop


def _kind(word: str, lex: Lexicon) -> str:
    bare = _POSSESSIVE.sub("", word.rstrip("."))
    if len(bare) == 1:
        return "initial" if bare.isupper() else "stop"
    if not bare[0].isupper():
        return "particle" if _is_particle(bare) else "stop"
    lower = bare.lower()
    if lower in _STOP or (bare.isupper() and len(bare) > 1) or _is_identifier(bare):
        return "stop"
    if word.endswith(".") and len(bare) <= 3 and lower not in lex.given:
        return "stop"  # "Dr.", "Inc.", "St.": an abbreviation
    parts = [p for p in _NAME_JOINERS.split(lower) if p]
    if lower in lex.given or (len(parts) > 1 and all(p in lex.given for p in parts)):
        return "given_wordy" if lower in lex.wordy else "given"
    if lower in lex.wordy:
        return "surname_wordy" if lower in lex.common_surnames else "stop"
    if lower in lex.surnames:
        return "surname"
    if lex.unknown(lower):
        if not lower.isascii() or _SURNAME_ENDING.search(lower):
            return "rare_script"
        return "unknown"
    return "known"


def _runs(text: str, lex: Lexicon) -> Iterator[list[_Word]]:
    """Runs of capitalised words, particles and initials, separated by spaces or tabs only."""
    run: list[_Word] = []
    last_end = -1
    for m in _TOKEN.finditer(text):
        start, end = m.span()
        if start > 0 and text[start - 1] in "@/\\_.#$%&=<>{[":
            kind = "stop"  # a handle, a path, a placeholder or a key: not prose
        else:
            kind = _kind(m.group(), lex)
        joined = run and _GAP.fullmatch(text, last_end, start) is not None
        if not joined:
            if run:
                yield run
            run = []
        word_end = end - 1 if m.group().endswith(".") and kind != "initial" else end
        if _POSSESSIVE.search(m.group()):
            word_end = start + len(_POSSESSIVE.sub("", m.group()))
        run.append(_Word(start, word_end, m.group()[0].isupper(), kind))
        last_end = end
        if m.group().endswith(".") and kind != "initial":
            yield run
            run = []
    if run:
        yield run


def _segments(run: list[_Word]) -> Iterator[tuple[list[_Word], bool]]:
    """Cut a run at words that cannot be part of a name; particles and initials stay only inside one.

    Each segment comes with whether a capitalised word that is no name stands right next to it in the
    run: "Marshall Plan", "Victoria Station" are names of things.
    """
    segment: list[_Word] = []
    capital_before = False
    for word in run:
        extends = bool(segment) and word.kind in ("known", "surname_wordy")
        if word.kind in ("stop", "surname_wordy") and not extends:
            if 0 < len(segment) <= MAX_NAME_WORDS:
                yield segment, capital_before or _capitalised(word)
            segment = []
            capital_before = _capitalised(word)
            continue
        segment.append(word)
    if 0 < len(segment) <= MAX_NAME_WORDS:
        yield segment, capital_before


def _capitalised(word: _Word) -> bool:
    return word.capital and word.kind != "initial"


#: Longer runs of name-like words are headings or titles ("Lord Of The Rings"): no name is read in them.
MAX_NAME_WORDS = 6
_NAME_WORDS = frozenset({"given", "surname", "unknown", "rare_script"})


def _decide(segment: list[_Word]) -> tuple[list[_Word], float, str] | None:
    while segment and segment[-1].kind in ("particle", "initial", "known"):
        segment = segment[:-1]
    while segment and segment[0].kind == "particle":
        segment = segment[1:]
    names = [w for w in segment if w.kind not in ("particle", "initial")]
    if not names:
        return None
    kinds = [w.kind for w in names]
    if kinds[0] == "known":
        # "Rhys Talbot", "Linus Ritter": a word English knows, before a surname that it does not
        if len(kinds) > 1 and kinds[1] == "surname":
            return segment, 0.55, "lexicon_name_pair"
        rest = [w for w in segment if w.start > names[0].start]
        return _decide(rest) if rest else None
    if names[0].kind == "given_wordy":
        if len(names) > 1 and all(k in _NAME_WORDS for k in kinds[1:]) and "given" not in kinds[1:2]:
            return segment, 0.65, "lexicon_wordy_given_name"
        rest = [w for w in segment if w.start > names[0].start]
        return _decide(rest) if rest else None
    kinds = [k if k not in ("given_wordy", "surname_wordy") else "surname" for k in kinds]
    if "given" in kinds and len(names) > 1:
        return segment, 0.7, "lexicon_full_name"
    if kinds == ["given"]:
        return segment, 0.6, "lexicon_given_name"
    if len(names) > 1 and all(k in _NAME_WORDS for k in kinds):
        return segment, 0.55, "lexicon_name_pair"
    if kinds == ["rare_script"]:
        return segment, 0.4, "lexicon_rare_name"
    return None


class NameLexiconRecognizer(RuleRecognizer):
    """Names told apart from words by the shipped lexicons; see the module docstring."""

    def __init__(self, language: str) -> None:
        super().__init__(ENTITY, (), name="NameLexiconRecognizer", language=language)
        self.lexicon = lexicon()

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[RecognizerResult]:
        if entities and ENTITY not in entities:
            return []
        doc = getattr(nlp_artifacts, "tokens", None)
        labels: dict[int, str] = {}
        if doc is not None:
            for ent in doc.ents:
                for token in ent:
                    labels[token.idx] = ent.label_
        results = []
        english: bool | None = None  # read only when a rule that needs it fires
        for start, end, score, rule in self.spans(text, labels):
            if rule in _ENGLISH_ONLY:
                if english is None:
                    english = self.english(text)
                if not english:
                    continue  # German nouns are capitalised, and "Büro" is no name
            results.append(self.result(start, end, score, rule))
        return list(EntityRecognizer.remove_duplicates(results))

    def english(self, text: str) -> bool:
        """Whether ``text`` reads as English prose: rare words only mean names there.

        English prose is about half function words (``the``, ``of``, ``to``); German, French or Spanish
        text and code have almost none of these. A text without lower-case words (a signature, a list
        of names) counts as English: nothing says otherwise.
        """
        lower = _LOWER_WORD.findall(text[:_ENGLISH_SAMPLE])
        if not lower:
            return True
        function_words = sum(1 for w in lower if w in _FUNCTION_WORDS)
        return function_words >= _ENGLISH_FUNCTION_SHARE * len(lower) if len(lower) >= 4 else function_words > 0

    def spans(self, text: str, labels: dict[int, str]) -> Iterator[tuple[int, int, float, str]]:
        for run in _runs(text, self.lexicon):
            for segment, compound in _segments(run):
                decided = _decide(segment)
                if decided is None:
                    continue
                kept, score, rule = decided
                if compound and len(kept) == 1:
                    continue  # "Marshall Plan", "Victoria Station", "Jordan River"
                found = [labels.get(w.start, "") for w in kept]
                if any(label in _VETO_LABELS for label in found):
                    continue
                if len(kept) == 1 and found[0] in _PLACE_LABELS:
                    continue  # "Chelsea", "Jordan": spaCy reads a place, LOCATION hides it
                yield kept[0].start, kept[-1].end, score, rule


def recognizers(language: str) -> list[RuleRecognizer]:
    return [NameLexiconRecognizer(language)] if language == "en" else []
