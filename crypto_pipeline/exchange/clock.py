"""The replay clock: maps wall time to market time at a chosen speed, or steps as fast as clients read."""

from __future__ import annotations

import time
from datetime import UTC, datetime

NS_PER_S = 1_000_000_000


def to_ns(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * NS_PER_S + moment.microsecond * 1000


def from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // NS_PER_S, tz=UTC).replace(microsecond=(ns % NS_PER_S) // 1000)


class ReplayClock:
    """Market time. With `speed > 0` it runs `speed` market seconds per wall second; with 0 the
    replayer moves it forward step by step, as soon as every subscriber has taken the previous step."""

    def __init__(self, start_ns: int, speed: float) -> None:
        self.speed = speed
        self._anchor_market_ns = start_ns
        self._anchor_wall = time.monotonic()

    @property
    def as_fast_as_read(self) -> bool:
        return self.speed <= 0

    def now_ns(self) -> int:
        if self.as_fast_as_read:
            return self._anchor_market_ns
        return self._anchor_market_ns + int((time.monotonic() - self._anchor_wall) * self.speed * NS_PER_S)

    def now(self) -> datetime:
        return from_ns(self.now_ns())

    def advance_to(self, market_ns: int) -> None:
        """Step the as-fast-as-read clock; never backwards."""
        if not self.as_fast_as_read:
            raise RuntimeError("only an as-fast-as-read clock (speed 0) is stepped by hand")
        self._anchor_market_ns = max(self._anchor_market_ns, market_ns)

    def wall_seconds_until(self, market_ns: int) -> float:
        """How long to sleep before market time reaches `market_ns` (0 when stepping by hand)."""
        if self.as_fast_as_read:
            return 0.0
        return max(0.0, (market_ns - self.now_ns()) / NS_PER_S / self.speed)
