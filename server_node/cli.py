"""`zlb server`: run a server node."""

from __future__ import annotations

import os
import sys

import click

from server_node import handlers
from server_node.node import DEFAULT_GRACE_S, NodeConfig, run_node
from wire.options import endpoint_option, grace_option, heartbeat_options


@click.command()
@endpoint_option("backend")
@click.option("--id", "node_id", type=click.IntRange(0), default=None, help="Server id (default: the balancer picks).")
@click.option("--capacity", type=click.IntRange(1, 10_000), default=1, show_default=True, help="Requests run at once.")
@click.option(
    "--handler",
    default="simulate",
    show_default=True,
    help="simulate, echo, or module:function for your own Python work.",
)
@grace_option(DEFAULT_GRACE_S)
@heartbeat_options
def server(backend: str, node_id: int | None, capacity: int, handler: str, **timings: float) -> None:
    """Run a server node that takes work from the balancer."""
    try:
        handlers.load(handler)
    except handlers.HandlerError as exc:
        raise click.BadParameter(str(exc), param_hint="--handler") from None
    who = f"zlb server (pid {os.getpid()}, {'id ' + str(node_id) if node_id is not None else 'id from the balancer'})"
    # On stderr, so a terminal shows what runs where while stdout stays for data.
    click.echo(f"{who}: connecting to {backend}, capacity {capacity}, handler {handler}", err=True)
    # The timing options (grace_s, heartbeat_ms, liveness) are NodeConfig fields of the same name.
    code = run_node(NodeConfig(backend=backend, node_id=node_id, capacity=capacity, handler=handler, **timings))
    if code == 0:
        click.echo(f"{who} stopped", err=True)
    sys.exit(code)
