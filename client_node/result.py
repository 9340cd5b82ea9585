"""What came back for one request: the record a Client hands over."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from wire import protocol as p


@dataclass(slots=True)
class Result:
    """What came back for one request."""

    client_id: int
    request_id: int
    priority: int
    status: str  # processed, failed or rejected
    server_id: int | None
    attempts: int
    body: bytes
    replay: bool = False  # the stored result of a request id finished before this process asked

    @property
    def ok(self) -> bool:
        return self.status == p.PROCESSED

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
