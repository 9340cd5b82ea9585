"""The `zlb` command: one click group; each role contributes its commands."""

from __future__ import annotations

import click

from balancer.cli import COMMANDS as BALANCER_COMMANDS
from bench.cli import bench
from client_node.cli import client, send
from http_gateway.cli import http
from monitor.cli import monitor
from server_node.cli import server
from zlb import __version__
from zlb.cluster import cluster


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="zlb")
def main() -> None:
    """zlb: a priority load balancer over ZeroMQ.

    Start a balancer, server nodes and clients as separate processes; watch
    with the monitor; kill a node and see its work finish elsewhere.
    """


for command in [*BALANCER_COMMANDS, server, client, send, monitor, cluster, http, bench]:
    main.add_command(command)
