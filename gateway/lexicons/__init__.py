"""The word tables of ``README.md`` here, loaded once per process (``lexicon()``).

Read by the name lexicon recognizer (``gateway.recognizers.lexicon``) and by the address rules, which
ask whether English knows a word.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from importlib import resources

#: How many of the most frequent surnames may complete a name although they are English words.
COMMON_SURNAMES = 5000


@dataclass(frozen=True, slots=True)
class Lexicon:
    """The word tables, lower-case. Built once per process by ``lexicon()``."""

    given: frozenset[str]
    surnames: frozenset[str]
    #: The most frequent surnames: among them, words that are also English words (Brown, King, Cook).
    common_surnames: frozenset[str]
    wordy: frozenset[str]
    known: frozenset[str]

    def unknown(self, lower: str) -> bool:
        """Whether English text hardly uses this lower-case word (``sultygov``, ``parkring``)."""
        return len(lower) > 2 and lower not in self.known


def _read(name: str) -> list[str]:
    data = resources.files("gateway.lexicons").joinpath(name).read_bytes()
    return gzip.decompress(data).decode().split()


@functools.cache
def lexicon() -> Lexicon:
    """The shipped tables (read-only; loaded on first use, about 0.3 s and 25 MB)."""
    surnames = _read("surnames.txt.gz")  # most frequent first
    return Lexicon(
        given=frozenset(_read("given_names.txt.gz")),
        surnames=frozenset(surnames),
        common_surnames=frozenset(surnames[:COMMON_SURNAMES]),
        wordy=frozenset(_read("english_wordy.txt.gz")),
        known=frozenset(_read("english_known.txt.gz")),
    )
