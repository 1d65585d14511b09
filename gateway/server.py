"""serve(): run the gateway until a signal, then shut down in order.

Start-up:
1. Check the spaCy model is installed (fail fast, naming the package; never download).
2. Without ``--upstream``, start the built-in echo upstream on loopback and warn loudly.
3. Start the app; the detector loads in the background and ``/readyz`` turns 200 when it has.

Shutdown on SIGTERM or SIGINT:
1. ``/readyz`` turns 503 and the listening socket closes: no new requests.
2. In-flight requests, streams included, get ``shutdown_grace_seconds`` to finish.
3. Shared resources close (detector workers, the upstream session).
4. Exit 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web

from .app import PARTS, create_admin_app, create_app
from .detector import check_model
from .echo_upstream import start_echo_upstream
from .protocol import GatewayAppRunner
from .settings import Settings, SettingsError
from .tls import server_tls

log = logging.getLogger(__name__)


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    check_model(settings.nlp.model)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    echo_runner = None
    if not settings.resolved_upstreams():
        if settings.production:
            raise SystemExit("pii-gateway: production mode needs --upstream (PII_GATEWAY_UPSTREAM)")
        echo_runner, url = await start_echo_upstream()
        settings = settings.model_copy(update={"upstream": url})
        log.warning(
            "no --upstream given: using the built-in demo echo upstream; nothing leaves this machine",
            extra={"upstream": url},
        )

    app = create_app(settings)
    parts = app[PARTS]
    runner = GatewayAppRunner(
        app, access_log=None, shutdown_timeout=settings.shutdown_grace_seconds, handler_cancellation=True
    )
    await runner.setup()
    tls = server_tls(settings)
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024, ssl_context=tls.context if tls else None)
    await site.start()
    admin_runner = None
    if settings.admin.port is not None:
        admin_runner = GatewayAppRunner(create_admin_app(app), access_log=None)
        await admin_runner.setup()
        await web.TCPSite(admin_runner, settings.admin.host, settings.admin.port).start()
    log.info(
        "listening",
        extra={
            "host": settings.host,
            "port": settings.port,
            "admin_port": settings.admin.port,
            "upstream": settings.upstream,
        },
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_hangup() -> None:
        log.info("SIGHUP: reloading policies, keys and the TLS certificate")
        parts.spawn(parts.reloader.reload(), "sighup-reload")
        if tls is not None:
            try:
                tls.reload()
            except SettingsError as exc:
                log.error("TLS certificate reload failed; the previous one stays", extra={"reason": str(exc)})

    loop.add_signal_handler(signal.SIGHUP, on_hangup)

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        parts.draining = True  # /readyz turns 503 at once
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        # runner.cleanup() closes the listening socket, then waits up to shutdown_timeout for
        # in-flight requests (streams included), then runs cleanup_ctx (detector, session).
        await runner.cleanup()
        if admin_runner is not None:
            await admin_runner.cleanup()
        if echo_runner is not None:
            await echo_runner.cleanup()
        log.info("stopped")
