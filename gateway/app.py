"""create_app(): routes, the error middleware, typed AppKeys, and the shared resources' lifetimes.

Shared resources live in ``cleanup_ctx`` (one ClientSession, the detector, the policy/key watcher)
and are reached through ``PARTS``. Anything not routed here is refused with 404 and never forwarded:
an endpoint the gateway does not scan would be a hole.

Routes:
- ``POST /v1/chat/completions`` (and ``/chat/completions``): the proxied API;
- ``GET /healthz`` (alive), ``GET /readyz`` (detector loaded, not draining);
- ``GET /metrics``: here unless ``admin.port`` moves it to the admin listener (``create_admin_app``);
- ``POST /v1/gateway/explain`` (dry run, forwards nothing) and ``POST /v1/gateway/reload``: admin key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from .admin import handle_explain, handle_reload
from .api import WireApi
from .api.anthropic import MESSAGES
from .api.chat import CHAT, COMPLETIONS
from .api.embeddings import EMBEDDINGS
from .api.responses import RESPONSES
from .detector import Detector, PresidioDetector
from .envelope import DataKeys, data_keys_for
from .errors import GatewayError, MethodNotAllowed, NotFound, Overloaded, PayloadTooLarge
from .keys import KeyRing
from .limits import Admission, RateLimiter
from .metrics import Metrics
from .pipeline import Gateway, error_response, handle, handle_models
from .policy import PolicyBook, load_policy_dir
from .protocol import handler_args
from .redaction import Redactor
from .reloader import KeyHolder, PolicyHolder, Reloader
from .settings import Settings
from .spool import Spool
from .tls import refuse_private_upstreams, upstream_ssl_context
from .transcripts import TranscriptRecorder
from .upstream import Router, UpstreamClient

log = logging.getLogger(__name__)


@dataclass
class Parts:
    """What create_app was given or built; mutable only during start-up and shutdown."""

    settings: Settings
    policies: PolicyHolder
    keys: KeyHolder
    detector: Detector
    owns_detector: bool
    #: False when create_app was handed a PolicyBook: then the folder on disk is not watched.
    watch_policies: bool
    hash_key: bytes | None
    metrics: Metrics
    reloader: Reloader
    data_keys: DataKeys
    recorder: TranscriptRecorder | None
    gateway: Gateway | None = None
    draining: bool = False
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, coro: object, name: str) -> None:
        """Start a background task and keep a reference until it ends (a bare create_task may be GC'd)."""
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self.background.add(task)
        task.add_done_callback(self.background.discard)


PARTS = web.AppKey("parts", Parts)

#: Every API the gateway scans, by path. Anything else is refused with 404.
ROUTES: dict[str, WireApi] = {
    "/v1/chat/completions": CHAT,
    "/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/embeddings": EMBEDDINGS,
    "/v1/responses": RESPONSES,
    "/v1/messages": MESSAGES,
    "/anthropic/v1/messages": MESSAGES,
    "/openai/v1/chat/completions": CHAT,
    "/openai/v1/completions": COMPLETIONS,
    "/openai/v1/embeddings": EMBEDDINGS,
    "/openai/v1/responses": RESPONSES,
}
AZURE_ROUTES: dict[str, WireApi] = {
    "/openai/deployments/{deployment}/chat/completions": CHAT,
    "/openai/deployments/{deployment}/completions": COMPLETIONS,
    "/openai/deployments/{deployment}/embeddings": EMBEDDINGS,
}


def create_app(
    settings: Settings,
    *,
    detector: Detector | None = None,
    policies: PolicyBook | None = None,
    hash_key: bytes | None = None,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """Build the application. A detector passed in is shared and not closed by this app."""
    policies_dir = settings.resolved_policies_dir()
    languages = [settings.nlp.language]
    book = policies or load_policy_dir(
        policies_dir, settings.default_policy, languages=languages, bindings=settings.policy_bindings
    )
    owns = detector is None
    if detector is None:
        detector = PresidioDetector(
            settings.nlp.model,
            settings.nlp.language,
            workers=settings.detector.workers,
            timeout=settings.detector.timeout_seconds,
            cache_entries=settings.detector.cache_entries,
            cache_mib=settings.detector.cache_mib,
            disable=tuple(settings.nlp.disable),
            recycle_after_jobs=settings.detector.recycle_after_jobs,
            recycle_above_mib=settings.detector.recycle_above_mib,
        )
    metrics = Metrics(
        registry,
        provider=_provider(settings),
        models=settings.metrics.models,
        tenants=settings.metrics.tenants,
        enabled=settings.metrics.enabled,
    )
    if isinstance(detector, PresidioDetector):
        metrics.watch_detector(detector)
    policy_holder = PolicyHolder(book)
    key_holder = KeyHolder(KeyRing.load(settings.resolved_keys_file()))
    reloader = Reloader(
        policies=policy_holder,
        keys=key_holder,
        policies_dir=policies_dir,
        keys_file=settings.resolved_keys_file(),
        default_policy=settings.default_policy,
        metrics=metrics,
        languages=languages,
        bindings=tuple(settings.policy_bindings),
    )
    data_keys = data_keys_for(settings)
    recorder = (
        TranscriptRecorder(
            data_keys.store,
            data_keys,
            Spool(settings.data_dir / "spool", data_keys.provider),
            settings.transcripts,
            metrics,
        )
        if settings.transcripts.enabled
        else None
    )
    app = web.Application(
        middlewares=[_errors_middleware],
        client_max_size=settings.limits.max_body_bytes,
        handler_args=handler_args(settings.limits.header_read_seconds, settings.limits.max_header_bytes),
    )
    app[PARTS] = Parts(
        settings=settings,
        policies=policy_holder,
        keys=key_holder,
        detector=detector,
        owns_detector=owns,
        watch_policies=policies is None,
        hash_key=hash_key,
        metrics=metrics,
        reloader=reloader,
        data_keys=data_keys,
        recorder=recorder,
    )
    app.cleanup_ctx.append(_resources)
    for path, api in ROUTES.items():
        app.router.add_post(path, _api_handler(api))
    for path, api in AZURE_ROUTES.items():
        app.router.add_post(path, _azure_handler(api))
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/openai/v1/models", _models)
    app.router.add_post("/v1/gateway/explain", _explain)
    app.router.add_post("/v1/gateway/reload", _reload)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    if settings.admin.port is None and settings.metrics.enabled:
        app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.router.add_route("*", "/{tail:.*}", _unknown)
    return app


def create_admin_app(main: web.Application) -> web.Application:
    """The admin listener: /metrics, /healthz and /readyz, for a port not exposed with the API."""
    parts = main[PARTS]
    admin = web.Application()
    admin[PARTS] = parts
    if parts.settings.metrics.enabled:
        admin.router.add_get("/metrics", make_aiohttp_handler(parts.metrics.registry))
    admin.router.add_get("/healthz", _healthz)
    admin.router.add_get("/readyz", _readyz)
    return admin


def _provider(settings: Settings) -> str:
    host = (settings.upstream or "").lower()
    for name in ("openai.azure.com", "anthropic", "openai"):
        if name in host:
            return {"openai.azure.com": "azure.ai.openai"}.get(name, name)
    return "openai_compatible"


async def _resources(app: web.Application) -> AsyncIterator[None]:
    parts = app[PARTS]
    settings = parts.settings
    upstreams = settings.resolved_upstreams()
    if not upstreams:
        raise RuntimeError("create_app needs settings.upstream(s); serve() fills it with the demo upstream")
    if settings.upstream_guard.refuse_private_addresses:
        await refuse_private_upstreams([u.url for u in upstreams])
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, ssl=upstream_ssl_context(settings))
    session = aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False)
    redis = None
    if settings.limits.redis_url:
        import redis.asyncio as redis_asyncio

        redis = redis_asyncio.from_url(settings.limits.redis_url)
    router = Router(
        [
            UpstreamClient(
                session,
                u.url,
                u.timeouts or settings.timeouts,
                u.api_key,
                name=u.name,
                kind=u.kind,
                models=u.models,
                routes=u.routes,
                azure_api_version=u.azure_api_version,
                retries=settings.retries,
            )
            for u in upstreams
        ]
    )
    if parts.recorder is not None:
        await parts.recorder.start()
    else:
        await parts.data_keys.store.open()  # the hash action's keys live in the store too
    parts.gateway = Gateway(
        settings=settings,
        policies=parts.policies,
        keys=parts.keys,
        detector=parts.detector,
        redactor=Redactor(parts.detector, parts.hash_key or parts.data_keys.hash_key),
        router=router,
        metrics=parts.metrics,
        admission=Admission(settings.limits),
        rate=RateLimiter(settings.limits, redis),
        recorder=parts.recorder,
    )
    if parts.owns_detector:
        # Load the model in the background so /healthz answers at once; /readyz waits for it.
        region_sets = {p.detection_spec().regions for p in parts.policies.book.policies.values()}
        parts.spawn(_start_detector(parts.detector, region_sets), "detector-start")
    if settings.reload_interval_seconds > 0 and parts.watch_policies:
        parts.spawn(parts.reloader.watch(settings.reload_interval_seconds), "policy-watch")
    try:
        yield
    finally:
        for task in list(parts.background):
            task.cancel()
        await asyncio.gather(*parts.background, return_exceptions=True)
        if parts.recorder is not None:
            await parts.recorder.close()  # drain the queue; what cannot be written goes to the spool
        else:
            await parts.data_keys.store.close()
        if parts.owns_detector:
            await parts.detector.close()
        await session.close()
        if redis is not None:
            await redis.aclose()


