"""The replay clock: maps wall time to market time at a chosen speed, steps as fast as clients read, or
stands still until its owner steps it (tests drive it so that what they assert cannot depend on timing)."""

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
    """Market time, in one of three modes:
    - `speed > 0`: runs `speed` market seconds per wall second;
    - `speed == 0`: the replayer moves it to the next event as soon as every subscriber has taken the
      previous one (as fast as read);
    - `stepped`: it moves only when `Replayer.advance_to` (through `ExchangeServer.advance_to`) moves it.
    """

    def __init__(self, start_ns: int, speed: float, stepped: bool = False) -> None:
        if stepped and speed > 0:
            raise ValueError("a stepped clock does not run by itself: give it speed 0")
        self.speed = speed
        self.stepped = stepped
        self._anchor_market_ns = start_ns
        self._anchor_wall = time.monotonic()

    @property
    def runs_by_hand(self) -> bool:
        """The clock moves only when stepped (as fast as read, or by its owner)."""
        return self.speed <= 0

    @property
    def as_fast_as_read(self) -> bool:
        return self.runs_by_hand and not self.stepped

    def now_ns(self) -> int:
        if self.runs_by_hand:
            return self._anchor_market_ns
        return self._anchor_market_ns + int((time.monotonic() - self._anchor_wall) * self.speed * NS_PER_S)

    def now(self) -> datetime:
        return from_ns(self.now_ns())

    def advance_to(self, market_ns: int) -> None:
        """Step a clock that runs by hand; never backwards."""
        if not self.runs_by_hand:
            raise RuntimeError("only a clock at speed 0 (as fast as read, or stepped) is stepped by hand")
        self._anchor_market_ns = max(self._anchor_market_ns, market_ns)
