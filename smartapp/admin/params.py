"""Query-string and JSON-body parsing for the admin area: every error names its parameter."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from smartapp.errors import BadRequest

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= 40 else raw[:40] + "…")


def parse_when(name: str, raw: str | None, *, end: bool = False) -> datetime | None:
    """A UTC instant from "YYYY-MM-DD" or an ISO 8601 date-time (no offset: UTC).

    A bare date given as an end (`to`) means the end of that day, so `from=2026-11-01&
    to=2026-11-30` covers all of November.
    """
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    try:
        if _DATE.fullmatch(text):
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return moment + timedelta(days=1) if end else moment
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"{name}: {_shown(text)} is not a date (YYYY-MM-DD) or an ISO 8601 date-time."
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_range(args: Mapping[str, str]) -> tuple[datetime | None, datetime | None]:
    start = parse_when("from", args.get("from"))
    end = parse_when("to", args.get("to"), end=True)
    if start and end and end <= start:
        raise BadRequest("to: must be after from.")
    return start, end


def parse_choice(name: str, raw: str | None, choices: Sequence[str], *, default: str) -> str:
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise BadRequest(f"{name}: must be one of {', '.join(choices)}, not {_shown(raw)}.")
    return raw


def parse_int(name: str, raw: str | None, *, default: int, low: int, high: int) -> int:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: {_shown(raw)} is not a whole number.") from None
    if not low <= value <= high:
        raise BadRequest(f"{name}: must be between {low} and {high}.")
    return value


def body_str(body: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise BadRequest(f"{name}: required.")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name}: must be a string.")
    return value.strip()


def body_bool(body: Mapping[str, Any], name: str, *, default: bool | None = None) -> bool:
    value = body.get(name, default)
    if isinstance(value, str) and value.lower() in ("true", "on", "1", "yes"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "off", "0", "no", ""):
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{name}: must be true or false.")
    return value


def body_number(body: Mapping[str, Any], name: str, *, default: float) -> float:
    value = body.get(name, default)
    if isinstance(value, str) and value.strip():
        try:
            value = float(value)
        except ValueError:
            raise BadRequest(f"{name}: {_shown(value)} is not a number.") from None
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{name}: must be a number.")
    return float(value)


def body_when(body: Mapping[str, Any], name: str, *, end: bool = False) -> datetime | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name}: must be a date (YYYY-MM-DD) or an ISO 8601 date-time.")
    return parse_when(name, value, end=end)


def body_list(body: Mapping[str, Any], name: str) -> list[str]:
    """A list of strings, or one comma-separated string (as an HTML form sends it)."""
    value = body.get(name)
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise BadRequest(f"{name}: give a list of strings (or one comma-separated string).")
