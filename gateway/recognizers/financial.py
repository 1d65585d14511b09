"""CREDIT_CARD and IBAN_CODE in the spellings Presidio's own recognizers miss.

Presidio's ``CreditCardRecognizer`` takes card numbers written together or with single spaces or dashes
(``4111 1111 1111 1111``, ``4111-1111-1111-1111``, Amex ``3782 822463 10005``), and its
``IbanRecognizer`` takes IBANs in groups of four with spaces or dashes, in either case. What they miss,
and what these rules add, both checksum-validated:

* cards grouped with dots, several spaces or spaced dashes (``4111.1111.1111.1111``,
  ``4111  1111  1111  1111``, ``4111 - 1111 - 1111 - 1111``): Luhn, and a known issuer prefix;
* cards whose issuer prefix or length Presidio's pattern leaves out: Mastercard's 2221-2720 series and
  15-digit JCB (2131, 1800), by Luhn alone; any other 12-19 digit number that passes Luhn only with a
  card word nearby (``card``, ``maestro``, ``debit``...), since one random number in ten passes Luhn;
* IBANs grouped with dots, several spaces or a slash, or with the check digits cut off from the
  country (``DE 89 3704 ...``): ISO 7064 mod 97-10 and the country's length.
"""

from __future__ import annotations

import re

from .rules import Rule, RuleRecognizer, window

_NON_DIGITS = re.compile(r"\D")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")
_LOOSE_CARD_SEPARATOR = re.compile(r"\.|[ \t]{2}|[ \t][-–]|[-–][ \t]")
_LOOSE_IBAN_SEPARATOR = re.compile(r"[./]|[ \t]{2}|^[A-Za-z]{2}[ \t./-]")
# Issuer prefixes: Visa 4, Mastercard 51-55 and 2221-2720, Amex 34/37, Discover 6011/64-65, Diners 36/38/30,
# JCB 35, UnionPay 62, Maestro 50/56-69.
_ISSUER = re.compile(r"4|5[0-9]|2[2-7]|3[0-9]|6[0-9]")
_SEP = r"(?:[ \t]{2,4}|[ \t]?[.][ \t]?|[ \t]{1,2}[-–][ \t]{1,2}|[ \t]?[-–][ \t]?|[ \t])"
_CARD = re.compile(rf"(?<![\w.,-])(?P<value>\d{{4}}(?:{_SEP}\d{{3,6}}){{2,4}})(?![\w]|[.,-]\d)")


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _check_card(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    value = m.group("value")
    # Only what Presidio's own pattern misses: a dot, a run of spaces or a spaced dash.
    if not _LOOSE_CARD_SEPARATOR.search(value):
        return None
    digits = _NON_DIGITS.sub("", value)
    if not 13 <= len(digits) <= 19 or len(set(digits)) < 2 or not _ISSUER.match(digits):
        return None
    return (start, end, 0.9) if luhn(digits) else None


# ISO 13616 IBAN lengths per country (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "BY": 28,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip

_IBAN_SEP = r"(?:[ \t]{1,4}|[ \t]?[./-][ \t]?)"
_IBAN = re.compile(
    rf"(?<![\w.-])(?P<value>[A-Za-z]{{2}}{_IBAN_SEP}?\d{{2}}(?:{_IBAN_SEP}?[A-Za-z0-9]{{1,4}}){{3,9}})(?![\w]|[./-]\w)"
)


def iban_valid(compact: str) -> bool:
    country = compact[:2].upper()
    if IBAN_LENGTHS.get(country) != len(compact):
        return False
    rearranged = (compact[4:] + compact[:4]).upper()
    try:
        number = int("".join(str(int(ch, 36)) for ch in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


def _check_iban(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    value = m.group("value")
    if not _LOOSE_IBAN_SEPARATOR.search(value):
        return None  # Presidio's IbanRecognizer takes single spaces and dashes between groups of four
    compact = _NON_ALNUM.sub("", value)
    # The candidate may run into a following word; try the country's exact length.
    length = IBAN_LENGTHS.get(compact[:2].upper())
    if length is None or len(compact) < length:
        return None
    if not iban_valid(compact[:length]):
        return None
    seen = 0
    for i, ch in enumerate(value):
        if ch.isalnum():
            seen += 1
            if seen == length:
                return start, start + i + 1, 0.9
    return None


_CARD_PLAIN = re.compile(r"(?<![\w.,-])(?P<value>\d{4}(?:[ -]?\d{2,6}){2,4}|\d{12,19})(?![\w]|[.,-]\d)")
_CARD_WORDS = re.compile(r"\b(?:card|cards|credit|debit|visa|mastercard|maestro|amex|cc|payment|paid|charged|pan)\b")


def _check_card_range(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    digits = _NON_DIGITS.sub("", m.group("value"))
    if not 12 <= len(digits) <= 19 or len(set(digits)) < 2 or not luhn(digits):
        return None
    mastercard_2 = len(digits) == 16 and 2221 <= int(digits[:4]) <= 2720
    jcb_15 = len(digits) == 15 and digits[:4] in ("2131", "1800")
    if mastercard_2 or jcb_15:
        return start, end, 0.9
    if _CARD_WORDS.search(window(m.string, start, 40)):
        return start, end, 0.85  # any issuer, any length 12-19, when the text says it is a card
    return None


RULES: tuple[Rule, ...] = (
    Rule("card_number_loose_grouping", _CARD, 0.9, _check_card),
    Rule("card_number_other_ranges", _CARD_PLAIN, 0.9, _check_card_range),
    Rule("iban_loose_grouping", _IBAN, 0.9, _check_iban),
)


def recognizers(language: str) -> list[RuleRecognizer]:
    return [
        RuleRecognizer("CREDIT_CARD", RULES[:2], name="LooseCardNumberRecognizer", language=language),
        RuleRecognizer("IBAN_CODE", RULES[2:], name="LooseIbanRecognizer", language=language),
    ]
