"""Rebuild ``gateway/lexicons/`` from its public sources. Run by hand when a source changes; the output is committed.

    pip download --no-deps -d /tmp/lex names==0.3.0 spacy-lookups-data==1.0.5
    python scripts/build_lexicons.py /tmp/lex/names-0.3.0.tar.gz /tmp/lex/spacy_lookups_data-1.0.5-py2.py3-none-any.whl

Sources (see ``gateway/lexicons/README.md``):

* given names and surnames: the US Census Bureau's 1990 name frequency files (public domain), as shipped
  in the ``names`` package 0.3.0 (MIT);
* English word frequencies: ``en_lexeme_prob`` of ``spacy-lookups-data`` 1.0.5 (MIT), the unigram log
  probabilities spaCy v2 shipped with its English models.

Nothing here comes from Faker or presidio-evaluator.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import sys
import tarfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "gateway" / "lexicons"
ALPHA = re.compile(r"^[a-z]+$")
#: A word is "wordy" (an ordinary English word that is also a name: Will, Rose, Brown) when its
#: lower-case form is common and at most this much rarer (natural log) than its capitalised form.
WORDY_MIN_LOGPROB = -13.5
WORDY_CAPITAL_SLACK = 1.0
#: A word is "known" when either form is at least this frequent; rarer capitalised words are unknown.
KNOWN_MIN_LOGPROB = -17.0


def census(sdist: Path) -> tuple[list[str], list[str]]:
    given: set[str] = set()
    surnames: list[str] = []
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if not name.startswith("dist."):
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            rows = [line.split()[0].lower() for line in io.TextIOWrapper(handle, "ascii") if line.strip()]
            if name.endswith(".first"):
                given.update(rows)
            else:
                surnames.extend(rows)  # already ordered by frequency
    return sorted(given), surnames


def frequencies(wheel: Path) -> tuple[list[str], list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        table: dict[str, float] = json.loads(
            gzip.decompress(archive.read("spacy_lookups_data/data/en_lexeme_prob.json.gz"))
        )
    lower: dict[str, float] = {}
    capital: dict[str, float] = {}
    for word, logprob in table.items():
        if ALPHA.match(word):
            lower[word] = logprob
        elif len(word) > 1 and word[0].isupper() and word[1:].islower() and ALPHA.match(word.lower()):
            capital[word.lower()] = logprob
    wordy = sorted(
        w for w, p in lower.items() if p > WORDY_MIN_LOGPROB and p >= capital.get(w, -99.0) - WORDY_CAPITAL_SLACK
    )
    known = sorted(
        {w for w, p in lower.items() if p > KNOWN_MIN_LOGPROB}
        | {w for w, p in capital.items() if p > KNOWN_MIN_LOGPROB}
    )
    return wordy, known


def write(name: str, words: list[str]) -> None:
    data = ("\n".join(words) + "\n").encode()
    (OUT / name).write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    print(f"{name}: {len(words)} words")


def main() -> None:
    sdist, wheel = Path(sys.argv[1]), Path(sys.argv[2])
    given, surnames = census(sdist)
    wordy, known = frequencies(wheel)
    OUT.mkdir(exist_ok=True)
    write("given_names.txt.gz", given)
    write("surnames.txt.gz", surnames)
    write("english_wordy.txt.gz", wordy)
    write("english_known.txt.gz", known)


if __name__ == "__main__":
    main()
