"""PERSON: names that follow a cue, which spaCy's small model misses or reads as something else.

spaCy finds most capitalised full names in running prose. It misses short or lower-case names in chat
(``hi john``, ``ask priya``), names in greetings and signatures (``Dear Ms. Okonkwo``, ``Regards,\\nLars``),
names with particles (``Ludwig van der Rohe``, ``María de la Cruz``, ``Mohammed bin Salman``,
``Aisha al-Farsi``) and names from outside its training data, which it often calls ORG or NORP.
These rules look at the cue around a name, never at a list of names:

* before the name (``CUES``): greetings, titles, sign-offs, self-introductions, form labels
  (``Customer:``, ``name=``), roles (``Customer Jane Doe``) and verbs of address (``call``, ``cc``,
  ``spoke with``, ``assigned to``, ``my wife``);
* after it (``FOLLOWED``, found first since they are rarer than capitalised words): a verb
  (``Alfio will call``), a vocative comma (``Nathan, your card``), a conversation turn (``Lisa: ...``),
  an e-mail address (``Colette Roux <croux@...>``), a possessive (``Carine's address``), an address line;
* around it: the parts of a name found by a cue, repeated alone (``Erle``), and the other items of a
  list that holds a name.

A name is one to four words, each capitalised (any script that has case), with particles between them
and initials before them. Lower-case names are taken only after greetings, sign-offs,
self-introductions and short titles, and only when spaCy tags the word a noun that is not a stop
word. ``docs/entities.md`` has the rules, their scores and what vetoes a name.

A name found once is hidden everywhere else in the request by ``Redactor`` (propagation).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from presidio_analyzer import EntityRecognizer, RecognizerResult

from ..lexicons import lexicon
from .rules import RuleRecognizer, phrase_regex, words

ENTITY = "PERSON"

_PARTICLE = (
    r"(?:van|von|der|den|de|del|della|delle|di|da|du|dos|das|des|la|le|ter|ten|zu|bin|binti|ibn|bint|al|el|abu|"
    r"y|e|af|av|ní|nic|ó|ua|mac|op|het|te|lo|'t|’t|ter|dem)"
)
_WORD = r"[^\W\d_]{1,30}(?:[-'’][^\W\d_]{1,30}){0,3}"
_INITIALS = r"(?:[A-Z]\.(?:[ \t]?[A-Z]\.){0,2}[ \t]{1,3})"
_NAME = re.compile(
    rf"{_INITIALS}?(?P<first>{_WORD})"
    rf"(?:[ \t]{{1,3}}(?:(?i:{_PARTICLE})[ \t]{{1,3}}){{0,3}}(?:{_INITIALS})?{_WORD}){{0,3}}"
)
#: Compiled once here rather than looked up in ``re``'s cache on every call: the phone recognizer's
#: library compiles enough patterns of its own to push ours out of that cache.
_NON_SPACE = re.compile(r"\S+")
_NAME_WORD = re.compile(r"[^\W\d_][^\W\d_'’-]*(?:[-'’][^\W\d_]+)*")
_PARTICLE_WORD = re.compile(_PARTICLE, re.IGNORECASE)
_INITIAL = re.compile(r"[A-Z]\.")
_FINAL_INITIAL = re.compile(r"(?:^|[ \t])[A-Z]\.$")
_LINE_CLOSE = re.compile(r"[ \t]*(?:$|\r?\n|[,|–-])")
_INNER_CAPITALS = re.compile(r"[a-z][A-Z]{2,}")
_SEPARATOR = re.compile(r"[ \t]*(?:,|&|\band\b|\bund\b|\bet\b|\by\b)[ \t]*")

#: Capitalised words that follow cues but are not names.
NOT_NAMES = words(
    """all everyone everybody there team teams folks guys gang people friends friend colleague colleagues sir sirs
    madam madame ma'am mam sir/madam customer customers client clients user users member members support sales
    service services admin admins manager managers hr it legal finance billing accounts accounting marketing
    engineering ops devops security helpdesk desk world again back now today tomorrow tonight yesterday here
    me us them him her you we they he she i it this that these those the a an my our your his their its there
    what who why how when where which thanks thank regards best cheers sincerely yours kind warm many please
    monday tuesday wednesday thursday friday saturday sunday january february march april may june july august
    september october november december morning afternoon evening night day week weekend month year mr mrs ms
    miss mx dr prof doctor professor sorry hope ok okay yes no not just also so well great good sure fine
    welcome dear hi hello hey both each any some none nobody someone somebody anyone anybody buddy mate dude bro
    boss doc honey love darling sweetie babe man guy lady ladies gentlemen chatgpt gpt claude gemini copilot
    assistant bot ai model system api app google microsoft apple amazon openai anthropic github slack zoom
    teams email mail phone number tel call text message chat office home work company department n/a na tbd
    unknown anonymous name first last full surname lastname firstname nickname username required optional
    ticket order invoice account case issue bug error mom mum dad mother father sister brother grandma grandpa
    wife husband son daughter uncle aunt then yesterday later so and but when after before finally maybe perhaps
    apparently unfortunately luckily meanwhile also still everyone's nobody everything something time git
    python java docker linux windows i'm i’m i'd i'll i've"""
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Cue:
    name: str
    pattern: re.Pattern[str]
    score: float
    #: Lower-case names are accepted after this cue (when spaCy agrees the word is a noun).
    lower: bool = False
    #: The name must close its line (signatures).
    end_of_line: bool = False
    #: "cc Anna, Ben and Chen": read a list of names.
    lists: bool = False
    #: The name must close its clause: punctuation, a line end, or "here"/"from"/"speaking" next.
    closed: bool = False
    #: The cue must open a line or a sentence ("Hi Anna", but not "say hi to anna").
    line_start: bool = False
    #: All-capital names count ("Customer: JOHN SMITH"); elsewhere they are acronyms.
    caps: bool = False
    #: spaCy naming the first word something other than a person (a nationality, a place, an
    #: organisation, a date) vetoes the name: "I'm Canadian", "ask Google".
    veto: bool = False


def _phrases(spec: str) -> str:
    """A fast case-insensitive regex for ``|``-separated phrases (see ``phrase_regex``)."""
    return phrase_regex(p.strip() for p in spec.split("|") if p.strip())


_GREETINGS = _phrases(
    """hi|hello|hey|heya|hiya|dear|good morning|good afternoon|good evening|good day|greetings|howdy|hallo|
    liebe|lieber|liebes|sehr geehrte|sehr geehrter|bonjour|salut|cher|chère|hola|estimado|estimada|ciao|gentile|
    caro|cara|hej|hoi|beste|olá|oi|welcome|thanks|thank you|many thanks|congratulations|congrats|happy birthday"""
)
#: Titles that are never ordinary words: they count in lower case too, before lower-case names ("dr. okafor").
_SHORT_TITLES = "mr|mrs|ms|mx|dr|prof|mme|mlle|sr|sra|srta|herr|frau|dott"
_SHORT_TITLE_PHRASES = _phrases(_SHORT_TITLES)
_TITLES = _phrases(
    """mr|mrs|ms|miss|mx|dr|prof|professor|sir|dame|mme|mlle|herr|frau|señor|señora|sr|sra|srta|dott|dott.ssa|
    sig|sig.ra|rev|capt|captain|sgt|lt|col|judge|officer|det|detective|nurse|uncle|aunt|auntie|grandma|grandpa|
    madame|monsieur|don|doña"""
)
_SIGN_OFFS = _phrases(
    """best|best regards|best wishes|kind regards|warm regards|warmest regards|regards|cheers|thanks|thank you|
    many thanks|thanks again|thanks so much|sincerely|yours sincerely|yours truly|yours|respectfully|cordially|
    take care|talk soon|br|kr|mfg|lg|viele grüße|beste grüße|liebe grüße|mit freundlichen grüßen|cordialement|
    bien à vous|saludos|un saludo|atentamente|cordiali saluti|distinti saluti|groeten|met vriendelijke groet|
    hälsningar|love|xoxo|signed|sent by"""
)
_INTRODUCTIONS = _phrases(
    """my name is|my name's|my name’s|je m'appelle|ich heiße|me llamo|mi chiamo|known as|goes by|
    mein name ist|je suis|mi nombre es|sono"""
)
#: "What's your name? Juliane Amsel", "Your full name?\nUser: Ji-woo Park": the answer after the question.
_NAME_QUESTIONS = _phrases(
    """what's your name|what is your name|your name|what's your full name|your full name|what's your last name|
    your last name|your first name|your surname|who am i speaking with|who is this|may i have your name|
    name please"""
)
#: Between a question and its answer: "? ", or "?\nUser: ".
_ANSWER = r"[ \t]*\?[ \t]*(?:\r?\n[ \t]*)?(?:[A-Za-z]+[ \t]*:[ \t]*)?"
#: Weaker introductions: the name must close its clause ("This is Maria.", "it is Gregory here").
_SHORT_INTRODUCTIONS = _phrases(
    "i am|i'm|i’m|this is|it's|it’s|it is|ich bin|named|called|speaking with|here is|name is|name's|call me|calls me"
)
#: Labels in forms, tickets and CRM notes. Those that are also everyday words need their colon.
_LABEL_PHRASES = """name|full name|first name|last name|surname|from|to|cc|bcc|attn|attention|signed|author|owner|
    assignee|reporter|requester|requestor|contact|user|member|driver|passenger|student|candidate|sender|recipient|
    beneficiary|payee|guest|buyer|seller|emergency contact|next of kin|new hire|employee name|contact name|
    customer name|client name|patient name|account name|holder|account holder|cardholder|card holder|lead|
    prospect|partner|spouse|manager|supervisor|doctor|physician|agent|rep|representative|technician|
    interviewer|interviewee|witness|person|parent|guardian|child|speaker|host|organizer|attendee|
    participant|approver|reviewer|director|producer|by|directed by|written by|produced by|deceased|insured|
    policyholder|policy holder|employer contact|landlord|tenant|client contact|billing contact"""
_ROLE_PHRASES = """customer|client|patient|contact person|applicant|employee|tenant|landlord|caller|account holder|
    cardholder|new hire|reporter|requester|assignee|candidate|beneficiary|customer contact|point of contact|
    primary contact|main contact|billing contact|technical contact|emergency contact"""
_ROLES = _phrases(_ROLE_PHRASES)
_LABELS_AND_ROLES = _phrases(_LABEL_PHRASES + "|" + _ROLE_PHRASES)
_ADDRESSED = _phrases(
    """call|email|e-mail|ask|tell|told|contact|ping|cc|bcc|meet|met|invite|thank|thanks|remind|
    notify|said|says|asked|replied|wrote to|write to|reply to|answer to|respond to|responded to|send to|sent to|
    forward to|forwarded to|forward it to|forward this to|send it to|send this to|send them to|reach out to|
    talk to|talked to|speak to|speak with|spoke to|spoke with|talked with|met with|meeting with|meet with|
    call with|chat with|chatted with|follow up with|followed up with|check with|checked with|sync with|
    catch up with|interview with|appointment with|assigned to|approved by|signed by|reported by|requested by|
    written by|created by|opened by|submitted by|on behalf of|message from|email from|mail from|letter from|
    call from|note from|reply from|feedback from|request from|invitation from|married to|son of|daughter of|
    wife of|husband of|reminder to|note to|letter to|introduce|introduced|welcome|congratulate|hand over to|
    handed over to|escalate to|escalated to|transfer to|transferred to|ask for|asking for|looking for|
    my wife|my husband|my partner|my son|my daughter|my mother|my father|my mom|my mum|my dad|my brother|
    my sister|my friend|my boss|my manager|my colleague|my coworker|my doctor|my lawyer|my landlord|
    our colleague|your colleague|his wife|her husband|their son|their daughter|assistant to|secretary to|
    engaged to|reporting to|reports to|directed by|produced by|performed by|sung by|composed by|narrated by|
    illustrated by|edited by|photo by|photographed by|authored by|presented by|hosted by|starring|featuring|
    paperwork for|invoice for|ticket for|booking for|reservation for|appointment for|prescription for|
    records for|record for|profile for|application for|contract for|payslip for|offer letter for|badge for|
    visa for|referral for|certificate for|birthday of|funeral of|wedding of"""
)
#: An address block's header: its first line is the recipient ("Ship to:\nJana Nováková\nVinohradská 1511").
_ADDRESS_LABELS = _phrases(
    """billing address|shipping address|postal address|mailing address|delivery address|home address|ship to|
    bill to|deliver to|sold to|mail to|send to|addressee|lieferadresse|rechnungsadresse|adresse de livraison|
    dirección de envío|indirizzo di spedizione"""
)
#: After the name: "Alfio will call", "Gregory wrote:", "Jane Doe <jane@example.com>".
_SPEAKER_VERBS = _phrases(
    """said|says|wrote|writes|asked|asks|replied|replies|called|emailed|texted|mentioned|confirmed|told|explained|
    reported|noted|added|responded|answered|will call|will email|will send|will reply|will contact|is calling|
    called in|signed|approved|requested|complained|wants|needs|prefers|lives|lived|moved|paid|ordered|booked|
    joined|spent|grew up|was born|works at|works for|worked at|worked for|studied|graduated"""
)

CUES: tuple[Cue, ...] = (
    Cue("greeting", re.compile(rf"{_GREETINGS}[ \t]*,?[ \t]+"), 0.85, lower=True, lists=True, line_start=True),
    Cue("title", re.compile(rf"{_SHORT_TITLE_PHRASES}(?:\.[ \t]*|[ \t]+)(?=\S)"), 0.85, lower=True),
    Cue("title", re.compile(rf"{_TITLES}(?:\.[ \t]*|[ \t]+)(?=\S)"), 0.85),
    Cue("title", re.compile(r"M\.(?<![\w.]M\.)[ \t]*(?=[A-Z])"), 0.85),
    Cue("signature", re.compile(rf"{_SIGN_OFFS}[ \t]*[,!.:–-]?[ \t]*(?:\r?\n[ \t]*(?:--[ \t]*\r?\n[ \t]*)?|[ \t]+)"),
        0.85, lower=True, end_of_line=True, line_start=True),
    Cue("self_introduction", re.compile(rf"{_INTRODUCTIONS}[ \t]+"), 0.85, lower=True, lists=True, veto=True),
    Cue("name_question", re.compile(rf"{_NAME_QUESTIONS}{_ANSWER}"), 0.7, veto=True, closed=True),
    Cue("short_introduction", re.compile(rf"{_SHORT_INTRODUCTIONS}[ \t]+"), 0.7, veto=True, closed=True),
    Cue("form_label", re.compile(rf"{_LABELS_AND_ROLES}(?:[ \t]*:|=)[ \t]*"), 0.85, lists=True, veto=True, caps=True),
    Cue("address_block", re.compile(rf"{_ADDRESS_LABELS}[ \t]*:[ \t]*(?:\r?\n[ \t]*)?"), 0.7, veto=True,
        end_of_line=True),
    Cue("role", re.compile(rf"{_ROLES}(?:[ \t]+is)?[ \t]+"), 0.7, veto=True),
    Cue("addressed", re.compile(rf"{_ADDRESSED}[ \t,]+"), 0.6, lists=True, veto=True),
)  # fmt: skip
_LINE_OPENERS = frozenset(".!?;:>\n")


def _opens(text: str, pos: int, openers: str | frozenset[str]) -> bool:
    """Only spaces or tabs between ``pos`` and the start of the text or one of ``openers``."""
    i = pos
    while i > 0 and text[i - 1] in " \t" and pos - i < 40:
        i -= 1
    return i == 0 or text[i - 1] in openers


#: A capitalised word starting a word; the look-behind comes after the first letter so that the regex
#: engine can skip to capital letters (see ``phrase_regex``).
_CAP_START = r"[A-ZÀ-ÖØ-ÞĀ-Ž](?<![\w'’.-].)"
_CAP_REST = r"[^\W\d_]{0,30}(?:[-'’][^\W\d_]{1,30})?"
_CAPITALISED = rf"[A-ZÀ-ÖØ-ÞĀ-Ž]{_CAP_REST}"
_CAPITALISED_NAME = rf"{_CAP_START}{_CAP_REST}(?:[ \t](?:{_PARTICLE}[ \t]){{0,3}}{_CAPITALISED}){{0,2}}"
#: What follows a name and shows it is one. Each trigger is found first (they are rarer than capitalised
#: words), then the name is looked for right before it: ``NAME_BEFORE`` ends where the trigger starts.
_NAME_BEFORE = re.compile(rf"(?P<name>{_CAPITALISED_NAME})[ \t]{{0,2}}$")
#: "Alfio will call", "Gregory wrote".
SPEAKER = re.compile(rf"(?<=[ \t]){_SPEAKER_VERBS}\b")
#: "Nathan, your card was declined", "Sue, can I ...": direct address opening a sentence, line or quote.
VOCATIVE = re.compile(
    r",[ \t]+"
    + _phrases("you|your|can|could|would|will|please|thanks|thank|i|i'm|we|just|hope|are|did|do|have|let|sorry|welcome")
    + r"\b"
)
#: "Nichole: You saved my life!": a speaker's turn in a pasted conversation.
TURN = re.compile(r":[ \t]*(?=[\"“]|[A-Z][a-z'’]*[ ,.!?])")
#: "Carine's address", "Tom's wife": a possessive before a word only people have.
POSSESSIVE = re.compile(
    r"['’]s[ \t]+(?:home[ \t]+)?"
    + phrase_regex(
        [
            *words(
                """address phone number mobile cell email e-mail birthday dob ssn wife husband partner son daughter
                kids children mom mum mother dad father brother sister boss manager password salary cv resume
                passport diagnosis prescription payslip"""
            ),
            "date of birth",
        ]
    )
    + r"\b"
)
#: "Colette Roux <croux@vasseur.fr>", "Ise Hazenveld (ihazenveld@x.com)": a name before its e-mail address.
EMAIL_AFTER = re.compile(r"[<(\[][^\s@<>()\[\]]{1,64}@")
#: A postal block: a line holding only a name, then (maybe after a blank line) an address line.
ADDRESS_LINE_AFTER = re.compile(
    r"\r?\n(?:[ \t]*\r?\n)?[ \t]*(?=\d{1,6}[a-zA-Z]?[ ,]|(?:Flat|Apt|Apartment|Unit|Suite|c/o)\b"
    r"|P\.?[ \t]?O\.?[ \t]?Box|USNS|USS|USNV|PSC)"
)
#: Words that open a line as a label rather than a speaker ("Note:", "Output:").
NOT_SPEAKERS = words(
    """note notes subject error errors warning warnings info debug summary address output input usage example
    examples solution answer question step result results status reason description title date time location
    phone email name total price update edit source reference tip hint important caution todo fixme q a user
    assistant system human ai bot me you customer agent support problem issue fix cause context goal task
    request response body header headers query command steps expected actual environment version details
    comment comments feedback review action actions owner priority severity type category tags label labels
    traceback exception log logs stack trace file path url link code test tests case cases license copyright
    author authors maintainer homepage keywords requires platform classifier appendix section chapter part"""
)


@dataclass(frozen=True, slots=True)
class Trigger:
    name: str
    pattern: re.Pattern[str]
    #: Where the name must start: anywhere (""), or after only spaces from one of these characters.
    openers: str = ""
    #: The name is one word (conversation turns).
    single: bool = False


FOLLOWED: tuple[Trigger, ...] = (
    Trigger("speaker", SPEAKER),
    Trigger("vocative", VOCATIVE, ".!?\n\"“«'"),
    Trigger("conversation_turn", TURN, "\n", single=True),
    Trigger("name_before_email", EMAIL_AFTER),
    Trigger("possessive", POSSESSIVE),
    Trigger("postal_block", ADDRESS_LINE_AFTER, "\n"),
)
_CLAUSE_END = re.compile(r"[ \t]*(?:$|\r?\n|[,.!?;:)—–-]|(?:here|from|speaking|calling|again|and)\b)")
_LABEL_WORDS = NOT_SPEAKERS | frozenset(
    w for spec in (_LABEL_PHRASES, _ROLE_PHRASES) for w in re.findall(r"[^\W\d_]+", spec) if len(w) > 2
)
_COMPANY_WORDS = words(
    """inc ltd llc gmbh corp corporation co company ag sa sas sarl bv nv plc group bank team university college
    school hospital clinic foundation institute association agency labs lab systems solutions services
    technologies partners holdings consulting"""
)
#: spaCy labels that veto a name found by a weak cue. Not ORG (the small model calls many names ORG), and
#: not GPE/LOC (a place is hidden as LOCATION anyway; "Jordan", "Sydney" are names too), not PRODUCT
#: (it calls "Costantino" one). NORP only for nationality words (``DEMONYMS``: "I'm Canadian"); the small
#: model also calls "Maria" NORP.
_VETO_LABELS = frozenset(
    {"DATE", "TIME", "CARDINAL", "ORDINAL", "LANGUAGE", "MONEY", "PERCENT", "QUANTITY", "LAW", "EVENT"}
)
#: Nationality and group words, for the NORP veto ("I'm Canadian"); names that spaCy calls NORP stay.
DEMONYMS = words(
    """american canadian mexican brazilian argentinian chilean colombian peruvian cuban british english scottish
    welsh irish french german dutch belgian swiss austrian italian spanish portuguese greek turkish polish czech
    slovak hungarian romanian bulgarian serbian croatian ukrainian russian swedish norwegian danish finnish
    icelandic estonian latvian lithuanian chinese japanese korean vietnamese thai filipino indonesian malaysian
    indian pakistani bangladeshi iranian iraqi israeli palestinian lebanese syrian saudi egyptian moroccan
    algerian tunisian nigerian kenyan ethiopian ghanaian african asian european australian kiwi muslim christian
    jewish hindu buddhist catholic protestant sikh atheist democrat republican latino latina hispanic arab"""
)

#: For names found by what follows them (a verb, an e-mail address): capitalised only, spaCy may veto.
_FOLLOWED = Cue("followed", re.compile(""), 0.65, veto=True)
#: Closed word classes, which the model tags reliably: a name is none of them.
_NOT_NAME_POS = frozenset({"ADP", "DET", "PRON", "CCONJ", "SCONJ", "AUX", "PART", "NUM"})
#: Sentence adverbs that open a clause like a vocative does ("Therefore, we ...").
_DISCOURSE = words(
    """therefore however moreover furthermore meanwhile otherwise nevertheless nonetheless thus hence also still
    anyway instead indeed besides likewise similarly consequently accordingly alternatively additionally finally
    firstly secondly lastly honestly basically actually overall"""
)


#: Penn Treebank tags (what English spaCy models' taggers produce) to universal part-of-speech tags, as
#: spaCy's attribute ruler maps them: the ruler costs a tenth of the pipeline, this map nothing.
PTB_TO_UPOS = {
    **dict.fromkeys(("NNP", "NNPS"), "PROPN"),
    **dict.fromkeys(("NN", "NNS"), "NOUN"),
    **dict.fromkeys(("JJ", "JJR", "JJS", "AFX"), "ADJ"),
    **dict.fromkeys(("RB", "RBR", "RBS", "WRB"), "ADV"),
    **dict.fromkeys(("VB", "VBD", "VBG", "VBN", "VBP", "VBZ"), "VERB"),
    **dict.fromkeys(("PRP", "PRP$", "WP", "WP$", "EX"), "PRON"),
    **dict.fromkeys(("DT", "PDT", "WDT"), "DET"),
    **dict.fromkeys(("IN", "RP"), "ADP"),
    **dict.fromkeys(("CC",), "CCONJ"),
    **dict.fromkeys(("MD",), "AUX"),
    **dict.fromkeys(("TO", "POS"), "PART"),
    **dict.fromkeys(("CD",), "NUM"),
    **dict.fromkeys(("UH",), "INTJ"),
    **dict.fromkeys(("FW", "LS", "XX", "ADD", "GW", "NIL"), "X"),
    **dict.fromkeys((".", ",", ":", "``", "''", '"', "-LRB-", "-RRB-", "HYPH", "NFP"), "PUNCT"),
    **dict.fromkeys(("$", "SYM"), "SYM"),
}
#: Verbs the attribute ruler calls auxiliaries, and the negation it calls a particle.
_AUXILIARIES = words("be am is are was were been being have has had do does did 's 're 've 'm 'd ’s ’re ’ve ’m ’d")
_NEGATIONS = words("not n't n’t")


#: ``doc.user_data`` key under which the detector leaves a :class:`LazyTagger` for the components it did not run.
LAZY_TAGGER = "pii_gateway.lazy_tagger"

#: Embedding layers whose features are each token's own (no neighbours), and window encoders whose reach
#: is ``depth * window_size`` tokens on each side: with these, a token's tag depends on no token further away.
_PER_TOKEN_EMBEDDINGS = frozenset({"spacy.MultiHashEmbed.v1", "spacy.MultiHashEmbed.v2"})
_WINDOW_ENCODERS = frozenset(
    {"spacy.MaxoutWindowEncoder.v1", "spacy.MaxoutWindowEncoder.v2", "spacy.MishWindowEncoder.v1",
     "spacy.MishWindowEncoder.v2"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class LazyTagger:
    """The pipeline whose tagger (and the embedding layer it listens to) did not run with it.

    ``reach``: how many tokens on each side a token's tag depends on, when the model's architecture says
    (a convolutional embedding: ``depth * window_size``, 4 for spaCy's small English models), else None.
    With a reach, ``tag_tokens`` tags a few tokens from the windows around them, which gives the very
    scores the whole doc would (``tests/test_detector.py`` pins this); without, whole docs are tagged.
    """

    nlp: Any
    reach: int | None

    @classmethod
    def of(cls, nlp: Any) -> LazyTagger | None:
        """The deferred tagger of ``nlp``, or None when it has no tagger or runs it with the pipeline."""
        if "tagger" not in nlp.component_names or "tagger" in nlp.pipe_names:
            return None
        return cls(nlp, _tagger_reach(nlp))

    @property
    def components(self) -> list[str]:
        return [n for n in ("tok2vec", "tagger") if n in self.nlp.component_names and n not in self.nlp.pipe_names]


def _tagger_reach(nlp: Any) -> int | None:
    components = nlp.config["components"]
    model = components["tagger"]["model"]
    if model.get("@architectures") not in ("spacy.Tagger.v1", "spacy.Tagger.v2"):
        return None
    tok2vec = model.get("tok2vec", {})
    if tok2vec.get("@architectures") == "spacy.Tok2VecListener.v1":
        upstream = tok2vec.get("upstream")
        if upstream != "tok2vec" or "tok2vec" in nlp.pipe_names or "tok2vec" not in components:
            return None  # listening to a layer that already ran, or to one this code does not run
        tok2vec = components["tok2vec"]["model"]
    if tok2vec.get("@architectures") not in ("spacy.Tok2Vec.v1", "spacy.Tok2Vec.v2"):
        return None
    embed, encode = tok2vec.get("embed", {}), tok2vec.get("encode", {})
    if embed.get("@architectures") not in _PER_TOKEN_EMBEDDINGS or encode.get("@architectures") not in _WINDOW_ENCODERS:
        return None
    return int(encode["depth"]) * int(encode["window_size"])


def pos(token: Any) -> str:
    """The token's coarse part of speech: spaCy's when its attribute ruler ran, else mapped from the tag.

    The detector runs the tagger only when a rule asks for a tag: most texts never need one.
    """
    if token.pos_:
        return str(token.pos_)
    if not token.tag_:
        tag_now(token.doc)
    tag, word = str(token.tag_), str(token.lower_)
    if (tag.startswith("VB") and word in _AUXILIARIES) or tag == "MD":
        return "AUX"
    if tag == "RB" and word in _NEGATIONS:
        return "PART"
    return PTB_TO_UPOS.get(tag, "")


def tag_now(doc: Any) -> None:
    """Run the tagger (and the embedding layer it listens to) on ``doc`` if the detector deferred it."""
    lazy = doc.user_data.pop(LAZY_TAGGER, None)
    if lazy is None:
        return
    for name in lazy.components:
        lazy.nlp.get_pipe(name)(doc)


#: A window's tagging costs about a tenth of a 700-character text's, whatever its length (the model's
#: weights are prepared per call): beyond this share of the doc in windows, the whole doc is tagged.
_WINDOW_SHARE = 0.5


def tag_tokens(doc: Any, indices: list[int]) -> None:
    """Tag the tokens at ``indices`` (the rest of ``doc`` may stay untagged), in one call of the tagger.

    Each token is tagged within the tokens its tag depends on (``LazyTagger.reach``), so its tag is the
    one tagging the whole doc gives. ``pos`` tags the whole doc for any other token it is asked about.
    """
    lazy = doc.user_data.get(LAZY_TAGGER)
    wanted = sorted({i for i in indices if not doc[i].tag_})
    if lazy is None or not wanted:
        return
    if lazy.reach is None:
        tag_now(doc)
        return
    segments: list[list[int]] = []
    for i in wanted:
        start, end = max(0, i - lazy.reach), min(len(doc), i + lazy.reach + 1)
        if segments and start <= segments[-1][1]:
            segments[-1][1] = end
        else:
            segments.append([start, end])
    if sum(end - start for start, end in segments) > _WINDOW_SHARE * len(doc):
        tag_now(doc)
        return
    pieces = [doc[start:end].as_doc() for start, end in segments]
    for name in lazy.components:
        pieces = list(lazy.nlp.get_pipe(name).pipe(pieces))
    for (start, end), piece in zip(segments, pieces, strict=True):
        for i in wanted[bisect.bisect_left(wanted, start) : bisect.bisect_left(wanted, end)]:
            doc[i].tag_ = piece[i - start].tag_


def _not_a_name_word(token: Any) -> bool:
    """The model's word class rules a name out: a closed class, or an adverb shaped like one (``-ly``, ``Therefore``).
    Open classes are not trusted: the small model tags "Emily" at a line start as an adverb."""
    if pos(token) in _NOT_NAME_POS:
        return True
    word = str(token.text).lower()
    return bool(pos(token) == "ADV" and ((word.endswith("ly") and len(word) > 5) or word in _DISCOURSE))


_LOWER_OK_POS = frozenset({"PROPN", "NOUN", "ADJ", "X"})


class PersonCueRecognizer(RuleRecognizer):
    """Names after greetings, titles, signatures, introductions and verbs of address; see the module docstring."""

    def __init__(self, language: str) -> None:
        super().__init__(ENTITY, (), name="PersonCueRecognizer", language=language)

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[RecognizerResult]:
        if entities and ENTITY not in entities:
            return []
        tokens = _token_index(nlp_artifacts)
        chains = list(self.chains(text, tokens))
        doc = getattr(nlp_artifacts, "tokens", None)
        spacy_names: list[tuple[int, int]] = []
        if doc is not None:
            spacy_names = [(ent.start_char, ent.end_char) for ent in doc.ents if ent.label_ == "PERSON"]
            # The word classes the veto and the completion of spaCy's names ask for, tagged in one go
            # rather than by tagging the whole doc.
            wanted = [veto.i for chain in chains for *_, veto in chain if veto is not None]
            tag_tokens(doc, wanted + _completion_tokens(text, spacy_names, tokens))
        found: list[tuple[int, int, float, str]] = []
        for chain in chains:
            for start, end, score, cue, veto in chain:
                if veto is not None and _not_a_name_word(veto):
                    break  # this name is none, and a list stops at it
                found.append((start, end, score, cue))
        results = [self.result(s, e, score, cue) for s, e, score, cue in found]
        names = [(s, e) for s, e, _, _ in found]
        # Parts only of names a cue vouches for: spaCy's PERSON spans in code and tables ("True True") are not.
        results += [self.result(s, e, 0.6, "name_part_repeated") for s, e in _name_parts(text, names)]
        if doc is not None:
            names += spacy_names
            results += [self.result(s, e, 0.6, "name_completed") for s, e in _completed(text, spacy_names, tokens)]
            results += [self.result(s, e, 0.55, "contact_block_name") for s, e in _contact_block_names(text, tokens)]
        results += [self.result(s, e, 0.6, "name_list") for s, e in _name_lists(text, names, tokens)]
        return list(EntityRecognizer.remove_duplicates(results))

    def chains(self, text: str, tokens: dict[int, Any]) -> Iterator[list[_Candidate]]:
        """Names found by cues, as chains: a list after a cue ("cc Anna, Ben and Chen") is one chain.

        Each name comes with the token whose word class may still veto it (``_not_a_name_word``), which
        ``analyze`` checks once all are known; a vetoed name ends its chain, as it ends a list.
        """
        for cue in CUES:
            for m in cue.pattern.finditer(text):
                if cue.line_start and not _opens(text, m.start(), _LINE_OPENERS):
                    continue
                if cue.name == "title" and not cue.lower and m.group()[0].islower():
                    continue  # "a cache miss. Restore": lower-case "miss", "judge", "officer" are words
                chain: list[_Candidate] = []
                found = _candidate_at(text, m.end(), cue, tokens)
                while found is not None:
                    start, end, score, veto = found
                    chain.append((start, end, score, cue.name, veto))
                    if not cue.lists:
                        break
                    sep = _SEPARATOR.match(text, end)
                    if sep is None or sep.end() == end:
                        break
                    found = _candidate_at(text, sep.end(), cue, tokens, capitalised_only=True)
                if chain:
                    yield chain
        for trigger in FOLLOWED:
            for m in trigger.pattern.finditer(text):
                before = _NAME_BEFORE.search(text, max(0, m.start() - 100), m.start())
                if before is None:
                    continue
                start, end = before.span("name")
                if trigger.single:
                    start = end - len(before.group("name").split()[-1])
                if trigger.openers and not _opens(text, start, trigger.openers):
                    continue
                if trigger.name == "conversation_turn" and text[start:end].lower() in _LABEL_WORDS:
                    continue
                found = _candidate_at(text, start, _FOLLOWED, tokens, limit=end)
                if found is not None:
                    yield [(found[0], found[1], found[2], trigger.name, found[3])]


#: A name a cue found: start, end, score, the cue's name, and the token whose word class may veto it.
_Candidate = tuple[int, int, float, str, Any]


#: One word of a name next to a name spaCy found in part: a capitalised word or an initial ("P", "P.").
_NAME_PIECE = r"(?:[A-ZÀ-ÖØ-ÞĀ-Ž]\.?|[A-ZÀ-ÖØ-ÞĀ-Ž][^\W\d_]{1,30}(?:[-'’][^\W\d_]{1,30})?)"
_PIECES_BEFORE = re.compile(rf"(?<![\w'’.-])(?:{_NAME_PIECE}[ \t]){{1,2}}$")
_PIECES_AFTER = re.compile(rf"(?:[ \t]{_NAME_PIECE}){{1,2}}(?![\w'’-])")


def _completed(text: str, names: list[tuple[int, int]], tokens: dict[int, Any]) -> Iterator[tuple[int, int]]:
    """A name spaCy found only in part, with the words next to it that complete it.

    The small model often labels only the family name (``Ruby P [Wollaston]``, ``Amanda [Vésteinsson]``)
    or only the given name. Up to two capitalised words or initials directly before or after the span,
    on the same line, join it when the model tags each a proper noun (an initial is enough as it is)
    and none is a word that is never a name.
    """
    for start, end in names:
        new_start, new_end = start, end
        before = _PIECES_BEFORE.search(text, max(0, start - 70), start)
        if before is not None and _pieces_ok(text, before.start(), before.end(), tokens):
            new_start = before.start()
        after = _PIECES_AFTER.match(text, end)
        if after is not None and _pieces_ok(text, after.start(), after.end(), tokens):
            new_end = after.end()
        if (new_start, new_end) != (start, end):
            yield new_start, new_end


def _completion_tokens(text: str, names: list[tuple[int, int]], tokens: dict[int, Any]) -> list[int]:
    """The tokens whose word class ``_completed`` may ask for: ``_pieces_ok`` up to its first word class."""
    wanted: list[int] = []
    for start, end in names:
        for m in (_PIECES_BEFORE.search(text, max(0, start - 70), start), _PIECES_AFTER.match(text, end)):
            for token in _piece_tokens(text, m.start(), m.end(), tokens) if m is not None else ():
                if token is None:
                    break
                wanted.append(token.i)
    return wanted


def _pieces_ok(text: str, start: int, end: int, tokens: dict[int, Any]) -> bool:
    # The word class last, per piece: it may need the tagger.
    return all(token is not None and pos(token) == "PROPN" for token in _piece_tokens(text, start, end, tokens))


def _piece_tokens(text: str, start: int, end: int, tokens: dict[int, Any]) -> Iterator[Any]:
    """The token of each word in ``text[start:end]`` (initials skipped) until one can be no name, then None."""
    for m in _NON_SPACE.finditer(text, start, end):
        word = m.group().rstrip(".")
        if len(word) == 1:
            continue
        token = tokens.get(m.start())
        if word.lower() in NOT_NAMES or word.lower() in _COMPANY_WORDS or token is None:
            yield None
            return
        if token.ent_type_ in _VETO_LABELS or _is_identifier(word):
            yield None
            return
        yield token


#: A line that is nothing but a name: two to four capitalised words, initials and particles.
_NAME_LINE = re.compile(
    rf"^[ \t]*(?P<name>[A-ZÀ-ÖØ-ÞĀ-Ž][^\W\d_]{{1,30}}(?:[ \t]{{1,2}}(?:(?i:{_PARTICLE})[ \t]{{1,2}}){{0,3}}"
    rf"{_NAME_PIECE}){{1,3}})[ \t]*$",
    re.MULTILINE,
)
#: What makes a text a contact card or a signature: an e-mail address, a phone-shaped number, a contact label.
_CONTACT_DATA = re.compile(
    r"@[\w-]+\.|\+?\d[\d ().-]{6,}\d|(?i:\b(?:phone|tel|mobile|fax|e-?mail|address|office|desk)\b[ \t]*:)"
)


def _contact_block_names(text: str, tokens: dict[int, Any]) -> Iterator[tuple[int, int]]:
    """The name that heads a contact card or signature block: a line of its own, first in its block.

    ``Alistair Maclean⏎Administrative support manager⏎Endo International plc⏎4 High St...``: the line
    opens the text or follows a blank line, a short line that is not a sentence follows it, the text
    holds contact data, and the model tags every word a proper noun that is not a company word.
    """
    if "\n" not in text or _CONTACT_DATA.search(text) is None:
        return
    for m in _NAME_LINE.finditer(text):
        start, end = m.span("name")
        head = text[: m.start()]
        if head.strip() and not head.endswith(("\n\n", "\n\r\n")) and not head.rstrip(" \t").endswith("\n\n"):
            continue
        rest = text[m.end() :]
        if not rest.startswith(("\n", "\r\n")) or not rest.strip():
            continue
        following = rest.strip().split("\n", 1)[0].strip()
        if len(following.split()) > 8 or following.endswith((".", "!", "?")):
            continue  # prose follows: a heading ("Release Notes"), not a card
        if _pieces_ok(text, start, end, tokens) or all(
            _is_particle(w) or len(w.rstrip(".")) == 1 or _pieces_ok(text, start + i, start + i + len(w), tokens)
            for i, w in _words_at(text[start:end])
        ):
            yield start, end


def _words_at(value: str) -> Iterator[tuple[int, str]]:
    for m in _NON_SPACE.finditer(value):
        yield m.start(), m.group()


_WORD_RUN = re.compile(r"[\w'’-]+")


def _name_parts(text: str, names: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Where a full name was found ("Erle Olsen"), its parts alone elsewhere in the text ("... calls me Erle").

    ``Redactor`` propagates whole values across the request; the parts of a name are found here.
    """
    parts: set[str] = set()
    for start, end in names:
        words = _NAME_WORD.findall(text[start:end])
        if len(words) < 2:
            continue
        parts.update(
            w for w in words if len(w) >= 3 and w[0].isupper() and w.lower() not in NOT_NAMES and not _is_particle(w)
        )
    if not parts:
        return
    # A part is letters, apostrophes and hyphens, standing alone: a whole run of word characters,
    # apostrophes and hyphens. Looking each run up costs less than compiling the parts into a regex.
    for m in _WORD_RUN.finditer(text):
        if m.group() in parts and not any(s <= m.start() < e for s, e in names):
            yield m.start(), m.end()


_LIST_ITEM = rf"{_CAP_START}{_CAP_REST}"
#: "Lapresse, Morris and Wright", "Cocci and Rios": capitalised words in a list.
NAME_LIST = re.compile(
    rf"{_LIST_ITEM}(?:[ \t]*,[ \t]*{_CAPITALISED}){{0,8}},?[ \t]+(?:and|&|und|et|y|e|or)[ \t]+{_CAPITALISED}(?![\w'’-])"
)


_MORE_AFTER = re.compile(r"[ \t]+[A-Z0-9]")
_MORE_BEFORE = re.compile(r"[A-Z][\w'’-]*[ \t]+$")


def _name_lists(text: str, names: list[tuple[int, int]], tokens: dict[int, Any]) -> Iterator[tuple[int, int]]:
    """The other items of a list of single words one of which is a name.

    A name here is one a rule or spaCy found, or, in a list of three or more, a given name or surname of
    the census lists that is no English word ("Floyd, Hernandez and White"). A pair ("Cocci and Rios") is
    a weaker list: it needs a name found by a rule or spaCy, and its other item must be tagged a proper noun.
    """
    lex = lexicon()
    for m in NAME_LIST.finditer(text):
        items = [(w.start(), w.end()) for w in _NAME_WORD.finditer(m.group())]
        items = [
            (m.start() + a, m.start() + b)
            for a, b in items
            if m.group()[a:b] not in ("and", "und", "et", "y", "e", "or")
        ]
        if len(items) == 2 and (
            _MORE_AFTER.match(text, m.end()) or _MORE_BEFORE.search(text, max(0, m.start() - 40), m.start())
        ):
            continue  # "Helm and Argo CD": a pair inside longer proper nouns is no pair of names
        in_names = [any(s <= a < e for s, e in names) for a, _ in items]
        if not any(in_names) and (
            len(items) == 2
            or not any(
                (w in lex.given or w in lex.surnames) and w not in lex.wordy
                for w in (text[a:b].lower() for a, b in items)
            )
        ):
            continue
        for (a, b), known in zip(items, in_names, strict=True):
            word = text[a:b]
            token = tokens.get(a)
            if (
                known
                or word.lower() in NOT_NAMES
                or (token is not None and token.ent_type_ in _VETO_LABELS | {"GPE", "ORG"})
            ):
                continue
            if len(items) == 2:
                if token is None:
                    continue
                tag_tokens(token.doc, [token.i])
                if pos(token) != "PROPN":
                    continue
            yield a, b


def _is_particle(word: str) -> bool:
    return _PARTICLE_WORD.fullmatch(word) is not None


def _token_index(nlp_artifacts: Any) -> dict[int, Any]:
    doc = getattr(nlp_artifacts, "tokens", None)
    if doc is None:
        return {}
    return {token.idx: token for token in doc}


def _candidate_at(
    text: str, pos: int, cue: Cue, tokens: dict[int, Any], *, capitalised_only: bool = False, limit: int | None = None
) -> tuple[int, int, float, Any] | None:
    """The name at ``pos`` after ``cue``, with the token whose word class may still veto it (or None)."""
    m = _NAME.match(text, pos, limit if limit is not None else len(text))
    if m is None:
        return None
    words = list(_NON_SPACE.finditer(m.group()))
    kept_end = 0
    lower_name = False
    for i, w in enumerate(words):
        word = w.group()
        bare = word.strip(".,").lower()
        if bare in NOT_NAMES:
            break
        if word[0].isupper() or _INITIAL.match(word):
            if lower_name:
                break  # "john Smith": mixed case is two things
            kept_end = w.end()
        elif _PARTICLE_WORD.fullmatch(bare) and i > 0:
            continue
        elif i == 0 and cue.lower and not capitalised_only and _lower_name_ok(m.start() + w.start(), bare, tokens):
            kept_end = w.end()
            lower_name = True
        else:
            break
    if kept_end == 0:
        return None
    first = tokens.get(m.start("first"))
    if (
        cue.veto
        and first is not None
        and (first.ent_type_ in _VETO_LABELS or (first.ent_type_ == "NORP" and first.text.lower() in DEMONYMS))
    ):
        return None
    kept = m.group()[:kept_end].split()
    if kept[-1].strip(".,").lower() in _COMPANY_WORDS:
        return None  # "Acme Holdings", "Royal Bank"
    if not cue.caps and all(w.isupper() and len(w.strip(".")) > 1 for w in kept):
        return None  # "BESTBUY", "ABC", "APPENDIX": acronyms and shouted words, not names
    if any(_is_identifier(w) for w in kept):
        return None  # "AnthropicGoogleCloud", "ValueError", "OpenBLAS": identifiers
    if text.startswith(("(", "[", ")", "]", " ->", " ="), m.start() + kept_end) or len(kept[0].strip(".")) < 2:
        return None  # "Client(", "List[str]", "(candidate: Candidate) ->": code; "M.F.": an abbreviation
    start, end = m.start(), m.start() + kept_end
    while end > start and text[end - 1] in ".,'’":
        if text[end - 1] == "." and _FINAL_INITIAL.search(text[start:end]):
            break  # keep the dot of a final initial
        end -= 1
    if cue.end_of_line and not _LINE_CLOSE.match(text[end : end + 8]):
        return None
    if cue.closed and not _CLAUSE_END.match(text, end):
        return None
    # The word class is left to the caller: it needs the tagger, which is cheaper run once for all names.
    return start, end, 0.6 if lower_name else cue.score, first if cue.veto else None


_CAMEL = re.compile(r"^([A-Z]?[a-z]+)[A-Z]")
#: Name prefixes before an inner capital: McDonald, MacArthur, DeAngelo, LaToya, DiCaprio, FitzGerald, JoAnn.
_INNER_CAPITAL_PREFIXES = words("mc mac de di da la le van von fitz o jo mary ann lu st du del")


def _is_identifier(word: str) -> bool:
    """CamelCase or mixed capitals inside a word (``ValueError``, ``OpenBLAS``), unless a name prefix explains it."""
    word = word.strip(".,'’")
    if _INNER_CAPITALS.search(word):
        return True
    camel = _CAMEL.match(word)
    return camel is not None and camel.group(1).lower() not in _INNER_CAPITAL_PREFIXES


def _lower_name_ok(start: int, word: str, tokens: dict[int, Any]) -> bool:
    """A lower-case word after a greeting or a title is a name when spaCy sees a noun that is no common word."""
    token = tokens.get(start)
    if token is None or len(word) < 2 or word in NOT_NAMES:
        return False
    return bool(not token.is_stop and token.is_alpha and pos(token) in _LOWER_OK_POS)


def recognizers(language: str) -> list[RuleRecognizer]:
    return [PersonCueRecognizer(language)]
