"""The web console's reads beyond the seed's: one page of requests, one request in detail.

Synchronous, like api.py: web.py runs them on a worker thread (each makes one control call) and adds
what the hub remembers (a request's events and attempts) on the event loop. The balancer pages and
filters (balancer/control.py, `find_requests`): the console never receives more than one page, however
many requests the balancer keeps.
"""

from __future__ import annotations

from typing import Any

from http_gateway import control
from http_gateway.api import BalancerLink
from http_gateway.validation import MAX_WIRE_INT, HttpError, query_choice, query_int, query_page_key
from wire.statuses import FAILURE_STATUSES, FILTER_STATUSES

# Rows per page unless asked, and at most (the balancer's own cap is higher).
PAGE_ROWS = 50
MAX_PAGE_ROWS = 200
# `?status=failures`: every status of a request that ended badly, in one list.
FAILURES = "failures"
# Payload and result previews, in bytes.
PREVIEW_BYTES = 2048


class ConsoleQueries:
    """The console's request list and request detail, over a balancer link."""

    def __init__(self, link: BalancerLink) -> None:
        self.link = link

    def requests(self, query: Any) -> dict[str, Any]:
        """One page (?limit=, at most 200) filtered by ?status= (or `failures`), ?client=, ?priority=, or the
        request ?id=; ?after= the `next` of the previous page. Rows in arrival order, and the next key."""
        status = query_choice(query, "status", (*FILTER_STATUSES, FAILURES))
        args: dict[str, Any] = {
            "client": query_int(query, "client"),
            "priority": query_int(query, "priority", minimum=-MAX_WIRE_INT - 1),
            "request_id": query_int(query, "id"),
            "statuses": None if status is None else list(FAILURE_STATUSES) if status == FAILURES else [status],
        }
        limit = query_int(query, "limit", minimum=1, maximum=MAX_PAGE_ROWS, default=PAGE_ROWS)
        after = query_page_key(query, "after")
        given = {name: value for name, value in args.items() if value is not None}
        page = self.link.call("find_requests", after=after, limit=limit, **given)
        return {"requests": page["requests"], "next": page["next"], "limit": limit}

    def request_detail(self, query: Any) -> dict[str, Any]:
        """?client=&id=: the request's row, its payload or result preview; 404 when the balancer has no such request."""
        client_id, request_id = query_int(query, "client"), query_int(query, "id")
        if client_id is None or request_id is None:
            raise HttpError(400, "query parameters 'client' and 'id' name the request")
        try:
            return control.call(
                self.link.control,
                "request_detail",
                self.link.timeout_s,
                client_id=client_id,
                request_id=request_id,
                preview=PREVIEW_BYTES,
            )
        except control.ControlError as exc:
            raise HttpError(404 if "not found" in str(exc) else 400, str(exc)) from None
