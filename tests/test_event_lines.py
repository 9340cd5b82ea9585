"""Log lines as people read them: no Python None where the balancer could not name a server."""

from __future__ import annotations

from wire import events as ev

SAMPLES = {"reason": "boom", "ticket": 7, "priority": 5, "attempts": 2, "attempt": 1}


def test_request_lines_name_an_unknown_server_in_words():
    """Every request event whose server the balancer could not name reads without 'None' (issue 24 saw
    `Late result for ticket … from Server None dropped`)."""
    for kind, names in ev.FIELDS.items():
        if not kind.startswith("request.") or "server_id" not in names:
            continue
        event = [0.0, kind, *(None if name == "server_id" else SAMPLES.get(name, 3) for name in names)]
        assert "None" not in ev.message(event), kind
    late = ev.message([0.0, ev.REQUEST_LATE_RESULT, None, 7])
    assert late == "Late result for ticket 7 from a server the balancer no longer knows dropped"
    assert ev.message([0.0, ev.REQUEST_LATE_RESULT, 2, 7]) == "Late result for ticket 7 from Server 2 dropped"


def test_a_request_whose_work_never_left_is_not_said_to_be_lost_by_its_server():
    """Work lost in transit (it found no connection to its node, or a live node never listed it) goes back with
    its attempt uncounted (attempt 0): the line says so, not that the node lost an "attempt 0"; a counted
    attempt still reads as one."""
    never = ev.message([0.0, ev.REQUEST_REQUEUED, 1, 5, 5, 0, 1])
    assert never == (
        "Request 5 from Client 1 re-queued with priority 5 (Server 1 never got it, or its answer was lost: "
        "no attempt counted)"
    )
    lost = ev.message([0.0, ev.REQUEST_REQUEUED, 1, 5, 5, 2, 1])
    assert lost == "Request 5 from Client 1 re-queued with priority 5 after attempt 2 (Server 1 lost it)"
