"""Minute bars built from captured trades, published the way Alpaca publishes them.

Alpaca publishes a minute bar (`b`) right after its minute ends, from the trades received by then. A trade
of that minute received later ("late") makes the bar be recomputed and sent again on `updatedBars` (`u`,
same timestamp) at the next half-minute mark (a trade of 9:31:55 received at 9:32:04 gives a `u` at
9:32:30). Here the same rule runs on the capture's receive times: bars are built only for minutes the
capture covers completely, so none is cut short by the start or end of the recording.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from crypto_pipeline.exchange.book import BarView

MINUTE_NS = 60 * 1_000_000_000
HALF_MINUTE_NS = MINUTE_NS // 2


class CapturedTrade(NamedTuple):  # a NamedTuple: tens of thousands are built per capture
    at_ns: int  # when it was received, on the replay clock
    trade_ns: int  # when it traded (Binance's T)
    id: int
    price: float
    size: float
    taker_side: str  # "B" or "S"


@dataclass(frozen=True)
class BarVersion:
    """One publication of a minute bar: the first (`b`) or a correction after late trades (`u`)."""

    at_ns: int
    kind: Literal["b", "u"]
    bar: BarView


def next_half_minute_mark(t_ns: int) -> int:
    """The first hh:mm:30 at or after t."""
    return -(-(t_ns - HALF_MINUTE_NS) // MINUTE_NS) * MINUTE_NS + HALF_MINUTE_NS


def aggregate(symbol: str, minute_ns: int, trades: list[CapturedTrade], known_ns: int) -> BarView:
    ordered = sorted(trades, key=lambda trade: (trade.trade_ns, trade.id))
    volume = sum(trade.size for trade in ordered)
    notional = sum(trade.price * trade.size for trade in ordered)
    return BarView(
        symbol=symbol,
        index=minute_ns // MINUTE_NS,
        open_ns=minute_ns,
        known_ns=known_ns,
        open=ordered[0].price,
        high=max(trade.price for trade in ordered),
        low=min(trade.price for trade in ordered),
        close=ordered[-1].price,
        volume=volume,
        trade_count=float(len(ordered)),
        vwap=notional / volume if volume > 0 else None,
    )


def minute_bar_versions(
    symbol: str, trades: list[CapturedTrade], covered_from_ns: int, covered_until_ns: int
) -> list[BarVersion]:
    """Every publication of the minute bars that lie wholly inside [covered_from, covered_until], in
    publication order. `trades` are in the order they were received."""
    first_minute = -(-covered_from_ns // MINUTE_NS) * MINUTE_NS
    by_minute: dict[int, list[CapturedTrade]] = {}
    for trade in trades:
        minute = trade.trade_ns - trade.trade_ns % MINUTE_NS
        if minute >= first_minute and minute + MINUTE_NS <= covered_until_ns:
            by_minute.setdefault(minute, []).append(trade)
    versions: list[BarVersion] = []
    for minute, minute_trades in sorted(by_minute.items()):
        published_ns = minute + MINUTE_NS
        on_time = [trade for trade in minute_trades if trade.at_ns <= published_ns]
        if on_time:
            versions.append(BarVersion(published_ns, "b", aggregate(symbol, minute, on_time, published_ns)))
        late_marks = sorted(
            {next_half_minute_mark(trade.at_ns) for trade in minute_trades if trade.at_ns > published_ns}
        )
        for mark in late_marks:
            known = [trade for trade in minute_trades if trade.at_ns <= mark]
            versions.append(BarVersion(mark, "u", aggregate(symbol, minute, known, mark)))
    versions.sort(key=lambda version: version.at_ns)
    return versions
