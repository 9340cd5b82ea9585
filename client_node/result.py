"""What a Client hands over: a Pending handle per submitted request, then its Result."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wire import protocol as p

if TYPE_CHECKING:  # the Client module imports this one
    from client_node.client import Client


@dataclass(slots=True)
class Result:
    """What came back for one request."""

    client_id: int
    request_id: int
    priority: int
    # processed, failed, rejected; expired (its deadline passed), cancelled, dead (failed every attempt);
    # or not_kept (finished earlier; the result is no longer kept)
    status: str
    server_id: int | None
    attempts: int
    body: bytes
    replay: bool = False  # the stored result of a request id finished before this process asked

    @property
    def ok(self) -> bool:
        return self.status == p.PROCESSED

    @property
    def not_kept(self) -> bool:
        """The request id was finished earlier and the balancer no longer keeps its result (the body says
        whether it was processed or failed): it was not run again, and its result cannot be had."""
        return self.status == p.NOT_KEPT

    @property
    def expired(self) -> bool:
        """Its deadline passed before it finished: it did not run, or was stopped."""
        return self.status == p.EXPIRED

    def value(self) -> Any:
        """The body decoded as JSON when it is JSON, else as text."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return self.body.decode("utf-8", "replace")

    def as_dict(self) -> dict[str, Any]:
        """The JSON line `zlb client --json` prints."""
        return {
            "client_id": self.client_id,
            "request_id": self.request_id,
            "priority": self.priority,
            "status": self.status,
            "server_id": self.server_id,
            "attempts": self.attempts,
            "replay": self.replay,
            "result": self.value(),
        }


class Pending:
    """A submitted request; `result()` waits for it."""

    __slots__ = ("_client", "request_id")

    def __init__(self, client: Client, request_id: int) -> None:
        self._client = client
        self.request_id = request_id

    def done(self) -> bool:
        """True once the result has arrived (without waiting)."""
        return self._client.has_result(self.request_id)

    def result(self, timeout: float | None = None) -> Result:
        """Wait for the result; raise TimeoutError after `timeout` seconds."""
        return self._client.wait(self.request_id, timeout)

    def cancel(self) -> None:
        """Ask the balancer to cancel this request: waiting, it never runs; running, its node is told to
        stop. result() then says how it ended: `cancelled`, or the result it already had."""
        self._client.cancel(self.request_id)
