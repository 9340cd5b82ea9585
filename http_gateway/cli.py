"""`zlb http`: the seed's REST API over a real balancer."""

from __future__ import annotations

import click

from http_gateway.app import CONTROL_TIMEOUT_S, GatewayConfig
from http_gateway.server import run_gateway
from wire.options import endpoints, heartbeat_options


@click.command(name="http")
@endpoints("frontend", "backend", "events", "control")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port to listen on.")
@click.option(
    "--cost-ms",
    type=click.FloatRange(0),
    default=500,
    show_default=True,
    help="Simulated work per request sent by /configure's clients and /send_request.",
)
@click.option(
    "--capacity", type=click.IntRange(1), default=1, show_default=True, help="Capacity of /configure's nodes."
)
@click.option(
    "--control-timeout",
    type=click.FloatRange(0.05),
    default=CONTROL_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for the balancer before answering 503.",
)
@heartbeat_options
@click.option("--quiet", is_flag=True, help="No access log on stderr.")
def http(
    frontend: str,
    backend: str,
    events: str,
    control: str,
    host: str,
    port: int,
    cost_ms: float,
    capacity: int,
    control_timeout: float,
    heartbeat_ms: int,
    liveness: int,
    quiet: bool,
) -> None:
    """Serve the seed's REST API (/configure, /send_request, /requests, /servers, ...) and /metrics."""
    config = GatewayConfig(
        control=control,
        frontend=frontend,
        events=events,
        backend=backend,
        cost_ms=cost_ms,
        capacity=capacity,
        heartbeat_ms=heartbeat_ms,
        liveness=liveness,
        control_timeout_s=control_timeout,
    )
    try:
        run_gateway(config, host, port, quiet)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
