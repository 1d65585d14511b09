"""Chat-style benchmark prompts: hand-written templates filled with Faker values, labelled as they are filled.

This is benchmark data, never product code. Each ``{slot}`` in a template is filled by a generator that
returns *pieces*: text with the label it carries (``None`` for plain text), so one slot can hold several
labelled values (an address is a street, a postcode and a city; a PEM key is armour lines around the
secret body). Within one prompt a slot name always gives the same value; a trailing digit (``{ip2}``)
asks for a second, different value of the same kind.

Labels are the benchmark's scored labels (``PERSON`` ... ``SECRET``) or descriptive names that the
benchmark files under "other" (``GPE``, ``ORGANIZATION``, ``DATE_TIME``, ``USERNAME``, ``PEM_ARMOR``).
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from string import Formatter

from faker import Faker

#: Faker locales the chat prompts draw names, phones, addresses and IBANs from.
LOCALES: tuple[str, ...] = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "nl_NL", "it_IT")

_COUNTRY = {
    "en_US": "USA",
    "en_GB": "United Kingdom",
    "de_DE": "Germany",
    "fr_FR": "France",
    "es_ES": "Spain",
    "nl_NL": "Netherlands",
    "it_IT": "Italy",
}


@dataclass(frozen=True, slots=True)
class Span:
    """One labelled value: ``text[start:end]`` of its sample, with the label its source gave it."""

    start: int
    end: int
    label: str


@dataclass(frozen=True, slots=True)
class Sample:
    """One labelled text, sent to the gateway as one user message."""

    id: str
    text: str
    spans: tuple[Span, ...]
    #: ``evaluator`` (presidio-evaluator's sentences) or ``chat`` (this module).
    source: str
    #: The template's kind (``ticket``, ``config`` ...) or presidio-evaluator's template id.
    kind: str
    locale: str


@dataclass(frozen=True, slots=True)
class Template:
    kind: str
    text: str


Piece = tuple[str, str | None]

# fmt: off
TEMPLATES: tuple[Template, ...] = (
    # Support tickets
    Template("ticket", "Ticket {ticket}: customer {name} ({email}) reports that order {order} was charged twice to "
                       "card {card}. Please refund one charge and write a short reply to the customer."),
    Template("ticket", "Hi support, my name is {name} and I cannot log in since yesterday. Please call me back on "
                       "{phone}. I am at home at {address} all afternoon."),
    Template("ticket", "Summarise this ticket for the on-call engineer:\nReporter: {agent} <{agent_email}>\n"
                       "Affected customer: {company}\nDescription: requests from {ip} get a 502 since the deploy "
                       "on {date}. Customer contact is {name}, {phone}."),
    Template("ticket", "Customer {first} {last} asked us to change the direct debit to IBAN {iban}. Draft a short "
                       "confirmation email in a friendly tone."),
    Template("ticket", "Please translate for the case notes: the customer says the parcel never arrived at "
                       "{address}, and asks us to call {phone} before the next delivery attempt."),
    Template("ticket", "Refund request {order}: {name} paid with {card}, expiry {exp}. The card was stolen, so do "
                       "not send anything to the old address {address}."),
    Template("ticket", "Fraud check: card {card} was used from {ip} with billing address {address}, cardholder "
                       "{name}, phone {phone}. Should we flag or approve this payment?"),
    # CRM notes
    Template("crm", "CRM note from {date}: spoke with {name} from {company}. Decision maker, prefers email "
                    "({email}) over phone ({phone}). Follow up next quarter about the renewal."),
    Template("crm", "Lead: {name}\nCompany: {company}\nEmail: {email}\nPhone: {phone}\nNotes: interested in the "
                    "enterprise plan, budget approved, wants a demo next week."),
    Template("crm", "Can you clean up this contact record? name={last}, {first}; tel={phone}; mail={email}; "
                    "street={street}; city={city}"),
    Template("crm", "Write a polite reminder to {name} that the invoice is overdue. The IBAN on file is {iban} "
                    "and the billing address is {address}."),
    Template("crm", "{first} wrote: \"hi, it is {first} here, my new number is {phone}, the old one was {phone2}\". "
                    "Update the contact and confirm."),
    # HR, with US identifiers
    Template("hr", "New hire paperwork for {name}: SSN {ssn}, start date {date}, home address {address}. Check "
                   "that nothing is missing before payroll runs."),
    Template("hr", "Our payroll export failed for employee {name} (SSN: {ssn}). The error mentions a duplicate "
                   "tax id. What could cause this?"),
    # E-mails
    Template("email", "Reply to this email for me:\n\nFrom: {name} <{email}>\nSubject: Delivery address change\n\n"
                      "Hello, I moved to {address}. Please send my next order there. You can reach me on "
                      "{phone}.\n\nBest regards,\n{first}"),
    Template("email", "Forwarded message from {agent} <{agent_email}>: \"{first}, your card {card} was declined, "
                      "please update your payment details.\" Is this phishing?"),
    Template("email", "Draft an answer to {first}: thank them for the feedback and say that {agent_first} will "
                      "call them at {phone} on Monday."),
    Template("email", "Dear {agent},\n\nplease transfer the deposit to my account {iban} (holder: {name}). My "
                      "postal address is {address_block}\n\nThanks"),
    # Log lines
    Template("log", "Why does this keep failing?\n{logtime} ERROR auth: login failed for user={username} "
                    "email={email} from {ip}\n{logtime2} ERROR auth: account locked for user={username}"),
    Template("log", "Count the errors in these access log lines:\n{ip} - - [{logtime}] \"GET /api/v1/orders "
                    "HTTP/1.1\" 404 512\n{ip2} - - [{logtime2}] \"POST /login HTTP/1.1\" 500 0"),
    Template("log", "Stack trace from prod: OperationalError: connection to server at \"{private_ip}\", port "
                    "5432 failed: password authentication failed for user \"{username}\". How do I debug this?"),
    Template("log", "What does this mean? kernel: [UFW BLOCK] IN=eth0 OUT= SRC={ip} DST={private_ip} LEN=60 "
                    "PROTO=TCP SPT=51234 DPT=22"),
    Template("log", "sshd: Accepted publickey for {username} from {ipv6} port 50122 ssh2. Is this login "
                    "suspicious if the user is on holiday?"),
    # Config snippets with secrets
    Template("config", "Why can't boto3 connect? My config:\n[default]\naws_access_key_id = {aws_key}\n"
                       "aws_secret_access_key = {aws_secret}\nregion = eu-west-1"),
    Template("config", "This workflow fails with 401:\nenv:\n  GITHUB_TOKEN: {github_token}\n  API_URL: "
                       "https://api.github.example/v3"),
    Template("config", "import openai\nclient = openai.OpenAI(api_key=\"{openai_key}\")\nWhy do I get a rate "
                       "limit error on the first call?"),
    Template("config", "The bot will not post. curl -H \"Authorization: Bearer {slack_token}\" "
                       "https://slack.example/api/chat.postMessage -d channel=general"),
    Template("config", "Decode this token and tell me when it expires: {jwt}"),
    Template("config", "Is this key in the right format for the deploy server?\n{pem}"),
    Template("config", "My .env file:\nDATABASE_URL=postgres://{db_user}:{password}@{private_ip}:5432/orders\n"
                       "REDIS_URL=redis://:{password2}@cache.internal:6379/0\nDEBUG=false\n"
                       "Why does Django ignore it?"),
    Template("config", "settings.py has password = \"{password}\" and SECRET_KEY = \"{django_key}\". Is it safe "
                       "to commit this file?"),
    Template("config", "docker run -e POSTGRES_PASSWORD={password} -e STRIPE_API_KEY={stripe_key} -p 5432:5432 "
                       "postgres:16 exits at once, why?"),
    Template("config", "The geocoding call returns REQUEST_DENIED: "
                       "https://maps.example/api/geocode/json?address=main+street&key={google_key}"),
    Template("config", "mysql -h {private_ip} -u {db_user} -p'{password}' shop < dump.sql says access denied. "
                       "The same password works in the GUI."),
    # Addresses from several countries
    Template("address", "Please format this shipping label:\n{name}\n{address_block}"),
    Template("address", "Is this a valid address for the courier? {address}"),
    Template("address", "Compare the delivery times to {address} and to {address2}."),
    Template("address", "Our office moved from {street}, {city} to {address}. Update the footer of the "
                        "newsletter."),
    # Text that stresses restoration: a placeholder-shaped literal, emoji and symbols, backslashes
    Template("tricky", "In our help-desk macros we write <PERSON_1> where a name goes. Fill it in for {name} and "
                       "leave <EMAIL_ADDRESS_1> exactly as it is."),
    Template("tricky", "Thank {first} 🙏 for the quick fix! Tell them «merci» ✨ and that {agent_first} will call "
                       "{phone} 👍"),
    Template("tricky", "The backup of C:\\Users\\{username}\\Documents failed; {name} says the share "
                       "\\\\fileserver\\home is full."),
    # No personal data: over-redaction only
    Template("plain", "How do I rotate access keys for a service account without downtime? We deploy twice a "
                      "day and use blue-green releases."),
    Template("plain", "Explain the difference between a session cookie and a bearer token in two short "
                      "paragraphs, with one example request each."),
)
# fmt: on


_ALNUM = string.ascii_letters + string.digits
_B64 = string.ascii_letters + string.digits + "+/"
_B64URL = string.ascii_letters + string.digits + "-_"
_PASSWORD_CHARS = string.ascii_letters + string.digits + "!*-_."


def _random(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _ascii(text: str) -> str:
    """``Müller-Lüdenscheidt`` -> ``muller-ludenscheidt``, as e-mail local parts and user names are written."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return re.sub(r"[^a-z0-9.\-]", "", folded.replace(" ", "."))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _Filler:
    """One prompt's values: a customer, an agent and a locale. The same slot name gives the same value."""

    def __init__(self, fake: Faker, us: Faker, rng: random.Random, locale: str) -> None:
        self.fake = fake
        self.us = us
        self.rng = rng
        self.locale = locale
        self._people: dict[str, tuple[str, str]] = {}
        self._done: dict[str, list[Piece]] = {}
        self._slots: dict[str, Callable[[str], list[Piece]]] = {
            "name": lambda who: [(" ".join(self._person(who)), "PERSON")],
            "first": lambda who: [(self._person(who)[0], "PERSON")],
            "last": lambda who: [(self._person(who)[1], "PERSON")],
            "agent": lambda who: [(" ".join(self._person("agent" + who)), "PERSON")],
            "agent_first": lambda who: [(self._person("agent" + who)[0], "PERSON")],
            "email": lambda who: [(self._email(who, work=False), "EMAIL_ADDRESS")],
            "agent_email": lambda who: [(self._email("agent" + who, work=True), "EMAIL_ADDRESS")],
            "phone": lambda _: [(self.fake.phone_number(), "PHONE_NUMBER")],
            "card": lambda _: [(self._card(), "CREDIT_CARD")],
            "exp": lambda _: [(f"{self.rng.randint(1, 12):02d}/{self.rng.randint(26, 32)}", "DATE_TIME")],
            "ssn": lambda _: [(self.us.ssn(), "US_SSN")],
            "iban": lambda _: [(self._iban(), "IBAN_CODE")],
            "ip": lambda _: [(self.fake.ipv4_public(), "IP_ADDRESS")],
            "private_ip": lambda _: [(self.fake.ipv4_private(), "IP_ADDRESS")],
            "ipv6": lambda _: [(self.fake.ipv6(), "IP_ADDRESS")],
            "address": lambda _: self._address(", "),
            "address_block": lambda _: self._address("\n"),
            "street": lambda _: [(self._street(", "), "STREET_ADDRESS")],
            "city": lambda _: [(self._city(), "GPE")],
            "company": lambda _: [(self.fake.company(), "ORGANIZATION")],
            "date": lambda _: [(self._date(), "DATE_TIME")],
            "logtime": lambda _: [(self._when().isoformat(timespec="seconds"), "DATE_TIME")],
            "username": lambda who: [(self._username(who), "USERNAME")],
            "ticket": lambda _: [(f"INC-{self.rng.randint(10000, 99999)}", None)],
            "order": lambda _: [(f"#{self.rng.randint(100000, 999999)}", None)],
            "db_user": lambda _: [(self.rng.choice(("app", "svc_orders", "backend", "reporting")), None)],
            "aws_key": lambda _: [("AKIA" + _random(self.rng, string.ascii_uppercase + "234567", 16), "SECRET")],
            "aws_secret": lambda _: [(_random(self.rng, _B64, 40), "SECRET")],
            "github_token": lambda _: [("ghp_" + _random(self.rng, _ALNUM, 36), "SECRET")],
            "openai_key": lambda _: [(self._openai_key(), "SECRET")],
            "slack_token": lambda _: [(self._slack_token(), "SECRET")],
            "stripe_key": lambda _: [("sk_live_" + _random(self.rng, _ALNUM, 24), "SECRET")],
            "google_key": lambda _: [("AIza" + _random(self.rng, _B64URL, 35), "SECRET")],
            "django_key": lambda _: [(_random(self.rng, string.ascii_lowercase + string.digits + "!@#%^&*(-_=+)", 50), "SECRET")],  # noqa: E501
            "jwt": lambda who: [(self._jwt(who), "SECRET")],
            "pem": lambda _: self._pem(),
            "password": lambda _: [(self._password(), "SECRET")],
        }  # fmt: skip

    def pieces(self, slot: str) -> list[Piece]:
        found = self._done.get(slot)
        if found is None:
            kind = slot if slot in self._slots else slot.rstrip(string.digits)
            who = slot[len(kind) :]
            if kind not in self._slots:
                raise KeyError(f"unknown template slot {{{slot}}}")
            found = self._done[slot] = self._slots[kind](who)
        return found

    def _person(self, who: str) -> tuple[str, str]:
        person = self._people.get(who)
        if person is None:
            person = self._people[who] = (self.fake.first_name(), self.fake.last_name())
        return person

    def _email(self, who: str, *, work: bool) -> str:
        first, last = self._person(who)
        if not work and self.rng.random() < 0.3:
            return self.fake.email()
        local = self.rng.choice((f"{first}.{last}", f"{first[0]}{last}", f"{first}{self.rng.randint(1, 99)}"))
        domain = self.fake.domain_name() if work else self.fake.free_email_domain()
        return f"{_ascii(local)}@{domain}"

    def _when(self) -> datetime:
        # Fixed bounds: Faker's defaults are relative to today, which would change the data set daily.
        return self.fake.date_time_between(datetime(2023, 1, 1), datetime(2025, 1, 1))

    def _date(self) -> str:
        return self._when().strftime(self.rng.choice(("%Y-%m-%d", "%d.%m.%Y", "%d %B %Y", "%B %d, %Y")))

    def _username(self, who: str) -> str:
        first, last = self._person(who)
        return _ascii(self.rng.choice((f"{first[0]}{last}", f"{first}.{last}", f"{first}_{last[0]}")))

    def _card(self) -> str:
        number = self.fake.credit_card_number()
        if len(number) == 16 and self.rng.random() < 0.5:
            return " ".join(number[i : i + 4] for i in range(0, 16, 4))
        return number

    def _iban(self) -> str:
        iban = self.fake.iban()
        if self.rng.random() < 0.5:
            return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
        return iban

    def _street(self, joiner: str) -> str:
        lines = [line.strip(" ,") for line in self.fake.street_address().splitlines()]
        return joiner.join(line for line in lines if line)

    def _city(self) -> str:
        if self.locale == "it_IT":
            # Faker's it_IT city list is built from a set, so its order (and the city drawn) follows
            # PYTHONHASHSEED; its postcode table is a dict in source order.
            return self.fake.postcode_city_province().split(", ", 1)[1].rsplit(" (", 1)[0]
        return self.fake.city()

    def _address(self, joiner: str) -> list[Piece]:
        """A postal address in the locale's order; street and postcode are STREET_ADDRESS, places GPE."""
        street: Piece = (self._street(joiner), "STREET_ADDRESS")
        city: Piece = (self._city(), "GPE")
        pieces: list[Piece]
        if self.locale == "en_US":
            pieces = [street, (joiner, None), city, (", ", None), (self.fake.state_abbr(), "GPE"), (" ", None)]
            pieces.append((self.fake.zipcode(), "STREET_ADDRESS"))
        elif self.locale == "en_GB":
            pieces = [street, (joiner, None), city, (joiner, None), (self.fake.postcode(), "STREET_ADDRESS")]
        else:
            pieces = [street, (joiner, None), (self.fake.postcode(), "STREET_ADDRESS"), (" ", None), city]
        if self.rng.random() < 0.3:
            pieces += [(joiner, None), (_COUNTRY[self.locale], "GPE")]
        return pieces

    def _openai_key(self) -> str:
        if self.rng.random() < 0.5:
            return "sk-proj-" + _random(self.rng, _B64URL, 64)
        return "sk-" + _random(self.rng, _ALNUM, 48)

    def _slack_token(self) -> str:
        return f"xoxb-{self.rng.randint(10**11, 10**12 - 1)}-{self.rng.randint(10**12, 10**13 - 1)}-" + _random(
            self.rng, _ALNUM, 24
        )

    def _jwt(self, who: str) -> str:
        first, last = self._person("jwt" + who)
        issued = self.rng.randint(1_600_000_000, 1_750_000_000)
        header = {"alg": self.rng.choice(("HS256", "RS256")), "typ": "JWT"}
        claims = {"sub": str(self.rng.randint(1000, 99999)), "name": f"{first} {last}", "iat": issued}
        claims["exp"] = issued + 3600
        parts = [json.dumps(header, separators=(",", ":")), json.dumps(claims, separators=(",", ":"))]
        signature = bytes(self.rng.getrandbits(8) for _ in range(32))
        return ".".join([*(_b64url(p.encode()) for p in parts), _b64url(signature)])

    def _pem(self) -> list[Piece]:
        kind = self.rng.choice(("RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"))
        size = {"EC PRIVATE KEY": 121, "OPENSSH PRIVATE KEY": 400}.get(kind, 600)
        body = base64.b64encode(bytes(self.rng.getrandbits(8) for _ in range(size))).decode("ascii")
        lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        armour = (f"-----BEGIN {kind}-----", "PEM_ARMOR"), (f"-----END {kind}-----", "PEM_ARMOR")
        return [armour[0], ("\n", None), (lines, "SECRET"), ("\n", None), armour[1]]

    def _password(self) -> str:
        if self.rng.random() < 0.4:
            word = re.sub(r"\W", "", self.fake.word()).capitalize() or "Secret"
            return f"{word}{self.rng.randint(1970, 2025)}{self.rng.choice('!*.')}"
        return _random(self.rng, _PASSWORD_CHARS, self.rng.randint(12, 20))


