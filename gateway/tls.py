"""TLS: the server's own certificate (reloadable), the upstream client context, and the SSRF guard.

Serving: TLS 1.2 or later with the configured certificate and key. ``reload()`` loads them again
into the same context, so new handshakes use a rotated certificate without a restart (SIGHUP).

Upstreams: certificates are verified by default, against the system store or a configured corporate
CA bundle; a client certificate enables mutual TLS. ``verify: false`` is possible and logged loudly.

SSRF guard (optional): refuse to start when an upstream resolves to a private, loopback, link-local
or cloud-metadata address. It checks at start-up; DNS answers that change later are not re-checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Iterable
from urllib.parse import urlsplit

from .settings import Settings, SettingsError

log = logging.getLogger(__name__)


class ServerTLS:
    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.reload()

    def reload(self) -> None:
        """Load the certificate and key again (after rotation); a bad pair keeps the old one."""
        try:
            self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(
                f"tls: cannot load certificate {self.cert} / key {self.key}: {type(exc).__name__}"
            ) from exc


def server_tls(settings: Settings) -> ServerTLS | None:
    cert, key = settings.tls.cert, settings.tls.key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise SettingsError("tls: give both tls.cert and tls.key (--tls-cert, --tls-key)")
    return ServerTLS(str(cert), str(key))


def upstream_ssl_context(settings: Settings) -> ssl.SSLContext | bool:
    options = settings.upstream_tls
    if not options.verify:
        log.warning("upstream TLS verification is OFF: the upstream's identity is not checked")
        return False
    context = ssl.create_default_context(cafile=str(options.ca_bundle) if options.ca_bundle else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if options.client_cert is not None:
        context.load_cert_chain(str(options.client_cert), str(options.client_key) if options.client_key else None)
    return context


def is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast or ip.is_unspecified


async def refuse_private_upstreams(urls: Iterable[str]) -> None:
    loop = asyncio.get_running_loop()
    for url in urls:
        host = urlsplit(url).hostname or ""
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise SettingsError(f"upstream {host}: cannot be resolved ({exc.strerror})") from exc
        for info in infos:
            address = str(info[4][0])
            if is_private(address):
                raise SettingsError(
                    f"upstream {host} resolves to {address}, a private or metadata address, and "
                    "upstream_guard.refuse_private_addresses is on"
                )
