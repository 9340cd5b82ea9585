"""`zlb balancer` (with journal, curve and graceful-stop options) and `zlb keys`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from balancer.budget import DEFAULT_MAX_MEMORY_MB
from balancer.config import (
    DEFAULT_GRACE_S,
    DEFAULT_MDP_HEARTBEAT_MS,
    DEFAULT_RECONNECT_GRACE_MS,
    DEFAULT_RETRY_BACKOFF_MS,
    BalancerConfig,
)
from balancer.election import DEFAULT_LEASE_S, HaConfig
from balancer.eventlog import DEFAULT_LOG_BACKUPS, DEFAULT_LOG_MAX_BYTES
from balancer.kept import (
    DEFAULT_KEEP_FINISHED_BYTES,
    DEFAULT_KEEP_FINISHED_S,
    DEFAULT_REMEMBER_BYTES,
    DEFAULT_REMEMBER_S,
)
from balancer.loop import run_balancer
from balancer.scheduler import DEFAULT_MAX_ATTEMPTS
from wire import limits
from wire.limits import DEFAULT_MAX_MESSAGE_BYTES
from wire.options import (
    MAX_MIB,
    endpoints,
    grace_option,
    heartbeat_options,
    mib_range,
    path_option,
    seconds_range,
    shown_option,
)
from wire.security import CurveConfigError, generate_keys

LOG_FILE_HELP = "$XDG_STATE_HOME/zlb/balancer.log (~/.local/state/zlb/balancer.log when XDG_STATE_HOME is unset)"


def default_log_file() -> str:
    """Where the event log goes unless told: the user's state directory, never the current one."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "zlb", "balancer.log")