def render(template: Template, filler: _Filler) -> tuple[str, tuple[Span, ...]]:
    """Fill one template; the spans are the labelled pieces, at their offsets in the filled text."""
    out: list[str] = []
    spans: list[Span] = []
    size = 0
    for literal, field, _spec, _conversion in Formatter().parse(template.text):
        out.append(literal)
        size += len(literal)
        if field is None:
            continue
        for text, label in filler.pieces(field):
            if label is not None and text:
                spans.append(Span(size, size + len(text), label))
            out.append(text)
            size += len(text)
    return "".join(out), tuple(spans)


def chat_samples(count: int, seed: int) -> list[Sample]:
    """``count`` prompts: the templates in turn, each filled from a locale chosen by the seeded generator."""
    rng = random.Random(seed)
    fakers: dict[str, Faker] = {}
    for i, locale in enumerate(LOCALES):
        fakers[locale] = Faker(locale)
        fakers[locale].seed_instance(seed * 100 + i)
    us = fakers["en_US"]
    samples: list[Sample] = []
    for i in range(count):
        template = TEMPLATES[i % len(TEMPLATES)]
        locale = rng.choice(LOCALES)
        text, spans = render(template, _Filler(fakers[locale], us, rng, locale))
        samples.append(Sample(f"chat-{i}", text, spans, "chat", template.kind, locale))
    return samples
