"""The plain and JSON views of the event stream, for terminals and pipes."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from monitor.stream import EventStream
from wire import control_client
from wire import events as ev
from wire.protocol import TOPIC_NODE, TOPIC_REQUEST, TOPIC_STATS, TOPIC_SYSTEM

# Everything that is a log line; periodic stats are for dashboards.
LOG_TOPICS = (TOPIC_REQUEST, TOPIC_NODE, TOPIC_SYSTEM)


def plain_line(event: list[Any]) -> str:
    """`HH:MM:SS.mmm message` in local time."""
    return ev.timed_line(event)


def json_line(event: list[Any]) -> str:
    """The event as one JSON object."""
    return json.dumps(ev.as_dict(event), ensure_ascii=False)


def run_plain(
    endpoint: str,
    as_json: bool = False,
    out: TextIO | None = None,
    max_events: int | None = None,
    control: str | None = None,
) -> int:
    """Print events as they happen until interrupted (or `max_events` printed).

    With `control`, silence is checked: while the balancer does not answer there,
    a line on stderr says so every WAITING_EVERY_S seconds, and another when it is back.
    """
    out = out or sys.stdout
    render = json_line if as_json else plain_line
    # Stats ticks are not printed; they arrive every heartbeat and show the balancer is there.
    stream = EventStream(endpoint, (*LOG_TOPICS, TOPIC_STATS))
    print(f"Watching zlb events at {endpoint} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    watch = _Presence(control) if control else None
    printed = 0
    try:
        while max_events is None or printed < max_events:
            events = stream.poll(0.5)
            if watch is not None:
                watch.check(bool(events), time.monotonic())
            for event in events:
                if event[1] != ev.STATS:
                    print(render(event), file=out, flush=True)
                    printed += 1
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()
    return printed


# Quiet for this long, the monitor asks the balancer whether it is there.
SILENCE_S = 2.0
# While it does not answer, the monitor says so this often.
WAITING_EVERY_S = 5.0


class _Presence:
    """Tells on stderr when the balancer does not answer, and when it answers again."""

    def __init__(self, control: str) -> None:
        self.control = control
        self.heard_at = time.monotonic() - SILENCE_S  # ask at once: the first wait should not be silent
        self.missing_since: float | None = None
        self.next_ask = 0.0

    def check(self, heard: bool, now: float) -> None:
        if heard:
            self.heard_at = now
            self._back()
        if now - self.heard_at < SILENCE_S or now < self.next_ask:
            return
        try:
            control_client.call(self.control, "ping", timeout_s=0.5)
        except (control_client.BalancerUnreachable, control_client.ControlError):
            if self.missing_since is None:
                self.missing_since = now
            waited = f" ({now - self.missing_since:.0f} s so far)" if now - self.missing_since >= 1 else ""
            print(f"waiting for the balancer at {self.control}…{waited}", file=sys.stderr, flush=True)
            self.next_ask = now + WAITING_EVERY_S
            return
        self.heard_at = now
        self._back()

    def _back(self) -> None:
        if self.missing_since is not None:
            self.missing_since = None
            self.next_ask = 0.0
            print(f"the balancer at {self.control} answers; following its events", file=sys.stderr, flush=True)
