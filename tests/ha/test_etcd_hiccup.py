"""etcd unresponsive for 0.7 s (SIGSTOP, SIGCONT): one request of the leader's elector times out (0.5 s) and
the group must still have exactly one leader, never two, a few seconds later.

Found by the HA chaos run's etcd restarts (tests/ha/test_chaos_ha.py) and reproduced here; it fails today
about one round in two or three, in one of two ways:
- two leaders: the elector, after the timeout, forgets its lease (`_lease = None`) but not its epoch, grants
  a new lease and reports ("lease", valid_until) for it; the leader goes on counting itself leader on a lease
  that does not hold its leader key. When the old lease expires (about 2-3 s later) the other member can
  win while the old leader still acts, until its next look at the leader key (0.06-0.2 s seen);
- no leader, for good: when the old leader wins that election itself, the elector sends ("leader", self,
  new epoch) and ("elected", ...) back to back; the leading loop reads both in one `Member.hear`, which drops
  the "elected", steps down (another epoch is named), and its standby waits for an "elected" the elector
  never repeats, while the elector keeps renewing the key that names it.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.ha.chaos_ha import Sampler, overlaps_in_logs, two_leaders
from tests.ha.cluster import HaGroup
from tests.harness import wait_until

ROUNDS = 10
STOPPED_S = 0.7  # past etcd3gw's 0.5 s timeout, well within the leader's 1.5 s of validity
AFTERMATH_S = 5.0  # watched after each pause (the sampler looks for two leaders meanwhile)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_an_etcd_hiccup_leaves_one_leader_never_two(ha_group: HaGroup):
    """Ten times: etcd stopped for 0.7 s, then 5 s watched; then one member leads (the same or another)
    within 15 s; neither the members' own status nor their event logs show two leaders at once."""
    halt = threading.Event()
    samplers = [Sampler(m, halt) for m in ha_group.members]
    for sampler in samplers:
        sampler.start()
    try:
        for _round in range(ROUNDS):
            wait_until(ha_group.leader, 15, "one leader")
            os.kill(ha_group.etcd.popen.pid, signal.SIGSTOP)
            try:
                stop_until = time.monotonic() + STOPPED_S
                wait_until(lambda t=stop_until: time.monotonic() >= t, 5, "the end of etcd's pause")
            finally:
                os.kill(ha_group.etcd.popen.pid, signal.SIGCONT)
            # What follows the hiccup: today, the old leader key lapses 2-3 s on and someone is elected again.
            watch_until = time.monotonic() + AFTERMATH_S
            wait_until(lambda t=watch_until: time.monotonic() >= t, AFTERMATH_S + 5, "the aftermath")
            wait_until(ha_group.leader, 15, "one leader after etcd's pause")
    finally:
        halt.set()
        for sampler in samplers:
            sampler.join(5)
    claims = sorted((c for s in samplers for c in s.claims), key=lambda c: c.sent)
    assert two_leaders(claims) == []
    logs = [ha_group.procs.workdir / f"{m.name}.log" for m in ha_group.members]
    assert overlaps_in_logs(logs) == []
