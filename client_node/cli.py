"""`zlb client` and `zlb send`: submit requests and print their results."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TimeRemainingColumn
from rich.text import Text

from client_node.client import (
    DEFAULT_PRIORITY,
    DEFAULT_RETRY_S,
    BalancerUnreachable,
    Client,
    ClientIdInUse,
    Result,
    json_payload,
)
from client_node.stall import StallWatch
from wire import control_client, limits
from wire import protocol as p
from wire.handshake import curve_trouble
from wire.options import ID_RANGE, endpoint_option, millis_range, seconds_range, service_names


def describe(result: Result) -> str:
    """One human line per result."""
    if result.status == "rejected":
        return f"Request {result.request_id} from Client {result.client_id} rejected: {result.value()}"
    if result.not_kept:
        return (
            f"Request {result.request_id} from Client {result.client_id} was not run again: {result.value()};"
            " a new request id runs it again"
        )
    ended = _ended(result)
    if ended:
        return f"Request {result.request_id} from Client {result.client_id} {ended}"
    where = f"Server {result.server_id}" if result.server_id is not None else "the balancer"
    value = json.dumps(result.value(), ensure_ascii=False)
    if result.replay:
        return (
            f"Request {result.request_id} from Client {result.client_id} already {result.status} by {where} "
            f"(priority {result.priority}, attempt {result.attempts}); this is the stored result: {value}"
        )
    return (
        f"Request {result.request_id} from Client {result.client_id} {result.status} by {where} "
        f"(priority {result.priority}, attempt {result.attempts}): {json.dumps(result.value(), ensure_ascii=False)}"
    )


def _ended(result: Result) -> str:
    """How a request that did not run to the end ended, in words ('' for any other status)."""
    said = result.body.decode("utf-8", "replace")
    if result.status == p.EXPIRED:
        return f"expired: {said}" + ("" if result.server_id is None else f" (stopped on Server {result.server_id})")
    if result.status == p.CANCELLED:
        return "cancelled" + ("" if result.server_id is None else f" (stopped on Server {result.server_id})")
    if result.status == p.DEAD:
        return f"is dead after {result.attempts} attempts: {said} (zlb dead lists it, zlb retry runs it again)"
    return ""


# A wait for results is cut into slices this long, so a stall can be noticed while it lasts.
WAIT_SLICE_S = 0.5


def arriving(client: Client, timeout: float | None, watch: StallWatch | None) -> Iterator[Result]:
    """Results as they arrive until none is outstanding; TimeoutError past `timeout` s; `watch` sees each wait."""
    deadline = None if timeout is None else time.monotonic() + timeout
    yield from client.take_results()
    while client.unanswered:
        left = WAIT_SLICE_S if deadline is None else deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no result within {timeout:g} s")
        got = client.pump(min(left, WAIT_SLICE_S))
        yield from client.take_results()
        if watch is not None:
            watch.check(time.monotonic(), got, client.unanswered)


def stall_watch(control: str | None, timeout: float | None) -> StallWatch | None:
    """A StallWatch that says on stderr why requests wait and how long this command will go on waiting."""
    if control is None:
        return None
    until = f"until --timeout {timeout:g} s" if timeout else "without end (no --timeout; Ctrl-C stops)"

    def say(line: str) -> None:
        click.echo(f"Waiting: {line}; the balancer keeps the requests, this command waits {until}", err=True)

    return StallWatch(control, say, time.monotonic())


def collect(client: Client, timeout: float | None, as_json: bool, control: str | None = None) -> int:
    """Print results as they arrive; return the count that did not succeed."""
    bad = 0
    try:
        for result in arriving(client, timeout, stall_watch(control, timeout)):
            click.echo(json.dumps(result.as_dict(), ensure_ascii=False) if as_json else describe(result))
            bad += not result.ok
    except TimeoutError:
        missing = client.outstanding
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        click.echo(f"Error: timed out after {timeout:g} s; {len(missing)} unanswered: {shown}", err=True)
        bad += len(missing)
    return bad


# With no answer at all from the balancer for this long, a command gives up and says where it looked.
CONNECT_TIMEOUT_S = 5.0


# A balancer at its memory budget answers every submit busy: say so once per this many seconds.
BUSY_NOTICE_INTERVAL_S = 5.0


class BusyNotice:
    """Prints the balancer's busy reason on stderr, at most once per BUSY_NOTICE_INTERVAL_S."""

    def __init__(self) -> None:
        self.count = 0
        self._said_at: float | None = None

    def __call__(self, request_id: int, reason: str) -> None:
        self.count += 1
        now = time.monotonic()
        if self._said_at is None or now - self._said_at >= BUSY_NOTICE_INTERVAL_S:
            self._said_at = now
            click.echo(f"Balancer busy ({reason}); {self.count} submits so far wait here until it has room", err=True)


