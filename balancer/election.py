"""Leader election through etcd: one thread per HA member, talking to the loop over an inproc socket.

Why etcd3gw: it speaks etcd's v3 JSON gateway over plain HTTP (requests), so
it needs no gRPC or protobuf build, works with every etcd from 3.4 on (Debian
ships 3.4), and is kept by OpenStack, whose tooz coordination library runs on
it. The calls this module makes are few: grant and keep alive a lease,
transactions, get and put.

The keys of a group, under /zlb/GROUP/:
- `leader`: the leader's name and endpoints, attached to its lease. Its
  create_revision is the leadership's **epoch**: etcd revisions only grow, so
  a later leadership always has a larger epoch.
- `members/NAME`: each member's endpoints, attached to its own lease.
- `insync`: the members that hold every record the leader has acknowledged
  (no lease: it outlives everyone). Only a member listed there may campaign,
  so a member that fell behind, or an old leader coming back, cannot take
  over with less than what was acknowledged. The campaign is one transaction:
  `leader` absent and `insync` unchanged since read, then both written, the
  new insync naming the winner alone. The leader adds a standby once it has
  caught up and removes it (before answering anyone without it) when it
  falls behind, each write guarded by the leadership's epoch.

Lease timing follows Patroni's rule (loop + 2 retries within the TTL): the
lease is renewed every TTL/4, and the leader counts itself leader only until
`valid_until` = (when its last successful renewal was *sent*) + 3/4 TTL. etcd
measures the TTL from when it received that renewal, later than it was sent,
so the leader stops acting at least TTL/4 before any other member can win,
which covers clock-rate drift and the loop's own check. The thread only
reports; the loop decides (balancer/member.py).

Messages to the loop (pickled tuples on the PAIR socket):
  ("lease", valid_until)              the leadership holds until then (monotonic)
  ("elected", epoch, valid_until)     this member won; it leads until then unless renewed
  ("leader", info | None, epoch)      who leads now (info: name and endpoints)
  ("members", {name: endpoints})      the group's members
  ("etcd", ok, reason)                etcd reachable or not (changes only)
  ("insync", members, ok)             the outcome of a requested insync write
From the loop: ("insync", members, epoch) and ("resign",) (revoke the lease, stop campaigning).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import zmq

DEFAULT_LEASE_S = 2
POLL_S = 0.1  # how often a standby looks at the leader key
ETCD_TIMEOUT_S = 0.5
MEMBERS_EVERY_S = 1.0


@dataclass(frozen=True)
class HaConfig:
    """Where etcd is and which group this member belongs to: `etcd://HOST:PORT[,HOST:PORT...]/GROUP`."""

    hosts: tuple[tuple[str, int], ...]
    group: str
    lease_s: int = DEFAULT_LEASE_S

    @classmethod
    def parse(cls, url: str, lease_s: int = DEFAULT_LEASE_S) -> HaConfig:
        """Parse an etcd:// URL; ValueError saying what is wrong."""
        parts = urlsplit(url)
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r}: no ?query or #fragment in an etcd:// URL")
        if parts.scheme != "etcd":
            raise ValueError(f"{url!r} is not an etcd://HOST:PORT[,HOST:PORT...]/GROUP URL")
        group = parts.path.strip("/")
        if not group or "/" in group or len(group) > 100:
            raise ValueError(f"{url!r} names no group (etcd://HOST:PORT/GROUP, a name without '/')")
        hosts = []
        for item in parts.netloc.split(","):
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{item!r} in {url!r} is not HOST:PORT")
            hosts.append((host.strip("[]"), int(port)))
        if lease_s < 2:
            raise ValueError("the lease must be at least 2 s (etcd's own minimum)")
        return cls(tuple(hosts), group, lease_s)

    def key(self, name: str) -> str:
        return f"/zlb/{self.group}/{name}"


def _connect_etcd(host: str, port: int) -> Any:
    import etcd3gw  # imported here: nothing without --ha loads it

    return etcd3gw.client(host=host, port=port, timeout=ETCD_TIMEOUT_S, api_path="/v3/")


