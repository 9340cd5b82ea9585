"""HA's pure parts and the replication gate, without etcd: following, URLs, and answers held for the standby."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import zmq

from balancer.election import HaConfig
from balancer.member import advertised
from balancer.records import Request
from balancer.replication import REFUSING, Replication
from balancer.scheduler import Scheduler
from wire import protocol as p
from wire.following import Following, endpoint_list
from wire.protocol import MsgType


def test_a_peer_follows_redirects_and_silence_and_drops_older_epochs():
    f = Following("tcp://a:1, tcp://b:1,tcp://a:1")
    assert f.endpoints == ["tcp://a:1", "tcp://b:1"] and f.current == "tcp://a:1" and f.several
    assert f.fresh(0) and f.fresh(7) and f.epoch == 7
    assert not f.fresh(6) and f.stale == 1  # an older leadership: dropped and counted
    assert f.fresh(0)  # a balancer without HA is always heard
    assert f.redirected("tcp://b:1") and f.current == "tcp://b:1"
    assert not f.redirected("tcp://b:1") and not f.redirected(None)
    assert f.redirected("tcp://c:1") and f.endpoints[-1] == "tcp://c:1"  # a leader it was not told of
    assert f.next() == "tcp://a:1" and f.moves == 3
    with pytest.raises(ValueError):
        endpoint_list(" , ")


def test_ha_urls_are_checked():
    ha = HaConfig.parse("etcd://127.0.0.1:2379,[::1]:2380/prod")
    assert ha.hosts == (("127.0.0.1", 2379), ("::1", 2380)) and ha.group == "prod"
    assert ha.key("leader") == "/zlb/prod/leader"
    for bad in ("http://h:1/g", "etcd://h:1/", "etcd://h:1/a/b", "etcd://h/g", "etcd://h:99999/g"):
        with pytest.raises(ValueError):
            HaConfig.parse(bad)
    with pytest.raises(ValueError, match="at least 2"):
        HaConfig.parse("etcd://h:1/g", lease_s=1)


def test_wildcard_binds_are_advertised_by_host_name():
    import socket

    assert advertised("tcp://*:5555") == f"tcp://{socket.gethostname()}:5555"
    assert advertised("tcp://0.0.0.0:7") == f"tcp://{socket.gethostname()}:7"
    assert advertised("tcp://10.0.0.5:5555") == "tcp://10.0.0.5:5555"


class Elector:
    """Stands in for balancer/member.py's side of the elector: records what was asked."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def ask_insync(self, members: list[str], _epoch: int) -> None:
        self.asked.append(members)


class Outbox:
    def __init__(self) -> None:
        self.replies: list[Request] = []
        self.replays: list[Request] = []

    def take_replies(self) -> list[Request]:
        out, self.replies = self.replies, []
        return out

    def take_replays(self) -> list[Request]:
        out, self.replays = self.replays, []
        return out


_PAIRS = itertools.count()


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    ctx = zmq.Context.instance()
    leader, standby = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    # A name of its own: a closed socket's inproc name is released by the context's reaper, maybe after the
    # next test binds (CI saw "Address already in use").
    endpoint = f"inproc://ha-parts-{next(_PAIRS)}"
    leader.bind(endpoint)
    standby.connect(endpoint)
    yield leader, standby
    leader.close(0)
    standby.close(0)


def recv(sock: zmq.Socket) -> tuple[MsgType, list]:
    assert sock.poll(2000)
    msg_type, fields = p.decode(sock.recv_multipart()[0])
    return msg_type, fields


