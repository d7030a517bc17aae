"""What the production settings ask of the front door's scoring answers, as Django's
``SecurityMiddleware`` and ``CommonMiddleware`` do for the pages: ``ALLOWED_HOSTS`` (400),
HTTPS before a token is looked at (403, never a redirect that invites the token again),
HSTS and ``nosniff`` headers. Read from the settings once per process (docs/security.md,
"Deployment settings").
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from endpoints.errors import BadRequest, PermissionDenied, ServingError

Header = tuple[bytes, bytes]
# Bounds the per-process memory of Host values already judged.
MAX_REMEMBERED_HOSTS = 1024


@dataclass(frozen=True)
class Transport:
    allowed_hosts: tuple[str, ...]
    ssl_required: bool
    # (lower-case header name, value meaning "https") as the proxy sets it, or None.
    proxy_ssl_header: Header | None
    secure_headers: tuple[Header, ...]
    plain_headers: tuple[Header, ...]
    _hosts: dict[str, bool] = field(default_factory=dict, compare=False)

    @classmethod
    def from_settings(cls) -> Transport:
        allowed = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not allowed:
            allowed = [".localhost", "127.0.0.1", "[::1]"]  # what Django allows then
        proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
        proxy_header = None
        if proxy:
            name, value = proxy
            name = name.removeprefix("HTTP_").replace("_", "-").lower()
            proxy_header = (name.encode("latin-1"), value.encode("latin-1"))
        common: list[Header] = []
        if getattr(settings, "SECURE_CONTENT_TYPE_NOSNIFF", True):
            common.append((b"x-content-type-options", b"nosniff"))
        secure = list(common)
        seconds = int(getattr(settings, "SECURE_HSTS_SECONDS", 0) or 0)
        if seconds > 0:
            value = f"max-age={seconds}"
            if getattr(settings, "SECURE_HSTS_INCLUDE_SUBDOMAINS", False):
                value += "; includeSubDomains"
            if getattr(settings, "SECURE_HSTS_PRELOAD", False):
                value += "; preload"
            secure.append((b"strict-transport-security", value.encode("latin-1")))
        return cls(
            allowed_hosts=tuple(allowed),
            ssl_required=bool(getattr(settings, "SECURE_SSL_REDIRECT", False)),
            proxy_ssl_header=proxy_header,
            secure_headers=tuple(secure),
            plain_headers=tuple(common),
        )

    def is_secure(self, scope: MutableMapping[str, Any]) -> bool:
        if self.proxy_ssl_header is not None:
            name, value = self.proxy_ssl_header
            for key, given in scope.get("headers", ()):
                if key == name:
                    return given.split(b",", 1)[0].strip() == value
            return False
        return scope.get("scheme") == "https"

    def refusal(self, scope: MutableMapping[str, Any]) -> ServingError | None:
        """Why this scoring request may not go on (None: it may)."""
        if not self.host_allowed(_host(scope)):
            return BadRequest("Invalid Host header: the host is not in ALLOWED_HOSTS.")
        if self.ssl_required and not self.is_secure(scope):
            return PermissionDenied(
                "Scoring needs HTTPS: requests over plain HTTP are refused. Send it again "
                "over HTTPS (and consider the token it carried exposed)."
            )
        return None

    def host_allowed(self, host: str) -> bool:
        """Django's own host validation, remembered per Host value (clients send the same
        few): a look-up instead of a parse on every request."""
        known = self._hosts.get(host)
        if known is None:
            domain, _port = split_domain_port(host)
            known = bool(domain) and validate_host(domain, self.allowed_hosts)
            if len(self._hosts) >= MAX_REMEMBERED_HOSTS:
                self._hosts.clear()
            self._hosts[host] = known
        return known

    def headers(self, secure: bool) -> Iterable[Header]:
        return self.secure_headers if secure else self.plain_headers


def _host(scope: MutableMapping[str, Any]) -> str:
    for key, value in scope.get("headers", ()):
        if key == b"host":
            return value.decode("latin-1")
    server = scope.get("server")
    if server:
        host, port = server
        return f"{host}:{port}" if port else str(host)
    return ""
