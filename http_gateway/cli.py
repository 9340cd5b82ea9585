"""`zlb http`: the seed's REST API, /metrics and the live dashboard over a real balancer."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass

import click

from http_gateway import control as admin_control
from http_gateway import metrics
from http_gateway.api import CONTROL_TIMEOUT_S, BalancerLink, Gateway
from http_gateway.auth import (
    ALLOWED_HOST_OPTION,
    ALLOWED_HOSTS_ENV,
    TOKEN_ENV,
    AuthConfigError,
    Policy,
    allowed_host,
    load_token,
)
from http_gateway.hub import EventHub
from http_gateway.processes import NodeSettings, Processes
from http_gateway.serve import HEADER_TIMEOUT_S, listen, serve
from http_gateway.submitter import Submitter
from http_gateway.web import App
from process_supervisor.supervisor import Supervisor
from wire.options import endpoints, heartbeat_options, millis_range, seconds_range, shown_option
from wire.security import CURVE_SECRET_ENV, SERVER_KEY_ENV, CurveConfigError, load_secret

EXIT_CONFIG = 2
# The key pair of the nodes /configure starts, when the balancer keeps node keys apart (--node-allow).
NODE_SECRET_ENV = "ZLB_HTTP_NODE_SECRET"


@dataclass
class Listen:
    """Where to listen and who may change things."""

    host: str
    port: int
    token_file: str | None
    quiet: bool
    header_timeout_s: float = HEADER_TIMEOUT_S
    allowed_hosts: tuple[str, ...] = ()


def node_environment(env: dict[str, str], link: BalancerLink) -> None:
    """What /configure's nodes inherit: the endpoints, the node key pair when one is named, no admin key or token.

    Under a balancer's --node-allow, the client key cannot serve: ZLB_HTTP_NODE_SECRET names a key pair
    from that directory, which the nodes get as their ZLB_CURVE_SECRET.
    """
    env.update({"ZLB_FRONTEND": link.frontend, "ZLB_CONTROL": link.control})
    env.update({"ZLB_EVENTS": link.events, "ZLB_BACKEND": link.backend})
    node_secret = env.pop(NODE_SECRET_ENV, "")
    if node_secret:
        if not env.get(SERVER_KEY_ENV):
            raise CurveConfigError(
                f"{NODE_SECRET_ENV} needs the balancer's public key too (--server-key, {SERVER_KEY_ENV})"
            )
        load_secret(node_secret)  # a wrong file is one line now, not a node that never joins
        env[CURVE_SECRET_ENV] = node_secret
    for secret in (admin_control.ADMIN_SECRET_ENV, TOKEN_ENV):
        env.pop(secret, None)


def run_gateway(link: BalancerLink, settings: NodeSettings, where: Listen) -> None:
    """Serve until SIGINT/SIGTERM, then stop every process /configure started."""
    try:
        policy = Policy.for_host(where.host, load_token(where.token_file), where.allowed_hosts)
    except AuthConfigError as exc:
        print(f"zlb http: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CONFIG) from None
    sup = Supervisor()
    try:
        node_environment(sup.env, link)
    except CurveConfigError as exc:
        print(f"zlb http: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CONFIG) from None
    sock = listen(where.host, where.port)
    submitter = Submitter(link.frontend)
    processes = Processes(sup, settings, lambda: link.call("servers"), submitter.submit_batch, link.known)
    gateway = Gateway(link, submitter, processes)
    registry, tracker = metrics.make_registry(gateway.status_and_servers, admin_control.BalancerUnreachable)
    hub = EventHub(link.events, tracker, gateway.snapshot, processes.reap)
    app = App(gateway, policy, hub, registry, settings.cost_ms).build()
    # uvicorn re-raises the signal that stopped it once it is done; this handler lets the cleanup below run.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    auth = "token required for POST" if policy.token else "no token: open on loopback"
    names = ["loopback names", *(["any address"] if policy.any_address else []), *sorted(policy.names)]
    auth += f"; answers to {', '.join(names)}"
    print(f"zlb http serving on http://{where.host}:{where.port} ({auth}; balancer {link.control})", file=sys.stderr)
    sys.stderr.flush()
    try:
        serve(app, sock, where.quiet, where.header_timeout_s)
    finally:
        submitter.close()
        # Well inside the 5 s a supervising `zlb cluster` grants us, so no node outlives the gateway.
        processes.close(timeout_s=3.0)


def _allowed_hosts(values: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return tuple(allowed_host(value) for value in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=ALLOWED_HOST_OPTION) from None


@click.command(name="http")
@endpoints("frontend", "backend", "events", "control")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (beyond loopback needs a token)."
)
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port to listen on.")
@click.option(
    ALLOWED_HOST_OPTION,
    "allowed_hosts",
    multiple=True,
    envvar=ALLOWED_HOSTS_ENV,
    show_envvar=True,
    callback=lambda _ctx, _param, values: _allowed_hosts(values),
    help="A name (or address) this gateway answers to besides loopback names and --host; repeatable."
    " Any other Host is refused (421), reads included. A name beyond loopback needs a token.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"File whose first line is the bearer token POSTs need (else ${TOKEN_ENV}).",
)
@shown_option("--cost-ms", millis_range(), 500, "Simulated work per request sent by /configure and /send_request.")
@click.option(
    "--capacity", type=click.IntRange(1), default=1, show_default=True, help="Capacity of /configure's nodes."
)
@shown_option(
    "--control-timeout", seconds_range(0.05), CONTROL_TIMEOUT_S, "Seconds to wait for the balancer before a 503."
)
@shown_option(
    "--header-timeout",
    seconds_range(0.1),
    HEADER_TIMEOUT_S,
    "Seconds a client may take to send a request's line and headers before it is disconnected.",
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
    allowed_hosts: tuple[str, ...],
    token_file: str | None,
    cost_ms: float,
    capacity: int,
    control_timeout: float,
    header_timeout: float,
    heartbeat_ms: int,
    liveness: int,
    quiet: bool,
) -> None:
    """Serve the seed's REST API (/configure, /send_request, ...), /metrics and the dashboard at /."""
    link = BalancerLink(control, frontend, events, backend, control_timeout)
    run_gateway(
        link,
        NodeSettings(cost_ms, capacity, heartbeat_ms, liveness),
        Listen(host, port, token_file, quiet, header_timeout, allowed_hosts),
    )
