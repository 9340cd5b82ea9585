"""`zlb monitor`: watch the balancer live."""

from __future__ import annotations

import sys

import click

from monitor.plain import run_plain
from wire.options import endpoint_option


@click.command()
@endpoint_option("events")
@endpoint_option("control")
@click.option("--plain", is_flag=True, help="Print one log line per event (the default when not on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON line.")
def monitor(events: str, control: str, plain: bool, as_json: bool) -> None:
    """Watch the balancer live: a dashboard on a terminal, log lines in a pipe."""
    if plain or as_json or not sys.stdout.isatty():
        run_plain(events, as_json=as_json, control=control)
        return
    from monitor.dashboard import run_dashboard  # rich is only needed for the dashboard

    run_dashboard(events, control)
