"""Property tests: random operation sequences never break the scheduler's invariants."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.scheduler import NodeState, Scheduler

NODE_IDS = st.integers(0, 4)
CLIENT_IDS = st.integers(0, 2)
SERVICES = st.sampled_from(["default", "resize"])
OPS = st.one_of(
    st.tuples(
        st.just("submit"), st.integers(1, 5), CLIENT_IDS, st.integers(1, 4), SERVICES, st.sampled_from([None, 1.5])
    ),
    st.tuples(
        st.just("hello"),
        NODE_IDS,
        st.integers(1, 3),
        st.sampled_from([("default",), ("resize",), ("default", "resize")]),
    ),
    st.tuples(st.just("cancel"), st.integers(1, 60)),
    st.tuples(
        st.just("retry"),
    ),
    st.tuples(st.just("complete"), st.integers(0, 50)),
    st.tuples(st.just("heartbeat"), NODE_IDS),
    st.tuples(st.just("tick"), st.floats(0.1, 2.0)),
    st.tuples(st.just("down"), NODE_IDS),
    st.tuples(st.just("up"), NODE_IDS),
    st.tuples(st.just("drain"), NODE_IDS),
    st.tuples(
        st.just("dispatch"),
    ),
)


def waiting_requests(sched: Scheduler) -> list:
    """Every request in the waiting queue (its own structure, not the listing)."""
    return list(sched.queued())


def check_invariants(sched: Scheduler, submitted: int) -> None:
    nodes = list(sched.nodes.values())
    for node in nodes:
        assert len(node.in_flight) <= node.capacity
        if node.state in (NodeState.DEAD, NodeState.DOWN):
            assert not node.in_flight
    waiting = waiting_requests(sched)
    assert len(waiting) == sched.waiting
    assert all(r.status == "pending" for r in waiting)
    running = [r for n in nodes for r in n.in_flight.values()]
    assert all(r.status == "assigned" for r in running)
    assert all(r.service in n.services for n in nodes for r in n.in_flight.values())
    for service in ("default", "resize"):  # kept as nodes join and die, not counted on each ask
        assert sched.table.offering(service) == sum(service in n.services for n in sched.routes.values())
    # Each request is in exactly one place: waiting, on one node, or finished.
    places = Counter(id(r) for r in waiting + running)
    assert all(count == 1 for count in places.values())
    listed = list(sched.requests())
    finished = [r for r in listed if r.status in ("processed", "failed", "expired", "cancelled", "dead")]
    assert len(waiting) + len(running) + len(finished) == submitted
    # The listing holds every remembered request once, in arrival order (request ids here).
    assert [r.request_id for r in listed] == sorted(r.request_id for r in waiting + running + finished)


def apply_dispatch(sched: Scheduler, dispatched_before: set[int]) -> None:
    """Dispatch, checking the choice: active nodes only, strict priority, re-queued first, clients in turns."""
    before = {r.request_id: r for r in waiting_requests(sched)}
    out = sched.dispatch()
    for node, _ticket, _req in out:
        assert node.state is NodeState.ACTIVE
        assert _req.service in node.services
    for service in {req.service for _node, _ticket, req in out}:
        mine = [req for _node, _ticket, req in out if req.service == service]
        check_service_dispatch(sched, mine, before, dispatched_before)
    dispatched_before.update(r.request_id for _node, _ticket, r in out)


def check_service_dispatch(sched: Scheduler, reqs: list, before: dict, dispatched_before: set[int]) -> None:
    """Within one service: strict priority, re-queued first, clients in turns."""
    priorities = [r.priority for r in reqs]
    assert priorities == sorted(priorities)
    still = [r for r in waiting_requests(sched) if r.service == reqs[0].service and r not in sched.timers.delayed]
    before = {k: r for k, r in before.items() if r.service == reqs[0].service}
    if reqs and still:
        assert min(r.priority for r in still) >= priorities[-1]
    for priority in set(priorities):
        mine = [r for r in reqs if r.priority == priority]
        kinds = [r.request_id in dispatched_before for r in mine]
        assert kinds == sorted(kinds, reverse=True)  # re-queued ones first
        again = [r.request_id for r in mine if r.request_id in dispatched_before]
        assert again == sorted(again)  # in arrival order
        if any(r.priority == priority and r.request_id in dispatched_before for r in still):
            assert all(kinds)  # no fresh one went while a re-queued one of its priority waits
        fresh = [r.client_id for r in mine if r.request_id not in dispatched_before]
        had = Counter(
            r.client_id for r in before.values() if r.priority == priority and r.request_id not in dispatched_before
        )
        assert_turns(fresh, had)


def assert_turns(clients: list[int], had: Counter) -> None:
    """Between two dispatches of one client, every other client with requests still waiting had one."""
    last: dict[int, int] = {}
    for i, client in enumerate(clients):
        if client in last:
            between = set(clients[last[client] + 1 : i])
            left = {c for c, n in had.items() if c != client and served_at(clients, c, last[client]) < n}
            assert left <= between, (clients, had)
        last[client] = i


def served_at(clients: list[int], client: int, upto: int) -> int:
    """How many of `client`'s requests were dispatched at positions 0..upto."""
    return clients[: upto + 1].count(client)


