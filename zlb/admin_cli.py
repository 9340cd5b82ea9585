"""The admin commands that talk to a balancer's control socket: servers, requests, status, logs, down, up, drain."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import click

from monitor.plain import LOG_TOPICS
from monitor.stream import EventStream
from wire import control_client
from wire import events as ev
from wire.handshake import curve_trouble
from wire.options import FiniteRange, endpoint_option, json_option
from wire.protocol import STATUSES


def control_call(control: str, cmd: str, **args: Any) -> Any:
    """One control command; a clean one-line error when it fails. `control` may list an HA group's members."""
    return control_reach(control, cmd, **args)[1]


def control_reach(control: str, cmd: str, **args: Any) -> tuple[str, Any]:
    """As control_call, with the member that answered: (its control endpoint, the result)."""
    try:
        return control_client.reach(control, cmd, **args)
    except control_client.NoLeader as exc:
        raise click.ClickException(f"{exc} (no member of the group at {control} leads now; try again)") from None
    except control_client.BalancerUnreachable as exc:
        trouble = curve_trouble(control)
        if trouble:
            raise click.ClickException(f"no answer from the balancer at {control}: {trouble}") from None
        raise click.ClickException(f"{exc} (is it running? set --control or ZLB_CONTROL)") from None
    except control_client.ControlError as exc:
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


def query_command(cmd: str) -> Callable[[Callable[[Any], None]], click.Command]:
    """`zlb CMD [--json]`: ask the balancer CMD; print the answer as JSON, or as the decorated function shows it."""

    def make(show: Callable[[Any], None]) -> click.Command:
        @click.command(name=cmd, help=show.__doc__)
        @endpoint_option("control")
        @json_option
        def command(control: str, as_json: bool) -> None:
            answer = control_call(control, cmd)
            (print_json if as_json else show)(answer)

        return command

    return make


@query_command("servers")
def servers(rows: list[dict[str, Any]]) -> None:
    """List the server nodes and their load; an admin's down or drain holds across rejoins until zlb up."""
    for row in rows:
        row["load"] = f"{row['in_flight']}/{row['capacity']}"
        admin = row.get("admin")
        if admin:  # an admin's down or drain, which holds across the node's rejoins
            held = "by admin" if admin == row["state"] else f"admin: {admin}"
            row["state"] = f"{row['state']} ({held} until zlb up)"
        row["heartbeat"] = f"{row['last_heartbeat_ms_ago']} ms ago"
        row["services"] = ",".join(row.get("services") or ["default"])
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
            ("services", "SERVICES"),
        ],
    )


# A control reply carries at most this many rows; longer listings are fetched page by page.
PAGE = 1000
# The balancer answers `offset` only this far (balancer/control.py); beyond, page by key.
MAX_OFFSET = 10_000


def fetch_pages(control: str, cmd: str, limit: int, offset: int = 0, **args: Any) -> list[Any]:
    """Rows of a list command from `offset` on, page by page, up to `limit` (0: all)."""
    rows: list[Any] = []
    while True:
        want = PAGE if not limit else min(PAGE, limit - len(rows))
        page = control_call(control, cmd, offset=offset + len(rows), limit=want, **args)
        rows.extend(page)
        if len(page) < want or (limit and len(rows) >= limit):
            return rows


def fetch_requests(
    control: str, limit: int, after: str = "", offset: int = 0, **args: Any
) -> tuple[list[Any], str | None]:
    """Requests in arrival order after the key `after` ("": from the first), skipping `offset` of them,
    page by page up to `limit` (0: all); and the key to go on from (None: the listing ended).

    A page reads a bounded number of requests, so a filtered one may come back short or empty with a
    key to go on from: the balancer answers each page in a bounded slice of its loop."""
    rows: list[Any] = []
    key: str | None = after
    while key is not None and (not limit or len(rows) < limit):
        want = PAGE if not limit else min(PAGE, limit - len(rows))
        page = control_call(control, "requests", after=key, limit=want, offset=offset, **args)
        offset = 0
        rows.extend(page["requests"])
        key = page["next"]
    return rows, key


@click.command()
@endpoint_option("control")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only requests in this state.")
@click.option("--client", type=click.IntRange(0), default=None, help="Only this client's requests.")
@click.option("--limit", type=click.IntRange(0), default=1000, show_default=True, help="At most this many (0: all).")
@click.option(
    "--after",
    default="",
    metavar="KEY",
    help="Go on where an earlier listing stopped (the key it printed) instead of from the first.",
)
@click.option(
    "--offset",
    type=click.IntRange(0, MAX_OFFSET),
    default=0,
    show_default=True,
    help=f"Skip this many first (at most {MAX_OFFSET}; page on with --after).",
)
@json_option
def requests(
    control: str, status: str | None, client: int | None, limit: int, after: str, offset: int, as_json: bool
) -> None:
    """List requests in the order they arrived: waiting, running and recently finished."""
    rows, key = fetch_requests(control, limit, after, offset, status=status, client=client)
    if as_json:
        print_json(rows)
    else:
        _request_table(rows)
    if key is not None:
        click.echo(f"More follow: zlb requests --after {key}", err=True)


