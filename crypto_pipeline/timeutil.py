"""The one time helper the modules share."""

from __future__ import annotations

from datetime import UTC, datetime

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
