"""CurveZMQ for every zlb socket: keys, the balancer's ZAP handler, client settings.

The balancer holds a secret key and a directory of public keys it admits
(`--curve-secret FILE --allow DIR`); pyzmq's ThreadAuthenticator answers the
ZAP requests of its four bound sockets, so a peer whose key is not in DIR never
completes the handshake: it cannot join, submit, subscribe or send admin
commands. Every other command connects with its own secret key and the
balancer's public key, read from ZLB_CURVE_SECRET and ZLB_SERVER_KEY (the
`--curve-secret` and `--server-key` options set them), so one function,
`secure_client_socket`, covers nodes, clients, admin calls and the monitor.

Roles are settled at the handshake, never per message. The backend (where nodes
join and receive payloads) is its own ZAP domain, NODE_DOMAIN: with
`--node-allow NODES` it admits only the keys in NODES, and the other three
sockets only those of `--allow` and `--admin-allow`, so a client key cannot
serve and a node key cannot submit, subscribe or query (a key in both
directories has both roles). Without `--node-allow` the backend admits the
same keys as the rest, as before. The admin/client split of the control
socket is the ZAP user id (ADMIN or CLIENT) its requests carry.
"""

from __future__ import annotations

import itertools
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


_monitor_numbers = itertools.count()


class KeyRefusals:
    """Whether the balancer refused a connecting socket's curve key: a monitor, read only when asked.

    A refused peer only sees silence on its socket; libzmq reports the refusal as a monitor event.
    Create it before connect; the owner looks when the balancer has been silent too long, never per message.
    """

    def __init__(self, sock: zmq.Socket) -> None:
        self._monitor: zmq.Socket | None = None
        if sock.getsockopt(zmq.MECHANISM) == zmq.CURVE:
            # A name of our own: pyzmq's default names it after the socket's descriptor, which a
            # reconnect's new socket may reuse before the old endpoint is gone ("Address already in use").
            address = f"inproc://zlb-key-refusals-{next(_monitor_numbers)}"
            self._monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH, address)

    def seen(self) -> bool:
        """True if the balancer refused the key since the last look."""
        seen = False
        while self._monitor is not None:
            try:
                self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            seen = True
        return seen

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None


class _RefusalLog:
    """The authenticator's log: passes only refusals on, at most one per key per interval."""

    def __init__(self, node_allow: bool) -> None:
        self._last: dict[str, float] = {}
        # pyzmq logs a curve verdict as (status, domain, key): say where a node-socket refusal came from.
        self._where = {NODE_DOMAIN: " on the backend (nodes join with a key from --node-allow)"} if node_allow else {}

    def debug(self, msg: str, *args: Any) -> None:
        text = msg % args if args else msg
        if not text.startswith("DENIED"):
            return
        now = time.monotonic()
        if now - self._last.get(text, -REFUSAL_LOG_INTERVAL_S) >= REFUSAL_LOG_INTERVAL_S:
            self._last[text] = now
            where = self._where.get(args[1], "") if len(args) == 3 else ""
            print(f"zlb balancer: refused a peer{where}: {text}", file=sys.stderr, flush=True)

    def error(self, msg: str, *args: Any) -> None:
        print(f"zlb balancer: authenticator: {msg % args if args else msg}", file=sys.stderr, flush=True)

    info = warning = debug


ADMIN = "admin"
CLIENT = "client"
# The ZAP domain of the balancer's backend; the other sockets use the default ("*").
NODE_DOMAIN = "nodes"


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
    def start(
        cls,
        context: zmq.Context,
        secret_file: str,
        allow_dir: str,
        admin_dir: str | None = None,
        node_dir: str | None = None,
    ) -> CurveServer:
        """Load the balancer's key and the public keys it admits, start ZAP.

        The frontend, events and control sockets admit `allow_dir` and `admin_dir`; the
        backend admits `node_dir`, or without one the same keys as the others.
        """
        public, secret = load_secret(secret_file)
        allowed = _public_keys("--allow", allow_dir)
        auth = _RoleAuthenticator(context, log=_RefusalLog(node_dir is not None))
        if admin_dir is not None:
            auth.admin_keys = set(_public_keys("--admin-allow", admin_dir))
            allowed.update(dict.fromkeys(auth.admin_keys, True))
        auth.certs["*"] = allowed
        auth.certs[NODE_DOMAIN] = allowed if node_dir is None else _public_keys("--node-allow", node_dir)
        auth.start()
        return cls(public, secret, auth)

    def secure(self, sock: zmq.Socket, role: str = "") -> None:
        """Make a bound socket a curve server (call before bind); the "backend" gets the nodes' ZAP domain."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        if role == "backend":
            sock.zap_domain = NODE_DOMAIN.encode()

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
