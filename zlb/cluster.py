"""`zlb cluster`: the seed's POST /configure as one command.

Starts a balancer, server nodes and clients as separate processes on this
machine, prints the plain monitor, and stops every process it started once
the clients are done (or on Ctrl-C or SIGTERM; `--stay` keeps it up). With
`--http PORT` it is the whole seed experience: the balancer, the REST API
(`zlb http`) and the monitor (the live dashboard on a terminal); the nodes and
clients then come from POST /configure, as in the seed, and it stays up.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import click

from balancer.serve_cli import log_file_option
from monitor.plain import LOG_TOPICS, plain_line
from monitor.stream import EventStream
from process_supervisor.supervisor import Supervisor, wait_for_balancer
from wire import control_client
from wire import events as ev
from wire.options import endpoints, heartbeat_options, millis_range, shown_option
from wire.protocol import TOPIC_STATS


@dataclass
class ClusterConfig:
    """Everything `zlb cluster` can set."""

    endpoints: dict[str, str]
    servers: int
    clients: int
    requests_per_client: int
    cost_ms: float
    capacity: int
    heartbeat_ms: int
    liveness: int
    log_file: str
    exit_when_done: bool
    http_port: int | None


# Without these the cluster is over: a lost node or client is reported and the rest carry on.
ESSENTIAL = ("balancer", "http")
# How long the balancer and `zlb http` may take to answer once started. One that dies is noticed at once;
# this bounds only a hang, so it allows for a machine so busy that starting Python takes tens of seconds
# (10 s was too little at load 40 on 2 cores: the cluster gave up on a balancer that was still starting).
START_TIMEOUT_S = 60.0


def first_request_id(client_id: int) -> int:
    """Client 0 sends 101, 102...; client 1 sends 201, 202... (as in the seed)."""
    return (client_id + 1) * 100 + 1


class Cluster:
    """The processes of one `zlb cluster` run and the events they produce."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        env_vars = {f"ZLB_{role.upper()}": url for role, url in config.endpoints.items()}
        self.sup = Supervisor()
        self.sup.env.update(env_vars)
        self.stream: EventStream | None = None
        self._stopping = False

    def stop(self, *_args: Any) -> None:
        self._stopping = True

    def start(self) -> None:
        """Balancer first; nodes and clients once the monitor can see it."""
        cfg = self.config
        if cfg.http_port is not None and not _can_bind("127.0.0.1", cfg.http_port):
            raise RuntimeError(f"port {cfg.http_port} is in use on 127.0.0.1; pick another --http port")
        # Subscribe before the balancer binds, so its first events are not missed.
        self.stream = EventStream(cfg.endpoints["events"], (*LOG_TOPICS, TOPIC_STATS))
        balancer = self.sup.start(
            "balancer",
            "balancer",
            "--heartbeat-ms",
            str(cfg.heartbeat_ms),
            "--liveness",
            str(cfg.liveness),
            "--log-file",
            cfg.log_file,
            keep_stderr=True,
        )
        wait_for_balancer(
            cfg.endpoints["control"], START_TIMEOUT_S, exited=lambda: self._ended("balancer"), pid=balancer.pid
        )
        self._await_first_stats()
        if cfg.http_port is not None:
            self._start_http(cfg.http_port)
        if cfg.http_port is None or cfg.servers or cfg.clients:
            control_client.call(cfg.endpoints["control"], "configure", servers=cfg.servers, clients=cfg.clients)
        for i in range(cfg.servers):
            self.sup.start_server(i, cfg.capacity, cfg.heartbeat_ms, cfg.liveness)
        for j in range(cfg.clients):
            self.sup.start(
                f"client-{j}",
                "client",
                "--id",
                str(j),
                "--requests",
                str(cfg.requests_per_client),
                "--cost-ms",
                str(cfg.cost_ms),
                "--first-request-id",
                str(first_request_id(j)),
            )

    def _start_http(self, port: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start `zlb http` and wait until its port accepts connections."""
        cfg = self.config
        proc = self.sup.start(
            "http",
            "http",
            "--port",
            str(port),
            "--cost-ms",
            str(cfg.cost_ms),
            "--capacity",
            str(cfg.capacity),
            "--heartbeat-ms",
            str(cfg.heartbeat_ms),
            "--liveness",
            str(cfg.liveness),
            "--quiet",
            keep_stderr=True,
        )
        deadline = time.monotonic() + timeout_s
        while not _accepts("127.0.0.1", port):
            if proc.poll() is not None:
                raise RuntimeError(self.sup.why_exited("http"))
            if time.monotonic() > deadline:
                raise RuntimeError(f"zlb http did not listen on port {port} within {timeout_s:g} s")
            time.sleep(0.05)  # wait-ok: a deadline-bounded poll for the port
        click.echo(f"Dashboard at http://127.0.0.1:{port}/ (the REST API and /metrics on the same port)", err=True)

    def _await_first_stats(self, timeout_s: float = 10.0) -> None:
        """The subscription is live once the balancer's periodic stats arrive."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            events = self.stream.poll(0.2)
            self._show(events)
            if any(e[1] == ev.STATS for e in events):
                return
        events = self.config.endpoints["events"]
        raise RuntimeError(f"the balancer's events never arrived at {events}; is another process bound there?")

    def _show(self, events: list[list[Any]]) -> None:
        for event in events:
            if event[1] != ev.STATS:
                click.echo(plain_line(event))

    def _ended(self, name: str) -> str | None:
        """Why process `name` ended, or None while it runs."""
        proc = self.sup.procs.get(name)
        return None if proc is None or proc.poll() is None else self.sup.why_exited(name)

    def reap(self, say: bool = True) -> str | None:
        """Collect children that died (no zombies), say so on stderr; return why the cluster must end, if it must."""
        for name in self.sup.reap():
            # A client that finished well is the plan, not news; an essential one's end is the error the
            # cluster ends with (told once, by its caller); any other end is told here.
            planned = name.startswith("client-") and self.sup.procs[name].returncode == 0
            if say and not planned and name not in ESSENTIAL:
                click.echo(f"zlb cluster: {self.sup.why_exited(name)}", err=True)
        ended = [why for why in map(self._ended, ESSENTIAL) if why is not None]
        return ended[0] if ended else None

    def clients_done(self) -> bool:
        """True once the clients this cluster started have all ended (never, if it started none)."""
        clients = [self.sup.procs[f"client-{j}"] for j in range(self.config.clients)]
        return bool(clients) and all(c.poll() is not None for c in clients)

    def follow(self) -> int:
        """Print events until stopped; return the number of clients that failed."""
        announced = self.config.clients == 0 and self.config.http_port is not None
        while not self._stopping:
            self._show(self.stream.poll(0.2))
            lost = self.reap()
            if lost is not None:
                raise RuntimeError(lost)
            clients = [self.sup.procs[f"client-{j}"] for j in range(self.config.clients)]
            if not announced and all(c.poll() is not None for c in clients):
                failed = sum(1 for c in clients if c.returncode != 0)
                self._show(self.stream.poll(0.3))
                total = self.config.clients * self.config.requests_per_client
                click.echo(f"All {len(clients)} clients finished: {total} requests sent, {failed} clients failed.")
                announced = True
                if self.config.exit_when_done and clients:
                    return failed
                click.echo("The cluster keeps running; Ctrl-C stops every process it started.")
        return 0

    def watch_dashboard(self) -> int:
        """The live dashboard until Ctrl-C or SIGTERM (the terminal case of `--http`)."""
        from monitor.dashboard import run_dashboard  # rich is only needed here

        if self.stream is not None:
            self.stream.close()  # the dashboard subscribes on its own
            self.stream = None
        url = f"http://127.0.0.1:{self.config.http_port}/"
        banner = f"Dashboard and REST API {url}  (POST /configure to start servers and clients)"
        lost: list[str] = []

        def should_stop() -> bool:
            # Called once per frame: reap the dead (silently: the screen is the dashboard's) and notice the end.
            why = self.reap(say=False)
            if why is not None:
                lost.append(why)
            return self._stopping or why is not None or (self.config.exit_when_done and self.clients_done())

        run_dashboard(
            self.config.endpoints["events"], self.config.endpoints["control"], should_stop=should_stop, banner=banner
        )
        if lost:
            raise RuntimeError(lost[0])
        return 0

    def close(self) -> None:
        self.sup.stop_all()
        if self.stream is not None:
            self.stream.close()


def run_cluster(config: ClusterConfig) -> int:
    """Start, follow and finally stop a local cluster; return an exit code."""
    cluster_run = Cluster(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, cluster_run.stop)
    try:
        cluster_run.start()
        if config.http_port is not None and sys.stdout.isatty():
            return cluster_run.watch_dashboard()
        return 1 if cluster_run.follow() else 0
    finally:
        cluster_run.close()


def _can_bind(host: str, port: int) -> bool:
    """True when nothing listens on host:port (as the REST API would bind it, address reuse on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _accepts(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@click.command()
@endpoints("frontend", "backend", "events", "control")
@shown_option("--servers", click.IntRange(0, 1000), 3, "Server nodes to start.")
@shown_option("--clients", click.IntRange(0, 1000), 2, "Clients to start.")
@shown_option("--requests-per-client", click.IntRange(0), 2, "Requests each client sends.")
@shown_option("--cost-ms", millis_range(), 500, "Simulated work per request.")
@shown_option("--capacity", click.IntRange(1), 1, "Requests per server at once.")
@heartbeat_options
@log_file_option
@click.option(
    "--exit-when-done/--stay",
    default=None,
    help="Stop everything once the clients it started have finished (the default without --http), "
    "or stay up until Ctrl-C (the default with --http).",
)
@click.option(
    "--http",
    "http_port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Also serve the seed's REST API on this port and show the live dashboard; "
    "nodes and clients then come from POST /configure unless --servers/--clients are given.",
)
@click.pass_context
def cluster(
    ctx: click.Context,
    frontend: str,
    backend: str,
    events: str,
    control: str,
    servers: int,
    clients: int,
    requests_per_client: int,
    cost_ms: float,
    capacity: int,
    heartbeat_ms: int,
    liveness: int,
    log_file: str,
    exit_when_done: bool | None,
    http_port: int | None,
) -> None:
    """Start a balancer, servers and clients here and watch them (the seed's /configure)."""
    if http_port is not None:
        # As in the seed, POST /configure starts the nodes and clients; start some now only if asked to.
        servers = servers if _given(ctx, "servers") else 0
        clients = clients if _given(ctx, "clients") else 0
    config = ClusterConfig(
        endpoints={"frontend": frontend, "backend": backend, "events": events, "control": control},
        servers=servers,
        clients=clients,
        requests_per_client=requests_per_client,
        cost_ms=cost_ms,
        capacity=capacity,
        heartbeat_ms=heartbeat_ms,
        liveness=liveness,
        log_file=log_file,
        exit_when_done=http_port is None if exit_when_done is None else exit_when_done,
        http_port=http_port,
    )
    try:
        code = run_cluster(config)
    except (RuntimeError, control_client.BalancerUnreachable, control_client.ControlError) as exc:
        raise click.ClickException(str(exc)) from None
    raise SystemExit(code)


def _given(ctx: click.Context, name: str) -> bool:
    """True when the option was set on the command line or by its variable, not left at its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source is not click.core.ParameterSource.DEFAULT
