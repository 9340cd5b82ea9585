"""What a node keeps of the DONEs it sent, to send again on a fresh connection (server_node/unconfirmed.py)."""

from __future__ import annotations

from server_node.unconfirmed import MAX_KEPT_BYTES, SentResults


def test_results_sent_since_a_heartbeat_before_the_balancer_was_last_heard_are_recalled():
    sent = SentResults()
    sent.add(1.0, 1, True, b"a", heard_at=1.0, interval_s=0.5)
    sent.add(2.0, 2, True, b"b", heard_at=1.0, interval_s=0.5)  # the balancer silent since 1.0: both may be unread
    assert sent.recall() == [(1, True, b"a"), (2, True, b"b")]
    assert len(sent) == 0 and sent.recall() == []


def test_results_sent_well_before_the_balancer_was_heard_are_forgotten():
    sent = SentResults()
    sent.add(1.0, 1, True, b"a", heard_at=1.0, interval_s=0.5)
    sent.add(3.0, 2, False, b"err", heard_at=2.0, interval_s=0.5)  # heard at 2.0: what went before 1.5 was read
    assert sent.recall() == [(2, False, b"err")]


def test_an_idle_node_lets_go_of_what_it_sent():
    sent = SentResults()
    sent.add(1.0, 1, True, b"x" * 1000, heard_at=1.0, interval_s=0.5)
    sent.forget(heard_at=5.0, interval_s=0.5)
    assert len(sent) == 0


def test_at_most_max_kept_bytes_are_kept_the_oldest_go_first():
    sent = SentResults()
    big = b"x" * (MAX_KEPT_BYTES // 2)
    for ticket in range(1, 4):
        sent.add(1.0, ticket, True, big, heard_at=1.0, interval_s=0.5)
    assert [t for t, _ok, _r in sent.recall()] == [2, 3]