@settings(max_examples=300, deadline=None)
@given(st.lists(OPS, max_size=80))
def test_random_operations_keep_invariants(ops):
    """Capacity, node state, priority order and conservation of requests hold after every step."""
    sched = Scheduler(heartbeat_s=1.0, liveness=2, max_attempts=3, retry_backoff_s=0.5, seed=1)
    now = 0.0
    submitted = 0
    dispatched_before: set[int] = set()
    for op in ops:
        name = op[0]
        if name == "submit":
            for _ in range(op[3]):
                submitted += 1
                sched.submit(op[2], submitted, op[1], b"c", b"", now=now, service=op[4], deadline_s=op[5])
        elif name == "hello":
            sched.hello(f"r{op[1]}".encode(), op[1], op[2], 1, "h", now, services=op[3])
        elif name == "cancel":
            for client in range(3):
                sched.cancel(client, op[1])
        elif name == "retry":  # a retried dead letter is queued fresh, as a new arrival
            dispatched_before.difference_update(rid for _cid, rid in sched.dead.letters)
            sched.retry_all()
        elif name == "complete":
            running = [(n.route, t) for n in sched.nodes.values() for t in n.in_flight]
            if running:
                route, ticket = running[op[1] % len(running)]
                sched.complete(route, ticket, True, b"ok", now)
        elif name == "heartbeat":
            node = sched.routes.get(f"r{op[1]}".encode())
            held = list(node.in_flight) if node is not None else []
            sched.heartbeat(f"r{op[1]}".encode(), len(held), 0, now, held=held)
        elif name == "tick":
            now += op[1]
            sched.expire(now)
            sched.timers_due(now)
        elif name in ("down", "up", "drain"):
            try:
                {"down": sched.mark_down, "up": sched.mark_up, "drain": sched.mark_draining}[name](op[1])
            except KeyError:
                pass
        else:
            apply_dispatch(sched, dispatched_before)
        check_invariants(sched, submitted)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=30), st.integers(1, 4))
def test_dead_node_work_is_requeued_exactly_once(capacities, victim_index):
    """Every in-flight request of a node declared dead is back in the queue exactly once, with one more attempt."""
    sched = Scheduler(heartbeat_s=1.0, liveness=3)
    for i, cap in enumerate(capacities):
        sched.hello(f"r{i}".encode(), i, cap, 1, "h", 0.0)
    for rid in range(sum(capacities) + 3):
        sched.submit(0, rid, rid % 3, b"c", b"")
    sched.dispatch()
    victim = sched.nodes[victim_index % len(capacities)]
    lost = list(victim.in_flight.values())
    for node in sched.nodes.values():
        if node is not victim:
            sched.heartbeat(node.route, 0, 0, 2.5)
    sched.expire(3.5)
    waiting = waiting_requests(sched)
    assert all(waiting.count(r) == 1 for r in lost)
    assert all(r.status == "pending" and r.attempts == 1 for r in lost)
    assert victim.state is NodeState.DEAD
