"""The one time helper the modules share."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime) -> datetime:
    """`value` in UTC; a naive datetime is taken to be UTC already (as everywhere in this project)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