def _b64(value: str) -> str:
    """Keys and values in etcd's JSON gateway transactions are base64."""
    return base64.b64encode(value.encode()).decode("ascii")


class Elector(threading.Thread):
    """Keeps this member's lease, campaigns when it may, and tells the loop what it sees."""

    def __init__(
        self, context: zmq.Context, address: str, ha: HaConfig, name: str, endpoints: dict[str, str]
    ) -> None:
        super().__init__(name="zlb-elector", daemon=True)
        self.ha, self.name, self.endpoints = ha, name, endpoints
        self.pipe = context.socket(zmq.PAIR)
        self.pipe.setsockopt(zmq.LINGER, 0)
        self.pipe.connect(address)
        self._host_index = 0
        self._client: Any = None
        self._lease: Any = None
        self._renew_at = 0.0
        self._members_at = 0.0
        self._epoch = 0  # our leadership, while we lead
        self._valid_until = 0.0  # what the last renewal of our lease lets a leader count on
        self._leader: tuple[Any, int] | None = None  # what was last reported
        self._etcd_ok: bool | None = None
        self._resigned = False
        self._taken_since: float | None = None  # when our member name was first found held by another
        self._halt = threading.Event()

    # ---- the thread -------------------------------------------------------

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self._requests()
                try:
                    self._round()
                    self._health(True, "")
                except Exception as exc:  # noqa: BLE001 - any failure talking to etcd is "etcd unreachable"
                    self._health(False, f"{exc.__class__.__name__}: {exc}"[:300])
                    # The lease is kept (by id) and renewed on the next connection: a fresh lease would not
                    # hold our leader key, and renewing it would extend a leadership etcd is letting go.
                    self._client = None
                    self._host_index = (self._host_index + 1) % len(self.ha.hosts)
                self._halt.wait(POLL_S)
        finally:
            self._resign_quietly()
            self.pipe.close(linger=0)

    def _tell(self, *message: Any) -> None:
        self.pipe.send_pyobj(message)

    def _health(self, ok: bool, reason: str) -> None:
        if ok != self._etcd_ok:
            self._etcd_ok = ok
            self._tell("etcd", ok, reason)

    def _requests(self) -> None:
        while self.pipe.poll(0):
            message = self.pipe.recv_pyobj()
            if message[0] == "insync":
                self._tell("insync", message[1], self._write_insync(message[1], message[2]))
            elif message[0] == "resign":
                self._resigned = True
                self._resign_quietly()

    # ---- one round: lease, leader, campaign ----------------------------------

    def _round(self) -> None:
        if self._client is None:
            host, port = self.ha.hosts[self._host_index]
            self._client = _connect_etcd(host, port)
            if self._lease is not None:
                self._lease = type(self._lease)(self._lease.id, client=self._client)
        if self._resigned:
            return
        now = time.monotonic()
        if self._lease is None:
            self._grant(now)
        elif now >= self._renew_at:
            self._renew(now)
        if now >= self._members_at:
            self._members_at = now + MEMBERS_EVERY_S
            self._tell("members", self._members())
        leader = self._read_leader()
        if leader is None and self._lease is not None:
            self._campaign()
            leader = self._read_leader()
        if leader != self._leader:
            self._leader = leader
            info, epoch = leader if leader is not None else (None, 0)
            self._tell("leader", info, epoch)  # before "elected": the loop checks it names us
            if info is not None and info.get("name") == self.name and epoch != self._epoch:
                self._epoch = epoch
                self._tell("elected", epoch, self._valid_until)

    def _grant(self, now: float) -> None:
        """A lease, and this member's key under it, unless another live member holds that name."""
        sent = time.monotonic()
        lease = self._client.lease(self.ha.lease_s)
        key = self.ha.key(f"members/{self.name}")
        reply = self._client.transaction(
            {
                "compare": [{"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
                "success": [
                    {"request_put": {"key": _b64(key), "value": _b64(json.dumps(self.endpoints)), "lease": lease.id}}
                ],
                "failure": [],
            }
        )
        if not reply.get("succeeded"):
            lease.revoke()
            self._name_taken(now)
            return
        self._taken_since = None
        self._lease = lease
        self._renewed(sent, now)

    def _name_taken(self, now: float) -> None:
        """Another member has this name: wait out a dead predecessor's lease, then tell the loop to give up."""
        if self._taken_since is None:
            self._taken_since = now
        elif now - self._taken_since > 1.5 * self.ha.lease_s:
            self._tell("conflict", f"another live member of group {self.ha.group} uses the name {self.name}"
                       " (its --replication endpoint): give each member its own")  # fmt: skip
            self._resigned = True

    def _renew(self, now: float) -> None:
        sent = time.monotonic()
        if self._lease.refresh() <= 0:  # expired meanwhile: our leadership (if any) is gone with it
            self._lease = None
            self._epoch = 0
            return
        self._renewed(sent, now)

    def _renewed(self, sent: float, now: float) -> None:
        self._renew_at = now + self.ha.lease_s / 4
        self._valid_until = sent + self.ha.lease_s * 0.75
        if self._epoch:
            self._tell("lease", self._valid_until)

    def _read_leader(self) -> tuple[Any, int] | None:
        found = self._client.get(self.ha.key("leader"), metadata=True)
        if not found:
            return None
        value, meta = found[0]
        try:
            info = json.loads(value)
        except ValueError:
            info = {"name": "?", "endpoints": {}}
        return info, int(meta["create_revision"])

    def _members(self) -> dict[str, Any]:
        out = {}
        prefix = self.ha.key("members/")
        for value, meta in self._client.get_prefix(prefix):
            key = meta["key"].decode() if isinstance(meta["key"], bytes) else str(meta["key"])
            name = key[len(prefix) :]
            try:
                out[name] = json.loads(value)
            except ValueError:
                continue
        return out

    def _campaign(self) -> None:
        """Take the leader key if it is free and this member is in sync; one transaction."""
        insync_key = self.ha.key("insync")
        found = self._client.get(insync_key, metadata=True)
        if found:
            value, meta = found[0]
            try:
                members = json.loads(value).get("members", [])
            except (ValueError, AttributeError):
                members = []
            if self.name not in members:
                return  # behind what was acknowledged: follow the leader that comes, do not lead
            guard = {"key": _b64(insync_key), "result": "EQUAL", "target": "MOD", "mod_revision": meta["mod_revision"]}
        else:
            guard = {"key": _b64(insync_key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}
        leader_key = self.ha.key("leader")
        mine = json.dumps({"name": self.name, "endpoints": self.endpoints})
        self._client.transaction(
            {
                "compare": [
                    {"key": _b64(leader_key), "result": "EQUAL", "target": "CREATE", "create_revision": 0},
                    guard,
                ],
                "success": [
                    {"request_put": {"key": _b64(leader_key), "value": _b64(mine), "lease": self._lease.id}},
                    {"request_put": {"key": _b64(insync_key), "value": _b64(json.dumps({"members": [self.name]}))}},
                ],
                "failure": [],
            }
        )

    def _write_insync(self, members: list[str], epoch: int) -> bool:
        """Name the members in sync, only while `epoch` is still the leadership; True if written."""
        if self._client is None:
            return False
        leader_key = self.ha.key("leader")
        value = json.dumps({"members": members})
        try:
            reply = self._client.transaction(
                {
                    "compare": [
                        {"key": _b64(leader_key), "result": "EQUAL", "target": "CREATE", "create_revision": epoch}
                    ],
                    "success": [{"request_put": {"key": _b64(self.ha.key("insync")), "value": _b64(value)}}],
                    "failure": [],
                }
            )
        except Exception:  # noqa: BLE001 - unreachable etcd: the caller keeps waiting (and steps down in time)
            return False
        return bool(reply.get("succeeded"))

    def _resign_quietly(self) -> None:
        """Revoke the lease (the leader key and member key go with it) so a standby takes over at once."""
        lease, self._lease, self._epoch = self._lease, None, 0
        if lease is not None:
            try:
                lease.revoke()
            except Exception:  # noqa: BLE001 - etcd gone: the lease expires on its own
                pass
