"""`zlb server`: run a server node."""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import click

from server_node import alive, handlers
from server_node.node import DEFAULT_GRACE_S, NodeConfig, run_node
from wire import protocol as p
from wire.options import ID_RANGE, endpoint_option, grace_option, heartbeat_options, seconds_range, service_names


@click.command()
@endpoint_option("backend")
@click.option("--id", "node_id", type=ID_RANGE, default=None, help="Server id (default: the balancer picks).")
@click.option("--capacity", type=click.IntRange(1, 10_000), default=1, show_default=True, help="Requests run at once.")
@click.option(
    "--handler",
    default="simulate",
    show_default=True,
    help="simulate, echo, or module:function for your own Python work.",
)
@click.option(
    "--service",
    "services",
    multiple=True,
    callback=service_names,
    help="A service this node offers (repeatable; 1-64 of A-Z a-z 0-9 . _ : -); it runs only requests of"
    " its services.  [default: default]",
)
@grace_option(DEFAULT_GRACE_S)
@heartbeat_options
@click.option(
    "--alive-file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Rewrite this file every second while the node runs (zlb server-check reads it: a container probe).",
)
def server(
    backend: str,
    node_id: int | None,
    capacity: int,
    handler: str,
    alive_file: str | None,
    services: tuple[str, ...],
    **timings: float
) -> None:
    """Run a server node that takes work from the balancer."""
    try:
        handlers.load(handler)
    except handlers.HandlerError as exc:
        raise click.BadParameter(str(exc), param_hint="--handler") from None
    who = f"zlb server (pid {os.getpid()}, {'id ' + str(node_id) if node_id is not None else 'id from the balancer'})"
    # On stderr, so a terminal shows what runs where while stdout stays for data.
    offers = ", ".join(services or (p.DEFAULT_SERVICE,))
    click.echo(f"{who}: connecting to {backend}, capacity {capacity}, handler {handler}, services {offers}", err=True)
    # The timing options (grace_s, heartbeat_ms, liveness) are NodeConfig fields of the same name.
    config = NodeConfig(
        backend=backend, node_id=node_id, capacity=capacity, handler=handler, alive_file=alive_file, services=services
    )
    code = run_node(replace(config, **timings))
    if code == 0:
        click.echo(f"{who} stopped", err=True)
    sys.exit(code)


# A node's liveness probe allows this long since its last sign of life by default: its loop writes every second.
CHECK_MAX_AGE_S = 30.0


@click.command(name="server-check")
@click.option(
    "--alive-file",
    required=True,
    type=click.Path(dir_okay=False),
    help="The file a node keeps with zlb server --alive-file.",
)
@click.option(
    "--max-age",
    "max_age_s",
    type=seconds_range(1),
    default=CHECK_MAX_AGE_S,
    show_default=True,
    help="Seconds since the node last wrote it beyond which it counts as stopped.",
)
@click.option("--joined", is_flag=True, help="Also exit 1 unless the node has joined a balancer (a readiness probe).")
def server_check(alive_file: str, max_age_s: float, joined: bool) -> None:
    """Exit 0 when the server node keeping --alive-file runs (a liveness probe: the balancer is not asked)."""
    problem = alive.check(alive_file, max_age_s, joined)
    if problem:
        raise click.ClickException(problem)
