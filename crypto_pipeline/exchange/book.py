"""Quotes, order books and prints derived from a completed bar, for symbols that only have bars.

The model (stated in docs/exchange.md): the mid is the bar's close; the full spread is
max(min_spread_bps, spread_range_fraction x (high - low) / close); each side has `levels` levels
spaced by half a spread, and level i (0-based) holds (i + 1) x 0.5% of the bar's volume.
"""

from __future__ import annotations

from dataclasses import dataclass

from crypto_pipeline.exchange.bars import SymbolBars

TOP_LEVEL_VOLUME_SHARE = 0.005


@dataclass(frozen=True)
class BarView:
    """One completed bar, with the time it became known."""

    symbol: str
    index: int
    open_ns: int
    known_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: float | None
    vwap: float | None


@dataclass(frozen=True)
class Level:
    price: float
    size: float


@dataclass(frozen=True)
class DerivedQuote:
    bid_price: float
    bid_size: float
    ask_price: float
    ask_size: float


@dataclass(frozen=True)
class DerivedBook:
    bids: list[Level]
    asks: list[Level]


def bar_view(symbol: str, bars: SymbolBars, index: int) -> BarView:
    def optional(values: object) -> float | None:
        if values is None:
            return None
        value = float(values[index])  # type: ignore[index]
        return None if value != value else value  # NaN: the source had no figure

    return BarView(
        symbol=symbol,
        index=index,
        open_ns=int(bars.ts[index]),
        known_ns=int(bars.ts[index]) + bars.duration_ns,
        open=float(bars.open[index]),
        high=float(bars.high[index]),
        low=float(bars.low[index]),
        close=float(bars.close[index]),
        volume=float(bars.volume[index]),
        trade_count=optional(bars.trade_count),
        vwap=optional(bars.vwap),
    )


class SpreadModel:
    def __init__(self, min_spread_bps: float, spread_range_fraction: float, levels: int) -> None:
        self.min_spread_bps = min_spread_bps
        self.spread_range_fraction = spread_range_fraction
        self.levels = levels

    def spread_fraction(self, bar: BarView) -> float:
        if bar.close <= 0:
            return self.min_spread_bps / 10_000
        return max(
            self.min_spread_bps / 10_000, self.spread_range_fraction * (bar.high - bar.low) / bar.close
        )

    def level_size(self, bar: BarView, level: int) -> float:
        return (level + 1) * TOP_LEVEL_VOLUME_SHARE * bar.volume

    def quote(self, bar: BarView) -> DerivedQuote:
        half = self.spread_fraction(bar) / 2
        size = self.level_size(bar, 0)
        return DerivedQuote(bar.close * (1 - half), size, bar.close * (1 + half), size)

    def book(self, bar: BarView) -> DerivedBook:
        half = self.spread_fraction(bar) / 2
        bids = [Level(bar.close * (1 - half * (1 + i)), self.level_size(bar, i)) for i in range(self.levels)]
        asks = [Level(bar.close * (1 + half * (1 + i)), self.level_size(bar, i)) for i in range(self.levels)]
        return DerivedBook(bids, asks)
