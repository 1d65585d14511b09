"""Every Prometheus metric the gateway exports, and observe(exchange), the one place they are updated.

Labels are bounded by construction: route, model (configured models, else ``other``), status class,
policy name, entity type, action, and reason/result enums. Never a key, user, tenant id outside the
configured list, request id, text or value. Each app gets its own ``CollectorRegistry`` (tests too).

LLM families follow the OpenTelemetry GenAI semantic conventions as Prometheus names, with the
buckets the spec recommends.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .exchange import Exchange

# OpenTelemetry GenAI semantic conventions: recommended explicit bucket boundaries.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# The gateway's own work is sub-millisecond to seconds.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

OTHER = "other"


def package_version() -> str:
    try:
        return version("pii-gateway")
    except PackageNotFoundError:
        return "unknown"


class DetectorStats(Protocol):
    """What the detector counts for the metrics: read at scrape time, never written here."""

    cache_hits: int
    cache_misses: int

    @property
    def cache_bytes(self) -> int: ...

    @property
    def recycled_workers(self) -> int: ...


class _DetectorCollector(Collector):
    """The detector's own counters, read when Prometheus scrapes (no work on the request path)."""

    def __init__(self, detector: DetectorStats) -> None:
        self.detector = detector

    def collect(self) -> Iterator[Metric]:
        d = self.detector
        lookups = CounterMetricFamily(
            "gateway_detector_cache_lookups", "Texts looked up in the findings cache, by result.", labels=["result"]
        )
        lookups.add_metric(["hit"], d.cache_hits)
        lookups.add_metric(["miss"], d.cache_misses)
        yield lookups
        yield GaugeMetricFamily(
            "gateway_detector_cache_bytes", "Memory the findings cache holds now (estimated).", value=d.cache_bytes
        )
        yield CounterMetricFamily(
            "gateway_detector_worker_recycles",
            "Detector workers replaced after detector.recycle_after_jobs jobs or above detector.recycle_above_mib.",
            value=d.recycled_workers,
        )


