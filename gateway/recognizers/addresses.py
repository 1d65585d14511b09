"""STREET_ADDRESS: postal addresses found by their structure, in the formats of several countries.

An address is recognised by its parts, never by a list of street names: a house number, a name of one
to four words and a street-type word (``Street``, ``Rd``, ``-straße``, ``rue``, ``Via``), in the order
the country writes them. The street-type words are those of postal standards: USPS Publication 28 and
Royal Mail for English, the common types of DE/AT/CH, NL and the Nordic countries, and the official
lists of FR/BE (types de voie), ES (tipos de vía), IT (DUG) and PT.

A street found this way is then completed (``_complete``): a house number before it (``4317
Invalidenstrasse 19``), a unit (``Apt 4B``, ``Suite 026``, ``Piso 3``), on the same line or the next,
and up to three locality parts: ``Springfield, IL 62704``, ``London SW1A 2AA``, ``10115 Berlin``,
``Spain``, each after a comma or on its own line. Formats without a type word are taken when their
structure is unmistakable: a name and number followed by a unit or by a postcode and city, PO boxes,
and US military addresses (``PSC 1708, Box 0531 / APO AP 05777``).

Precision first. Type words come in two tiers: unambiguous ones (``Street``, ``Avenue``, ``-straße``)
score 0.6 on their own; words that are also ordinary English (``Park``, ``Run``, ``Key``) score 0.4,
under the default threshold, unless a unit, a postcode, a state or a context word (``address``,
``ship to``, ``live at``) supports them. Lower-case addresses (``42 elm street``) need a spelled-out
type word and no function words.

The regexes only find candidates; which word is the street type is decided in Python against sets,
which keeps each regex short and linear on hostile input.
"""

from __future__ import annotations

import re

from ..lexicons import lexicon
from .rules import Check, Rule, RuleRecognizer, phrase_regex, window, words

ENTITY = "STREET_ADDRESS"


#: USPS Publication 28 / Royal Mail street types that are rarely anything else (full and abbreviated).
STRONG_TYPES = words(
    """street st avenue ave av road rd boulevard blvd lane ln drive dr court ct place pl terrace ter terr way
    parkway pkwy highway hwy expressway expy freeway fwy turnpike tpke circle cir crescent cres close mews alley
    aly plaza plz square sq trail trl causeway cswy stravenue crossing xing gardens gdns grove grv heights hts
    passage psge"""
)
#: Pub. 28 types that are also common English words: weak evidence on their own.
WEAK_TYPES = words(
    """park run walk loop path pass point pt hill row ridge green view vista valley village villa manor meadow
    common landing junction jct station center ctr centre island isle harbor harbour haven glen creek crk brook
    falls field forest fork garden gate gateway key knoll lake mall mill mount mountain mtn oval orchard pike
    pine plain port prairie ranch rapid rest river shore spring spur summit trace track tunnel underpass
    overpass union wall well wharf wynd bypass camp canyon cape cliff club corner course cove crest curve dale
    dam divide estate extension ext ferry flat ford forge fort ft hollow inlet lock lodge motorway neck radial
    ramp shoal skyway stream throughway trafficway viaduct ville bridge burg bend branch chase rise drove
    embankment parade quay approach broadway light loaf mission fall"""
)
_ALL_TYPES = STRONG_TYPES | WEAK_TYPES
#: Lower-case addresses must spell the type out.
_SPELLED_OUT = frozenset(t for t in STRONG_TYPES if len(t) > 3) | {"way"}
_DIRECTIONS = words("n s e w ne nw se sw north south east west northeast northwest southeast southwest")
FUNCTION_WORDS = words(
    """the a an and or of to in on at for with from by my our your his her their its this that these those more
    less few many several some other different same next last per each every all any no not is are was were be
    than then times x i we you it they he she me us them one two three four five years days hours minutes weeks
    months people users items new old big small top best free extra only just also about over under into onto up
    down out off again am pm version chapter section step page line room floor level stage phase part day week
    year issue ticket order item release build via vs"""
)
PARTICLES = words(
    """de del della dello delle dei degli di da dal do dos das des du la le les los las lo l d y e et en sur sous
    aux au san santa sant santo são st ste saint sainte von van der den am an im auf zum zur nad pod upon on
    bei u"""
)
#: Unit and floor words: Apt 4B, Suite 026, Flat 2, Piso 3, Puerta 9, Scala B, Whg. 5, Top 7.
UNIT_WORDS = words(
    """apt apartment suite ste unit fl floor rm room bldg building flat dept office piso puerta planta esc
    escalera bajo interno int scala piano stiege top whg app appartement bte appartamento apartamento wohnung
    etage étage"""
)

