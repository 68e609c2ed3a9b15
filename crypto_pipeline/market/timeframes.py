"""Bar timeframes: one name per duration, with the conversions every layer needs."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum


class Timeframe(StrEnum):
    M1 = "1m"
    M5 = "5m"
    M15 = "15m"
    H1 = "1h"
    H4 = "4h"
    D1 = "1d"

    @property
    def duration(self) -> timedelta:
        return _DURATIONS[self]

    @property
    def minutes(self) -> int:
        return int(self.duration.total_seconds() // 60)

    @property
    def polars_every(self) -> str:
        """Duration string for polars (`group_by_dynamic`, `dt.truncate`)."""
        return {"1m": "1m", "5m": "5m", "15m": "15m", "1h": "1h", "4h": "4h", "1d": "1d"}[self.value]

    @property
    def alpaca(self) -> str:
        """The wire value alpaca-py sends (`TimeFrame.__str__`)."""
        return {"1m": "1Min", "5m": "5Min", "15m": "15Min", "1h": "1Hour", "4h": "4Hour", "1d": "1Day"}[
            self.value
        ]

    def bars_per(self, span: timedelta) -> int:
        """How many bars of this timeframe cover `span` (e.g. 24h of 1h bars = 24)."""
        return max(1, int(span / self.duration))

    @classmethod
    def parse(cls, value: str | Timeframe) -> Timeframe:
        if isinstance(value, Timeframe):
            return value
        text = str(value).strip()
        aliases = {
            "1min": "1m",
            "5min": "5m",
            "15min": "15m",
            "60m": "1h",
            "1hour": "1h",
            "4hour": "4h",
            "1day": "1d",
            "24h": "1d",
            "d": "1d",
            "h": "1h",
        }
        key = aliases.get(text.lower(), text.lower())
        try:
            return cls(key)
        except ValueError:
            valid = ", ".join(t.value for t in cls)
            raise ValueError(f"unknown timeframe {value!r}; expected one of {valid}") from None


_DURATIONS = {
    Timeframe.M1: timedelta(minutes=1),
    Timeframe.M5: timedelta(minutes=5),
    Timeframe.M15: timedelta(minutes=15),
    Timeframe.H1: timedelta(hours=1),
    Timeframe.H4: timedelta(hours=4),
    Timeframe.D1: timedelta(days=1),
}
