"""The seed's endpoints as plain synchronous functions over a real balancer.

`web.py` turns HTTP into calls here (on a worker thread, since control calls
block) and turns `HttpError` into JSON. Inputs arrive as the raw body, query
and path strings; `validation` types them before anything else happens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlencode

from client_node.client import DEFAULT_PRIORITY, json_payload
from http_gateway import control
from http_gateway.processes import MAX_CLIENTS, MAX_REQUESTS_PER_CLIENT, MAX_SERVERS, Processes
from http_gateway.submitter import Submission, Submitter
from http_gateway.validation import (
    MAX_WIRE_INT,
    HttpError,
    int_field,
    json_object,
    number_field,
    path_int,
    query_choice,
    query_int,
    query_page_key,
)
from wire import events as ev
from wire.limits import MAX_DEADLINE_MS
from wire.protocol import STATUSES, service_error

# /logs returns at most this many newest lines (a control reply's limit); /logs/download pages through all.
LOG_PAGE = 1000
# /requests without ?limit= lists this many (oldest first); ?limit=0 lists all, MAX_REQUEST_ROWS a reply.
DEFAULT_REQUEST_LIMIT = 1000
# The balancer answers ?offset= only this far (balancer/control.py); beyond, page with ?after=.
MAX_REQUEST_OFFSET = 10_000
# One reply lists at most this many (?limit=0 or more included), then a Link to the rest: a reply is
# built whole in the gateway's memory, and ten concurrent 300,000-row lists held ~500 MB there.
MAX_REQUEST_ROWS = 50_000
# How long /send_request waits for the balancer to have queued the request before answering 503.
ACK_TIMEOUT_S = 2.0
CONTROL_TIMEOUT_S = 3.0
# Simulated work one request may ask for: an hour.
MAX_COST_MS = 3_600_000.0
LOG_FILE_NAME = "load_balancer_logs.txt"
ADMIN_VERBS = {"down": "down", "up": "up", "drain": "draining"}


@dataclass
class BalancerLink:
    """Where the balancer is and how long to wait for it."""

    control: str
    frontend: str
    events: str
    backend: str
    timeout_s: float = CONTROL_TIMEOUT_S

    def call(self, cmd: str, **args: Any) -> Any:
        """A control command; the balancer's error becomes a 400 unless the caller maps it."""
        try:
            return control.call(self.control, cmd, self.timeout_s, **args)
        except control.NoLeader:
            raise  # only standbys answered: 503, as with no balancer
        except control.ControlError as exc:
            raise HttpError(400, str(exc)) from None

    def find(self, client_id: int, request_id: int) -> dict[str, Any] | None:
        """The balancer's row for this request, or None when it does not know it."""
        try:
            return control.call(self.control, "request", self.timeout_s, client_id=client_id, request_id=request_id)
        except control.NoLeader:
            raise
        except control.ControlError:
            return None

    def known(self, client_id: int, request_id: int) -> bool:
        """True when the balancer remembers this request."""
        return self.find(client_id, request_id) is not None


class RequestPage(NamedTuple):
    """/requests: the rows (the seed's list) and the query of the next page, when more follow."""

    rows: list[Any]
    next_query: str | None


def _work_shape(spec: dict[str, Any]) -> tuple[str | None, float | None]:
    """The optional "service" (a name) and "deadline_ms" of a /send_request body, checked (400 otherwise)."""
    service = spec.get("service")
    if service is not None and service_error(service):
        raise HttpError(400, f"'service': {service_error(service)}")
    deadline_ms = None if spec.get("deadline_ms") is None else int_field(spec, "deadline_ms", maximum=MAX_DEADLINE_MS)
    return service, None if deadline_ms is None else deadline_ms / 1000


