"""The HTTP connection layer: what happens before a request reaches the application.

aiohttp parses each request head before any handler runs. When the head is malformed or too big,
aiohttp answers by itself with a ``text/plain`` 400 whose body quotes the offending bytes, which
may be an ``Authorization`` header or personal data in a cookie, and logs them. Here those answers
become OpenAI-shaped JSON errors that quote nothing:

- a header line, header field or request line over the limit, or too many headers: **431**;
- any other unparseable head: **400**.

The request head must also arrive in time. aiohttp closes a connection whose head is still
incomplete when its keep-alive timer fires, counted from the connection's start or from its
previous answer; ``limits.header_read_seconds`` sets that timer (``handler_args``), so a slowloris
client holds a connection for at most that long.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .errors import BadRequest, GatewayError, HeadersTooLarge
from .exchange import new_request_id

log = logging.getLogger("gateway.protocol")

#: aiohttp's message for a head with more header lines than allowed (both parsers word it so).
_TOO_MANY_HEADERS = "too many headers"


def parse_error(exc: BaseException | None, status: int) -> GatewayError:
    """The gateway error to answer for an aiohttp parse failure, built from fixed strings only."""
    if isinstance(exc, LineTooLong) or (
        isinstance(exc, BadHttpMessage) and _TOO_MANY_HEADERS in str(exc.message).lower()
    ):
        return HeadersTooLarge("Request header fields too large.")
    if isinstance(exc, HttpProcessingError) or status == 400:
        return BadRequest("The request could not be parsed as HTTP.")
    return GatewayError("The gateway could not handle the request.")


class GatewayRequestHandler(RequestHandler):
    """aiohttp's connection handler, with errors that are JSON, correctly numbered and quote nothing."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of an answer is out already: only closing the connection is left (aiohttp's rule).
            raise ConnectionError("Response is sent already, cannot send another response")
        error = parse_error(exc, status)
        request_id = new_request_id()
        # The exception's text quotes request bytes; only its class is logged.
        log.warning(
            "request rejected before routing",
            extra={
                "request_id": request_id,
                "status": error.status,
                "error_code": error.code,
                "error": type(exc).__name__ if exc else None,
            },
        )
        response = web.Response(
            status=error.status,
            body=error.to_json(),
            content_type="application/json",
            headers={"X-Request-Id": request_id},
        )
        response.force_close()
        return response


class GatewayServer(web.Server):
    """Builds ``GatewayRequestHandler`` for each connection."""

    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections use ``GatewayRequestHandler``."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return GatewayServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **server._kwargs,
        )


def handler_args(header_read_seconds: float, max_field_size: int) -> dict[str, Any]:
    """aiohttp connection settings for the gateway's limits."""
    return {
        "max_field_size": max_field_size,
        "max_line_size": max_field_size,
        "keepalive_timeout": header_read_seconds,
    }
