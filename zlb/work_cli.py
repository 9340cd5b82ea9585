"""The work-model admin commands: zlb cancel, zlb dead, zlb retry (balancer/control.py: cancel, dead, retry)."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from wire.options import endpoint_option, json_option
from zlb.admin_cli import control_call, print_json, print_table


@click.command()
@endpoint_option("control")
@click.option("--client-id", type=click.IntRange(0), required=True, help="The request's client id.")
@click.option("--request-id", type=click.IntRange(0), required=True, help="The request id.")
@json_option
def cancel(control: str, client_id: int, request_id: int, as_json: bool) -> None:
    """Cancel a request: waiting, it never runs; running, its node is told to stop it and takes other work at
    once. Its sender is told (status cancelled). A finished request stays as it was: its result is shown."""
    answer = control_call(control, "cancel", client_id=client_id, request_id=request_id)
    if as_json:
        print_json(answer)
        return
    who = f"Request {request_id} from Client {client_id}"
    was = answer["was"]
    if was == "finished":
        result = answer.get("result") or {}
        shown = result.get("text", "") if result.get("encoding") == "utf-8" else f"({result.get('bytes')} bytes)"
        click.echo(f"{who} had already finished ({answer['request']['status']}); not cancelled. Result: {shown}")
        return
    where = {"pending": "while it waited: it never ran", "dead": "from the dead letters: it never runs again"}
    click.echo(f"{who} cancelled " + where.get(was, "while it ran: its node was told to stop it"))


@click.command()
@endpoint_option("control")
@click.option("--limit", type=click.IntRange(0), default=1000, show_default=True, help="The newest this many.")
@json_option
def dead(control: str, limit: int, as_json: bool) -> None:
    """List the dead letters: requests that failed every attempt, with their attempts and last error."""
    answer = control_call(control, "dead", limit=limit)
    if as_json:
        print_json(answer)
        return
    rows = answer["dead"]
    for row in rows:
        row["died"] = time.strftime("%H:%M:%S", time.localtime(row["died_at"]))
    columns = [("client_id", "CLIENT"), ("request_id", "REQUEST"), ("priority", "PRIORITY"), ("service", "SERVICE")]
    columns += [("attempts", "ATTEMPTS"), ("died", "DIED"), ("error", "LAST ERROR")]
    print_table(rows, columns)
    click.echo(_summary(answer), err=True)


def _summary(answer: dict[str, Any]) -> str:
    line = f"{answer['count']} dead letters ({answer['bytes']} bytes; at most {answer['max_count']})"
    if answer["dropped"]:
        line += f"; {answer['dropped']} dropped beyond the bounds ({answer['dropped_bytes']} bytes), ended failed"
    return line


@click.command()
@endpoint_option("control")
@click.option("--client-id", type=click.IntRange(0), default=None, help="The request's client id.")
@click.option("--request-id", type=click.IntRange(0), default=None, help="The request id.")
@click.option("--all", "every", is_flag=True, help="Retry every dead letter.")
@json_option
def retry(control: str, client_id: int | None, request_id: int | None, every: bool, as_json: bool) -> None:
    """Queue a dead letter again (its attempts from zero); its outcome is kept for zlb request or a re-send."""
    if every == (client_id is not None or request_id is not None) or (not every and None in (client_id, request_id)):
        raise click.UsageError("give --client-id and --request-id, or --all")
    if every:
        answer = control_call(control, "retry", all=True)
    else:
        answer = control_call(control, "retry", client_id=client_id, request_id=request_id)
    if as_json:
        click.echo(json.dumps(answer))
        return
    which = "every dead letter" if every else f"Request {request_id} from Client {client_id}"
    click.echo(f"Retried {which}: {answer['retried']} queued again")


COMMANDS = [cancel, dead, retry]