_US_STATE = (
    r"(?:A[LKZR]|C[AOT]|D[EC]|F[LM]|G[AU]|HI|I[ADLN]|K[SY]|LA|M[ADEHINOPST]|N[CDEHJMVY]|O[HKR]|P[AR]|RI|S[CD]|T[NX]"
    r"|UT|V[AIT]|W[AIVY]|AA|AE|AP)"
)
_UK_POSTCODE = r"[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2}"
_CA_POSTCODE = r"[A-Z]\d[A-Z][ \t]?\d[A-Z]\d"
_POSTCODE = rf"(?:\d{{4,6}}(?:-\d{{3,4}})?|{_UK_POSTCODE}|{_CA_POSTCODE}|\d{{4}}[ \t]?[A-Z]{{2}})"
#: A capital of the Latin, Greek or Cyrillic alphabets (``ΛΕΥΚΩΣΙΑ``, ``Ölands``).
_CAPITAL = "A-ZÀ-ÖØ-ÞĀ-ŽΆ-ΏΑ-ΩА-ЯЁ"
#: A list bullet that may open each line of an address block: "- ", "• ", "* ", and "? " where an
#: encoding lost the bullet character.
_BULLET = r"(?:[-*•·?]{1,3}[ \t]{1,2})?"
_PLACE_WORD = rf"(?:[{_CAPITAL}][a-z]{{0,2}}\.|[{_CAPITAL}][\w'’-]{{1,30}})"
#: A place name: up to four capitalised words, short particles between them, a qualifier in brackets
#: (``Halle (Saale)``, ``Frankfurt (Oder)``), a district letter or number after them (``København K``,
#: ``Paris 15``).
_PLACE = (
    rf"{_PLACE_WORD}(?:[ \t]{{1,2}}(?:(?:[a-zà-ÿ]{{1,4}}|[A-Z])[ \t]{{1,2}}){{0,2}}{_PLACE_WORD}){{0,3}}"
    r"(?:[ \t]\((?:[^\W\d_][\w'’-]{1,20})(?:[ \t][^\W\d_][\w'’-]{1,20}){0,2}\))?"
    r"(?:[ \t](?:\d{1,3}|[A-Z])(?![\w'’-]))?"
)
_UNIT = re.compile(
    r"(?:,?[ \t]{0,3}|,?[ \t]*\r?\n[ \t]*)(?:#[ \t]?|(?i:apartment|appartamento|apartamento|appartement|apt|suite|ste|"
    r"unit|fl|floor|rm|room|bldg|building|flat|dept|office|piso|puerta|planta|esc|escalera|bajo|interno|int|scala|"
    r"piano|stiege|top|whg|wohnung|etage|étage|app|bte)\.?[ \t]{0,3}(?:n[º°o]\.?[ \t]?)?#?)[A-Za-z0-9º°ª-]{1,6}"
    r"(?![\w-])"
)
#: A unit after a street that ends with a dot: ``Rákóczi út 41. Apt. 304`` (Hungarian house numbers are
#: ordinals), ``12 Main St. Suite 400``. Only the unambiguous words, and a number must follow.
_UNIT_AFTER_DOT = re.compile(
    r"\.[ \t]{1,3}(?:Apt|Apartment|Suite|Ste|Unit|Flat)\.?[ \t]{0,2}#?\d{1,5}[A-Za-z]?(?![\w-])"
)
#: One locality part after a street: after a comma, or on the next line (one blank line allowed).
_LOCALITY = re.compile(
    rf"(?:,[ \t]{{0,3}}(?:\r?\n[ \t]*)?|[ \t]*\r?\n(?:[ \t]*\r?\n)?[ \t]*{_BULLET}(?:,[ \t]{{0,3}})?)"
    rf"(?P<part>(?:(?:[A-Z]{{1,2}}-)?\d{{4,6}}[ \t]{{1,3}}|\d{{4}}[ \t]?[A-Z]{{2}}[ \t]{{1,3}})?{_PLACE}"
    rf"(?:,?[ \t]{{1,3}}{_US_STATE}(?![\w-]))?"
    rf"(?:,?[ \t]{{1,3}}{_POSTCODE})?|{_US_STATE}[ \t]{{1,3}}\d{{5}}(?:-\d{{4}})?|{_UK_POSTCODE}|\d{{5}}(?:-\d{{4}})?)"
    r"(?=[ \t]*(?:$|\r?\n|[,.;:!?()])|[ \t]+[a-z])",
    re.MULTILINE,
)
#: A locality on the street's own line, after a space: a place, a state, a postcode.
_SAME_LINE_PART = (
    rf"[ \t]{{1,3}}(?P<part>{_PLACE}(?:,?[ \t]{{1,3}}{_US_STATE}(?![\w-]))?(?:,?[ \t]{{1,3}}{_POSTCODE})?)"
)
#: ... that ends the line or the sentence: "12 Main St Apt 4 Springfield IL 62704."
_LOCALITY_SAME_LINE = re.compile(_SAME_LINE_PART + r"(?=[ \t]*(?:$|\r?\n|[,.;:!?()]))", re.MULTILINE)
#: ... or, after a unit, runs on into prose: "Suite 166 NEWELL Australia last night".
_LOCALITY_AFTER_UNIT = re.compile(_SAME_LINE_PART + r"(?=[ \t]+[a-z])", re.MULTILINE)
#: Words that open a line after an address but are not part of it.
_NOT_PLACES = words(
    """regards thanks thank best cheers sincerely hello hi dear kind warm yours love tel phone mobile cell fax email
    e-mail mail web www note please ps p.s. sent from the this that it we i you he she they my our your call
    contact name company monday tuesday wednesday thursday friday saturday sunday today tomorrow tonight danke
    dank gruß grüße viele mfg merci cordialement bien gracias saludos atentamente grazie saluti cordiali obrigado
    atenciosamente bedankt groeten tack hälsningar mvh kiitos terveisin"""
)
_LEADING_NUMBER = re.compile(r"(?<![\w.,/#$£€%+:-])\d{1,6}[A-Za-z]?[ \t]{1,3}$")
_CONTEXT = re.compile(
    r"\b(?:address|addr|adres|adresse|anschrift|direcci[oó]n|indirizzo|endere[cç]o|live[sd]?|living|reside[sd]?"
    r"|located|ship(?:ped|ping)?|deliver(?:ed|y)?|mail(?:ing)?|postal|billing|invoice to|send (?:it|them) to"
    r"|visit|office|headquarters|hq|home|moved|apartment|house|residence|wohn\w*|woon\w*|domicil\w*|courier"
    r"|parcel|package|label)\b"
)


