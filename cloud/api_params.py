"""The fleet API's request parameters and JSON bodies (pure): parsing that refuses with a reason.

A parameter the API cannot use raises `RequestError` (400, or 404 for an unknown bus) whose reason the
caller gets as `{"error": reason}`; `json_response` writes any answer, with dates and instants as
ISO 8601 and non-finite floats as null.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import asdict, is_dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from cloud.web.queries import Resolution
from protocols.topics import is_valid_id

MAX_POINTS: Final = 20_000
# Finest resolution whose point count stays readable on a chart, by the span asked for.
AUTO_RESOLUTION: Final = (
    (timedelta(hours=2), Resolution.RAW),
    (timedelta(days=2), Resolution.MINUTE),
    (timedelta(days=120), Resolution.HOUR),
)
RESOLUTIONS: Final = ("auto", *(r.value for r in Resolution))
SEVERITIES: Final = ("info", "warning", "critical")


class RequestError(Exception):
    """A request the API refuses: `status` (400 or 404) and a reason for the caller."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def parse_instant(name: str, text: str) -> datetime:
    """An ISO 8601 instant with a UTC offset (a bare date means its midnight UTC)."""
    # A '+' in an unencoded query string arrives as a space.
    candidate = text.strip().replace(" ", "+")
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", candidate):
            return datetime.combine(date.fromisoformat(candidate), datetime.min.time(), UTC)
        moment = datetime.fromisoformat(candidate)
    except ValueError:
        raise RequestError(f"{name}={text!r} is not an ISO 8601 instant, e.g. 2024-05-14T06:00:00Z") from None
    if moment.tzinfo is None:
        raise RequestError(f"{name}={text!r} has no UTC offset; add 'Z' or e.g. '+03:00'")
    return moment.astimezone(UTC)


def parse_day(name: str, text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise RequestError(f"{name}={text!r} is not a date (YYYY-MM-DD)") from None


def instant_range(
    query: Mapping[str, str], max_days: int, *, default_span: timedelta | None = None
) -> tuple[datetime, datetime]:
    """`from` and `to` as instants, `from` < `to`, at most `max_days` apart."""
    if default_span is not None and "to" not in query:
        t_to = datetime.now(UTC)
    else:
        t_to = parse_instant("to", required(query, "to"))
    if default_span is not None and "from" not in query:
        t_from = t_to - default_span
    else:
        t_from = parse_instant("from", required(query, "from"))
    if t_to <= t_from:
        raise RequestError(f"'to' ({t_to.isoformat()}) must be after 'from' ({t_from.isoformat()})")
    if t_to - t_from > timedelta(days=max_days):
        raise RequestError(
            f"the range is {(t_to - t_from).days} days; at most {max_days} days may be asked for"
        )
    return t_from, t_to


def day_range(query: Mapping[str, str], max_days: int) -> tuple[date, date]:
    """`from` and `to` as dates, inclusive, `from` <= `to`, at most `max_days` days."""
    d_from = parse_day("from", required(query, "from"))
    d_to = parse_day("to", required(query, "to"))
    if d_to < d_from:
        raise RequestError(f"'to' ({d_to}) must not be before 'from' ({d_from})")
    if (d_to - d_from).days + 1 > max_days:
        raise RequestError(
            f"the range is {(d_to - d_from).days + 1} days; at most {max_days} days may be asked for"
        )
    return d_from, d_to


def time_zone(query: Mapping[str, str], default: str) -> str:
    name = query.get("tz", default)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RequestError(f"tz={name!r} is not a known IANA time zone, e.g. Africa/Nairobi") from None
    return name


def choose_resolution(text: str, span: timedelta) -> Resolution:
    """`auto` picks by span; an explicit resolution must not yield more than MAX_POINTS buckets."""
    if text == "auto":
        return next((r for limit, r in AUTO_RESOLUTION if span <= limit), Resolution.DAY)
    try:
        resolution = Resolution(text)
    except ValueError:
        raise RequestError(f"resolution={text!r} is not one of {', '.join(RESOLUTIONS)}") from None
    points = span / resolution.bucket
    if points > MAX_POINTS:
        raise RequestError(
            f"resolution {resolution.value} over {span} is up to {points:.0f} points (at most {MAX_POINTS});"
            " choose a coarser resolution or a shorter range"
        )
    return resolution


def signal_name(query: Mapping[str, str], known: Collection[str]) -> str:
    """The `signal` asked for, one of `known` (a refusal lists them all)."""
    signal = required(query, "signal")
    if signal not in known:
        raise RequestError(f"signal={signal!r} is not a known signal; known: {', '.join(sorted(known))}")
    return signal


def severity(query: Mapping[str, str]) -> str | None:
    value = query.get("severity")
    if value is not None and value not in SEVERITIES:
        raise RequestError(f"severity={value!r} is not one of {', '.join(SEVERITIES)}")
    return value


def bounded_int(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise RequestError(f"{name}={text!r} is not an integer") from None
    if not low <= value <= high:
        raise RequestError(f"{name}={value} is out of range {low}..{high}")
    return value


def required(query: Mapping[str, str], name: str) -> str:
    value = query.get(name)
    if value is None or not value.strip():
        raise RequestError(f"parameter '{name}' is required")
    return value


def bus_id(text: str) -> str:
    if not is_valid_id(text):
        raise RequestError(f"bus id {text!r} is malformed: expected 1-64 of A-Z a-z 0-9 _ . -")
    return text


def jsonable(value: object) -> object:
    """Dataclasses, dates and floats as JSON can carry them: non-finite floats become null."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(jsonable(body), allow_nan=False, separators=(",", ":")),
        status=status,
        content_type="application/json",
    )
