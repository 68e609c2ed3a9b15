"""Market data as of the replay clock, in Alpaca's wire shapes: bars pages, latest quote/trade/bar/book,
snapshots. Nothing after the clock is ever read: a bar is visible once its close time has passed, a
captured message once it was received. Inside a websocket capture its quotes, trades, book and minute
bars answer; elsewhere the spread model derives them from the last completed bar."""

from __future__ import annotations

import base64
import re

import numpy as np

from crypto_pipeline.exchange.bars import NS_PER_S, BarStore, SymbolBars
from crypto_pipeline.exchange.book import BarView, DerivedQuote, SpreadModel, bar_view
from crypto_pipeline.exchange.capture import Capture, CapturedSymbol
from crypto_pipeline.exchange.data_wire import (
    Stamp,
    bar_wire,
    book_wire,
    derived_book_wire,
    quote_wire,
    trade_wire,
)
from crypto_pipeline.exchange.wire import AlpacaError, rfc3339, unprocessable

DAY_NS = 86_400 * NS_PER_S
MAX_PAGE_LIMIT = 10_000
DEFAULT_PAGE_LIMIT = 1_000
_TIMEFRAME = re.compile(r"^(\d+)(Min|T|Hour|H|Day|D|Week|W|Month|M)$")
_UNIT_SECONDS = {"Min": 60, "T": 60, "Hour": 3600, "H": 3600, "Day": 86_400, "D": 86_400}


def parse_timeframe(value: str) -> int:
    """Alpaca's `5Min`, `1Hour`, `1Day`... as a duration in ns; weeks and months are not served."""
    match = _TIMEFRAME.match(value.strip())
    if not match:
        raise unprocessable(f"invalid timeframe {value!r}")
    amount, unit = int(match.group(1)), match.group(2)
    if unit not in _UNIT_SECONDS:
        raise unprocessable(f"timeframe {value!r} is not served by the replay exchange (weeks and months)")
    if amount < 1:
        raise unprocessable(f"invalid timeframe {value!r}")
    return amount * _UNIT_SECONDS[unit] * NS_PER_S


def _encode_token(symbol: str, t_ns: int) -> str:
    return base64.urlsafe_b64encode(f"{symbol}|{t_ns}".encode()).decode()


def _decode_token(token: str) -> tuple[str, int]:
    try:
        symbol, t_ns = base64.urlsafe_b64decode(token.encode()).decode().rsplit("|", 1)
        return symbol, int(t_ns)
    except (ValueError, UnicodeDecodeError):
        raise unprocessable("invalid page_token") from None


def combine(bars: list[BarView], open_ns: int) -> BarView:
    """One bar from consecutive bars; trade count and VWAP only when every part has them."""
    volume = sum(bar.volume for bar in bars)
    counts = [bar.trade_count for bar in bars]
    vwaps = [bar.vwap for bar in bars]
    vwap = None
    if None not in vwaps and volume > 0:
        vwap = sum(bar.vwap * bar.volume for bar in bars) / volume  # type: ignore[operator]
    return BarView(
        symbol=bars[0].symbol,
        index=bars[0].index,
        open_ns=open_ns,
        known_ns=bars[-1].known_ns,
        open=bars[0].open,
        high=max(bar.high for bar in bars),
        low=min(bar.low for bar in bars),
        close=bars[-1].close,
        volume=volume,
        trade_count=None if None in counts else sum(counts),  # type: ignore[arg-type]
        vwap=vwap,
    )


