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
