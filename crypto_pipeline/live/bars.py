"""The rolling bar buffer of the live loop: base-timeframe bars per symbol, bounded, with the gaps and
the periods it cannot trust yet (a stream bar finer than the base) reported for a REST backfill."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from crypto_pipeline.market.schema import BAR_SCHEMA
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.timeutil import as_utc

_VALUES = ("open", "high", "low", "close", "volume", "trade_count", "vwap")


@dataclass(frozen=True)
class Gap:
    """Bars of `symbol` opening in [start, end) that the buffer lacks."""

    symbol: str
    start: datetime
    end: datetime


@dataclass
class BarBuffer:
    """Base bars keyed by open time, at most `max_bars` per symbol (the oldest go first)."""

    symbols: tuple[str, ...]
    base: Timeframe
    max_bars: int
    # Per symbol: open time -> (open time in epoch microseconds, open, ..., vwap), NaN where missing: all
    # floats, so that `frame` converts the whole buffer in one numpy call (100+ symbols every decision).
    _bars: dict[str, dict[datetime, tuple[float, ...]]] = field(default_factory=dict)
    # Base periods a finer stream bar fell into: their content must come from REST once they are over.
    _suspect: dict[str, set[datetime]] = field(default_factory=dict)
    # The newest open time and a min-heap of the open times, per symbol: the loop asks for the newest
    # bar of every symbol on each turn, and trimming must not sort the buffer at each bar (100+ symbols).
    _last: dict[str, datetime] = field(default_factory=dict)
    _opens: dict[str, list[datetime]] = field(default_factory=dict)
    # How far each symbol's bars are complete: a base bar's close, or a stream bar's own close. A stream
    # finer than the base (Alpaca streams 1m bars) must not make a base period count as closed when its
    # first minute arrives: the loop would decide minutes early, on a period's first minute. The finer
    # bars' length is learned from the stream (the smallest step between a symbol's consecutive bars).
    _complete: dict[str, datetime] = field(default_factory=dict)
    _stream_open: dict[str, datetime] = field(default_factory=dict)
    _stream_step: timedelta | None = None

    def __post_init__(self) -> None:
        for symbol in self.symbols:
            self._bars.setdefault(symbol, {})
            self._suspect.setdefault(symbol, set())
            self._opens.setdefault(symbol, [])

    def floor(self, moment: datetime) -> datetime:
        step = int(self.base.duration.total_seconds())
        epoch = int(moment.timestamp())
        return datetime.fromtimestamp(epoch - epoch % step, tz=moment.tzinfo)

    def last_open(self, symbol: str) -> datetime | None:
        return self._last.get(symbol)

    def last_close(self, symbol: str) -> datetime | None:
        """The time up to which `symbol`'s bars are complete (see `_complete`)."""
        return self._complete.get(symbol)

    def count(self, symbol: str) -> int:
        return len(self._bars.get(symbol, {}))

    def add_stream_bar(self, symbol: str, bar: Mapping[str, object]) -> Gap | None:
        """Store one stream bar (keys timestamp, open, ...). Returns the gap before it, if any: the
        bars between the last stored one and this one, which a dropped connection may have lost."""
        if symbol not in self._bars:
            return None
        opened = as_utc(bar["timestamp"])  # type: ignore[arg-type]
        slot = self.floor(opened)
        previous = self.last_open(symbol)
        self._stream_bar_closed(symbol, opened, slot)
        if opened != slot:
            # A bar finer than the base (a minute bar inside a 5m period): the period is taken from REST.
            self._suspect[symbol].add(slot)
            if slot not in self._bars[symbol]:
                self._store(symbol, slot, _row(slot, bar))
        else:
            self._store(symbol, slot, _row(slot, bar))
        self._trim(symbol)
        if previous is not None and slot > previous + self.base.duration:
            return Gap(symbol, previous + self.base.duration, slot)
        return None

    def suspect_until(self, moment: datetime) -> list[Gap]:
        """Periods (per symbol) formed from finer stream bars that are over by `moment`."""
        out = []
        for symbol, slots in self._suspect.items():
            for slot in sorted(s for s in slots if s + self.base.duration <= moment):
                out.append(Gap(symbol, slot, slot + self.base.duration))
        return out

    def missing_until(self, symbol: str, moment: datetime) -> Gap | None:
        """The bars of `symbol` that closed by `moment` after the last stored one."""
        last = self.last_open(symbol)
        if last is None:
            return None
        start = last + self.base.duration
        end = self.floor(moment)
        return Gap(symbol, start, end) if end > start else None

    def insert(self, frame: pl.DataFrame) -> int:
        """Bars from REST (BAR_SCHEMA): they replace what the stream gave for the same open time."""
        added = 0
        for row in frame.iter_rows(named=True):
            symbol = row["symbol"]
            if symbol not in self._bars or row["timestamp"] is None:
                continue
            opened = as_utc(row["timestamp"])
            if opened != self.floor(opened):
                continue
            added += opened not in self._bars[symbol]
            self._store(symbol, opened, _row(opened, row))
            self._completed(symbol, opened + self.base.duration)
            self._suspect[symbol].discard(opened)
        for symbol in self.symbols:
            self._trim(symbol)
        return added

    def resolved(self, gaps: Iterable[Gap]) -> None:
        """Forget suspect periods that a REST answer covered (even with no bar: nothing traded)."""
        for gap in gaps:
            self._suspect[gap.symbol] = {s for s in self._suspect[gap.symbol] if not gap.start <= s < gap.end}

    def frame(self, closed_by: datetime | None = None) -> pl.DataFrame:
        """Every buffered bar (closed by `closed_by` when given) as BAR_SCHEMA rows, by symbol and time."""
        symbols: list[pl.Series] = []
        rows: list[tuple[float, ...]] = []
        for symbol in self.symbols:
            bars = self._bars[symbol]
            if closed_by is None:
                chosen = list(bars.values())
            else:
                last_open = closed_by - self.base.duration
                chosen = [values for opened, values in bars.items() if opened <= last_open]
            symbols.append(pl.repeat(symbol, len(chosen), dtype=pl.Utf8, eager=True))
            rows += chosen
        table = np.array(rows, dtype=np.float64).reshape(len(rows), len(_VALUES) + 1)
        frame = pl.DataFrame(
            {
                "symbol": pl.concat(symbols) if symbols else pl.Series([], dtype=pl.Utf8),
                "timestamp": pl.Series(table[:, 0].astype(np.int64)).cast(BAR_SCHEMA["timestamp"]),
                **{
                    name: pl.Series(name, table[:, i + 1], nan_to_null=True) for i, name in enumerate(_VALUES)
                },
            },
            schema=BAR_SCHEMA,
        )
        return frame.sort("symbol", "timestamp")

    def _stream_bar_closed(self, symbol: str, opened: datetime, slot: datetime) -> None:
        before = self._stream_open.get(symbol)
        if before is not None and timedelta(0) < opened - before < self.base.duration:
            if self._stream_step is None or opened - before < self._stream_step:
                self._stream_step = opened - before
        if before is None or opened > before:
            self._stream_open[symbol] = opened
        if self._stream_step is not None:
            self._completed(symbol, opened + self._stream_step)
        elif opened == slot:
            self._completed(symbol, opened + self.base.duration)  # a base bar, as far as is known yet
        else:
            self._completed(symbol, opened)  # finer, of a length not known yet: it at least opened

    def _completed(self, symbol: str, until: datetime) -> None:
        if symbol not in self._complete or until > self._complete[symbol]:
            self._complete[symbol] = until

    def _store(self, symbol: str, opened: datetime, values: tuple[float, ...]) -> None:
        bars = self._bars[symbol]
        if opened not in bars:
            heapq.heappush(self._opens[symbol], opened)
            last = self._last.get(symbol)
            if last is None or opened > last:
                self._last[symbol] = opened
        bars[opened] = values

    def _trim(self, symbol: str) -> None:
        bars, opens = self._bars[symbol], self._opens[symbol]
        while len(bars) > self.max_bars:
            del bars[heapq.heappop(opens)]


def _row(opened: datetime, bar: Mapping[str, object]) -> tuple[float, ...]:
    values = (math.nan if bar.get(k) is None else float(bar[k]) for k in _VALUES)  # type: ignore[arg-type]
    return (opened.timestamp() * 1e6, *values)


def max_bars_for(base: Timeframe, lookback_days: int) -> int:
    return base.bars_per(timedelta(days=lookback_days))
