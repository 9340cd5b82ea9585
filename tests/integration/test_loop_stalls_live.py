"""A stop of the balancer (SIGSTOP, a starved host) wherever it lands in the loop is excused before the loop
judges a node by its silence (balancer/nodes.py, "Judged by the time the loop could listen").

The real loop runs on a thread over real sockets, with two nodes dialled from this process; the stop is
4.5 s added to the loop's clock at one place of an iteration (what a SIGSTOP there looks like to the loop:
its nodes fell silent for that long). The nodes say nothing more, so a loop that judged them before
excusing the stop declares them dead in the very next iteration, as the real one did
(test_a_balancer_stopped_4_s_while_its_nodes_hold_work_runs_none_of_it_twice, silent_s 4.5)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest

from balancer import loop as loop_module
from balancer.loop import Balancer
from tests.harness import balancer_in_process, wait_until
from tests.integration.test_drops_live import Backend
from wire import events as ev
from wire import protocol as p
from wire.protocol import MsgType

STOP_S = 4.5


class Stall:
    """The loop's clock (the monotonic clock plus the stops so far) and one stop, made where it is armed."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.armed = False
        self.iterations_after = -1  # iterations begun since the stop (counted as the loop checks `_stopping`)

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)  # time.time() and the rest, as they are

    def here(self) -> None:
        if self.armed:
            self.armed = False
            self.offset += STOP_S
            self.iterations_after = 0


def wrap(after: Any, stall: Stall) -> Any:
    def stopped_in(*args: Any) -> Any:
        out = after(*args)
        stall.here()
        return out

    return stopped_in


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["poll", "reading", "flush", "between_iterations"])
def test_a_stop_anywhere_in_an_iteration_is_excused_before_anyone_is_judged(monkeypatch, where: str):
    stall = Stall()
    monkeypatch.setattr(loop_module, "time", stall)

    def stopping(balancer: Balancer) -> bool:
        if sys._getframe(1).f_code.co_name == "run":  # the loop's own check, between an iteration and the next
            if stall.iterations_after >= 0:
                stall.iterations_after += 1
            if where == "between_iterations":
                stall.here()
        return balancer.__dict__["stopping"]

    def stop(balancer: Balancer, value: bool) -> None:
        balancer.__dict__["stopping"] = value

    monkeypatch.setattr(Balancer, "_stopping", property(stopping, stop), raising=False)
    with balancer_in_process(heartbeat_ms=100, liveness=5) as (balancer, _client):
        nodes = Backend(balancer)
        try:
            first, _second = nodes.join(1), nodes.join(2)
            if where == "poll":
                balancer.poller.poll = wrap(balancer.poller.poll, stall)
            elif where == "reading":
                backend = balancer.backend
                balancer._readers[backend] = wrap(balancer._readers[backend], stall)
            elif where == "flush":
                balancer._flush = wrap(balancer._flush, stall)
            loop = threading.Thread(target=balancer.run, name="loop", daemon=True)
            loop.start()
            stall.armed = True
            if where == "reading":  # something to read: the last word from node 1 before the stop
                first.send_multipart([p.encode(MsgType.HEARTBEAT, 0, 0, 0, 0), p.encode_tickets([])])
            wait_until(lambda: stall.iterations_after >= 3, 10, "three iterations after the stop")
            balancer.stop()
            balancer.stop()  # at once: nothing is in flight
            loop.join(10)
            assert not loop.is_alive()
        finally:
            nodes.close()
        deaths = [e for e in balancer.eventlog.recent(None) if e[1] in (ev.NODE_DEAD, ev.NODE_DISCONNECTED)]
        assert deaths == [], f"nodes declared dead for a stop landing {where}"
        assert balancer.sched.table.deaf_s >= STOP_S - 0.1
