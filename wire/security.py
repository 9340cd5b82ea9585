"""CurveZMQ for every zlb socket: key files, and the keys a connecting socket uses.

The balancer holds a secret key and a directory of public keys it admits
(`--curve-secret FILE --allow DIR`); its ZAP handler (balancer/curve.py) answers
the handshakes of its four bound sockets. Every other command connects with its
own secret key and the balancer's public key, read from ZLB_CURVE_SECRET and
ZLB_SERVER_KEY (the `--curve-secret` and `--server-key` options set them), so
one function, `secure_client_socket`, covers nodes, clients, admin calls and the
monitor.
"""

from __future__ import annotations

import itertools
import os
from urllib.parse import urlparse

import zmq

CURVE_SECRET_ENV = "ZLB_CURVE_SECRET"
SERVER_KEY_ENV = "ZLB_SERVER_KEY"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


class CurveConfigError(ValueError):
    """Key files that are missing, unreadable or of the wrong kind."""


def generate_keys(directory: str, name: str) -> tuple[str, str]:
    """Write NAME.key (public) and NAME.key_secret in DIRECTORY; return both paths."""
    from zmq.auth.certs import create_certificates  # only with curve, as in _load

    os.makedirs(directory, exist_ok=True)
    public, secret = create_certificates(directory, name)
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
    # Imported here: a process without curve never reads a key file, and the module costs 0.5 MB.
    from zmq.auth.certs import load_certificate

    try:
        public, secret = load_certificate(path)
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


def exposed_endpoints(endpoints: list[str]) -> list[str]:
    """The tcp endpoints that bind something other than loopback."""
    out = []
    for ep in endpoints:
        parsed = urlparse(ep)
        if parsed.scheme == "tcp" and (parsed.hostname or "") not in LOOPBACK_HOSTS:
            out.append(ep)
    return out
