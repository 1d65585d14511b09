"""SECRET: credentials in chat text: vendor tokens, JWTs, private keys, passwords in URLs and configs.

One entity type, ``SECRET``, so that a policy needs one rule (``redact``: the placeholder is never put
back into an answer). Which kind of secret it was is the recognizer's name (``VendorTokenRecognizer``,
``PrivateKeyRecognizer``...) and the rule's name in Presidio's explanation (``github_token``,
``url_password``...). ``docs/entities.md`` lists them.

The span is always the secret value alone: ``password=`` and ``https://user:`` stay readable so that
the model can still help with the config it is shown.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
from collections import Counter

from .rules import Check, Rule, RuleRecognizer, window, words

ENTITY = "SECRET"

_CALL_OPEN = re.compile(r"[(\[]")
_NAME_SEPARATORS = re.compile(r"[-_.]")
_AWS_KEY_ID_LOWER = re.compile(r"(?:akia|asia)[a-z0-9]{16}")
_NON_ALNUM_RUN = re.compile(r"[^A-Za-z0-9]+")

# Token boundaries: a vendor token is never part of a longer token.
_L = r"(?<![A-Za-z0-9_-])"
_R = r"(?![A-Za-z0-9_-])"


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    if not value:
        return 0.0
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _classes(value: str) -> int:
    return (
        any(c.islower() for c in value)
        + any(c.isupper() for c in value)
        + any(c.isdigit() for c in value)
        + any(not c.isalnum() for c in value)
    )


_TEMPLATE = re.compile(
    r"""^(?:\$\{[^}]*\}?|\$\(.*\)|\$[A-Za-z_][A-Za-z0-9_]*|\{\{.*\}\}|\{[A-Za-z_][A-Za-z0-9_]*\}|<[^>]*>|%\([^)]*\)s|%s
    |\*+|x{3,}|\.{3}|…|null|none|nil|true|false|yes|no|undefined|redacted|\[redacted\]|\[hidden\]
    |your[-_ ]?[\w-]*|env\(.*|os\.environ.*|process\.env.*|getenv.*)$""",
    re.IGNORECASE | re.VERBOSE,
)
#: Bare values that refer to a secret rather than being one: an attribute, a call, an env-var name, a path.
_REFERENCE = re.compile(
    r"^(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+|[A-Za-z_][A-Za-z0-9_.]*[(\[].*|_?[A-Za-z]+(?:_[A-Za-z]+)+"
    r"|[./~]\S*)$"
)


def _is_reference(value: str) -> bool:
    """``config.db_password``, ``get_token()``, ``DB_PASSWORD``, ``./secret.txt``: a name, not a value."""
    if not _REFERENCE.match(value):
        return False
    head = _CALL_OPEN.split(value, maxsplit=1)[0]
    return all(_is_identifier(part) for part in head.split(".") if part)


def is_placeholder(value: str) -> bool:
    """A template reference, a redaction mark or a documentation stand-in, not a secret."""
    return bool(_TEMPLATE.match(value.strip("\"'` ")))


def looks_random(value: str, *, min_length: int = 20, min_entropy: float = 3.0) -> bool:
    """Long, mixed character classes and high entropy: a generated token rather than a word or an id."""
    if len(value) < min_length or entropy(value) < min_entropy:
        return False
    if not (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)):
        return False
    if _UUID.match(value) or "://" in value or "@" in value or value.startswith(("/", "./", "~")):
        return False
    if _is_identifier(value):
        return False  # ExtraordinaryCircumstances2024, user_profile_v2: words and small numbers
    segments = [s for s in _NAME_SEPARATORS.split(value) if s]
    # kebab/snake/dotted names (my-service-account-2024, com.example.app): every part a word or a number
    if len(segments) > 1 and all(s.isalpha() or s.isdigit() for s in segments):
        return False
    # a single segment mixing letters and digits must carry the randomness
    return max((len(s) for s in segments if not (s.isalpha() or s.isdigit())), default=0) >= 10


_RUNS = re.compile(r"[A-Z]+[a-z]*|[a-z]+|\d+|[^A-Za-z\d]+")


def _is_identifier(value: str) -> bool:
    """Words and small numbers (``ExtraordinaryCircumstances2024``, ``user_profile_v2``), not a random token."""
    for run in _RUNS.findall(value):
        if run[0].isdigit():
            if len(run) > 4:
                return False
        elif run[0].isalpha():
            upper = len(run) - len(run.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
            wordy = (upper <= 1 and len(run) >= 2) or (upper == len(run) and len(run) >= 2)
            if not wordy:
                return False
        elif not set(run) <= set("-_."):
            return False
    return True


_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _strip_trailing(text: str, start: int, end: int) -> int:
    """Drop sentence punctuation and unbalanced closing brackets or quotes after a bare value. ``!`` and ``?``
    stay: a password ends with them more often than a sentence around one does."""
    while end > start:
        last = text[end - 1]
        if last in ".,:;" or (last in ")]}'\"" and _OPENING[last] not in text[start : end - 1]):
            end -= 1
        else:
            break
    return end


_OPENING = {")": "(", "]": "[", "}": "{", "'": "'", '"': '"'}


# --- vendor tokens -------------------------------------------------------------------------------------


def _mixed(score: float) -> Check:
    """Accept a prefixed token only when its body is random-looking (letters and digits, some entropy)."""

    def check(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
        text = m.string
        value = text[start:end]
        if any(c.isdigit() for c in value) and any(c.isalpha() for c in value) and entropy(value) >= 3.0:
            return start, end, score
        return None

    return check


def _vendor(name: str, regex: str, score: float = 0.95, *, mixed: bool = False, prefix: tuple[str, ...] = ()) -> Rule:
    """A token recognised by its vendor prefix; the rule runs only on texts containing the prefix (``prefix``,
    lower-cased; by default the regex's literal start)."""
    literal = re.match(r"[A-Za-z0-9_.-]+", regex)
    prefilter = prefix or ((literal.group().lower(),) if literal else ())
    return Rule(name, re.compile(_L + regex + _R), score, _mixed(score) if mixed else None, prefilter=prefilter)


VENDOR_RULES: tuple[Rule, ...] = (
    _vendor("aws_access_key_id", r"(?:AKIA|ASIA)[A-Z0-9]{16}", prefix=("akia", "asia")),
    _vendor("gcp_api_key", r"AIza[0-9A-Za-z_-]{35}"),
    _vendor("gcp_oauth_client_secret", r"GOCSPX-[A-Za-z0-9_-]{28}"),
    _vendor("gcp_oauth_access_token", r"ya29\.[0-9A-Za-z_-]{30,2048}", 0.9),
    _vendor("azure_ad_client_secret", r"[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.-]{31,34}", 0.9, prefix=("q~",)),
    _vendor("github_token", r"gh[pousr]_[A-Za-z0-9]{36,251}", 0.98, prefix=("gh",)),
    _vendor("github_fine_grained_pat", r"github_pat_[A-Za-z0-9_]{22,255}", 0.98),
    _vendor("gitlab_token", r"gl(?:pat|dt|rt|ptt|cbt|oas|soat|ft|imt)-[A-Za-z0-9_-]{20,64}", 0.95, prefix=("gl",)),
    _vendor("slack_token", r"xox[abposre]-[A-Za-z0-9-]{10,250}", 0.95, prefix=("xox",)),
    _vendor("slack_app_token", r"xapp-\d-[A-Za-z0-9-]{20,250}", 0.95),
    _vendor("stripe_secret_key", r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}", 0.98, prefix=("k_live_", "k_test_")),
    _vendor("stripe_publishable_key", r"pk_(?:live|test)_[A-Za-z0-9]{16,247}", 0.8),
    _vendor("stripe_webhook_secret", r"whsec_[A-Za-z0-9]{24,128}", 0.95),
    _vendor("anthropic_key", r"sk-ant-[A-Za-z0-9_-]{20,250}", 0.98),
    _vendor("openai_key", r"sk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,250}", 0.95, mixed=True),
    _vendor("huggingface_token", r"hf_[A-Za-z0-9]{30,40}", 0.9, mixed=True),
    _vendor("npm_token", r"npm_[A-Za-z0-9]{36}", 0.95, mixed=True),
    _vendor("pypi_token", r"pypi-AgE[A-Za-z0-9_-]{50,250}", 0.98),
    _vendor("sendgrid_key", r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}", 0.98),
    _vendor("shopify_token", r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}", 0.95, prefix=("shp",)),
    _vendor("digitalocean_token", r"do[por]_v1_[a-f0-9]{64}", 0.95, prefix=("_v1_",)),
    _vendor("vault_token", r"hv[sbr]\.[A-Za-z0-9_-]{24,250}", 0.9, mixed=True, prefix=("hvs.", "hvb.", "hvr.")),
    _vendor("groq_key", r"gsk_[A-Za-z0-9]{48,64}", 0.95, mixed=True),
    _vendor("xai_key", r"xai-[A-Za-z0-9]{60,100}", 0.95, mixed=True),
    _vendor("databricks_token", r"dapi[a-f0-9]{32}(?:-\d)?", 0.9, mixed=True),
    _vendor("postman_key", r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}", 0.95),
    _vendor("mailgun_key", r"key-[a-f0-9]{32}", 0.85, mixed=True),
    _vendor("telegram_bot_token", r"\d{8,10}:AA[A-Za-z0-9_-]{33}", 0.9, prefix=(":aa",)),
    Rule(
        "slack_webhook",
        re.compile(r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<value>[A-Za-z0-9_/-]{20,160})"),
        0.95,
        prefilter=("hooks.slack.com",),
    ),
    Rule(
        "azure_account_key",
        re.compile(
            r"(?i)(?<![A-Za-z])(?:AccountKey|SharedAccessKey|SharedSecret|PrimaryKey|SecondaryKey)\s{0,4}=\s{0,4}"
            r"(?P<value>[A-Za-z0-9+/]{20,512}={0,2})"
        ),
        0.95,
        prefilter=("key=", "secret=", "key =", "secret ="),
    ),
    Rule(
        "azure_sas_signature",
        re.compile(r"(?i)[?&;]sig=(?P<value>[A-Za-z0-9%+/=]{20,512})"),
        0.9,
        prefilter=("sig=",),
    ),
)


# --- AWS secret access key: 40 base64 characters, only with AWS or secret context -------------------------


def _aws_secret(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    text = m.string
    value = text[start:end]
    if not (any(c.isupper() for c in value) and any(c.islower() for c in value) and any(c.isdigit() for c in value)):
        return None
    before = window(text, start, 120)
    if "aws" in before or "secret" in before or _AWS_KEY_ID_LOWER.search(before):
        return start, end, 0.9
    return None


AWS_SECRET_RULE = Rule(
    "aws_secret_access_key",
    re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
    0.9,
    _aws_secret,
    prefilter=("aws", "secret", "akia", "asia"),
)


# --- JWT -----------------------------------------------------------------------------------------------


def _jwt(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    text = m.string
    header = text[start : text.index(".", start)]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if isinstance(decoded, dict) and "alg" in decoded:
        return start, end, 0.95
    return None


JWT_RULE = Rule(
    "jwt",
    re.compile(_L + r"eyJ[A-Za-z0-9_-]{8,4096}\.[A-Za-z0-9_-]{2,16384}\.[A-Za-z0-9_-]{0,4096}" + _R),
    0.95,
    _jwt,
    prefilter=("eyj",),
)


# --- PEM private keys ------------------------------------------------------------------------------------

_PEM_BEGIN = re.compile(r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)?-----")
#: The body of a key whose END line is missing (a truncated paste): base64 lines, also as JSON ``\n``.
_PEM_BODY = re.compile(r"(?:(?:\s|\\[rn]){1,8}(?:[A-Za-z-]{1,20}: [^\n\\]{1,200}|[A-Za-z0-9+/=]{16,128}))*+")
_PEM_MAX = 65536


def _pem(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    text = m.string
    # The END line is looked for before the next BEGIN only, which keeps the scan linear.
    next_begin = text.find("-----BEGIN ", end)
    limit = min(len(text), end + _PEM_MAX, next_begin if next_begin >= 0 else len(text))
    stop = text.find("-----END ", end, limit)
    if stop >= 0:
        close = text.find("-----", stop + 9, min(limit, stop + 80))
        if close >= 0:
            return start, close + 5, 1.0
    body = _PEM_BODY.match(text, end, limit)
    return start, body.end() if body else end, 1.0


PEM_RULE = Rule("pem_private_key", _PEM_BEGIN, 1.0, _pem, prefilter=("private key-----",))


# --- passwords in URLs and connection strings -------------------------------------------------------------


def _not_placeholder(score: float) -> Check:
    def check(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
        text = m.string
        return None if is_placeholder(text[start:end]) else (start, end, score)

    return check


URL_PASSWORD_RULE = Rule(
    "url_password",
    re.compile(
        r"(?i)(?<![A-Za-z0-9+.-])[a-z][a-z0-9+.-]{1,30}://[^\s:/@?#]{0,128}:"
        r"(?P<value>[^\s/?#]{1,256})@(?=[A-Za-z0-9\[_-])"
    ),
    0.95,
    _not_placeholder(0.95),
    prefilter=("://",),
)

#: ``Password=...;`` in ADO.NET / ODBC / JDBC-style connection strings: the value, spaces and all, runs to the ``;``.
ADO_PASSWORD_RULE = Rule(
    "connection_string_password",
    re.compile(r"(?i)(?:^|(?<=[;\"'\s]))(?:password|pwd)\s{0,4}=\s{0,4}(?![\"'{])(?P<value>[^;\n\"']{1,256})(?=;)"),
    0.9,
    _not_placeholder(0.9),
    prefilter=("pwd", "password"),
)


# --- key = value assignments (env files, YAML, JSON, code, CLI, HTTP headers) -----------------------------

_PASSWORD_WORDS = ("password", "passwd", "passphrase", "passcode")
_KEY_QUALIFIERS = frozenset(
    {"api", "access", "secret", "private", "signing", "encryption", "master", "account", "app", "client",
     "service", "auth", "license", "licence", "subscription", "admin", "webhook", "deploy", "storage", "x"}
)  # fmt: skip
_TOKEN_WORDS = frozenset({"token", "secret", "apikey", "credential", "credentials", "authorization", "bearer"})
_SUFFIXES = frozenset(
    {"key", "value", "string", "str", "hash", "b64", "base64", "base", "enc", "encrypted", "plain", "raw", "text",
     "access", "id", "secret", "token", "1", "2"}
)  # fmt: skip
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@functools.lru_cache(maxsize=4096)
def secret_kind(identifier: str) -> str | None:
    """``password`` or ``token`` when an identifier names a credential (``DB_PASSWORD``, ``apiKey``), else None.

    The credential word must end the name, up to harmless suffixes, so ``password_file``, ``max_tokens``
    and ``tokenizer`` are not credentials.
    """
    words = [w.lower() for part in _NON_ALNUM_RUN.split(identifier) for w in _CAMEL.split(part) if w]
    for i in range(len(words) - 1, -1, -1):
        word = words[i]
        tail = words[i + 1 :]
        if not all(t in _SUFFIXES for t in tail) or len(tail) > 2:
            return None
        if word.endswith(_PASSWORD_WORDS) or word in {"pwd", "pass", "pw"}:
            return "password"
        if word in _TOKEN_WORDS or (word.endswith(("token", "secret")) and len(word) <= 16):
            return "token"
        if word == "key" and i > 0 and words[i - 1] in _KEY_QUALIFIERS:
            return "token"
        if word.endswith("key") and word[:-3] in _KEY_QUALIFIERS:  # apikey, accesskey
            return "token"
    return None


#: ``name = value``, ``name: value``, ``"name": "value"``, ``--name=value``. Only the name is matched here;
#: the value is read (``_VALUE``) once the name is known to mean a credential, so that the many
#: ``x=y`` pairs of ordinary text cost one short match each.
_ASSIGNMENT = re.compile(
    r"(?<![A-Za-z0-9_.$-])(?P<key>[A-Za-z0-9_.-]{1,64})[\"']?[ \t]{0,8}(?P<op>:=|=>|=|:)[ \t]{0,8}"
)
_VALUE = re.compile(
    r"\"(?P<value_dq>(?:[^\"\\\n]|\\.){1,512})\"|'(?P<value_sq>[^'\n]{1,512})'|(?P<value>[^\s\"'`,;&)}\]<>]{1,512})"
)
_KEY_HINT = re.compile(r"(?i)pass|pwd|pw\b|secret|token|key|cred|auth|bearer")


def _strong(value: str) -> bool:
    """A value that is not a plain word: it has a digit, a symbol or mixed case."""
    return _classes(value) >= 2 or any(c.isdigit() for c in value)


def _assignment_spans(text: str) -> list[tuple[int, int, float]]:
    out: list[tuple[int, int, float]] = []
    covered = 0  # a name inside a value already found is part of that secret ("password=password=...")
    for m in _ASSIGNMENT.finditer(text):
        if m.start() < covered:
            continue
        key = m.group("key")
        if not _KEY_HINT.search(key):
            continue
        kind = secret_kind(key)
        if kind is None:
            continue
        v = _VALUE.match(text, m.end())
        if v is None:
            continue
        quoted = v.group("value") is None
        group = "value_dq" if v.group("value_dq") is not None else "value_sq" if quoted else "value"
        start, end = v.span(group)
        if not quoted:
            end = _strip_trailing(text, start, end)
        value = text[start:end]
        if not value or is_placeholder(value) or (not quoted and _is_reference(value)):
            continue  # password=${DB_PASSWORD}, password=config.db_password, token=get_token()
        if value.lstrip("_") == key.lstrip("-_") or secret_kind(value) is not None:
            continue  # token=token, CHALLENGE_PASSWORD: "challengePassword": a name, not a value
        floor = max(0, m.start() - 200)
        newline = text.rfind("\n", floor, m.start())
        line_start = newline + 1 if newline >= 0 else floor
        rest = text[v.end() : v.end() + 80].lstrip(" \t\"',;")
        own_line = not text[line_start : m.start()].strip(" \t-\"'{,[") and rest[:1] in ("", "\r", "\n", "#", "}")
        if kind == "password":
            if value.isdigit() and len(value) < 4:
                continue  # "password: 15" counts something
            # ``=``, quotes or a config line accept any value; prose ("Password: required") needs a strong one.
            if quoted or m.group("op") != ":" or own_line or _strong(value):
                out.append((start, end, 0.9))
                covered = end
        elif (len(value) >= 8 and _strong(value) and entropy(value) >= 2.5) or looks_random(value):
            out.append((start, end, 0.85))
            covered = end
    return out


class AssignmentRule(Rule):
    """Values assigned to a name that means a credential (the name is judged in code, not in the regex)."""

    def spans(self, text: str) -> list[tuple[int, int, float]]:
        return _assignment_spans(text)


ASSIGNMENT_RULE = AssignmentRule("credential_assignment", _ASSIGNMENT, 0.85)

CLI_RULES: tuple[Rule, ...] = (
    Rule(
        "cli_password_flag",
        re.compile(
            r"(?i)(?<![\w-])--?(?:password|passwd|pass|token|api-key|apikey|secret|client-secret|auth-token)"
            r"[ \t]{1,4}[\"']?(?P<value>[^\s\"'-][^\s\"']{3,255})"
        ),
        0.85,
        _not_placeholder(0.85),
        prefilter=("-",),
    ),
    Rule(
        "cli_user_password",
        re.compile(r"(?<![\w-])(?:-u|--user)[ \t]{1,4}[\"']?[^\s:\"']{1,128}:(?P<value>[^\s\"']{1,256})"),
        0.85,
        _not_placeholder(0.85),
        prefilter=("-u", "--user"),
    ),
    Rule(
        "mysql_password_flag",
        re.compile(
            r"(?<![\w-])mysql(?:dump|admin)?\b[^\n]{0,200}?(?<=\s)-p(?:'(?P<value_sq>[^'\n]{1,255})'"
            r"|\"(?P<value_dq>[^\"\n]{1,255})\"|(?P<value>[^\s\"'-][^\s\"']{2,255}))"
        ),
        0.85,
        _not_placeholder(0.85),
        prefilter=("mysql",),
    ),
)


# --- HTTP authorization and prose ------------------------------------------------------------------------


def _auth_value(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    text = m.string
    end = _strip_trailing(text, start, end)
    value = text[start:end]
    if len(value) < 8 or is_placeholder(value) or not any(c.isdigit() for c in value):
        return None
    return start, end, 0.9


AUTH_RULES: tuple[Rule, ...] = (
    Rule(
        "http_authorization",
        re.compile(
            r"(?i)\b(?:proxy-)?authorization[\"']?[ \t]{0,4}[:=][ \t]{0,4}[\"']?"
            r"(?:(?:bearer|basic|token|digest|apikey|bot|sso-key)[ \t]{1,4})?(?P<value>[A-Za-z0-9._~+/:=-]{8,4096})"
        ),
        0.9,
        _auth_value,
        prefilter=("authorization",),
    ),
    Rule(
        "bearer_token",
        re.compile(r"(?i)\bbearer[ \t]{1,4}(?P<value>[A-Za-z0-9._~+/-]{12,4096}=*)"),
        0.9,
        _auth_value,
        prefilter=("bearer",),
    ),
)


def _prose_secret(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    text = m.string
    end = _strip_trailing(text, start, end)
    value = text[start:end]
    if is_placeholder(value) or len(value) < 4:
        return None
    keyword = m.group("keyword").lower()
    if keyword == "pin":
        return (start, end, 0.8) if value.isdigit() and 4 <= len(value) <= 8 else None
    if not keyword.startswith("pass") and not (len(value) >= 8 and any(c.isdigit() for c in value)):
        return None  # "the token is Text", "the key is Comment.Single": a key or token has digits and length
    if _strong(value) and not value.isdigit() and not _UUID.match(value) and not _is_reference(value):
        return start, end, 0.8
    if keyword.startswith("pass") and value.isalpha() and value.lower() not in _NOT_A_PASSWORD:
        return start, end, 0.7  # "the wifi password is sunshine"
    return None


#: Words that follow "password is" in prose about passwords rather than in a disclosure.
_NOT_A_PASSWORD = words(
    """incorrect wrong invalid expired expiring required missing correct weak strong too not the a an set reset
    changed changing empty blank case different same saved stored hashed encrypted visible hidden shown sent long
    short secure insecure ok okay fine good bad being still now also very always never only just in on at for
    from of to your my our their his her its this that what which mandatory optional protected compromised
    leaked known unknown similar used working accepted rejected locked updated generated random provided given
    needed asked requested shared case-sensitive sensitive valid mine yours same there here please"""
)


PROSE_RULE = Rule(
    "credential_in_prose",
    re.compile(
        r"(?i)\b(?P<keyword>password|passwort|passcode|passphrase|pwd|pin|secret|api[ _-]?key|access key|token)"
        r"(?:[ \t]+(?:is|was|will be|would be|should be|=|:|set to|changed to|reset to)){1,3}[ \t]+[\"'“`]?"
        r"(?P<value>[^\s\"'”`]{4,128})"
    ),
    0.8,
    _prose_secret,
    prefilter=("pass", "pwd", "pin", "secret", "key", "token"),
)


# --- generic high-entropy tokens next to a credential word ----------------------------------------------

_CONTEXT = re.compile(
    r"\b(?:api[ _-]?key|keys?|tokens?|secrets?|passwords?|passwd|pwd|credentials?|auth|authorization|bearer|apikey)\b"
)


def _high_entropy(m: re.Match[str], start: int, end: int) -> tuple[int, int, float] | None:
    text = m.string
    end = _strip_trailing(text, start, end)
    while end > start and text[end - 1] in "-_.":
        end -= 1
    value = text[start:end]
    if not looks_random(value):
        return None
    before = window(text, start, 48)
    line = before.rsplit("\n", 1)[-1]
    if _CONTEXT.search(line) or (line.strip() == "" and _CONTEXT.search(before)):
        return start, end, 0.7
    return None


HIGH_ENTROPY_RULE = Rule(
    "high_entropy_near_keyword",
    re.compile(r"(?<![A-Za-z0-9+/_.~-])[A-Za-z0-9+/_.~-]{20,4096}={0,2}"),
    0.7,
    _high_entropy,
)


def recognizers(language: str) -> list[RuleRecognizer]:
    return [
        RuleRecognizer(ENTITY, (*VENDOR_RULES, AWS_SECRET_RULE), name="VendorTokenRecognizer", language=language),
        RuleRecognizer(ENTITY, (JWT_RULE,), name="JwtRecognizer", language=language),
        RuleRecognizer(ENTITY, (PEM_RULE,), name="PrivateKeyRecognizer", language=language),
        RuleRecognizer(
            ENTITY,
            (URL_PASSWORD_RULE, ADO_PASSWORD_RULE, ASSIGNMENT_RULE, *CLI_RULES, *AUTH_RULES, PROSE_RULE),
            name="CredentialAssignmentRecognizer",
            language=language,
        ),
        RuleRecognizer(ENTITY, (HIGH_ENTROPY_RULE,), name="HighEntropySecretRecognizer", language=language),
    ]