def _request_table(rows: list[dict[str, Any]]) -> None:
    print_table(
        rows,
        [
            ("client_id", "CLIENT"),
            ("request_id", "REQUEST"),
            ("priority", "PRIORITY"),
            ("status", "STATUS"),
            ("server_id", "SERVER"),
            ("attempts", "ATTEMPTS"),
            ("service", "SERVICE"),
        ],
    )


def _services_line(services: dict[str, dict[str, int]]) -> str:
    """One clause per service: what waits, runs and ended badly, and how many live nodes offer it
    (a service with requests waiting and no node says so: they wait until one joins)."""
    parts = []
    for name, s in services.items():
        nodes = f"{s['nodes']} nodes" if s["nodes"] else "NO live node offers it"
        parts.append(
            f"{name}: {s['waiting']} waiting, {s['running']} running, {nodes};"
            f" expired {s['expired']} cancelled {s['cancelled']} dead {s['dead']}"
        )
    return " | ".join(parts) or "none"


def _dead_line(dead: dict[str, Any]) -> str:
    if not dead:
        return "none"
    dropped = ""
    if dead["dropped"]:
        dropped = f"; dropped {dead['dropped']} ({dead['dropped_bytes']} bytes) beyond the bounds"
    return f"{dead['count']} kept ({dead['bytes']} bytes, at most {dead['max_count']}){dropped}; zlb dead lists them"


def _uptime(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def _pairs(mapping: dict[str, Any], empty: str = "none") -> str:
    return "  ".join(f"{k.replace('_', ' ')} {v}" for k, v in mapping.items()) or empty


def _counter_rows(counters: dict[str, Any], journal: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The journal's health and figures (records lost to damage among them) and every other balancer counter."""
    figures = {k.removeprefix("journal_"): v for k, v in counters.items() if k.startswith("journal_")}
    others = {k: v for k, v in counters.items() if not k.startswith("journal_")}
    rows = [("Journal", f"{_journal_health(journal)}  {_pairs(figures)}")] if journal else []
    if others:
        rows.append(("Counters", _pairs(others)))
    return rows


def _journal_health(journal: dict[str, Any]) -> str:
    since = time.strftime("%H:%M:%S", time.localtime(journal.get("since") or 0))
    if journal.get("healthy"):
        return f"{journal['path']}  ok since {since}"
    return f"{journal['path']}  FAILING since {since}: {journal.get('reason')}; new requests refused (busy)"


def status_lines(result: dict[str, Any], reached: str = "") -> list[tuple[str, str]]:
    """`zlb status` as (heading, text) rows; `reached`: the control endpoint that answered."""
    if result.get("role") == "standby":
        return standby_lines(result, reached)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result["started_at"]))
    by_priority = ", ".join(f"p{p}: {n}" for p, n in result.get("queue_by_priority", {}).items())
    rates = result.get("rates", {})
    retention = result.get("retention", {})
    ha = [("HA", _leader_line(result, reached))] if result.get("role") == "leader" else []
    return [
        ("Balancer", f"up {_uptime(result['uptime_s'])} (since {started})"),
        *ha,
        ("Endpoints", _pairs(result.get("endpoints", {}))),
        (
            "Servers",
            f"{result['servers']} known, {result['servers_active']} active ({_pairs(result['servers_by_state'])})",
        ),
        ("Queue", f"{result['queue_depth']} waiting" + (f" ({by_priority})" if by_priority else "")),
        ("In flight", str(result["in_flight"])),
        ("Services", _services_line(result.get("services", {}))),
        ("Dead letters", _dead_line(result.get("dead_letters") or {})),
        ("Requests", _pairs(result.get("requests", {}))),
        (
            "Rates",
            f"{rates.get('submitted_per_s', 0):g} submitted/s, {rates.get('processed_per_s', 0):g} processed/s "
            f"(over {rates.get('window_s', 0):g} s)",
        ),
        ("Bad input", _pairs(result.get("bad_input", {}))),
        *_counter_rows(result.get("counters", {}), result.get("journal")),
        ("Log", _log_line(result.get("log", {}))),
        ("Retention", _retention_line(retention)),
    ]


def _member(ha: dict[str, Any], reached: str) -> str:
    where = f", reached at {reached}" if reached else ""
    return f"{ha.get('name')} of group {ha.get('group')}{where}"


def _etcd(ha: dict[str, Any]) -> str:
    if ha.get("etcd_ok") is None:
        return "etcd not heard yet"
    return "etcd ok" if ha.get("etcd_ok") else f"etcd UNREACHABLE: {ha.get('etcd_problem')}"


