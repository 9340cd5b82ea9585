"""The plain and JSON views of the event stream, for terminals and pipes."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from monitor.stream import EventStream
from wire import events as ev
from wire.protocol import TOPIC_NODE, TOPIC_REQUEST, TOPIC_SYSTEM

# Everything that is a log line; periodic stats are for dashboards.
LOG_TOPICS = (TOPIC_REQUEST, TOPIC_NODE, TOPIC_SYSTEM)


def plain_line(event: list[Any]) -> str:
    """`HH:MM:SS.mmm message` in local time."""
    ts = event[0]
    return f"{time.strftime('%H:%M:%S', time.localtime(ts))}.{int(ts * 1000) % 1000:03d} {ev.message(event)}"


def json_line(event: list[Any]) -> str:
    """The event as one JSON object."""
    return json.dumps(ev.as_dict(event), ensure_ascii=False)


def run_plain(endpoint: str, as_json: bool = False, out: TextIO | None = None, max_events: int | None = None) -> int:
    """Print events as they happen until interrupted (or `max_events` printed)."""
    out = out or sys.stdout
    render = json_line if as_json else plain_line
    stream = EventStream(endpoint, LOG_TOPICS)
    print(f"Watching zlb events at {endpoint} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    printed = 0
    try:
        while max_events is None or printed < max_events:
            for event in stream.poll(0.5):
                print(render(event), file=out, flush=True)
                printed += 1
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()
    return printed
