"""The balancer's side of CurveZMQ: the ZAP handler that admits keys and names each peer's role.

pyzmq's ThreadAuthenticator answers the ZAP requests of the balancer's four
bound sockets, so a peer whose key is not allowed never completes the
handshake: it cannot join, submit, subscribe or send admin commands. Only the
balancer imports this (its thread brings asyncio along); the keys and the
connecting side are wire/security.py.

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

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

from wire.security import CurveConfigError, load_secret

# A refused key is logged at most this often, so a scanner cannot flood the log.
REFUSAL_LOG_INTERVAL_S = 5.0


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
