"""The one parser for dates and times that come from outside (query parameters, forms, usage
events, commands). It imports nothing from the apps, so every app may use it.

Accepted, and said so in README.md ("Dates and times"):
- a date `YYYY-MM-DD`;
- a time `YYYY-MM-DDTHH:MM[:SS[.ffffff]]` with `Z` or an offset `+HH:MM` / `-HH:MM` of at most
  14:00 (the widest offset in use on Earth); a time without an offset is UTC only where the
  caller allows it (`naive="utc"`), otherwise refused;
- epoch seconds (usage events only, as OpenAI's `created`).

Everything is range-checked against [MIN_TIME, MAX_TIME) after conversion to UTC, and a
date is kept far enough from the calendar's edge that adding a day or an offset cannot
overflow: `9999-12-31` and year 1 with an offset are refusals, never an OverflowError.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from typing import Literal

MIN_DATE = dt.date(2000, 1, 1)
MAX_DATE = dt.date(2999, 12, 31)
MIN_TIME = dt.datetime.combine(MIN_DATE, dt.time.min, tzinfo=dt.UTC)
MAX_TIME = dt.datetime.combine(MAX_DATE + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
MAX_OFFSET = dt.timedelta(hours=14)
# Longer input is not a date: refuse it before any parsing work.
MAX_LENGTH = 40

_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)
_RANGE = f"between {MIN_DATE.isoformat()} and {MAX_DATE.isoformat()}"


class TimeParseError(ValueError):
    """Input that is not an accepted date or time; `message` says what is accepted."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _check_text(raw: object, what: str) -> str:
    if not isinstance(raw, str):
        raise TimeParseError(f"must be {what} as a string.")
    text = raw.strip()
    if not text or len(text) > MAX_LENGTH or "\x00" in text or not text.isascii():
        raise TimeParseError(f"must be {what}.")
    return text


def _date(year: str, month: str, day: str) -> dt.date:
    try:
        value = dt.date(int(year), int(month), int(day))
    except ValueError:
        raise TimeParseError(f"{year}-{month}-{day} is not a day of the calendar.") from None
    if not MIN_DATE <= value <= MAX_DATE:
        raise TimeParseError(f"must be a date {_RANGE}.")
    return value


def parse_date(raw: object) -> dt.date:
    """A calendar date `YYYY-MM-DD` within [MIN_DATE, MAX_DATE]."""
    text = _check_text(raw, "a date, YYYY-MM-DD")
    m = _DATE.fullmatch(text)
    if m is None:
        raise TimeParseError("must be a date, YYYY-MM-DD.")
    return _date(*m.groups())


def _offset(text: str | None) -> dt.timezone | None:
    if text is None:
        return None
    if text in ("Z", "z"):
        return dt.UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if minutes >= 60:
        raise TimeParseError(f"the UTC offset {text} is not a valid offset.")
    delta = dt.timedelta(hours=hours, minutes=minutes)
    if delta > MAX_OFFSET:
        raise TimeParseError(f"the UTC offset {text} is beyond ±14:00.")
    return dt.timezone(sign * delta)


def parse_datetime(
    raw: object,
    *,
    naive: Literal["utc", "refuse"] = "refuse",
    dates: Literal["start", "end", "refuse"] = "refuse",
) -> dt.datetime:
    """An aware UTC datetime within [MIN_TIME, MAX_TIME).

    `dates`: whether a bare date is accepted, as the start of that UTC day or as the end of it
    (the next midnight, for an exclusive upper bound "through this date").
    `naive`: whether a time without an offset is taken as UTC or refused.
    """
    text = _check_text(raw, "an ISO-8601 time with an offset, e.g. 2026-11-26T00:00:00Z")
    m = _DATE.fullmatch(text)
    if m is not None:
        if dates == "refuse":
            raise TimeParseError("must be a time with an offset, e.g. 2026-11-26T00:00:00Z (a date alone is not enough).")
        day = _date(*m.groups())
        value = dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)
        return value + dt.timedelta(days=1) if dates == "end" else value
    m = _TIME.fullmatch(text)
    if m is None:
        raise TimeParseError("must be an ISO-8601 time, e.g. 2026-11-26T00:00:00Z.")
    year, month, day, hour, minute, second, fraction, offset = m.groups()
    tz = _offset(offset)
    if tz is None:
        if naive == "refuse":
            raise TimeParseError("needs a UTC offset (e.g. Z or +08:00).")
        tz = dt.UTC
    date = _date(year, month, day)
    try:
        value = dt.datetime(
            date.year,
            date.month,
            date.day,
            int(hour),
            int(minute),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")[:6]),
            tzinfo=tz,
        )
    except ValueError:
        raise TimeParseError(f"{text} is not a valid time of day.") from None
    # The date is at least a day away from the calendar's edges, so this cannot overflow.
    value = value.astimezone(dt.UTC)
    if not MIN_TIME <= value < MAX_TIME:
        raise TimeParseError(f"must be a time {_RANGE}.")
    return value


def parse_epoch(raw: int | float | Decimal) -> dt.datetime:
    """Epoch seconds (as OpenAI's `created`) as an aware UTC datetime within the range."""
    try:
        seconds = Decimal(str(raw)) if isinstance(raw, float) else Decimal(raw)
    except (InvalidOperation, ValueError, TypeError):
        raise TimeParseError("must be epoch seconds.") from None
    if not seconds.is_finite() or not MIN_TIME.timestamp() <= seconds < MAX_TIME.timestamp():
        raise TimeParseError(f"must be a time {_RANGE}.")
    return dt.datetime.fromtimestamp(float(seconds), tz=dt.UTC)