class Metrics:
    """The metric families of one app, registered in ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        provider: str = "openai",
        models: Iterable[str] = (),
        tenants: Iterable[str] = (),
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.registry = registry or CollectorRegistry()
        self.provider = provider
        self.models = frozenset(models)
        self.tenants = frozenset(tenants)
        r = self.registry
        tenant = ("tenant",) if self.tenants else ()
        self.tenant_labelled = bool(self.tenants)

        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens used per request, by token type (input/output).",
            ["token_type", "model", "provider"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Time from request received to the last byte of the answer.",
            ["model", "provider", "route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Streams: time from request received to the first answer bytes sent to the client.",
            ["model", "provider", "route"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Streams: time per output token after the first.",
            ["model", "provider", "route"],
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "gateway_requests",
            "Requests served, by route, model, status class and policy.",
            ["route", "model", "status_class", "policy", *tenant],
            registry=r,
        )
        self.in_flight = Gauge("gateway_requests_in_flight", "Requests being served now.", ["route"], registry=r)
        self.added_latency = Histogram(
            "gateway_added_latency_seconds",
            "Time the gateway spends before forwarding (reading, detecting, redacting).",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.detection_duration = Histogram(
            "gateway_detection_duration_seconds",
            "Time spent detecting personal data for one request.",
            ["policy"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.detector_errors = Counter(
            "gateway_detector_errors", "Detector failures (the request was refused).", ["reason"], registry=r
        )
        self.entities = Counter(
            "gateway_entities",
            "Personal data found, by entity type and the action taken.",
            ["entity_type", "action", "policy"],
            registry=r,
        )
        self.blocked = Counter(
            "gateway_blocked_requests",
            "Requests refused by a block action, by entity type.",
            ["entity_type", "policy"],
            registry=r,
        )
        self.placeholders_restored = Counter(
            "gateway_placeholders_restored", "Placeholders put back into answers.", ["route"], registry=r
        )
        self.placeholders_unresolved = Counter(
            "gateway_placeholders_unresolved",
            "Placeholder-shaped text in answers that matched no placeholder of the request (mangled or invented).",
            ["route"],
            registry=r,
        )
        self.unscanned_parts = Counter(
            "gateway_unscanned_parts",
            "Content parts passed through unscanned by policy (images, audio, files).",
            ["route", "policy"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Upstream failures: unreachable, timeout, broken stream, or an error status.",
            ["reason"],
            registry=r,
        )
        self.upstream_timeouts = Counter(
            "gateway_upstream_timeouts", "Upstream timeouts, by phase.", ["phase"], registry=r
        )
        self.transcript_queue_depth = Gauge(
            "gateway_transcript_queue_depth", "Transcripts waiting to be written.", registry=r
        )
        self.transcript_writes = Counter(
            "gateway_transcript_writes", "Transcripts written, by where they went.", ["result"], registry=r
        )
        self.transcript_write_failures = Counter(
            "gateway_transcript_write_failures", "Failed attempts to write transcripts to the store.", registry=r
        )
        self.policy_reloads = Counter("gateway_policy_reloads", "Policy reloads, by result.", ["result"], registry=r)
        self.policy_reloads.labels("success")
        self.policy_reloads.labels("failure")
        self.build_info = Gauge(
            "gateway_build_info", "Always 1; the labels describe the build.", ["version", "python"], registry=r
        )
        self.build_info.labels(package_version(), platform.python_version() or sys.version.split()[0]).set(1)

    def watch_detector(self, detector: DetectorStats) -> None:
        """Export the detector's cache and worker counters (``gateway_detector_*``)."""
        if self.enabled:
            self.registry.register(_DetectorCollector(detector))

    def model_label(self, model: str | None) -> str:
        return model if model is not None and model in self.models else OTHER

    def tenant_label(self, tenant: str) -> str:
        return tenant if tenant in self.tenants else OTHER

    def observe(self, exchange: Exchange) -> None:
        """Record a finished exchange. Reads the Exchange only; never sees bytes or values."""
        if not self.enabled:
            return
        route = exchange.route
        model = self.model_label(exchange.model)
        policy = exchange.policy or "none"
        status = exchange.status or 0
        labels = [route, model, f"{status // 100}xx", policy]
        if self.tenant_labelled:
            labels.append(self.tenant_label(exchange.tenant))
        self.requests.labels(*labels).inc()
        if exchange.duration_seconds is not None:
            self.request_duration.labels(model, self.provider, route).observe(exchange.duration_seconds)
        if exchange.stream and exchange.first_token_seconds is not None and status < 400:
            self.time_to_first_token.labels(model, self.provider, route).observe(exchange.first_token_seconds)
            if exchange.output_tokens and exchange.output_tokens > 1 and exchange.duration_seconds is not None:
                per_token = (exchange.duration_seconds - exchange.first_token_seconds) / (exchange.output_tokens - 1)
                self.time_per_output_token.labels(model, self.provider, route).observe(max(per_token, 0.0))
        if exchange.input_tokens is not None:
            self.token_usage.labels("input", model, self.provider).observe(exchange.input_tokens)
        if exchange.output_tokens is not None:
            self.token_usage.labels("output", model, self.provider).observe(exchange.output_tokens)
        if exchange.forwarded_seconds is not None:
            self.added_latency.labels(route).observe(exchange.forwarded_seconds)
        if exchange.detect_seconds is not None and exchange.outcome != "detector_error":
            self.detection_duration.labels(policy).observe(exchange.detect_seconds)
        for (entity_type, action), count in exchange.entity_counts.items():
            self.entities.labels(entity_type, action, policy).inc(count)
            if action == "block":
                self.blocked.labels(entity_type, policy).inc()
        if exchange.placeholders_restored:
            self.placeholders_restored.labels(route).inc(exchange.placeholders_restored)
        if exchange.placeholders_unresolved:
            self.placeholders_unresolved.labels(route).inc(exchange.placeholders_unresolved)
        if exchange.unscanned_parts:
            self.unscanned_parts.labels(route, policy).inc(exchange.unscanned_parts)
        if exchange.outcome == "detector_error":
            self.detector_errors.labels("timeout" if exchange.error_code == "pii_detection_timeout" else "error").inc()
        if exchange.upstream_error is not None:
            self.upstream_errors.labels(exchange.upstream_error).inc()
            if exchange.upstream_error.startswith("timeout_"):
                self.upstream_timeouts.labels(exchange.upstream_error.removeprefix("timeout_")).inc()