class MarketData:
    def __init__(self, store: BarStore, spread: SpreadModel, capture: Capture | None = None) -> None:
        self.store = store
        self.spread = spread
        self.capture = capture

    def symbols(self) -> list[str]:
        return self.store.symbols()

    def captured(self, symbol: str, now_ns: int, load: bool = False) -> CapturedSymbol | None:
        """The capture of `symbol` in reach at the clock. Only calls made off the event loop may `load`
        (parsing takes a fraction of a second); the replayer loads a day as soon as the clock enters it."""
        if self.capture is None:
            return None
        return self.capture.symbol_at(symbol, now_ns, load)

    # --- latest values ----------------------------------------------------------------------
    def last_bar(self, symbol: str, now_ns: int) -> BarView | None:
        """The latest completed bar of the finest timeframe recorded for `symbol`."""
        bars = self.store.finest(symbol)
        if bars is None:
            return None
        count = bars.known_count(now_ns)
        return bar_view(symbol, bars, count - 1) if count else None

    def latest_bar(self, symbol: str, now_ns: int, load: bool = False) -> BarView | None:
        """The most recent bar: a captured minute bar when it opened after the last recorded bar."""
        recorded = self.last_bar(symbol, now_ns)
        captured = self.captured(symbol, now_ns, load)
        minute = captured.minute_bar_at(now_ns) if captured is not None else None
        if minute is not None and (recorded is None or minute.open_ns > recorded.open_ns):
            return minute
        return recorded

    def touch(self, symbol: str, bar: BarView, now_ns: int, load: bool = False) -> tuple[int, DerivedQuote]:
        """Best bid and ask at the clock, with the time they were known: captured, else derived."""
        captured = self.captured(symbol, now_ns, load)
        quote = captured.quote_at(now_ns) if captured is not None else None
        if quote is not None:
            return quote.at_ns, quote.quote
        return bar.known_ns, self.spread.quote(bar)

    def mark_price(self, symbol: str, now_ns: int) -> float | None:
        """The price positions are valued at: the captured mid inside a capture, else the last close."""
        bar = self.last_bar(symbol, now_ns)
        if bar is None:
            return None
        captured = self.captured(symbol, now_ns)
        quote = captured.quote_at(now_ns) if captured is not None else None
        return (quote.quote.bid_price + quote.quote.ask_price) / 2 if quote is not None else bar.close

    def last_price(self, symbol: str, bar: BarView, now_ns: int) -> float:
        """The last traded price: the latest captured trade inside a capture, else the last close."""
        captured = self.captured(symbol, now_ns)
        trade = captured.trade_at(now_ns) if captured is not None else None
        return trade.price if trade is not None else bar.close

    def latest_quote(self, bar: BarView, stamp: Stamp = rfc3339) -> dict[str, object]:
        return quote_wire(bar.known_ns, self.spread.quote(bar), stamp)

    @staticmethod
    def latest_trade(bar: BarView, stamp: Stamp = rfc3339) -> dict[str, object]:
        # The bar-close print: the bar's close at the time it became known (see docs/exchange.md).
        taker_side = "B" if bar.close >= bar.open else "S"
        return trade_wire(bar.known_ns, bar.close, bar.volume, bar.index, taker_side, stamp)

    def latest_book(self, bar: BarView, stamp: Stamp = rfc3339) -> dict[str, object]:
        return derived_book_wire(bar.known_ns, self.spread.book(bar), stamp)

    def _latest_one(self, kind: str, symbol: str, bar: BarView, now_ns: int) -> dict[str, object]:
        captured = self.captured(symbol, now_ns, load=True)
        if kind == "bars":
            latest = self.latest_bar(symbol, now_ns, load=True)
            return bar_wire(latest if latest is not None else bar)
        if kind == "quotes":
            return quote_wire(*self.touch(symbol, bar, now_ns, load=True))
        if kind == "trades":
            trade = captured.trade_at(now_ns) if captured is not None else None
            if trade is None:
                return self.latest_trade(bar)
            # Stamped with the time it traded (Binance's T); it was known a little later, when received.
            return trade_wire(trade.trade_ns, trade.price, trade.size, trade.id, trade.taker_side)
        book = captured.book_at(now_ns) if captured is not None else None
        return book_wire(book.event_ns, book.bids, book.asks) if book is not None else self.latest_book(bar)

    def latest(self, kind: str, symbols: list[str], now_ns: int) -> dict[str, dict[str, object]]:
        result: dict[str, dict[str, object]] = {}
        for symbol in symbols:
            bar = self.last_bar(symbol, now_ns)
            if bar is not None:
                result[symbol] = self._latest_one(kind, symbol, bar, now_ns)
        return result

    # --- snapshots ----------------------------------------------------------------------------
    def day_bar(self, symbol: str, day_start_ns: int, now_ns: int, load: bool = False) -> BarView | None:
        """The day's bar up to `now_ns`: its completed finest recorded bars, then the captured minute bars
        published after the last of them (so no minute is counted twice)."""
        bars = self.store.finest(symbol)
        if bars is None:
            return None
        first = bars.index_at_or_after(day_start_ns)
        last = min(bars.known_count(now_ns), bars.index_at_or_after(day_start_ns + DAY_NS))
        parts = [_summary(symbol, bars, first, last)] if last > first else []
        captured = self.captured(symbol, now_ns, load)
        if captured is not None:
            recorded_until = parts[0].known_ns if parts else day_start_ns
            parts += captured.minute_bars_between(recorded_until, day_start_ns + DAY_NS, now_ns)
        if not parts:
            return None
        return combine(parts, day_start_ns)

    def snapshots(self, symbols: list[str], now_ns: int) -> dict[str, dict[str, object]]:
        result: dict[str, dict[str, object]] = {}
        today = now_ns - now_ns % DAY_NS
        for symbol in symbols:
            bar = self.last_bar(symbol, now_ns)
            if bar is None:
                continue
            result[symbol] = {
                "latestTrade": self._latest_one("trades", symbol, bar, now_ns),
                "latestQuote": self._latest_one("quotes", symbol, bar, now_ns),
                "minuteBar": self._latest_one("bars", symbol, bar, now_ns),
                "dailyBar": _optional_bar_wire(self.day_bar(symbol, today, now_ns, load=True)),
                "prevDailyBar": _optional_bar_wire(self.day_bar(symbol, today - DAY_NS, now_ns, load=True)),
            }
        return result

    # --- historical bars ----------------------------------------------------------------------
    def bars_page(
        self,
        symbols: list[str],
        timeframe: str,
        now_ns: int,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int | None = None,
        page_token: str | None = None,
        descending: bool = False,
    ) -> dict[str, object]:
        """One page of `{"bars": {symbol: [...]}, "next_page_token": ...}`; symbols in order, then time.
        Only bars complete at `now_ns` are visible, whatever `end` asks for."""
        duration_ns = parse_timeframe(timeframe)
        limit = DEFAULT_PAGE_LIMIT if limit is None else limit  # 1..MAX_PAGE_LIMIT: see BarsQuery
        start_ns = now_ns - now_ns % DAY_NS if start_ns is None else start_ns
        end_ns = now_ns if end_ns is None else end_ns
        if end_ns < start_ns:
            raise unprocessable("end should not be before start")
        ordered = sorted(set(symbols), reverse=descending)
        resume: tuple[str, int] | None = _decode_token(page_token) if page_token else None
        page: dict[str, list[dict[str, object]]] = {}
        remaining = limit
        next_token: str | None = None
        for symbol in ordered:
            if resume is not None and (symbol < resume[0] if not descending else symbol > resume[0]):
                continue
            bars = self.store.bars_for_duration(symbol, duration_ns)
            if bars is None:
                continue
            low, high = self._window(bars, start_ns, end_ns, now_ns)
            if resume is not None and symbol == resume[0]:
                if descending:
                    high = min(high, int(np.searchsorted(bars.ts, resume[1], side="right")))
                else:
                    low = max(low, int(np.searchsorted(bars.ts, resume[1], side="left")))
            if high <= low:
                continue
            indices = range(high - 1, low - 1, -1) if descending else range(low, high)
            taken = list(indices[:remaining])
            page[symbol] = [bar_wire(bar_view(symbol, bars, i)) for i in taken]
            remaining -= len(taken)
            if remaining == 0:
                if len(taken) < len(indices):
                    next_token = _encode_token(symbol, int(bars.ts[indices[len(taken)]]))
                else:
                    next_token = self._token_after(
                        ordered, symbol, duration_ns, start_ns, end_ns, now_ns, descending
                    )
                break
        return {"bars": page, "next_page_token": next_token}

    @staticmethod
    def _window(bars: SymbolBars, start_ns: int, end_ns: int, now_ns: int) -> tuple[int, int]:
        low = bars.index_at_or_after(start_ns)
        high = min(int(np.searchsorted(bars.ts, end_ns, side="right")), bars.known_count(now_ns))
        return low, high

    def _token_after(
        self,
        ordered: list[str],
        current: str,
        duration_ns: int,
        start_ns: int,
        end_ns: int,
        now_ns: int,
        descending: bool,
    ) -> str | None:
        """The page is full at a symbol's end: point at the next symbol that still has bars, if any."""
        for symbol in ordered[ordered.index(current) + 1 :]:
            bars = self.store.bars_for_duration(symbol, duration_ns)
            if bars is None:
                continue
            low, high = self._window(bars, start_ns, end_ns, now_ns)
            if high > low:
                return _encode_token(symbol, int(bars.ts[high - 1 if descending else low]))
        return None