def _bare(token: str) -> str:
    return token.strip(".,").lower()


#: The rest of a line that makes it a label line: "Tallinn office: ...".
_LABEL_REST = re.compile(r"[ \t]{1,3}[a-z][\w \t]{0,30}:")


#: A cross street named before the street, without "the corner of": "meet at Oak and 1200 Main St", "it is
#: Elm & Kerry Way". One capitalised word and ``and``/``&`` directly before the street, after a word that
#: leads to a place (or a colon, a question, or the start of a line).
_CROSS_BEFORE = re.compile(
    rf"(?:^|(?<=[:\n?!])|(?i:\b(?:at|to|on|of|is|in|near|by|via|from|with)))[ \t]{{0,3}}"
    rf"(?P<word>[{_CAPITAL}][\w'’-]{{1,30}})[ \t]{{1,3}}(?:and|&)[ \t]{{1,3}}$",
    re.MULTILINE,
)


def _cross_before(text: str, start: int) -> int:
    """Where the street starting at ``start`` begins once a cross street named before it is taken in."""
    m = _CROSS_BEFORE.search(text, max(0, start - 48), start)
    if m is None or _bare(m.group("word")) in FUNCTION_WORDS | _NOT_PLACES | UNIT_WORDS:
        return start
    return m.start("word")


def _complete(text: str, start: int, end: int, score: float, *, has_unit: bool = False) -> tuple[int, int, float]:
    """Widen a street to its house number, cross street, unit and locality lines, and score what was found around it."""
    lead = _LEADING_NUMBER.search(text, max(0, start - 12), start)
    if lead is not None:
        start = lead.start()
    start = _cross_before(text, start)
    if text[end - 1 : end].isdigit() and text[end : end + 1] == "." and text[end + 1 : end + 2] in (",", "\n", "\r"):
        end += 1  # the dot of an ordinal house number before the locality: "Kárpát u. 6., Budapest"
    for _ in range(2):  # "Suite 629 Suite 680", "Piso 3 Puerta B"
        unit = _UNIT.match(text, end) or _UNIT_AFTER_DOT.match(text, end)
        if unit is None:
            break
        end, has_unit = unit.end(), True
    if has_unit:
        score += 0.15
    postal = found = False
    for i in range(3):
        part = _LOCALITY.match(text, end)
        if part is None and i == 0:
            # "12 Main St Apt 4 Springfield IL 62704": one locality after a space, ending the line or sentence
            part = _LOCALITY_SAME_LINE.match(text, end)
            if part is None and has_unit and "\n" not in text[start:end]:
                # "... Suite 166 NEWELL Australia last night": after a unit, a place may run on into prose
                part = _LOCALITY_AFTER_UNIT.match(text, end)
        if part is None:
            break
        first = part.group("part").split()[0]
        if _bare(first) in _NOT_PLACES and not first.isupper():  # "Regards", but "THE LAURELS"
            break
        label = _LABEL_REST.match(text, part.end()) and not any(c.isdecimal() for c in part.group("part"))
        if label and "\n" in text[end : part.start("part")]:
            break  # "Tallinn office: ...": the next line is a label, not a locality
        end, found = part.end(), True
        postal = postal or re.search(r"\d|\b[A-Z]{2}\b", part.group("part")) is not None
    if postal:
        score += 0.3
    elif found:
        score += 0.05
    if _CONTEXT.search(window(text, start, 48)):
        score += 0.2
    return start, end, min(score, 1.0)


# --- English order: 123 [N] Main St / Flat 4, Kingsland Road ---------------------------------------------

_STREET_WORD = r"(?:[^\W\d_][\w'’-]{0,24}|\d{1,3}(?:st|nd|rd|th))\.?"
_WORDS = rf"(?P<words>{_STREET_WORD}(?:[ \t]{{1,3}}{_STREET_WORD}){{1,5}})"
_NUMBER_FIRST = re.compile(rf"\d(?<![\w.,/#$£€%+:-]\d)(?P<num>\d{{0,5}}(?:-\d{{1,4}})?[A-Za-z]?)[ \t]{{1,3}}{_WORDS}")
_UNIT_FIRST = re.compile(
    r"(?<![\w.])(?:Flat|Apartment|Apt|Unit|Suite|Ste|Studio|Room)\.?[ \t]{1,3}[A-Za-z0-9-]{1,6}"
    rf"(?:,?[ \t]{{1,3}}|,?[ \t]*\r?\n[ \t]*)"
    rf"(?:\d{{1,6}}[A-Za-z]?[ \t]{{1,3}})?{_WORDS}"
)


_POST_DIRECTION = re.compile(r"[ \t]{1,3}(?:N|S|E|W|NE|NW|SE|SW)\.?(?![\w-])")


def _type_word(token: str) -> str | None:
    bare = _bare(token)
    if bare in _ALL_TYPES:
        return bare
    if bare.endswith("s") and bare[:-1] in _ALL_TYPES and len(bare) > 3:
        return bare[:-1]  # USPS plurals: Burgs, Pines, Ways, Keys
    return None


