"""Who may change things: a bearer token, and where the gateway may listen without one.

The token comes from ZLB_HTTP_TOKEN or `--token-file`. With a token, every
call that changes anything (POST) needs `Authorization: Bearer <token>`,
compared in constant time; without one, POSTs are open, which is allowed only
on loopback. Reads stay open on loopback; off loopback they need the token
too (the event stream, which a browser cannot give headers, also takes
`?token=`).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

TOKEN_ENV = "ZLB_HTTP_TOKEN"
# Shorter tokens are refused: they could be guessed.
MIN_TOKEN_CHARS = 16


class AuthConfigError(ValueError):
    """A token setting that cannot be used; the message is one line for the operator."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_token(token_file: str | None) -> str | None:
    """The token from --token-file (first line) or ZLB_HTTP_TOKEN, or None."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except OSError as exc:
            raise AuthConfigError(f"cannot read --token-file {token_file}: {exc.strerror or exc}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        return None
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        raise AuthConfigError(f"the token must be at least {MIN_TOKEN_CHARS} printable ASCII characters")
    return token


@dataclass(frozen=True)
class Policy:
    """The token (or None) and whether reads need it too."""

    token: str | None
    protect_reads: bool

    @classmethod
    def for_host(cls, host: str, token: str | None) -> Policy:
        """The policy for listening on `host`; refuses a non-loopback host without a token."""
        loopback = is_loopback(host)
        if not loopback and token is None:
            raise AuthConfigError(
                f"refusing to listen on {host} without a token: set {TOKEN_ENV} or --token-file "
                "(or listen on 127.0.0.1)"
            )
        return cls(token, not loopback)

    def cross_site(self, headers: Any) -> str:
        """Why a changing request looks sent by another site's page ('' if it does not).

        A page elsewhere can make a browser POST here (a "no-cors" fetch or a form) but
        cannot set a JSON content type without asking first, and the browser names the
        page's origin; a DNS-rebound name shows in Host. So: the Origin, when sent, must
        be this host; without a token, Host must be a loopback name.
        """
        host = headers.get("host", "")
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != host:
            return f"cross-site request from {origin} refused"
        if self.token is None and not is_loopback(urlsplit(f"//{host}").hostname or ""):
            return f"Host {host!r} is not a loopback name; without a token only loopback names are served"
        return ""

    def allows(self, authorization: str | None, query_token: str | None = None) -> bool:
        """True when the token is off, or the header (or stream query) carries it."""
        if self.token is None:
            return True
        given = ""
        if authorization and authorization[:7].lower() == "bearer ":
            given = authorization[7:].strip()
        elif query_token:
            given = query_token
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode())