def run_session(frontend: str, client_id: int, retry_s: float, work: Callable[[Client], int]) -> None:
    """Open a client, run `work` with it and exit with its count of failures (1 if any); one line on refusal."""
    try:
        with Client(frontend, client_id, retry_s=retry_s, connect_timeout_s=CONNECT_TIMEOUT_S) as c:
            c.on_busy = BusyNotice()
            bad = work(c)
    except ClientIdInUse as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except BalancerUnreachable as exc:
        # Silence is all a curve mismatch shows on the client's socket: a second connection tells why.
        trouble = curve_trouble(frontend)
        said = f"no answer from the balancer at {frontend}: {trouble}" if trouble else str(exc)
        click.echo(f"Error: {said}", err=True)
        sys.exit(1)
    sys.exit(1 if bad else 0)


def unused_request_ids(control: str, client_id: int, count: int) -> int:
    """The first of `count` request ids `client_id` has not used, reserved by the balancer for this run
    (control `next_request_id`); exit 1 with one line when it cannot be asked."""
    try:
        reply = control_client.call(
            control, "next_request_id", timeout_s=CONNECT_TIMEOUT_S, client_id=client_id, count=count
        )
        return int(reply["first_request_id"])
    except control_client.BalancerUnreachable as exc:
        trouble = curve_trouble(control)
        said = f"no answer from the balancer at {control}: {trouble}" if trouble else str(exc)
    except (control_client.ControlError, KeyError, TypeError, ValueError) as exc:
        said = f"the balancer at {control} did not hand out request ids: {exc}"
    click.echo(
        f"Error: {said}; asked which request ids client id {client_id} has not used"
        " (set --control or ZLB_CONTROL, or pass --first-request-id)",
        err=True,
    )
    sys.exit(1)


# Below this many requests a line per result is readable; above it a progress bar is.
PROGRESS_MIN_REQUESTS = 50