async def _start_detector(detector: Detector, region_sets: set[tuple[str, ...]]) -> None:
    try:
        await detector.start(region_sets)
        log.info("detector ready")
    except Exception as exc:
        log.error("the detector failed to start", extra={"error": type(exc).__name__})
        raise


def _gateway(request: web.Request) -> Gateway:
    gateway = request.app[PARTS].gateway
    assert gateway is not None, "the app was not started"
    return gateway


def _api_handler(api: WireApi) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await handle(request, _gateway(request), api)

    return handler


def _azure_handler(api: WireApi) -> Handler:
    """Azure OpenAI paths: the deployment in the path is the model."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await handle(request, _gateway(request), api, model_from_path=request.match_info.get("deployment"))

    return handler


async def _models(request: web.Request) -> web.StreamResponse:
    return await handle_models(request, _gateway(request))


async def _explain(request: web.Request) -> web.StreamResponse:
    return await handle_explain(request, _gateway(request))


async def _reload(request: web.Request) -> web.StreamResponse:
    return await handle_reload(request, _gateway(request), request.app[PARTS].reloader)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    if parts.draining:
        return web.json_response({"status": "draining"}, status=503)
    if parts.recorder is not None and not parts.recorder.accepting:
        # fail_closed transcripts with the store down or the queue full: requests would get 503 anyway
        return web.json_response({"status": "transcripts_unavailable"}, status=503)
    if parts.detector.ready:
        return web.json_response({"status": "ready", "policies": sorted(parts.policies.book.policies)})
    return web.json_response({"status": "starting", "detector": "loading"}, status=503)


async def _unknown(request: web.Request) -> web.Response:
    # The path is not echoed: it is client input and could carry personal data.
    raise NotFound(f"Unknown endpoint ({request.method}): the gateway forwards only the APIs it scans.")


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every error the gateway raises, and aiohttp's own HTTP errors, as OpenAI-shaped JSON.

    While draining (after SIGTERM), a new API request that still arrives on an open connection is
    refused with 503 and Retry-After, so the client retries on another replica.
    """
    if request.app[PARTS].draining and request.path not in ("/healthz", "/readyz", "/metrics"):
        return error_response(Overloaded("The gateway is shutting down; retry on another instance.", retry_after=1))
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except GatewayError as exc:
        return error_response(exc)
    except web.HTTPMethodNotAllowed:
        return error_response(MethodNotAllowed(f"Method {request.method} is not allowed on this endpoint."))
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[PARTS].settings.limits.max_body_bytes
        return error_response(PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes."))
