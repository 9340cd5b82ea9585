"""A paused balancer does not blame its nodes (issue 21), the pure part: node deadlines run on the time
the loop could listen, and a stall that made the nodes give up leaves them their back-off
(balancer/nodes.py). The real processes are in tests/reliability/test_balancer_pause.py."""

from __future__ import annotations

import pytest

from balancer.scheduler import Scheduler
from wire import events as ev
from wire.protocol import RECONNECT_BACKOFF_MAX_S


def joined(heartbeat_s: float, liveness: int, count: int = 1, **kwargs) -> Scheduler:
    """A scheduler with `count` nodes (routes n0, n1, ...; capacity 2) that said HELLO at t=0."""
    sched = Scheduler(heartbeat_s=heartbeat_s, liveness=liveness, **kwargs)
    for node_id in range(count):
        sched.hello(f"n{node_id}".encode(), node_id, 2, 100 + node_id, "host", 0.0)
    return sched


def dead_ids(sched: Scheduler, now: float) -> list[int]:
    return [node.node_id for node in sched.expire(now)]


# ---- listening time ----------------------------------------------------------


def test_a_loop_late_again_and_again_judges_a_node_by_the_time_it_could_listen():
    """Late by 60 ms out of every 100 ms (a busy machine, no stop): a node silent 1 s of listening is dead
    after 2.5 s of wall time, not after 1 s; each lateness is shorter than a heartbeat, so no back-off."""
    sched = joined(0.1, 10)  # a node silent for 1 s is dead
    table = sched.table
    now = 0.0
    for _ in range(24):
        now += 0.1
        table.excuse(0.06, now)
        assert not table.overdue(now) and dead_ids(sched, now) == []
    assert now == pytest.approx(2.4) and table.deaf_s == pytest.approx(1.44)
    now += 0.1 + 0.01  # on time now: 1.01 s of listening since the node was last heard
    assert table.overdue(now)
    assert dead_ids(sched, now) == [0]
    assert (ev.NODE_DEAD, 0, pytest.approx(now), 0) in sched.events  # the silence it reports is wall time


def test_a_sign_of_life_after_a_stall_counts_from_the_listening_clock():
    """Heard right after the loop was late, a node has its whole deadline of listening from then."""
    sched = joined(0.1, 10)
    sched.table.excuse(0.5, 0.6)
    sched.heartbeat(b"n0", 0, 0, 0.6)
    assert dead_ids(sched, 1.55) == []
    assert dead_ids(sched, 1.65) == [0]


def test_without_any_lateness_a_silent_node_dies_on_time():
    sched = joined(0.1, 10)
    assert dead_ids(sched, 0.99) == []
    assert dead_ids(sched, 1.01) == [0]


def test_a_stall_that_made_the_nodes_give_up_leaves_them_their_back_off_before_anyone_is_judged():
    """Stopped 5 s with 0.5 s deadlines: the nodes gave up on the balancer and may sit out a reconnect
    back-off of up to RECONNECT_BACKOFF_MAX_S after it wakes. Nobody is judged until that back-off and a
    deadline have passed; then a node still silent is dead."""
    sched = joined(0.1, 5, count=2)  # 0.5 s deadlines
    table = sched.table
    table.excuse(5.0, 5.0)  # the poll that was meant to return at once returned 5 s later
    sched.heartbeat(b"n0", 0, 0, 5.0)  # node 0's heartbeats that waited in the socket, read on waking
    sched.heartbeat(b"n1", 0, 0, 5.0)
    judged_from = 5.0 + RECONNECT_BACKOFF_MAX_S + 0.5
    sched.hello(b"n0", 0, 2, 100, "host", judged_from - 0.3)  # node 0 back from its back-off
    assert not table.overdue(judged_from - 0.01)
    assert dead_ids(sched, judged_from - 0.01) == []
    assert dead_ids(sched, judged_from + 0.01) == [1]  # node 1 never came back: dead, later
    assert sched.nodes[0].active


def test_a_stall_shorter_than_what_makes_nodes_give_up_gives_no_back_off():
    """Late by a heartbeat with 1 s deadlines: the nodes were pinged in time and never gave up."""
    sched = joined(0.1, 10)
    sched.table.excuse(0.1, 0.2)
    assert dead_ids(sched, 1.09) == []
    assert dead_ids(sched, 1.11) == [0]


def test_a_node_id_held_through_a_stall_is_not_taken_over_before_its_holder_was_judged():
    """Another incarnation asking for a silent holder's id is refused while the stall excuses the silence."""
    sched = joined(0.1, 5)
    sched.table.excuse(5.0, 5.0)
    with pytest.raises(Exception, match="in use"):
        sched.hello(b"other", 0, 1, 999, "host", 6.0, incarnation=7)
    assert sched.hello(b"other", 0, 1, 999, "host", 5.0 + RECONNECT_BACKOFF_MAX_S + 0.6, incarnation=7).pid == 999
