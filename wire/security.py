"""CurveZMQ for every zlb socket: keys, the balancer's ZAP handler, client settings.

The balancer holds a secret key and a directory of public keys it admits
(`--curve-secret FILE --allow DIR`); pyzmq's ThreadAuthenticator answers the
ZAP requests of its four bound sockets, so a peer whose key is not in DIR never
completes the handshake: it cannot join, submit, subscribe or send admin
commands. Every other command connects with its own secret key and the
balancer's public key, read from ZLB_CURVE_SECRET and ZLB_SERVER_KEY (the
`--curve-secret` and `--server-key` options set them), so one function,
`secure_client_socket`, covers nodes, clients, admin calls and the monitor.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

CURVE_SECRET_ENV = "ZLB_CURVE_SECRET"
SERVER_KEY_ENV = "ZLB_SERVER_KEY"
# A refused key is logged at most this often, so a scanner cannot flood the log.
REFUSAL_LOG_INTERVAL_S = 5.0
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}

log = logging.getLogger("zlb.auth")


class CurveConfigError(ValueError):
    """Key files that are missing, unreadable or of the wrong kind."""


def generate_keys(directory: str, name: str) -> tuple[str, str]:
    """Write NAME.key (public) and NAME.key_secret in DIRECTORY; return both paths."""
    os.makedirs(directory, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return str(public), str(secret)


def load_secret(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a NAME.key_secret file."""
    public, secret = _load(path)
    if secret is None:
        raise CurveConfigError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public(path: str) -> bytes:
    """The public key from a NAME.key or NAME.key_secret file."""
    return _load(path)[0]


def _load(path: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveConfigError(f"cannot read curve key file {path}: {exc}") from None
    if not public:
        raise CurveConfigError(f"{path} is not a curve key file")
    return public, secret


_client_keys: dict[tuple[str, str], tuple[bytes, bytes, bytes]] = {}


def client_keys() -> tuple[bytes, bytes, bytes] | None:
    """(public, secret, server public) from the environment, or None when curve is off."""
    secret_file = os.environ.get(CURVE_SECRET_ENV) or ""
    server_file = os.environ.get(SERVER_KEY_ENV) or ""
    if not secret_file and not server_file:
        return None
    if not secret_file or not server_file:
        raise CurveConfigError("curve needs both --curve-secret and --server-key (ZLB_CURVE_SECRET, ZLB_SERVER_KEY)")
    cached = _client_keys.get((secret_file, server_file))
    if cached is None:
        public, secret = load_secret(secret_file)
        cached = _client_keys[(secret_file, server_file)] = (public, secret, load_public(server_file))
    return cached


def secure_client_socket(sock: zmq.Socket) -> zmq.Socket:
    """Turn on curve for a connecting socket when the environment asks for it (call before connect)."""
    keys = client_keys()
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = keys
    return sock


class _RefusalLog:
    """The authenticator's log: passes only refusals on, at most one per key per interval."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def debug(self, msg: str, *args: Any) -> None:
        text = msg % args if args else msg
        if not text.startswith("DENIED"):
            return
        now = time.monotonic()
        if now - self._last.get(text, -REFUSAL_LOG_INTERVAL_S) >= REFUSAL_LOG_INTERVAL_S:
            self._last[text] = now
            print(f"zlb balancer: refused a peer: {text}", file=sys.stderr, flush=True)

    def error(self, msg: str, *args: Any) -> None:
        print(f"zlb balancer: authenticator: {msg % args if args else msg}", file=sys.stderr, flush=True)

    info = warning = debug


ADMIN = "admin"
CLIENT = "client"


class _RoleAuthenticator(ThreadAuthenticator):
    """Admits the allowed keys and names each connection's role as its ZAP user id.

    With an admin directory, its keys are "admin" and every other allowed key is
    "client"; without one, every allowed key is "admin" (as before the split).
    """

    admin_keys: set[bytes] | None = None  # z85-encoded, as load_certificates gives them

    def curve_user_id(self, client_public_key: bytes) -> str:
        if self.admin_keys is None or zmq.utils.z85.encode(client_public_key) in self.admin_keys:
            return ADMIN
        return CLIENT


@dataclass
class CurveServer:
    """The balancer side of curve: its keys and the running ZAP handler."""

    public: bytes
    secret: bytes
    auth: ThreadAuthenticator

    @classmethod
    def start(cls, context: zmq.Context, secret_file: str, allow_dir: str, admin_dir: str | None = None) -> CurveServer:
        """Load the balancer's key, admit the public keys in `allow_dir` (and `admin_dir`), start ZAP."""
        public, secret = load_secret(secret_file)
        allowed = _public_keys("--allow", allow_dir)
        auth = _RoleAuthenticator(context, log=_RefusalLog())
        if admin_dir is not None:
            auth.admin_keys = set(_public_keys("--admin-allow", admin_dir))
            allowed.update(dict.fromkeys(auth.admin_keys, True))
        auth.certs["*"] = allowed
        auth.start()
        return cls(public, secret, auth)

    def secure(self, sock: zmq.Socket) -> None:
        """Make a bound socket a curve server (call before bind)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def stop(self) -> None:
        """Stop the ZAP handler thread."""
        self.auth.stop()


def _public_keys(option: str, directory: str) -> dict[bytes, bool]:
    if not Path(directory).is_dir():
        raise CurveConfigError(f"{option} {directory} is not a directory of public keys")
    keys = zmq.auth.load_certificates(directory)
    if not keys:
        raise CurveConfigError(f"{option} {directory} holds no public key files (*.key)")
    return dict(keys)


def exposed_endpoints(endpoints: list[str]) -> list[str]:
    """The tcp endpoints that bind something other than loopback."""
    out = []
    for ep in endpoints:
        parsed = urlparse(ep)
        if parsed.scheme == "tcp" and (parsed.hostname or "") not in LOOPBACK_HOSTS:
            out.append(ep)
    return out
