"""Typed validation of everything a caller sends: paths, query strings and JSON bodies.

Every check raises `HttpError` with a 4xx status and a message naming the
field, so no input can reach a handler malformed and none can cause a 500:
integers are ASCII digits of bounded length before `int()` sees them
(`str.isdigit` accepts '²'), JSON nesting is bounded before `json.loads`
recurses, and floats must be finite.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# The wire carries signed 64-bit integers; ids and priorities beyond that cannot be sent.
MAX_WIRE_INT = 2**63 - 1
# Request bodies are small JSON objects; anything larger is refused with 413.
MAX_BODY_BYTES = 64 * 1024
# Deeper JSON than this is refused before parsing (the seed's bodies are flat objects).
MAX_JSON_DEPTH = 32
_ASCII_INT = re.compile(r"-?[0-9]{1,19}")
# A page key from the balancer's `next` (/requests?after=): hex digits and one dash, short.
_PAGE_KEY = re.compile(r"[0-9a-f]{1,20}-[0-9a-f]{1,20}")


class HttpError(Exception):
    """A request that cannot be served; becomes `{"error": message}` with this status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _json_depth_ok(text: str, limit: int) -> bool:
    """True when brackets outside strings nest at most `limit` deep (a linear scan, no recursion)."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return False
        elif char in "]}":
            depth -= 1
    return True


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object (bounded size and depth, no NaN/Infinity), or a 400/413."""
    if len(body) > MAX_BODY_BYTES:
        raise HttpError(413, f"request body must be at most {MAX_BODY_BYTES} bytes")
    if not body.strip():
        raise HttpError(400, "request body must be a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "request body is not valid JSON: not UTF-8") from None
    if not _json_depth_ok(text, MAX_JSON_DEPTH):
        raise HttpError(400, f"request body is not valid JSON: nested deeper than {MAX_JSON_DEPTH}")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HttpError(400, "request body must be a JSON object")
    return value


def int_field(
    obj: dict[str, Any], name: str, minimum: int = 0, maximum: int = MAX_WIRE_INT, default: int | None = None
) -> int:
    """An integer field of a JSON body within [minimum, maximum], or a 400 naming the field."""
    if name not in obj:
        if default is not None:
            return default
        raise HttpError(400, f"missing field '{name}'")
    value = obj[name]
    if type(value) is not int:  # bool is an int subclass; true is not a count
        raise HttpError(400, f"'{name}' must be an integer, got {_short(value)}")
    return _bounded(f"'{name}'", value, minimum, maximum)


def number_field(obj: dict[str, Any], name: str, default: float, maximum: float) -> float:
    """A finite non-negative number field (int or float), or a 400."""
    value = obj.get(name, default)
    # An int is compared as it is: math.isfinite would overflow on one of 400 digits.
    finite = type(value) is int or (type(value) is float and math.isfinite(value))
    if not finite or not 0 <= value <= maximum:
        raise HttpError(400, f"'{name}' must be a finite number from 0 to {maximum:g}, got {_short(value)}")
    return float(value)


def path_int(raw: str, what: str = "server id") -> int:
    """A non-negative integer path segment in ASCII digits, or a 400."""
    if not raw or len(raw) > 19 or not raw.isascii() or not raw.isdigit():
        raise HttpError(400, f"{what} must be a non-negative integer of at most 19 digits, got {_short(raw)}")
    return _bounded(what, int(raw), 0, MAX_WIRE_INT)


def query_int(
    query: Any, name: str, minimum: int = 0, maximum: int = MAX_WIRE_INT, default: int | None = None
) -> int | None:
    """An integer query parameter within bounds (its last value), or a 400."""
    values = query.getlist(name)
    if not values:
        return default
    raw = values[-1]
    if not _ASCII_INT.fullmatch(raw):
        raise HttpError(400, f"query parameter '{name}' must be an integer, got {_short(raw)}")
    return _bounded(f"query parameter '{name}'", int(raw), minimum, maximum)


def query_page_key(query: Any, name: str) -> str:
    """A page key query parameter (its last value; "" when absent or empty), or a 400."""
    values = query.getlist(name)
    if not values or values[-1] == "":
        return ""
    if not _PAGE_KEY.fullmatch(values[-1]):
        raise HttpError(
            400, f"query parameter '{name}' must be a key from a Link: rel=\"next\" header, got {_short(values[-1])}"
        )
    return values[-1]


def query_choice(query: Any, name: str, choices: tuple[str, ...]) -> str | None:
    """A query parameter from a fixed set, or a 400."""
    values = query.getlist(name)
    if not values:
        return None
    if values[-1] not in choices:
        raise HttpError(400, f"unknown status {_short(values[-1])}; use one of {', '.join(choices)}")
    return values[-1]


def _bounded(what: str, value: int, minimum: int, maximum: int) -> int:
    if value < minimum:
        raise HttpError(400, f"{what} must be at least {minimum}, got {_short(value)}")
    if value > maximum:
        raise HttpError(400, f"{what} must be at most {maximum}, got {_short(value)}")
    return value


def _short(value: Any, limit: int = 40) -> str:
    """A value for an error message, cut so a huge input does not echo back whole."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (ValueError, TypeError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
