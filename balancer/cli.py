"""`zlb balancer` and the admin commands that talk to its control socket."""

from __future__ import annotations

import json
from typing import Any

import click

from balancer import admin
from balancer.loop import BalancerConfig, run_balancer
from balancer.protocol import STATUSES
from balancer.scheduler import DEFAULT_KEEP_FINISHED, DEFAULT_MAX_ATTEMPTS
from zlb.options import endpoint_option, endpoints, heartbeat_options, json_option


@click.command()
@endpoints("frontend", "backend", "events", "control")
@heartbeat_options
@click.option("--max-queue", type=click.IntRange(1), default=None, help="Reject submits beyond this many waiting.")
@click.option(
    "--max-attempts",
    type=click.IntRange(1),
    default=DEFAULT_MAX_ATTEMPTS,
    show_default=True,
    help="Fail a request after its node died this many times.",
)
@click.option(
    "--keep-finished",
    type=click.IntRange(0),
    default=DEFAULT_KEEP_FINISHED,
    show_default=True,
    help="Finished requests remembered for queries and duplicate detection.",
)
@click.option(
    "--max-message-bytes",
    type=click.IntRange(1024),
    default=64 * 1024 * 1024,
    show_default=True,
    help="Largest message accepted on any socket.",
)
@click.option(
    "--log-file", default="zlb-balancer.log", show_default=True, help="Event log file (size-rotated); '' for none."
)
def balancer(
    frontend: str,
    backend: str,
    events: str,
    control: str,
    heartbeat_ms: int,
    liveness: int,
    max_queue: int | None,
    max_attempts: int,
    keep_finished: int,
    max_message_bytes: int,
    log_file: str,
) -> None:
    """Run the balancer: bind the four sockets and serve until SIGINT/SIGTERM."""
    config = BalancerConfig(
        frontend=frontend,
        backend=backend,
        events=events,
        control=control,
        heartbeat_ms=heartbeat_ms,
        liveness=liveness,
        max_queue=max_queue,
        max_attempts=max_attempts,
        keep_finished=keep_finished,
        max_message_bytes=max_message_bytes,
        log_file=log_file or None,
    )
    try:
        run_balancer(config)
    except OSError as exc:
        raise click.ClickException(str(exc)) from None


def control_call(control: str, cmd: str, **args: Any) -> Any:
    """One control command; a clean one-line error when it fails."""
    try:
        return admin.call(control, cmd, **args)
    except admin.BalancerUnreachable as exc:
        raise click.ClickException(f"{exc} (is it running? set --control or ZLB_CONTROL)") from None
    except admin.ControlError as exc:
        raise click.ClickException(str(exc)) from None


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """Rows as aligned text columns: (key, heading) pairs."""
    cells = [[h for _k, h in columns]] + [
        ["-" if r.get(k) is None else str(r.get(k)) for k, _h in columns] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


@click.command()
@endpoint_option("control")
@json_option
def servers(control: str, as_json: bool) -> None:
    """List the server nodes and their load."""
    rows = control_call(control, "servers")
    if as_json:
        return print_json(rows)
    for row in rows:
        row["load"] = f"{row['in_flight']}/{row['capacity']}"
        row["heartbeat"] = f"{row['last_heartbeat_ms_ago']} ms ago"
    print_table(
        rows,
        [
            ("server_id", "SERVER"),
            ("state", "STATE"),
            ("load", "IN-FLIGHT"),
            ("handled_requests", "HANDLED"),
            ("heartbeat", "LAST HEARTBEAT"),
            ("pid", "PID"),
            ("host", "HOST"),
        ],
    )


@click.command()
@endpoint_option("control")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only requests in this state.")
@click.option("--client", type=int, default=None, help="Only this client's requests.")
@click.option("--limit", type=click.IntRange(0), default=1000, show_default=True, help="At most this many (0: all).")
@json_option
def requests(control: str, status: str | None, client: int | None, limit: int, as_json: bool) -> None:
    """List requests: waiting, running and recently finished."""
    rows = control_call(control, "requests", status=status, client=client, limit=limit)
    if as_json:
        return print_json(rows)
    print_table(
        rows,
        [
            ("client_id", "CLIENT"),
            ("request_id", "REQUEST"),
            ("priority", "PRIORITY"),
            ("status", "STATUS"),
            ("server_id", "SERVER"),
            ("attempts", "ATTEMPTS"),
        ],
    )


@click.command()
@endpoint_option("control")
@json_option
def status(control: str, as_json: bool) -> None:
    """Show counts, queue depth and bad-input counters."""
    result = control_call(control, "status")
    if as_json:
        return print_json(result)
    for key, value in result.items():
        click.echo(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


@click.command()
@endpoint_option("control")
@click.option("--limit", type=click.IntRange(0), default=None, help="Only the newest N lines.")
@click.option(
    "--download",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write every kept line to this file (like the seed's load_balancer_logs.txt).",
)
@json_option
def logs(control: str, limit: int | None, download: str | None, as_json: bool) -> None:
    """Show the balancer's recent log lines."""
    if as_json:
        return print_json(control_call(control, "logs", limit=limit, format="events"))
    lines = control_call(control, "logs", limit=None if download else limit)
    if download:
        with open(download, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + ("\n" if lines else ""))
        click.echo(f"Wrote {len(lines)} log lines to {download}")
        return None
    for line in lines:
        click.echo(line)


def _admin_command(name: str, verb: str, doc: str) -> click.Command:
    @click.command(name=name, help=doc)
    @endpoint_option("control")
    @click.argument("server_id", type=int)
    @json_option
    def command(control: str, server_id: int, as_json: bool) -> None:
        node = control_call(control, name, server_id=server_id)
        if as_json:
            return print_json(node)
        click.echo(f"Server {server_id} {verb} (state {node['state']}, {node['in_flight']} in flight)")
        return None

    return command


down = _admin_command("down", "marked as down", "Mark a server down and re-queue its in-flight work.")
up = _admin_command("up", "marked as up", "Put a down or draining server back in service.")
drain = _admin_command("drain", "draining", "Send a server no new work; let its in-flight work finish.")

COMMANDS = [balancer, servers, requests, status, logs, down, up, drain]