def _check_words(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    tokens = m.group("words").split()
    offset = 0
    if _bare(tokens[0]) in _DIRECTIONS and tokens[0][0].isupper() and len(tokens) > 2:
        offset = 1
    # The street type is the last type word that follows one to four name words.
    best: int | None = None
    for k in range(offset + 1, min(len(tokens), offset + 5)):
        kind = _type_word(tokens[k])
        if kind is not None and _valid_name(tokens[offset:k], kind):
            best = k
    if best is None:
        return None
    kind = _type_word(tokens[best]) or ""
    spans = [t.span() for t in re.finditer(r"\S+", m.group("words"))]
    stop = m.start("words") + spans[best][1]
    if tokens[best].endswith(".") and _bare(tokens[best]) in _SPELLED_OUT:
        stop -= 1  # "Main Street." ends a sentence
    direction = _POST_DIRECTION.match(m.string, stop)
    if direction is not None:
        stop = direction.end()
    score = 0.6 if kind in STRONG_TYPES else 0.4
    return _complete(m.string, start, stop, score, has_unit=m.re is _UNIT_FIRST)


def _place_word(token: str) -> bool:
    """``Old Kent Road``, ``New Street``: capitalised, these function words are part of street names."""
    return token[0].isupper() and _bare(token) in ("old", "new")


def _valid_name(tokens: list[str], kind: str) -> bool:
    """Name words before an English type word: capitalised (``Main``, ``O'Connell``, ``5th``), or a short
    all-lower-case name before a spelled-out type (``42 elm street``). Never a function word or a unit."""
    if any((_bare(t) in FUNCTION_WORDS and not _place_word(t)) or _bare(t) in UNIT_WORDS for t in tokens):
        return False
    if all(t[0].isupper() or t[0].isdigit() for t in tokens):
        return True
    return len(tokens) <= 2 and kind in _SPELLED_OUT and all(t[0].islower() for t in tokens)


# --- Type as a suffix of the street word, number after: Hauptstraße 5, Keizersgracht 123 -------------------

STRONG_SUFFIXES = (
    "straße", "strasse", "str", "gasse", "platz", "allee", "alleen", "allé", "alléen", "weg", "chaussee",
    "promenade", "straat", "gracht", "plein", "singel", "steeg", "laan", "gatan", "gata", "gaten", "vägen",
    "vagen", "veien", "vegen", "katu", "kuja", "stræde", "stredet", "torget", "torv", "gade", "vej", "stien",
    "plassen", "ulica", "utca", "tie", "vei", "veg",
)  # fmt: skip
WEAK_SUFFIXES = (
    "ring", "damm", "ufer", "steig", "pfad", "markt", "kade", "dijk", "dreef", "gate", "hof", "park",
    "pad", "brink", "wal", "kamp", "berg", "braut", "stok", "ringen", "svingen",
)  # fmt: skip
_NUM_EU = r"\d{1,4}[a-zA-Z]?(?:[ \t]?[-/][ \t]?\d{1,4}[a-zA-Z]?)?(?![\w'’-])(?![.,:/]\d)"
_PRE_WORDS = re.compile(r"(?<![\w.-])(?:[A-ZÄÖÜ][\w.'’-]{0,30}[ \t]){1,3}$")
_SUFFIX_FIRST = re.compile(
    rf"[A-ZÄÖÜÅØÆ](?<![\w.-].)(?P<street>[\w'’-]{{1,40}}+)(?P<dot>\.)?,?[ \t]{{1,3}}(?P<num>{_NUM_EU})"
)


def _check_suffix(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    text = m.string
    street = text[start : m.end("street")].lower()
    if street.endswith("str") and not m.group("dot"):
        return None
    strong = street.endswith(STRONG_SUFFIXES)
    if not strong and not street.endswith(WEAK_SUFFIXES):
        return None
    if street in STRONG_SUFFIXES or street in WEAK_SUFFIXES:
        # "Berliner Straße 12", "Am Markt 3": the type word alone needs a name before it
        pre = _PRE_WORDS.search(text, max(0, start - 100), start)
        if pre is None or any(_bare(t) in FUNCTION_WORDS - PARTICLES for t in pre.group().split()):
            return None
        start = pre.start()
    return _complete(text, start, end, 0.65 if strong else 0.35)


# --- Type word first: 12 rue de la Paix / Calle Mayor, 5 / Via Roma 12 / Rue de la Loi 16 ------------------

#: Type words that are not English words: "Via Roma 12", "Calle Mayor 5", "12 rue de la Paix".
FOREIGN_TYPES = words(
    """rue allée allee impasse chemin quai faubourg chaussée cité cite hameau lieu-dit sentier venelle ruelle
    calle c/ c. avenida avda avda. av. paseo carretera ctra. travesía travesia rambla ronda carrer plaça passeig
    avinguda acceso vial glorieta callejón callejon cuesta pasadizo pasaje urbanización urbanizacion camino
    calzada carrera senda bulevar polígono poligono partida barrio rúa praza piazza piazzale piazzetta viale
    vicolo vico lungomare lungolago lungotevere corso largo strada borgo borgata contrada canale stretto rotonda
    salita discesa campo fondamenta rampa galleria traversa località localita frazione rione riva molo calata
    via rua travessa praça praca alameda estrada beco praceta calçada rodovia quinta jardim ul. ulica aleja plac
    osiedle incrocio cañada trg náměstí nábřeží námestie οδός οδ. λεωφόρος λεωφ. λ. πλατεία πλ. улица ул.
    проспект пр-т"""
)
#: Also English words: only in French order ("12 avenue des Ternes") or with a postcode and city.
ENGLISH_TYPES = words("avenue boulevard bd blvd place pl. route square passage cours plaza")
_TYPE_FIRST_WORDS = sorted(FOREIGN_TYPES | ENGLISH_TYPES, key=len, reverse=True)
_TYPE_WORD = re.compile(phrase_regex(_TYPE_FIRST_WORDS) + r"(?=[ \t])")
#: Only their capitalised forms, so "via email", "a largo", "the route" stay prose.
_CASED_ONLY = words(
    """via corso largo strada borgo contrada rambla ronda plaza camino route square passage cours place campo
    canale riva molo rampa galleria partida carrera senda quinta"""
)
#: "C." and "C/" stand for Calle only before "de"/"del": "C. de Yago Roldán 889".
_NEEDS_PARTICLE = words("c. c/ av.")
_NUM_BEFORE = re.compile(r"(?<![\w.,/#$£€%+:-])(\d{1,4}(?:[ \t]?(?:bis|ter|quater|[A-Da-d])(?!\w))?),?[ \t]{1,3}$")
_NAME_AFTER = re.compile(r"[ \t]{1,3}([^\W\d_][\w'’.-]{0,24}(?:[ \t][\w'’.-]{1,25}){0,5})")
_NUM_AFTER = re.compile(
    rf",?[ \t]{{1,3}}(?:n[º°o]\.?[ \t]?|nr\.?[ \t]?|no\.?[ \t]?)?{_NUM_EU}"
    r"(?:,?[ \t]{1,3}\d{1,2}[º°ª]?[ \t]?[A-Z]?(?![\w-]))?"
)


def _check_type_first(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    text = m.string
    type_word = m.group()
    lowered = type_word.lower()
    name = _NAME_AFTER.match(text, end)
    if name is None:
        return None
    tokens = name.group(1).split(" ")
    before = _NUM_BEFORE.search(text, max(0, start - 16), start)
    particle_next = _bare(tokens[0]) in PARTICLES
    if lowered in _CASED_ONLY and not type_word[0].isupper() and not (before is not None and particle_next):
        return None  # "via email", "the route"; but French "3 route de Lyon"
    if lowered in _NEEDS_PARTICLE and not particle_next:
        return None
    keep = _name_length(tokens)
    if keep == 0 or any(_bare(t) in FUNCTION_WORDS - PARTICLES for t in tokens[:keep]):
        return None
    name_end = name.start(1) + len(" ".join(tokens[:keep]))
    after = _NUM_AFTER.match(text, name_end)
    stop = after.end() if after else name_end
    locality = _LOCALITY.match(text, stop)
    postal = locality is not None and bool(re.search(r"\d{4}", locality.group()))
    labelled = _FIELD_LABEL.search(text, max(0, start - 24), start) is not None
    if before is None and after is None and not ((postal or labelled) and lowered in FOREIGN_TYPES):
        return None  # "rue de Dupont, 16200 Didier" has no number but a postcode; "street=rue Andre" a label
    if lowered in ENGLISH_TYPES and not postal:
        # "12 avenue des Ternes" (French order, lower case or a particle next) is an address;
        # "Square Enix 2" or "Place 2 orders" is not.
        french = before is not None and (type_word[0].islower() or particle_next)
        if not french:
            return None
    begin = before.start() if before else start
    return _complete(text, begin, stop, 0.65)


#: A field label right before a street: "street=", "Address:", "Straße:".
_FIELD_LABEL = re.compile(r"(?i:street|address|addr|adresse|anschrift|straße|strasse|calle|via|rue)[ \t]*[:=][ \t]*$")


def _name_length(tokens: list[str]) -> int:
    """How many leading tokens are the street name: capitalised words and numbers, with particles between;
    a unit word ends it."""
    keep = 0
    for i, token in enumerate(tokens):
        bare = _bare(token)
        if bare in UNIT_WORDS and i > 0:
            break
        if token[0].isupper():
            keep = i + 1
            if token.endswith(","):
                break
        elif bare.isdigit() or bare in PARTICLES or re.split(r"['’]", bare)[0] in PARTICLES:
            continue  # "rue du 4 Septembre", "Via dei Mille"
        else:
            break
    return keep


# --- No type word, but an unmistakable frame --------------------------------------------------------------

_NAME_WORDS = (
    rf"[{_CAPITAL}][\w'’.-]{{1,30}}(?:[ \t](?:[a-zà-ÿ]{{1,4}}[ \t]){{0,2}}[{_CAPITAL}][\w'’.-]{{1,30}}){{0,3}}"
)
#: "Unter den Linden 77, 10117 Berlin", "Keizersgracht 123, 1015 CJ Amsterdam".
_POSTCODE_ANCHORED = re.compile(
    r"[A-ZÀ-ÖØ-ÞĀ-Ž](?<![\w.-].)(?P<name>[\w'’.-]{1,30}(?:[ \t][\w'’.-]{1,30}){0,3}),?[ \t]{1,3}"
    r"(?P<num>\d{1,4}[a-zA-Z]?(?:-\d{1,4})?),?[ \t]{1,3}(?:\r?\n[ \t]{0,8})?"
    r"(?:[A-Z]{1,2}-)?(?:\d{5}|\d{4}[ \t]?[A-Z]{2})[ \t]{1,3}[A-ZÀ-ÖØ-ÞĀ-Ž][\w'’-]{2,30}"
)
#: "Aasa 43 Apt. 651", "Strojírenská 96\n Suite 907": a name and a number, then a unit.
_NAME_NUMBER_UNIT = re.compile(
    r"[A-ZÀ-ÖØ-ÞĀ-Ž](?<![\w.-].)(?P<name>[\w'’.-]{0,30}(?:[ \t](?:[a-zà-ÿ]{1,4}[ \t]){0,2}"
    r"[A-ZÀ-ÖØ-ÞĀ-Ž][\w'’.-]{1,30}){0,3})[ \t]{1,3}(?P<num>\d{1,5}[a-zA-Z]?(?:/\d{1,4}[a-zA-Z]?)?)"
    rf"(?=(?:,?[ \t]{{1,3}}|,?[ \t]*\r?\n[ \t]*{_BULLET})"
    r"(?i:apt|apartment|suite|ste|unit|flat|piso|puerta|planta|interno|int|scala|stiege|top|whg)\b)"
)
#: "Grüne Lagune 79 / Benavente, SA 60230", "Κασνέτη 290, Býšt, PA 35625": a name and a number, then a
#: locality with a postcode (and a state) on the next line or after a comma.
_NAME_NUMBER_LOCALITY = re.compile(
    rf"[{_CAPITAL}](?<![\w.-].)(?P<name>[\w'’.-]{{0,30}}(?:[ \t](?:[a-zà-ÿ]{{1,4}}[ \t]){{0,2}}"
    rf"[{_CAPITAL}][\w'’.-]{{1,30}}){{0,3}})[ \t]{{1,3}}(?P<num>\d{{1,5}}[a-zA-Z]?(?:/\d{{1,4}}[a-zA-Z]?)?)"
    rf"(?=(?:,[ \t]{{1,3}}|,?[ \t]*\r?\n[ \t]*){_PLACE_WORD}(?:[ \t]{{1,2}}{_PLACE_WORD}){{0,3}},?[ \t]{{1,3}}"
    r"(?:[A-Z]{2}[ \t]{1,3})?\d{4,5}(?:-\d{3,4})?(?![\w-]))"
)
#: "60663 Johnston Land Apt. 477": a number and capitalised words, then a unit with its number (not ``Unit``:
#: "3 Dell Monitors Unit 5").
_NUMBER_NAME_UNIT = re.compile(
    rf"\d(?<![\w.,/#$£€%+:-]\d)\d{{0,5}}[a-zA-Z]?[ \t]{{1,3}}(?P<name>[{_CAPITAL}][\w'’.-]{{1,30}}"
    rf"(?:[ \t]{{1,2}}[{_CAPITAL}][\w'’.-]{{1,30}}){{0,2}})"
    rf"(?=(?:,?[ \t]{{1,3}}|,?[ \t]*\r?\n[ \t]*{_BULLET})"
    r"(?:Apt|Apartment|Suite|Ste|Flat|Appartamento|Piso|Puerta)\.?[ \t]{0,2}#?\d)"
)


def _name_tokens_ok(name: str) -> bool:
    tokens = name.split()
    return not any(_bare(t) in FUNCTION_WORDS or _bare(t) in UNIT_WORDS for t in tokens) and all(
        t[0].isupper() or _bare(t) in PARTICLES for t in tokens
    )


def _check_postcode_anchored(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    if not _name_tokens_ok(m.string[start : m.end("name")]):
        return None
    num = int(_house_digits(m.group("num")) or "0")
    if num == 0 or 1900 <= num <= 2100:
        return None
    return _complete(m.string, start, end, 0.7)


def _check_name_number_locality(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    if not _name_tokens_ok(m.string[start : m.end("name")]):
        return None
    if not _foreign_name(m.string[start : m.end("name")].split()):
        return None  # "Windows 10 / Redmond, WA 98052": English words and a number
    num = int(_house_digits(m.group("num")) or "0")
    if num == 0:
        return None
    return _complete(m.string, start, end, 0.5)


def _check_number_name_unit(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    if not _name_tokens_ok(m.group("name")):
        return None
    return _complete(m.string, start, m.end("name"), 0.5)


def _check_name_number_unit(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    if not _name_tokens_ok(m.string[start : m.end("name")]):
        return None
    return _complete(m.string, start, end, 0.5)


#: A lower-case type word after the name, number after: "Dózsa György út 78", "Karl Johans gate 5".
_TYPE_LAST = re.compile(
    r"[A-ZÀ-ÖØ-ÞĀ-Ž](?<![\w.-].)(?P<name>[\w'’.-]{1,30}(?:[ \t][\w'’.-]{1,30}){0,2})[ \t]"
    r"(?:út|utca|u\.|útja|utcája|tér|tere|körút|krt\.|rakpart|rkp\.|sor|vei|veien|veg|vegen|gate|gata|gatan|vej|väg|vägen|gränd|torg|"
    r"terrasse|plass|plads|gade|allé|stien|straße|strasse|weg|allee|platz|gasse|laan|straat|ulica|ul\.|cesta|"
    rf"tänav|põik|maantee|mnt\.?|iela|gatvė)[ \t]{{1,3}}{_NUM_EU}"
)


def _check_type_last(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    tokens = m.group("name").split()
    if any(_bare(t) in FUNCTION_WORDS - PARTICLES for t in tokens):
        return None
    return _complete(m.string, start, end, 0.6)


_PO_BOX = re.compile(
    r"(?i:P\.?[ \t]?O\.?[ \t]?Box|Post[ \t]Office[ \t]Box|Postfach|Apartado(?:[ \t]de[ \t]correos)?"
    r"|Casella[ \t]postale|Bo[iî]te[ \t]postale|Postbus)[ \t]{1,3}\d{1,7}(?!\w)"
)
#: US military mail: "PSC 1708, Box 0531 / APO AP 05777", "USNV Degtyarev / FPO AP 41937".
_MILITARY = re.compile(
    r"(?:(?:PSC|CMR|Unit)[ \t]\d{1,5},?[ \t]Box[ \t]\d{1,5}|(?:USNS|USNV|USS|USCGC)[ \t][^\W\d_][\w'’-]{1,30})"
    r"[ \t]*(?:,[ \t]*|\r?\n[ \t]*)(?:APO|FPO|DPO)[ \t](?:AA|AE|AP)[ \t]\d{5}(?!\w)"
)


#: "lives at Via Venezia 88", "the corner of Bartákova 437 and ...": many countries write a street as a
#: name and a number with no type word at all. Only after a phrase that says an address follows, and
#: with a name English does not know or a foreign street word ("ship to Android 14" is not an address,
#: "lives at Via Venezia 88" is), and a number of two digits or more or a name made only of unknown
#: words ("drops you off at Parkring 7").
_ADDRESS_CUE = (
    r"(?i:\b(?:lives?|lived|living|resides?|reside[sd]|located|situated|based|staying|stays?)[ \t]{1,3}(?:at|on|in)"
    r"|\b(?:moved|move|ship|send|deliver|taxi|drive|driver|mail|post)[ \t]{1,3}(?:it[ \t]{1,3})?to"
    r"|\bmoved[ \t]{1,3}from|\b(?:drops?|dropped|picks?|picked)[ \t]{1,3}(?:\w{1,8}[ \t]{1,3})?(?:off|up)[ \t]{1,3}at"
    r"|\b(?:enter|entrance|parking|park)[ \t]{1,3}(?:is[ \t]{1,3})?on"
    r"|\b(?:corner|side|end)[ \t]{1,3}of"
    r"|\b(?:meet|stop|station|arrived|address|office|restaurant|shop|store|house|flat)"
    r"\b[\w \t]{0,12}?[ \t](?:at|is|is[ \t]on)"
    r"|\b(?:address(?:es)?|street|strasse|straße|calle|rue|via)[ \t]*[:=]|\band)"
)
_CUED_NAME_NUMBER = re.compile(
    rf"(?P<cue>{_ADDRESS_CUE})(?:[ \t]{{1,3}}|(?<=[:=])[ \t]{{0,3}})(?:the[ \t]{{1,3}})?"
    rf"(?P<street>(?:\d{{1,6}}[ \t]{{1,3}})?(?P<name>{_NAME_WORDS})[ \t]{{1,3}}"
    rf"(?P<num>\d{{1,4}}[a-zA-Z]?)(?!\w|[.,:/%°-]\w))"
)


def _check_cued_name_number(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    tokens = m.group("name").split()
    if any(_bare(t) in (FUNCTION_WORDS | UNIT_WORDS) - FOREIGN_TYPES for t in tokens):
        return None  # "Via", "Rue" are street types here, not English words
    if m.group("cue").lower() == "and" and not _after_corner(m):
        return None
    if not _foreign_name(tokens):
        return None  # "ship to Android 14", "send to Team 2": English words and a number are no street
    digits = _house_digits(m.group("num"))
    if len(digits) == 1 and not all(_unknown_word(t) for t in tokens):
        return None  # one digit only after words English does not know ("Parkring 7")
    num = int(digits or "0")
    if num == 0 or (1900 <= num <= 2100 and len(m.group("num")) == 4):
        return None  # "moved to Berlin 2019": a year
    return _complete(m.string, m.start("street"), m.end("street"), 0.5)


def _unknown_word(word: str) -> bool:
    return lexicon().unknown(_bare(word))


def _foreign_name(tokens: list[str]) -> bool:
    """A street name without a type word needs a word English does not know, or a foreign street word."""
    return any(_unknown_word(t) or _bare(t) in FOREIGN_TYPES for t in tokens)


_AFTER_DIGITS = re.compile(r"\D.*")


def _house_digits(number: str) -> str:
    """The leading digits of a house number: "112a" -> "112", "1511/230" -> "1511"."""
    return _AFTER_DIGITS.sub("", number)


def _after_corner(m: re.Match[str]) -> bool:
    """``and`` is a cue only for the second street of ``the corner of A and B``."""
    return re.search(r"(?i:\bcorner[ \t]{1,3}of)", m.string[max(0, m.start() - 80) : m.start()]) is not None


#: An intersection is one place: ``the corner of 1356 Impala St and Sara Locks``, ``the corner of
#: Feldstrasse 61 and Marušić Brook``. The phrase is taken whole, so the model reads ``meet at
#: <STREET_ADDRESS_1>`` and no street name is left beside a placeholder. Each street: a house number, one
#: to five words that start capitalised (lower-case words may follow: ``Stensås terrasse``, ``ul.
#: Fałata``), a number.
_CROSS_STREET = (
    r"(?:\d{1,6}[ \t]{1,3})?(?:[a-z]{1,3}\.[ \t]{1,2})?"
    rf"(?:[{_CAPITAL}][\w'’.-]{{0,30}}|\d{{1,3}}(?:st|nd|rd|th))"
    r"(?:[ \t]{1,2}[\w'’.-]{1,30}){0,5}"
)
_INTERSECTION = re.compile(
    r"(?i:\b(?:the[ \t]{1,3})?corner[ \t]{1,3}of)[ \t]{1,3}"
    rf"(?P<a>{_CROSS_STREET})[ \t]{{1,3}}(?:and|&)[ \t]{{1,3}}(?P<b>{_CROSS_STREET})"
)


def _cross_street(tokens: list[str]) -> list[str]:
    """The street in a run of words: up to the last capitalised word or number, with no function word."""
    kept: list[str] = []
    for token in tokens:
        if _bare(token) in FUNCTION_WORDS - PARTICLES - FOREIGN_TYPES:  # "Via Lagrange 66" is a street
            break
        kept.append(token)
    while kept and not (kept[-1][0].isupper() or kept[-1][0].isdigit()):
        kept.pop()
    return kept


def _check_intersection(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    a, b = _cross_street(m.group("a").split()), _cross_street(m.group("b").split())
    if len(a) != len(m.group("a").split()) or not b:
        return None  # "the corner of the room and ...": the first street must end at "and"
    streety = [
        t
        for t in a + b
        if t[0].isdigit() or _type_word(t) or _bare(t) in FOREIGN_TYPES or _unknown_word(t) or _suffix_type(t)
    ]
    if not streety:
        return None  # "the corner of Design and Engineering": English words, no number, no street type
    spans = [t.span() for t in re.finditer(r"\S+", m.group("b"))]
    stop = m.start("b") + spans[len(b) - 1][1]
    if m.string[stop - 1] == "." and len(_bare(b[-1])) > 3:
        stop -= 1  # "... and Paterson Pass." ends a sentence
    return _complete(m.string, start, stop, 0.7)


#: A street named without a number, after a word that places something on it: "the clubs on Amelia Center
#: Street", "a flat off Kingsland Road". Only the spelled-out types that name nothing but a street, capitalised.
_NAMED_STREET = re.compile(
    r"(?i:\b(?:on|along|off|down|up|at|into|onto|near|to|from|via))[ \t]{1,3}"
    rf"(?P<name>[{_CAPITAL}][\w'’-]{{1,30}}(?:[ \t][{_CAPITAL}][\w'’-]{{1,30}}){{0,2}})"
    r"[ \t](?:Street|Road|Avenue|Lane|Boulevard|Terrace|Crescent|Parkway)(?![\w'’-])"
)


def _check_named_street(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    if not _name_tokens_ok(m.group("name")) or any(_bare(t) in _NOT_PLACES for t in m.group("name").split()):
        return None
    return _complete(m.string, m.start("name"), end, 0.5)


def _suffix_type(token: str) -> bool:
    bare = _bare(token)
    return len(bare) > 5 and bare.endswith(STRONG_SUFFIXES)


#: A unit on a line of its own, in an address block: ``Apt. 925``, ``Suite 854``, then its locality lines.
_UNIT_LINE = re.compile(
    rf"^[ \t]{{0,8}}{_BULLET}(?P<value>(?:Apt|Apartment|Suite|Ste|Flat)\.?[ \t]{{0,2}}#?\d{{1,5}}[A-Za-z]?)"
    r"(?=[ \t]*,?[ \t]*(?:\r?\n|$))",
    re.MULTILINE,
)


def _check_unit_line(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    return _complete(m.string, start, end, 0.5)


def _check_simple(score: float) -> Check:
    def check(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
        return _complete(m.string, start, end, score)

    return check


_UNIT_FIRST_WORDS = ("flat", "apartment", "apt", "unit", "suite", "ste", "studio", "room")
_PO_BOX_WORDS = ("box", "postfach", "apartado", "casella", "postale", "postbus")
RULES: tuple[Rule, ...] = (
    Rule("street_number_first", _NUMBER_FIRST, 0.6, _check_words),
    Rule("street_unit_first", _UNIT_FIRST, 0.6, _check_words, prefilter=_UNIT_FIRST_WORDS),
    Rule("street_type_suffix", _SUFFIX_FIRST, 0.65, _check_suffix),
    Rule("street_type_first", _TYPE_WORD, 0.65, _check_type_first),
    Rule("street_type_last", _TYPE_LAST, 0.6, _check_type_last),
    Rule("street_postcode_city", _POSTCODE_ANCHORED, 0.7, _check_postcode_anchored),
    Rule("street_number_unit", _NAME_NUMBER_UNIT, 0.5, _check_name_number_unit),
    Rule("street_number_locality", _NAME_NUMBER_LOCALITY, 0.5, _check_name_number_locality),
    Rule("street_number_name_unit", _NUMBER_NAME_UNIT, 0.5, _check_number_name_unit),
    Rule("street_name_number_after_cue", _CUED_NAME_NUMBER, 0.5, _check_cued_name_number),
    Rule("street_intersection", _INTERSECTION, 0.7, _check_intersection, prefilter=("corner",)),
    Rule("street_named", _NAMED_STREET, 0.5, _check_named_street,
         prefilter=("street", "road", "avenue", "lane", "boulevard", "terrace", "crescent", "parkway")),
    Rule("street_unit_line", _UNIT_LINE, 0.5, _check_unit_line, prefilter=("apt", "apartment", "suite", "ste", "flat")),
    Rule("po_box", _PO_BOX, 0.7, _check_simple(0.7), prefilter=_PO_BOX_WORDS),
    Rule("military_address", _MILITARY, 0.8, _check_simple(0.8), prefilter=("apo ", "fpo ", "dpo ")),
)  # fmt: skip


def recognizers(language: str) -> list[RuleRecognizer]:
    return [RuleRecognizer(ENTITY, RULES, name="StreetAddressRecognizer", language=language)]
