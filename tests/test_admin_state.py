"""An admin's down or drain is kept by node id until up: deaths, rejoins and reconnects keep it."""

from __future__ import annotations

import pytest

from balancer.scheduler import NodeState, Scheduler
from wire import events as ev


def joined(sched: Scheduler, route: bytes, node_id: int | None, incarnation: int, now: float):
    return sched.hello(route, node_id, 2, 100 + incarnation, "h", now, incarnation=incarnation)


def die(sched: Scheduler, node_id: int, now: float) -> None:
    """Let a node's deadline pass (others are not running in these tests)."""
    sched.expire(now)
    assert sched.nodes[node_id].state is NodeState.DEAD


@pytest.mark.parametrize(("command", "state"), [("mark_down", NodeState.DOWN), ("mark_draining", NodeState.DRAINING)])
def test_a_node_that_dies_and_rejoins_comes_back_as_the_admin_left_it(command, state):
    """A new process under the id of a downed (or drained) node joins in that state and gets no work."""
    sched = Scheduler(heartbeat_s=1.0, liveness=2)
    joined(sched, b"r0", 0, 1, 0.0)
    getattr(sched, command)(0)
    die(sched, 0, 5.0)
    node = joined(sched, b"r0-again", 0, 2, 6.0)
    assert node.state is state
    assert (ev.NODE_KEPT_OUT, 0, state.value) in sched.events
    sched.submit(1, 1, 5, b"c", b"x")
    assert sched.dispatch() == []


def test_a_reconnecting_node_keeps_its_down():
    """The same incarnation saying HELLO from a new connection stays down."""
    sched = Scheduler(heartbeat_s=1.0, liveness=2)
    joined(sched, b"r0", 0, 1, 0.0)
    sched.mark_down(0)
    assert joined(sched, b"r0-new-connection", 0, 1, 0.5).state is NodeState.DOWN


def test_up_clears_what_the_admin_said():
    """After up, a death and a rejoin bring the node back active."""
    sched = Scheduler(heartbeat_s=1.0, liveness=2)
    joined(sched, b"r0", 0, 1, 0.0)
    sched.mark_down(0)
    sched.mark_up(0)
    die(sched, 0, 5.0)
    assert joined(sched, b"r0-again", 0, 2, 6.0).state is NodeState.ACTIVE
    assert sched.table.admin_state(0) is None


def test_a_node_without_an_id_does_not_take_a_downed_one():
    """A newcomer asking for any id skips an id an admin took out of service."""
    sched = Scheduler(heartbeat_s=1.0, liveness=2)
    joined(sched, b"r0", 0, 1, 0.0)
    sched.mark_down(0)
    die(sched, 0, 5.0)
    assert joined(sched, b"anon", None, 7, 6.0).node_id == 1


def test_a_dead_downed_node_says_it_will_stay_down():
    """down or up on a dead node is refused, and the refusal says the admin's down still holds."""
    sched = Scheduler(heartbeat_s=1.0, liveness=2)
    joined(sched, b"r0", 0, 1, 0.0)
    sched.mark_down(0)
    die(sched, 0, 5.0)
    with pytest.raises(KeyError, match="it will be down when it rejoins"):
        sched.mark_up(0)


def test_a_node_that_drained_itself_rejoins_active():
    """LEAVING (a node stopping on its own) is not an admin's drain: its successor joins active."""
    sched = Scheduler(heartbeat_s=1.0, liveness=2)
    joined(sched, b"r0", 0, 1, 0.0)
    sched.drain(0)
    sched.bye(b"r0")
    assert joined(sched, b"r0-again", 0, 2, 1.0).state is NodeState.ACTIVE