class RateColumn(ProgressColumn):
    """Results per second, as rich estimates it over the recent past."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} req/s" if task.speed else "- req/s", style="cyan")


def collect_with_progress(
    client: Client, timeout: float | None, total: int, console: Console, control: str | None = None
) -> int:
    """Show a progress bar with rate and ETA; print only the failures and a summary; return the bad count."""
    bad = 0
    started = time.monotonic()
    columns = (BarColumn(), MofNCompleteColumn(), RateColumn(), TimeRemainingColumn())
    with Progress("[bold]results", *columns, console=console, transient=True) as progress:
        task = progress.add_task("results", total=total)
        try:
            for result in arriving(client, timeout, stall_watch(control, timeout)):
                progress.advance(task)
                if not result.ok:
                    bad += 1
                    progress.console.print(describe(result), markup=False, highlight=False)
        except TimeoutError:
            missing = client.outstanding
            progress.console.print(f"Error: timed out after {timeout:g} s; {len(missing)} unanswered", markup=False)
            bad += len(missing)
    elapsed = max(time.monotonic() - started, 1e-9)
    console.print(
        f"{total} requests: {total - bad} processed, {bad} not, in {elapsed:.1f} s ({total / elapsed:,.0f} req/s)",
        markup=False,
        highlight=False,
    )
    return bad


# `zlb send` waits this long by default: one request whose node never comes should not hang a shell for ever.
# The request stays with the balancer; sending the same ids again later collects its result.
SEND_TIMEOUT_S = 60.0


def _timeout_option(default: float | None = None) -> Callable[[Any], Any]:
    return click.option(
        "--timeout",
        type=seconds_range(0, min_open=True),
        default=default,
        show_default=default is not None,
        help="Give up after this many seconds (exit 1, listing the unanswered ids); the requests stay queued.",
    )


_service_option = click.option(
    "--service",
    default=None,
    callback=service_names,
    help="Run only on nodes that offer this service (zlb server --service).  [default: default]",
)
_deadline_option = click.option(
    "--deadline-ms",
    type=click.IntRange(0, limits.MAX_DEADLINE_MS),
    default=None,
    help="End the request 'expired' if it has not finished this long after the balancer took it"
    " (waiting, it never runs; running, its node is told to stop). Exit 1 then.",
)


def _json_payload(_ctx: click.Context, _param: click.Parameter, value: str | None) -> object:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None


@click.command()
@endpoint_option("frontend")
@endpoint_option("control")
@click.option("--id", "client_id", type=ID_RANGE, default=0, show_default=True, help="Client id.")
@click.option("--requests", "count", type=click.IntRange(0), default=2, show_default=True, help="Requests to send.")
@click.option("--priority", type=int, default=DEFAULT_PRIORITY, show_default=True, help="Lower is more urgent.")
@click.option("--cost-ms", type=millis_range(), default=0, show_default=True, help="Simulated work per request.")
@click.option(
    "--first-request-id",
    type=ID_RANGE,
    default=None,
    help="Id of the first request; the rest follow. Default: the balancer hands out ids this client id has"
    " not used (asked on --control), so every run sends new requests.",
)
@click.option(
    "--retry-s",
    type=seconds_range(0, min_open=True),
    default=DEFAULT_RETRY_S,
    show_default=True,
    help="Re-send an unanswered request after this long.",
)
@_timeout_option()
@_service_option
@_deadline_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per result.")
def client(
    frontend: str,
    control: str,
    client_id: int,
    count: int,
    priority: int,
    cost_ms: float,
    first_request_id: int | None,
    retry_s: float,
    timeout: float | None,
    service: str | None,
    deadline_ms: int | None,
    as_json: bool,
) -> None:
    """Send N requests and wait for every result; exit 0 only if all were processed.

    A client id is a name: other processes may send under it at the same time. Without
    --first-request-id the balancer hands this run ids the client id has not used."""
    if first_request_id is None:
        first_request_id = unused_request_ids(control, client_id, count) if count else 1
    deadline = None if deadline_ms is None else deadline_ms / 1000

    def work(c: Client) -> int:
        for i in range(count):
            payload = json_payload(cost_ms, {"n": i})
            c.submit(payload, priority, first_request_id + i, service=service, deadline=deadline)
        if not as_json and count >= PROGRESS_MIN_REQUESTS and sys.stdout.isatty():
            return collect_with_progress(c, timeout, count, Console(), control)
        return collect(c, timeout, as_json, control)

    run_session(frontend, client_id, retry_s, work)


@click.command()
@endpoint_option("frontend")
@endpoint_option("control")
@click.option("--client-id", type=ID_RANGE, required=True, help="Client id.")
@click.option("--request-id", type=ID_RANGE, required=True, help="Request id.")
@click.option("--priority", type=int, default=DEFAULT_PRIORITY, show_default=True, help="Lower is more urgent.")
@click.option("--cost-ms", type=millis_range(), default=0, show_default=True, help="Simulated work.")
@click.option("--payload", callback=_json_payload, default=None, help="JSON handed to the handler.")
@_timeout_option(SEND_TIMEOUT_S)
@_service_option
@_deadline_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def send(
    frontend: str,
    control: str,
    client_id: int,
    request_id: int,
    priority: int,
    cost_ms: float,
    payload: object,
    timeout: float | None,
    service: str | None,
    deadline_ms: int | None,
    as_json: bool,
) -> None:
    """Send one request (like the seed's POST /send_request) and print its result.

    Request ids are idempotency keys: sending a used id again prints the stored
    result, saying so, or, once the balancer no longer keeps it, that it was
    processed earlier; the same id with another payload is rejected.
    """

    deadline = None if deadline_ms is None else deadline_ms / 1000

    def work(c: Client) -> int:
        c.submit(json_payload(cost_ms, payload), priority, request_id, service=service, deadline=deadline)
        return collect(c, timeout, as_json, control)

    run_session(frontend, client_id, DEFAULT_RETRY_S, work)
