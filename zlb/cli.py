"""The `zlb` command: one click group; each role contributes its commands.

Each command's module is imported only when that command runs, so a process pays
for its own role's imports alone (docs/ARCHITECTURE.md, "One `zlb` command imports
one role"): an idle `zlb server` that imported every role held 44 MB RSS.
`zlb --help` still imports them all, to show each command's one-line help.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Any

import click

from process_supervisor.parent_watch import follow_parent
from wire import security
from zlb import __version__

# The commands that connect to a balancer: each gets --curve-secret and --server-key.
CONNECTING = {
    "servers": "zlb.admin_cli:servers",
    "requests": "zlb.admin_cli:requests",
    "status": "zlb.admin_cli:status",
    "logs": "zlb.admin_cli:logs",
    "down": "zlb.admin_cli:down",
    "up": "zlb.admin_cli:up",
    "drain": "zlb.admin_cli:drain",
    "cancel": "zlb.work_cli:cancel",
    "dead": "zlb.work_cli:dead",
    "retry": "zlb.work_cli:retry",
    "server": "server_node.cli:server",
    "client": "client_node.cli:client",
    "send": "client_node.cli:send",
    "monitor": "monitor.cli:monitor",
    "http": "http_gateway.cli:http",
}
# The rest: the balancer binds (it has its own curve options), the others connect to nothing or start their own.
STANDALONE = {
    "balancer": "balancer.serve_cli:balancer",
    "keys": "balancer.serve_cli:keys",
    "cluster": "zlb.cluster:cluster",
    "bench": "bench.cli:bench",
    "server-check": "server_node.cli:server_check",
}


class LazyGroup(click.Group):
    """A group whose commands are "module:attribute" names, imported when a command is looked up."""

    def __init__(self, *args: Any, lazy: dict[str, str], connecting: frozenset[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy
        self.connecting = connecting

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        # Imported once: the curve options must not be added to a command twice.
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            self.add_command(_with_curve_options(command) if cmd_name in self.connecting else command, cmd_name)
        return self.commands.get(cmd_name)


@click.group(
    cls=LazyGroup,
    lazy={**CONNECTING, **STANDALONE},
    connecting=frozenset(CONNECTING),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
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