def _leader_line(result: dict[str, Any], reached: str) -> str:
    """A leader's HA row: who, its epoch, its standby (or that it goes on alone) and etcd."""
    ha = result.get("ha") or {}
    if ha.get("alone", True):
        standby = "ALONE: no standby in sync (losing this host would lose answered work)"
    else:
        standby = f"standby {ha.get('standby')} in sync"
    lag = f"lag {ha.get('lag_records', 0)} records / {ha.get('lag_ms', 0):g} ms"
    lag += f", {ha.get('held_answers', 0)} answers held"
    return f"leader {_member(ha, reached)}, epoch {result.get('epoch')}; {standby}; {lag}; {_etcd(ha)}"


def standby_lines(result: dict[str, Any], reached: str = "") -> list[tuple[str, str]]:
    """`zlb status` of a standby (no leader answered): whom it follows and how far it got."""
    ha = result.get("ha") or {}
    replica = ha.get("replica") or {}
    leader = ha.get("leader")
    control = (ha.get("leader_endpoints") or {}).get("control")
    if leader:
        leads = f"{leader}, epoch {result.get('epoch')}, control {control} (it did not answer)"
    else:
        leads = "none elected yet"
    heard = replica.get("heard_ms_ago")
    follows = (
        f"{replica.get('following')}: applied batch {replica.get('applied_seq')}, {replica.get('records')} records,"
        f" {'caught up' if replica.get('caught_up') else 'NOT caught up'}, heard {heard} ms ago,"
        f" {replica.get('snapshots')} snapshots"
        if replica.get("following")
        else "no one"
    )
    return [
        ("Balancer", f"standby {_member(ha, reached)}, up {_uptime(result.get('uptime_s', 0))}; {_etcd(ha)}"),
        ("Leader", leads),
        ("Follows", follows),
        ("Redirected", f"{ha.get('redirected', 0)} clients' and nodes' messages sent to the leader"),
        ("Endpoints", _pairs(result.get("endpoints", {}))),
    ]


def _retention_line(retention: dict[str, Any]) -> str:
    """The two windows of finished requests, what each holds now, and what happens past them."""
    r = {"results_for_s": 0, "results_max_bytes": 0, "ids_for_s": 0, "ids_max_bytes": 0, "ids_bytes": 0, **retention}
    count = f", {r['results_max']} results" if r.get("results_max") is not None else ""
    return (
        f"all pending and running requests; finished ones with their results for {r['results_for_s']:g} s"
        f" (at most {r['results_max_bytes'] / 2**20:g} MiB{count}, within the memory budget: {r.get('results_kept')}"
        f" kept, {r.get('results_left_early')} let go early), then their ids for {r['ids_for_s']:g} s (at most"
        f" {r['ids_max_bytes'] / 2**20:g} MiB: {r.get('ids_kept')} held in {r['ids_bytes'] / 2**20:.1f} MiB)."
        f" Past the results: {r.get('past_results')}. Past the ids: {r.get('past_ids')}."
        f" The last {r.get('log_events')} log events"
    )


def _log_line(log: dict[str, Any]) -> str:
    if not log.get("path"):
        return "off"
    problem = log.get("problem")
    return f"{log['path']}" + (f"  DEGRADED: {problem}" if problem else "")


# `zlb status --check` is a container probe (docs/DEPLOY.md): the whole command, the process's own start
# included, ends within --timeout (this by default, never more than MAX_CHECK_TIMEOUT_S), so it fits a
# probe's timeoutSeconds however long a loaded machine takes to start Python (seconds at load 12 on 2 cores).
# Only when the start alone ate the timeout does it still wait CHECK_MIN_WAIT_S for the answer (a live
# balancer answers in milliseconds). No curve diagnostic follows a missing answer: that costs 2 s more.
CHECK_TIMEOUT_S = 2.0
MAX_CHECK_TIMEOUT_S = 5.0
CHECK_MIN_WAIT_S = 0.5
# `zlb status --check --leader` against a balancer that answers but does not lead its group (issue 21's --ha).
EXIT_NOT_LEADER = 3
LEADER = "leader"


def leads(result: dict[str, Any]) -> bool:
    """Whether a `status` reply comes from the leader; a balancer without --ha names no role and is its own."""
    return result.get("role", LEADER) == LEADER