def _resolve_log_file(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    return default_log_file() if value is None else value


def log_file_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--log-file`, shared by `zlb balancer` and `zlb cluster`: a path, or '' for none."""
    return click.option(
        "--log-file",
        default=None,
        callback=_resolve_log_file,
        help=f"Event log file, rotated at {DEFAULT_LOG_MAX_BYTES // 2**20} MiB with {DEFAULT_LOG_BACKUPS} old"
        f" files kept; '' for none.  [default: {LOG_FILE_HELP}]",
    )(func)


def prepare_log_file(path: str) -> None:
    """Create the log file's directory and check it can be appended to, or raise ClickException."""
    if not path:
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise click.ClickException(f"cannot write the log file {path}: {exc.strerror or exc}") from None


@click.command()
@endpoints("frontend", "backend", "events", "control")
@heartbeat_options
@click.option("--max-queue", type=click.IntRange(1), default=None, help="Reject submits beyond this many waiting.")
@shown_option(
    "--max-attempts",
    click.IntRange(1),
    DEFAULT_MAX_ATTEMPTS,
    "After its node died this many times a request goes to the dead letters (zlb dead, zlb retry).",
)
@shown_option(
    "--retry-backoff-ms",
    click.IntRange(0),
    DEFAULT_RETRY_BACKOFF_MS,
    "After its node died a request waits this long before its next attempt, doubling per attempt"
    " (at most 10 s), jittered. 0: at once.",
)
@shown_option(
    "--reconnect-grace-ms",
    click.IntRange(0, 60_000),
    DEFAULT_RECONNECT_GRACE_MS,
    "A node whose connection drops (a kill -9 closes it at once) is dead unless it is connected again within"
    " this (a reset connection redials by itself in 10-20 ms). 0: only its heartbeats' silence judges it.",
)
@shown_option("--max-dead", click.IntRange(1), 10_000, "Keep at most this many dead letters; the oldest go first.")
@shown_option("--max-dead-mb", mib_range(0), 64.0, "Keep at most this many MiB of dead letters' payloads.")
@shown_option(
    "--keep-finished-s",
    seconds_range(0),
    DEFAULT_KEEP_FINISHED_S,
    "Keep a finished request's result this long, for a re-send of its id and for queries (within"
    " --keep-finished-mb and --max-memory-mb: when they need room the oldest results go first).",
)
@click.option(
    "--keep-finished",
    type=click.IntRange(0),
    default=None,
    help="Also keep at most this many results, the oldest going first.  [default: no count]",
)
@shown_option(
    "--keep-finished-mb",
    mib_range(0),
    DEFAULT_KEEP_FINISHED_BYTES / 2**20,
    "Also keep at most this many MiB of results, the oldest going first.",
)
@shown_option(
    "--remember-s",
    seconds_range(0),
    DEFAULT_REMEMBER_S,
    "Past its result, remember a finished request's id and payload digest this long: a re-send is answered"
    " 'processed earlier; the result is no longer kept', never run again. 0: not at all.",
)
@shown_option(
    "--remember-mb",
    mib_range(0),
    DEFAULT_REMEMBER_BYTES / 2**20,
    "At most this many MiB of ids remembered past their results (about 12 bytes an id of a Client's"
    " consecutive ids); the oldest go first.",
)
@shown_option(
    "--max-memory-mb",
    click.IntRange(0, MAX_MIB),
    DEFAULT_MAX_MEMORY_MB,
    "Budget for the request and result bytes held (waiting payloads, unsent and kept results);"
    " each client is granted its share as the window it may have outstanding (credit). 0: no budget.",
)
@shown_option(
    "--max-message-bytes",
    click.IntRange(1024, MAX_MIB * 2**20),
    DEFAULT_MAX_MESSAGE_BYTES,
    "Largest payload or result one request may carry (a batch of them may be larger).",
)
@log_file_option
@click.option(
    "--journal",
    type=click.Path(dir_okay=False),
    default=None,
    help="Record accepted and finished requests here; a restart on the same file loses none."
    " One balancer per journal: PATH.lock beside it names the owner, and a second one exits.",
)
@path_option(
    "--curve-secret", "This balancer's secret key file (zlb keys generate); turns on CurveZMQ for every socket."
)
@path_option("--allow", "Directory of public keys (*.key) admitted with --curve-secret.", "allow_dir")
@path_option(
    "--admin-allow",
    "Directory of admin public keys: only these may down, up, drain and configure (without it every --allow key may).",
    "admin_allow_dir",
)
@click.option(
    "--node-allow",
    "node_allow_dir",
    type=click.Path(exists=True, file_okay=False),
    envvar="ZLB_NODE_ALLOW",
    show_envvar=True,
    default=None,
    help="Directory of node public keys: only these may join as servers, and they may not submit, subscribe"
    " or query unless also in --allow (without it every --allow key may serve).",
)
@click.option(
    "--ha",
    envvar="ZLB_HA",
    show_envvar=True,
    default=None,
    help="etcd://HOST:PORT[,HOST:PORT...]/GROUP: run as a member of GROUP, leader or standby as etcd elects"
    " (needs --replication and --journal; docs/RELIABILITY.md). Without it: one balancer, no etcd.",
)
@click.option(
    "--replication",
    envvar="ZLB_REPLICATION",
    show_envvar=True,
    default=None,
    help="With --ha: this member's replication endpoint (a standby follows the leader's journal over it;"
    " also the member's name in etcd).",
)
@click.option(
    "--require-standby",
    is_flag=True,
    help="With --ha: while no standby is in sync, answer new submits busy instead of going on alone.",
)
@shown_option("--ha-lease-s", click.IntRange(2, 60), DEFAULT_LEASE_S, "With --ha: the etcd lease a leader holds.")
@shown_option(
    "--standby-max-lag-ms",
    click.IntRange(10),
    1000,
    "With --ha: a standby whose oldest unapplied record waited longer is dropped from the synchronous path.",
)
@shown_option(
    "--mdp-heartbeat-ms",
    click.IntRange(10, 600_000),
    DEFAULT_MDP_HEARTBEAT_MS,
    "The heartbeat interval of Majordomo (MDP/0.2) workers: an idle one silent for --liveness of these is dead."
    ' (A working one is alive while its connection stands; docs/PROTOCOL.md, "Majordomo".)',
)
@click.option(
    "--mdp-deadline-ms",
    type=click.IntRange(0, limits.MAX_DEADLINE_MS),
    default=None,
    help="The deadline of every Majordomo client's request (MDP carries none); an expired one is not answered"
    " and the client's retry decides.  [default: none]",
)
@grace_option(DEFAULT_GRACE_S)
def balancer(
    keep_finished_mb: float, remember_mb: float, max_memory_mb: int, log_file: str, max_dead_mb: float, **options: Any
) -> None:
    """Run the balancer: bind the four sockets and serve until SIGINT/SIGTERM."""
    if (options["curve_secret"] is None) != (options["allow_dir"] is None):
        raise click.UsageError("--curve-secret and --allow go together")
    for option in ("admin_allow", "node_allow"):
        if options[f"{option}_dir"] is not None and options["curve_secret"] is None:
            raise click.UsageError(f"--{option.replace('_', '-')} needs --curve-secret and --allow")
    _check_ha(options)
    prepare_log_file(log_file)
    # Every other option is a BalancerConfig field of the same name.
    config = BalancerConfig(
        keep_finished_bytes=int(keep_finished_mb * 2**20),
        remember_bytes=int(remember_mb * 2**20),
        max_memory_bytes=max_memory_mb * 2**20 or None,
        max_dead_bytes=int(max_dead_mb * 2**20),
        log_file=log_file or None,
        **options,
    )
    # Said before binding: if a bind fails, the error line follows this one.
    ends = "  ".join(f"{role} {url}" for role, url in config.endpoints.items())
    say(f"zlb balancer (pid {os.getpid()}): {ends}  log {log_file or 'off'}")
    try:
        if config.ha is None:
            run_balancer(config)
        else:
            from balancer.member import run_member  # HA only: etcd's client is imported there

            run_member(config)
    except (OSError, CurveConfigError) as exc:  # JournalError is an OSError
        raise click.ClickException(str(exc)) from None
    say(f"zlb balancer (pid {os.getpid()}) stopped")


def _check_ha(options: dict[str, Any]) -> None:
    """--ha needs a valid etcd URL, --replication and --journal; the HA-only options need --ha."""
    if options["ha"] is None:
        for name in ("replication", "require_standby"):
            if options[name]:
                raise click.UsageError(f"--{name.replace('_', '-')} needs --ha")
        return
    try:
        HaConfig.parse(options["ha"], options["ha_lease_s"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ha") from None
    if not options["replication"]:
        raise click.UsageError("--ha needs --replication ENDPOINT (where the standby follows this member)")
    if not options["journal"]:
        raise click.UsageError("--ha needs --journal PATH (each member keeps its own journal)")
    if options["curve_secret"] is not None:
        raise click.UsageError("--ha with --curve-secret is not supported yet (the replication stream is not secured)")


def say(line: str) -> None:
    """A start or stop line on stderr, so stdout stays for data and a terminal shows what runs where."""
    print(line, file=sys.stderr, flush=True)


@click.group()
def keys() -> None:
    """CurveZMQ key pairs for the balancer, nodes, clients and the monitor."""


@keys.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--name", default="zlb", show_default=True, help="Writes NAME.key (public) and NAME.key_secret.")
def generate(directory: str, name: str) -> None:
    """Write a new key pair in DIRECTORY."""
    if os.sep in name or not name:
        raise click.BadParameter("a plain file name, without directories", param_hint="--name")
    if os.path.exists(os.path.join(directory, f"{name}.key_secret")):
        raise click.ClickException(f"{directory}/{name}.key_secret exists; pick another --name")
    try:
        public, secret = generate_keys(directory, name)
    except OSError as exc:
        raise click.ClickException(f"cannot write keys in {directory}: {exc}") from None
    click.echo(
        f"Public key: {public}  (copy it into the balancer's --allow directory, --node-allow for a node,"
        " or use it as --server-key)"
    )
    click.echo(f"Secret key: {secret}  (keep it private: --curve-secret)")
