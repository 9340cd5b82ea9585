"""`zlb monitor`: watch the balancer live."""

from __future__ import annotations

import click

from monitor.plain import run_plain
from zlb.options import endpoint_option


@click.command()
@endpoint_option("events")
@click.option("--plain", is_flag=True, help="Print one log line per event.")
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON line.")
def monitor(events: str, plain: bool, as_json: bool) -> None:
    """Watch the balancer's events as they happen."""
    run_plain(events, as_json=as_json)
