"""The one time helper the modules share."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from crypto_pipeline.errors import UserInputError


def as_utc(value: datetime | str) -> datetime:
    """`value` in UTC; a naive datetime (or ISO text without an offset) is taken to be UTC already, as
    everywhere in this project. Text that is not an ISO date or datetime is a `UserInputError`."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise UserInputError(f"not a date: {value!r} (expected YYYY-MM-DD or ISO datetime)") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def day_range(start: date | datetime | str, end: date | datetime | str) -> tuple[datetime, datetime]:
    """The one reading of a user's range, [start, end) in UTC: a day (YYYY-MM-DD) covers the whole day, so
    an end day is included; a datetime is an exact instant (naive = UTC), so an end datetime is excluded.
    `ingest`, `backtest`, `promote` and the settings' `start`/`end` all read ranges so."""
    first, last = parse_bound(start, "start"), parse_bound(end, "end")
    lo = as_utc(first) if isinstance(first, datetime) else datetime.combine(first, datetime.min.time(), UTC)
    hi = (
        as_utc(last)
        if isinstance(last, datetime)
        else datetime.combine(last, datetime.min.time(), UTC) + timedelta(days=1)
    )
    if lo >= hi:
        raise UserInputError(f"start {first} is not before end {last}: the range is empty")
    return lo, hi


def parse_bound(value: date | datetime | str, name: str) -> date | datetime:
    """One end of a range: a day (YYYY-MM-DD) stays a `date`, anything else is read as an ISO datetime."""
    if isinstance(value, datetime | date):
        return value
    text = str(value).strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserInputError(
            f"invalid {name} {value!r}: expected a day (YYYY-MM-DD, included) or an ISO-8601 datetime; "
            "not a date"
        ) from None
