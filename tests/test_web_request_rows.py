"""GET /requests' paging in the gateway (pure logic: a stand-in for the balancer's control pages)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from starlette.datastructures import QueryParams

from http_gateway import api


class PagedBalancer(api.BalancerLink):
    """Answers `requests` as the balancer does: at most `limit` rows after a key, and the next key."""

    def __init__(self, total: int) -> None:
        super().__init__("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3", "tcp://127.0.0.1:4")
        self.total = total
        self.calls = 0

    def call(self, cmd: str, **args: Any) -> Any:
        assert cmd == "requests"
        self.calls += 1
        start = int(args["after"].partition("-")[2] or "0", 16)  # keys as the balancer makes them: HEX-HEX
        end = min(self.total, start + args["limit"])
        more = f"0-{end:x}" if end < self.total else None
        return {"requests": [{"request_id": i} for i in range(start, end)], "next": more}


def test_limit_zero_lists_all_when_they_fit_in_one_reply() -> None:
    gateway = api.Gateway(PagedBalancer(2_500), None, None)  # type: ignore[arg-type]
    page = gateway.requests(QueryParams("limit=0"))
    assert [row["request_id"] for row in page.rows] == list(range(2_500)) and page.next_query is None


def test_limit_zero_stops_at_the_reply_bound_and_links_the_rest() -> None:
    link = PagedBalancer(api.MAX_REQUEST_ROWS + 1_234)
    gateway = api.Gateway(link, None, None)  # type: ignore[arg-type]
    first = gateway.requests(QueryParams("limit=0"))
    assert len(first.rows) == api.MAX_REQUEST_ROWS and first.next_query is not None
    query = parse_qs(first.next_query)
    assert query["limit"] == ["0"] and query["after"] == [f"0-{api.MAX_REQUEST_ROWS:x}"]
    rest = gateway.requests(QueryParams(first.next_query))
    assert [row["request_id"] for row in rest.rows] == list(range(api.MAX_REQUEST_ROWS, link.total))
    assert rest.next_query is None


def test_a_limit_past_the_bound_is_cut_to_it() -> None:
    gateway = api.Gateway(PagedBalancer(api.MAX_REQUEST_ROWS * 2), None, None)  # type: ignore[arg-type]
    page = gateway.requests(QueryParams(f"limit={api.MAX_REQUEST_ROWS * 2}"))
    assert len(page.rows) == api.MAX_REQUEST_ROWS and page.next_query is not None