def _summary(symbol: str, bars: SymbolBars, first: int, last: int) -> BarView:
    """Bars [first, last) of one symbol as one bar (vectorized: a day holds up to 288 five-minute bars)."""
    part = slice(first, last)
    volume = float(bars.volume[part].sum())
    count = None if bars.trade_count is None else float(np.nansum(bars.trade_count[part]))
    vwap = None
    if bars.vwap is not None and volume > 0:
        vwap = float(np.nansum(bars.vwap[part] * bars.volume[part]) / volume)
    return BarView(
        symbol=symbol,
        index=first,
        open_ns=int(bars.ts[first]),
        known_ns=int(bars.ts[last - 1]) + bars.duration_ns,
        open=float(bars.open[first]),
        high=float(bars.high[part].max()),
        low=float(bars.low[part].min()),
        close=float(bars.close[last - 1]),
        volume=volume,
        trade_count=count,
        vwap=vwap,
    )


def _optional_bar_wire(bar: BarView | None) -> dict[str, object] | None:
    return None if bar is None else bar_wire(bar)


def split_symbols(raw: str | None) -> list[str]:
    symbols = [s.strip() for s in (raw or "").split(",") if s.strip()]
    if not symbols:
        raise AlpacaError(400, 40010001, "missing symbols")
    return symbols
