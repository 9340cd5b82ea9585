"""Which request statuses ended badly: the console's failures view, the balancer's filter of them.

The statuses themselves are the wire's (wire/protocol.py): pending, assigned, processed, failed, and
the work model's expired, cancelled and dead.
"""

from __future__ import annotations

from wire.protocol import STATUSES

FAILURE_STATUSES = ("failed", "expired", "cancelled", "dead")
# Every status a listing may be filtered by.
FILTER_STATUSES = (*STATUSES, *(s for s in FAILURE_STATUSES if s not in STATUSES))