class Gateway:
    """Serves the seed's endpoints from a real balancer."""

    def __init__(self, link: BalancerLink, submitter: Submitter, processes: Processes) -> None:
        self.link = link
        self.submitter = submitter
        self.processes = processes

    def configure(self, body: bytes) -> dict[str, int]:
        """Reach `num_servers` nodes (joined when this returns) and start `num_clients` clients."""
        spec = json_object(body)
        servers = int_field(spec, "num_servers", maximum=MAX_SERVERS)
        clients = int_field(spec, "num_clients", maximum=MAX_CLIENTS)
        per_client = int_field(spec, "requests_per_client", maximum=MAX_REQUESTS_PER_CLIENT)

        def announce() -> None:
            self.link.call("configure", servers=servers, clients=clients)

        self.processes.configure(servers, clients, per_client, announce)
        return {"servers": servers, "clients": clients, "requests_per_client": per_client}

    def send_request(self, body: bytes, default_cost_ms: float) -> dict[str, str]:
        """Queue one request; answers once the balancer has it, so /requests shows it next."""
        spec = json_object(body)
        client_id = int_field(spec, "client_id")
        request_id = int_field(spec, "request_id")
        priority = int_field(spec, "priority", minimum=-MAX_WIRE_INT, default=DEFAULT_PRIORITY)
        cost = number_field(spec, "cost_ms", default_cost_ms, MAX_COST_MS)
        service, deadline_s = _work_shape(spec)
        known = self._find(client_id, request_id)
        if known is not None:
            raise HttpError(409, f"Request {request_id} from Client {client_id} already exists ({known['status']})")
        payload = json_payload(cost, spec.get("payload"))
        self.submitter.submit(Submission(client_id, request_id, priority, payload, service, deadline_s))
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while self._find(client_id, request_id) is None:
            if time.monotonic() > deadline:
                raise HttpError(
                    503,
                    f"Request {request_id} was not confirmed queued within {ACK_TIMEOUT_S:g} s; it may still be:"
                    " check GET /requests before sending it again",
                )
            time.sleep(0.01)  # wait-ok: a deadline-bounded poll of the balancer
        return {"message": f"Request {request_id} added successfully!"}

    def cancel(self, body: bytes) -> dict[str, Any]:
        """Cancel a request ({"client_id", "request_id"}): the balancer's answer (what it was; a finished
        one's result preview); 404 when it does not know it."""
        spec = json_object(body)
        client_id, request_id = int_field(spec, "client_id"), int_field(spec, "request_id")
        if self._find(client_id, request_id) is None:
            raise HttpError(404, f"Request {request_id} from Client {client_id} not found")
        return self.link.call("cancel", client_id=client_id, request_id=request_id)

    def dead(self, query: Any) -> dict[str, Any]:
        """The dead letters (?limit=, at most 1000) and what their bounds dropped."""
        limit = query_int(query, "limit", 0, LOG_PAGE)
        return self.link.call("dead", limit=LOG_PAGE if limit is None else limit)

    def retry(self, body: bytes) -> dict[str, Any]:
        """Queue a dead letter again ({"client_id", "request_id"}), or every one ({"all": true})."""
        spec = json_object(body)
        if spec.get("all") is True:
            return self.link.call("retry", all=True)
        return self.link.call("retry", client_id=int_field(spec, "client_id"), request_id=int_field(spec, "request_id"))

    def _find(self, client_id: int, request_id: int) -> dict[str, Any] | None:
        return self.link.find(client_id, request_id)

    def requests(self, query: Any) -> RequestPage:
        """Requests known to the balancer in arrival order (?status=, ?client=, ?limit= with 0 for all, at most
        MAX_REQUEST_ROWS a reply,
        ?after= the key of a Link: rel="next" header, ?offset= up to 10,000), and the next page's query."""
        status = query_choice(query, "status", STATUSES)
        client = query_int(query, "client")
        after = query_page_key(query, "after")
        offset = query_int(query, "offset", default=0) or 0
        if offset > MAX_REQUEST_OFFSET:
            raise HttpError(
                400,
                f"query parameter 'offset' is at most {MAX_REQUEST_OFFSET}: page with ?after=,"
                ' the key in each reply\'s Link: rel="next" header',
            )
        asked = query_int(query, "limit", default=DEFAULT_REQUEST_LIMIT)
        limit = min(asked or MAX_REQUEST_ROWS, MAX_REQUEST_ROWS)
        rows: list[Any] = []
        key: str | None = after
        while key is not None and len(rows) < limit:  # a control reply holds at most one page
            want = min(LOG_PAGE, limit - len(rows))
            page = self.link.call("requests", after=key, offset=offset, limit=want, status=status, client=client)
            offset = 0
            rows.extend(page["requests"])
            key = page["next"]
        if key is None:
            return RequestPage(rows, None)
        filters = {"status": status, "client": client, "limit": asked}
        return RequestPage(rows, urlencode({"after": key, **{k: v for k, v in filters.items() if v is not None}}))

    def servers(self) -> list[Any]:
        """The seed's server rows plus state, load, heartbeat age, pid and host."""
        return self.link.call("servers")

    def admin(self, verb: str, raw_id: str) -> dict[str, str]:
        """down / up / drain one server; 404 for an unknown id, 409 for a refused transition."""
        server_id = path_int(raw_id)
        try:
            control.call(self.link.control, verb, self.link.timeout_s, server_id=server_id)
        except control.NoLeader:
            raise
        except control.ControlError as exc:
            raise HttpError(404 if "not found" in str(exc) else 409, str(exc)) from None
        return {"message": f"Server {server_id} marked as {ADMIN_VERBS[verb]}"}

    def logs(self, query: Any) -> dict[str, list[str]]:
        """The newest log lines in the seed's wording, each after its time, `HH:MM:SS.mmm ` (?limit=, at most 1000)."""
        limit = query_int(query, "limit", maximum=LOG_PAGE, default=LOG_PAGE)
        records = self.link.call("logs", limit=limit, format="events")
        return {"logs": [f"{ev.clock_ms(r['ts'])} {r['message']}" for r in records]}

    def logs_text(self) -> str:
        """Every kept log line as the balancer's log file has it (time, level, kind, message), for /logs/download."""
        lines: list[str] = []
        while True:
            page = self.link.call("logs", offset=len(lines), limit=LOG_PAGE, format="lines")
            lines.extend(page)
            if len(page) < LOG_PAGE:
                return "\n".join(lines) + ("\n" if lines else "")

    def snapshot(self) -> dict[str, Any]:
        """Status, servers and recent log for the dashboard, or `{"up": False}` with the balancer away."""
        try:
            got = control.call(self.link.control, "snapshot", self.link.timeout_s, logs=50)
        except (control.BalancerUnreachable, control.ControlError) as exc:
            return {"up": False, "error": str(exc)}
        return {"up": True, **got}

    def status_and_servers(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """What /metrics needs; raises BalancerUnreachable with the balancer away (or only a standby there)."""
        status = self.link.call("status")
        if status.get("role") == "standby":  # no leader answered: a standby serves no work to measure
            raise control.NoLeader(f"only a standby answered ({status.get('ha', {}).get('name')}); no leader did")
        return status, self.link.call("servers")
