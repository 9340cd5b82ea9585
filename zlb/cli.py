"""The `zlb` command: one click group; each role contributes its commands."""

from __future__ import annotations

import functools
import os
from typing import Any

import click

from balancer.serve_cli import balancer, keys
from bench.cli import bench
from client_node.cli import client, send
from http_gateway.cli import http
from monitor.cli import monitor
from process_supervisor.parent_watch import follow_parent
from server_node.cli import server, server_check
from wire import security
from zlb import __version__
from zlb.admin_cli import COMMANDS as ADMIN_COMMANDS
from zlb.cluster import cluster
from zlb.work_cli import COMMANDS as WORK_COMMANDS


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="zlb")
def main() -> None:
    """zlb: a priority load balancer over ZeroMQ.

    Start a balancer, server nodes and clients as separate processes; watch
    with the monitor; kill a node and see its work finish elsewhere.
    """
    follow_parent()  # a child of `zlb cluster` or `zlb http` goes when they do, even after kill -9


def _to_environ(var: str) -> Any:
    """An option callback that hands the value to the socket code through the environment."""

    def store(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value:
            os.environ[var] = value

    return store


CURVE_OPTIONS = (
    (
        "--curve-secret",
        security.CURVE_SECRET_ENV,
        "This peer's secret key file (zlb keys generate) when the balancer uses curve.",
    ),
    ("--server-key", security.SERVER_KEY_ENV, "The balancer's public key file, with --curve-secret."),
)


def _with_curve_options(command: click.Command) -> click.Command:
    """Give a connecting command `--curve-secret` and `--server-key`, checked before it runs."""
    command.params += [
        click.Option(
            [flag],
            type=click.Path(exists=True, dir_okay=False),
            envvar=var,
            show_envvar=True,
            expose_value=False,
            callback=_to_environ(var),
            help=help_text,
        )
        for flag, var, help_text in CURVE_OPTIONS
    ]
    run = command.callback

    @functools.wraps(run)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            security.client_keys()
        except security.CurveConfigError as exc:
            raise click.UsageError(str(exc)) from None
        return run(*args, **kwargs)

    command.callback = checked
    return command


for command in [*ADMIN_COMMANDS, *WORK_COMMANDS, server, client, send, monitor, http]:
    main.add_command(_with_curve_options(command))
for command in [balancer, keys, cluster, bench, server_check]:
    main.add_command(command)
