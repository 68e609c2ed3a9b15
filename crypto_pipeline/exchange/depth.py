"""Order books rebuilt from a Binance depth capture, the way Binance documents it for a local book.

A REST depth snapshot (`lastUpdateId`, a limited number of levels) is the starting book. The `@depth` diffs
carry *absolute* sizes per price (0 deletes the level) and chain by update ids: diffs already contained
in the snapshot (`u <= lastUpdateId`) are dropped, and each diff applied must start at most one id after
the last one applied (`U <= last + 1`). A diff that starts later means updates were missed: from then on
the book is unknown (never guessed) until another snapshot arrives. Nothing is invented: every level
shown was in the snapshot or set by a later diff. Beyond the snapshot's depth the book holds only the
levels that diffs have set since, so far from the touch it can be thinner than the real one.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Level = tuple[float, float]  # (price, size)
StepKind = Literal["full", "diff", "lost"]

# A full copy of the book is kept every this many diffs, so a book at any instant costs at most this many
# diff applications (a few hundred microseconds) and the copies stay small (a few dozen for the capture).
CHECKPOINT_EVERY = 200


@dataclass(frozen=True)
class DepthSnapshot:
    at_ns: int  # when it was received, on the replay clock
    last_update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


@dataclass(frozen=True)
class DepthDiff:
    at_ns: int  # when it was received, on the replay clock
    event_ns: int  # Binance's event time (E)
    first_id: int  # U
    last_id: int  # u
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


@dataclass(frozen=True)
class BookStep:
    """One change of the rebuilt book: a full book (synchronized), a diff on it, or the book lost."""

    at_ns: int
    event_ns: int
    kind: StepKind
    bids: tuple[Level, ...] = ()
    asks: tuple[Level, ...] = ()


@dataclass(frozen=True)
class BookState:
    """The book at one instant: bids best (highest) first, asks best (lowest) first."""

    event_ns: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


def _apply(side: dict[float, float], levels: Iterable[Level]) -> None:
    for price, size in levels:
        if size > 0:
            side[price] = size
        else:
            side.pop(price, None)


def _sorted(
    bids: dict[float, float], asks: dict[float, float]
) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
    return tuple(sorted(bids.items(), reverse=True)), tuple(sorted(asks.items()))


def synchronize(messages: Iterable[DepthSnapshot | DepthDiff]) -> list[BookStep]:
    """The book's steps from snapshots and diffs in the order they were received."""
    steps: list[BookStep] = []
    bids: dict[float, float] | None = None
    asks: dict[float, float] = {}
    last_id = 0
    waiting: list[DepthDiff] = []  # diffs received while no book is known, kept for the next snapshot
    for message in messages:
        if isinstance(message, DepthSnapshot):
            if bids is not None:
                continue  # already in sync: the diffs keep the book exact
            bids, asks = dict(message.bids), dict(message.asks)
            last_id, event_ns = message.last_update_id, message.at_ns
            for diff in waiting:
                if diff.last_id <= last_id:
                    continue
                if diff.first_id > last_id + 1:
                    bids = None  # the buffered diffs do not reach this snapshot: wait for another
                    break
                _apply(bids, diff.bids)
                _apply(asks, diff.asks)
                last_id, event_ns = diff.last_id, diff.event_ns
            waiting.clear()
            if bids is not None:
                steps.append(BookStep(message.at_ns, event_ns, "full", *_sorted(bids, asks)))
            continue
        if bids is None:
            waiting.append(message)
            continue
        if message.last_id <= last_id:
            continue
        if message.first_id > last_id + 1:
            steps.append(BookStep(message.at_ns, message.event_ns, "lost"))
            bids, asks = None, {}
            waiting = [message]
            continue
        _apply(bids, message.bids)
        _apply(asks, message.asks)
        last_id = message.last_id
        steps.append(BookStep(message.at_ns, message.event_ns, "diff", message.bids, message.asks))
    return steps


class CapturedBook:
    """Point-in-time access to the rebuilt book: `at(t)` is the book as known at replay time t."""

    def __init__(self, steps: list[BookStep]) -> None:
        self.steps = steps
        self.times = [step.at_ns for step in steps]
        self.first_known_ns = next((s.at_ns for s in steps if s.kind == "full"), None)
        # For each step, the index of the full/lost step that began its stretch.
        self._segment_start: list[int] = []
        self._checkpoint_at: list[int] = []  # sorted step indices with a stored copy
        self._checkpoints: dict[int, tuple[dict[float, float], dict[float, float]]] = {}
        bids: dict[float, float] = {}
        asks: dict[float, float] = {}
        start, since_copy = 0, 0
        for index, step in enumerate(steps):
            if step.kind != "diff":
                start, since_copy = index, 0
                bids, asks = dict(step.bids), dict(step.asks)
            else:
                _apply(bids, step.bids)
                _apply(asks, step.asks)
                since_copy += 1
            self._segment_start.append(start)
            if step.kind == "full" or since_copy >= CHECKPOINT_EVERY:
                self._checkpoints[index] = (dict(bids), dict(asks))
                self._checkpoint_at.append(index)
                since_copy = 0

    def at(self, t_ns: int) -> BookState | None:
        index = bisect_right(self.times, t_ns) - 1
        if index < 0:
            return None
        start = self._segment_start[index]
        if self.steps[start].kind == "lost":
            return None
        copy_index = self._checkpoint_at[bisect_right(self._checkpoint_at, index) - 1]
        stored_bids, stored_asks = self._checkpoints[copy_index]
        bids, asks = dict(stored_bids), dict(stored_asks)
        for step in self.steps[copy_index + 1 : index + 1]:
            _apply(bids, step.bids)
            _apply(asks, step.asks)
        return BookState(self.steps[index].event_ns, *_sorted(bids, asks))
