"""Who may ask what: the names the gateway answers to, a bearer token, where it may listen without one.

Every request, reads included, must name the gateway in `Host`: a loopback
name, the address it listens on (any address literal when it listens on all of
them) or a name given with `--allowed-host`. A page whose name an attacker
re-points at 127.0.0.1 (DNS rebinding) is the browser's same origin, so only
its name in `Host` gives it away; address literals cannot be re-pointed.

The token comes from ZLB_HTTP_TOKEN or `--token-file`. With a token, every
call that changes anything (POST) needs `Authorization: Bearer <token>`,
compared in constant time; without one, POSTs are open, which is allowed only
on loopback. Reads stay open on loopback; off loopback (or under a name other
than loopback) they need the token too (the event stream, which a browser
cannot give headers, also takes `?token=`).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

TOKEN_ENV = "ZLB_HTTP_TOKEN"
ALLOWED_HOSTS_ENV = "ZLB_HTTP_ALLOWED_HOSTS"
ALLOWED_HOST_OPTION = "--allowed-host"
# Listening on one of these means every address of the machine.
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "[::]", "")
# What a name given to --allowed-host may hold: DNS letters, digits, hyphens, dots (or an address).
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
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


def is_address(host: str) -> bool:
    """True for an IPv4 or IPv6 address literal (with or without brackets)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def host_name(header: str) -> str | None:
    """The name in a Host header, lower case, without port or brackets; None when it is malformed."""
    try:
        parsed = urlsplit(f"//{header}")
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return None
    name = (parsed.hostname or "").rstrip(".")
    if not name or parsed.username is not None or parsed.path or parsed.query or parsed.fragment:
        return None
    return name


def allowed_host(value: str) -> str:
    """An --allowed-host value as it will be compared (lower case, no trailing dot); ValueError if it is no name."""
    name = value.strip().lower().rstrip(".")
    if is_address(name):
        return name.strip("[]")
    if not _NAME.match(name) or len(name) > 253:
        raise ValueError(f"{value!r} is not a host name or address (give the name alone, without port or scheme)")
    return name


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
    """The token (or None), whether reads need it too, and the names beyond loopback the gateway answers to."""

    token: str | None
    protect_reads: bool
    names: frozenset[str] = frozenset()  # besides loopback names; lower case, no port
    any_address: bool = False  # listening on every address: any address literal names the gateway

    @classmethod
    def for_host(cls, host: str, token: str | None, allowed_hosts: tuple[str, ...] = ()) -> Policy:
        """The policy for listening on `host` and answering to `allowed_hosts` (already `allowed_host`-checked).

        Refuses a non-loopback host, or a non-loopback allowed name, without a token: either lets
        other machines reach the gateway.
        """
        loopback = is_loopback(host)
        if not loopback and token is None:
            raise AuthConfigError(
                f"refusing to listen on {host} without a token: set {TOKEN_ENV} or --token-file "
                "(or listen on 127.0.0.1)"
            )
        beyond = [name for name in allowed_hosts if not is_loopback(name)]
        if beyond and token is None:
            raise AuthConfigError(
                f"refusing to answer to {beyond[0]} without a token: set {TOKEN_ENV} or --token-file "
                f"(a name other than loopback means other machines reach the gateway)"
            )
        wildcard = host.strip() in WILDCARD_ADDRESSES
        names = set(allowed_hosts)
        if not wildcard and not loopback:
            names.add(host.strip("[]").lower())
        return cls(token, not loopback or bool(beyond), frozenset(names), wildcard)

    def host_refusal(self, host: str | None) -> str:
        """Why a request's Host header is not a name of this gateway ('' if it is).

        Loopback names, the listening address (any address literal when listening on all
        of them) and the --allowed-host names are served, with any port: a DNS-rebound page
        shows in the name, and a proxy or port mapping may change the port. A request with
        no Host at all (HTTP/1.0; h11 refuses HTTP/1.1 without one) comes from no browser.
        """
        if host is None:
            return ""
        name = host_name(host)
        if name is not None and (is_loopback(name) or name in self.names or (self.any_address and is_address(name))):
            return ""
        shown = host if len(host) <= 100 else host[:100] + "..."
        return (
            f"Host {shown!r} is not a name of this gateway; it answers to loopback names"
            f"{' and its addresses' if self.any_address else ''} and to those given with "
            f"{ALLOWED_HOST_OPTION} NAME (or {ALLOWED_HOSTS_ENV}), a guard against DNS rebinding"
        )

    def cross_site(self, headers: Any) -> str:
        """Why a changing request looks sent by another site's page ('' if it does not).

        A page elsewhere can make a browser POST here (a "no-cors" fetch or a form) but
        cannot set a JSON content type without asking first, and the browser names the
        page's origin: the Origin, when sent, must be this host. (A DNS-rebound name shows
        in Host, which every request must pass first: `host_refusal`.)
        """
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != headers.get("host", ""):
            return f"cross-site request from {origin} refused"
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
