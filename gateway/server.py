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

from .app import create_app
from .detector import check_model
from .echo_upstream import start_echo_upstream
from .settings import Settings

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 25.0


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    check_model(settings.nlp.model)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    echo_runner = None
    if settings.upstream is None:
        if settings.production:
            raise SystemExit("pii-gateway: production mode needs --upstream (PII_GATEWAY_UPSTREAM)")
        echo_runner, url = await start_echo_upstream()
        settings = settings.model_copy(update={"upstream": url})
        log.warning(
            "no --upstream given: using the built-in demo echo upstream; nothing leaves this machine",
            extra={"upstream": url},
        )

    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    log.info("listening", extra={"host": settings.host, "port": settings.port, "upstream": settings.upstream})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        if echo_runner is not None:
            await echo_runner.cleanup()
        log.info("stopped")