def test_answers_wait_for_the_standby_once_it_may_be_elected(pair):
    """Before the standby caught up, answers go at once; once etcd may list it, each waits for its APPLIED;
    a standby that falls behind is dropped only after etcd stops listing it, and then they go."""
    leader_sock, standby = pair
    sched = Scheduler(heartbeat_s=1.0, liveness=2)
    elector = Elector()
    repl = Replication(leader_sock, sched, {}, elector, 9, "me", max_lag_s=1.0, keepalive_s=0.1, require_standby=True)
    assert sched.refusing == REFUSING  # alone with --require-standby: new work is refused
    out = Outbox()
    out.replies.append("r0")
    repl.hold(out, 0.0)
    assert out.replies == ["r0"]  # no standby: nothing held
    standby.send(p.encode(MsgType.FOLLOW, "other"))
    repl.drain(0.0, 10)
    assert recv(standby)[0] is MsgType.SNAPSHOT
    standby.send(p.encode(MsgType.APPLIED, 0))
    repl.drain(0.1, 10)
    assert elector.asked == [["me", "other"]] and repl.gating  # caught up: from now on answers wait
    repl.insync_written(["me", "other"], True)
    assert repl.in_sync and sched.refusing == ""
    repl.ship(b"x", 1)
    out.replies = ["r1"]
    repl.hold(out, 0.2)
    repl.release(out)
    assert out.replies == []  # record batch 1 not applied yet
    assert recv(standby) == (MsgType.RECORDS, [1, 1])
    standby.send(p.encode(MsgType.APPLIED, 1))
    repl.drain(0.3, 10)
    repl.release(out)
    assert out.replies == ["r1"]
    out.replies = []
    repl.ship(b"y", 1)
    out.replies = ["r2"]
    repl.hold(out, 0.4)
    repl.tick(1.6)  # r2 waited 1.2 s > max lag: drop, but only once etcd says so
    assert elector.asked[-1] == ["me"] and repl.gating
    repl.release(out)
    assert out.replies == []
    repl.insync_written(["me"], True)
    assert not repl.gating and repl.standby is None and sched.refusing == REFUSING
    repl.release(out)
    assert out.replies == ["r2"]


def test_an_applied_frees_held_answers_alone_never_with_undecided_ones(pair):
    """release_alone() lets the APPLIED's answers out at once, unless the pass has answers not yet held:
    those have not reached the standby and must not leave with them."""
    leader_sock, standby = pair
    repl = Replication(leader_sock, Scheduler(), {}, Elector(), 9, "me", max_lag_s=1.0, keepalive_s=0.1)
    standby.send(p.encode(MsgType.FOLLOW, "other"))
    repl.drain(0.0, 10)
    assert recv(standby)[0] is MsgType.SNAPSHOT
    standby.send(p.encode(MsgType.APPLIED, 0))
    repl.drain(0.1, 10)
    assert repl.gating
    out = Outbox()
    repl.ship(b"x", 1, answers=True)
    out.replies = ["held"]
    repl.hold(out, 0.2)
    assert recv(standby) == (MsgType.RECORDS, [1, 1])
    assert not repl.release_alone(out) and out.replies == []  # not applied yet
    standby.send(p.encode(MsgType.APPLIED, 1))
    repl.drain(0.3, 10)
    out.replies = ["undecided"]  # decided in this pass, its records not shipped
    assert not repl.release_alone(out) and out.replies == ["undecided"]
    out.replies = []
    assert repl.release_alone(out) and out.replies == ["held"]
    assert not repl.release_alone(out)  # nothing more held


def test_an_insync_write_without_outcome_is_asked_again(pair):
    """etcd's answer to 'list the standby as in sync' was lost: the next tick asks again, and the leader is
    no longer alone (nor refusing work with --require-standby) once it is written."""
    leader_sock, standby = pair
    sched = Scheduler()
    elector = Elector()
    repl = Replication(leader_sock, sched, {}, elector, 9, "me", max_lag_s=1.0, keepalive_s=0.1, require_standby=True)
    standby.send(p.encode(MsgType.FOLLOW, "other"))
    repl.drain(0.0, 10)
    assert recv(standby)[0] is MsgType.SNAPSHOT
    standby.send(p.encode(MsgType.APPLIED, 0))
    repl.drain(0.1, 10)
    assert elector.asked == [["me", "other"]] and repl.gating
    repl.insync_written(["me", "other"], False)  # no known outcome
    assert not repl.in_sync and sched.refusing == REFUSING
    repl.tick(0.2)
    assert elector.asked == [["me", "other"], ["me", "other"]]
    repl.tick(0.25)
    assert len(elector.asked) == 2  # asked once, until answered
    repl.insync_written(["me", "other"], True)
    assert repl.in_sync and sched.refusing == ""
    repl.tick(0.3)
    assert len(elector.asked) == 2