@click.command()
@endpoint_option("control")
@click.option(
    "--check",
    is_flag=True,
    help="Print nothing; exit 0 when the balancer answers, 1 when it does not within --timeout (a probe).",
)
@click.option(
    "--leader",
    is_flag=True,
    help=f"With --check: exit {EXIT_NOT_LEADER} unless the balancer leads its --ha group (one without --ha does).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=FiniteRange(0.05, 60),
    default=None,
    help="Seconds to wait for the answer; with --check, for the whole command, its start included.  "
    f"[default: {control_client.DEFAULT_TIMEOUT_S:g}; "
    f"with --check {CHECK_TIMEOUT_S:g}, at most {MAX_CHECK_TIMEOUT_S:g}]",
)
@json_option
def status(control: str, check: bool, leader: bool, timeout_s: float | None, as_json: bool) -> None:
    """Show uptime, totals, queue depth, rates and bad-input counters (of the HA group's leader, when one answers)."""
    if leader and not check:
        raise click.UsageError("--leader goes with --check")
    if check:
        run_check(control, leader, CHECK_TIMEOUT_S if timeout_s is None else timeout_s)
        return
    reached, result = control_reach(control, "status", timeout_s=timeout_s or control_client.DEFAULT_TIMEOUT_S)
    if as_json:
        print_json(result)
        return
    rows = status_lines(result, reached if result.get("role") else "")  # an HA member: say which one answered
    width = max(len(h) for h, _t in rows)
    for heading, text in rows:
        click.echo(f"{heading.ljust(width)}  {text}")
    return None


def run_check(control: str, leader: bool, timeout_s: float) -> None:
    """The probe: silent on success; one line on stderr and a non-zero exit otherwise."""
    if timeout_s > MAX_CHECK_TIMEOUT_S:
        raise click.BadParameter(f"--check waits at most {MAX_CHECK_TIMEOUT_S:g} s", param_hint="--timeout")
    wait_s = max(CHECK_MIN_WAIT_S, timeout_s - process_age_s())
    try:  # this member's own word: a standby's status is not followed to the leader
        result = control_client.call(control, "status", timeout_s=wait_s, follow_leader=False)
    except control_client.BalancerUnreachable:
        raise click.ClickException(
            f"no answer from the balancer at {control} within {timeout_s:g} s of the check's start"
            " (zlb status without --check says more)"
        ) from None
    except control_client.ControlError as exc:
        raise click.ClickException(str(exc)) from None
    if leader and not leads(result):
        click.echo(f"Error: the balancer at {control} is not the leader (role {result.get('role')!r})", err=True)
        raise SystemExit(EXIT_NOT_LEADER)


def process_age_s() -> float:
    """How long ago this process started (Linux: /proc/self/stat against the boot clock); 0.0 where unknown."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime: clock ticks after boot
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def follow_logs(stream: EventStream, backlog: list[dict[str, Any]], as_json: bool) -> None:
    """Print events as they happen after the `backlog`, skipping ones it already showed."""
    last_ts = backlog[-1]["ts"] if backlog else 0.0
    seen_at_last = {json.dumps(e, sort_keys=True) for e in backlog if e["ts"] == last_ts}
    try:
        while True:
            for event in stream.poll(0.5):
                record = ev.as_dict(event)
                if event[0] < last_ts or (event[0] == last_ts and json.dumps(record, sort_keys=True) in seen_at_last):
                    continue
                click.echo(json.dumps(record, ensure_ascii=False) if as_json else ev.timed_line(event))
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()


def _timed(record: dict[str, Any]) -> str:
    """A `logs` record (format "events") as `HH:MM:SS.mmm message`."""
    return f"{ev.clock_ms(record['ts'])} {record['message']}"


@click.command()
@endpoint_option("control")
@endpoint_option("events")
@click.option("--limit", type=click.IntRange(0), default=None, help="Only the newest N lines (at most 1000).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines as they happen (Ctrl-C stops).")
@click.option(
    "--download",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write every kept line to this file (like the seed's load_balancer_logs.txt).",
)
@json_option
def logs(control: str, events: str, limit: int | None, follow: bool, download: str | None, as_json: bool) -> None:
    """Show the balancer's recent log lines, or follow them live."""
    if download:
        lines = fetch_pages(control, "logs", 0, format="lines")  # as the log file has them: time, level, kind
        with open(download, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + ("\n" if lines else ""))
        click.echo(f"Wrote {len(lines)} log lines to {download}")
        return None
    if not follow:
        for record in control_call(control, "logs", limit=limit, format="events"):
            click.echo(json.dumps(record, ensure_ascii=False) if as_json else _timed(record))
        return None
    # Subscribe before reading the backlog so nothing falls between them; repeats are dropped by stamp.
    stream = EventStream(events, LOG_TOPICS)
    try:
        backlog = control_call(control, "logs", limit=20 if limit is None else limit, format="events")
    except click.ClickException:
        stream.close()
        raise
    for record in backlog:
        click.echo(json.dumps(record, ensure_ascii=False) if as_json else _timed(record))
    follow_logs(stream, backlog, as_json)
    return None


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

COMMANDS = [servers, requests, status, logs, down, up, drain]
