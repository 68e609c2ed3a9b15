"""Market data as of the replay clock, in Alpaca's wire shapes: bars pages, latest quote/trade/bar/book,
snapshots. Nothing after the clock is ever read: a bar is visible once its close time has passed."""

from __future__ import annotations

import base64
import re

import numpy as np

from crypto_pipeline.exchange.bars import NS_PER_S, BarStore, SymbolBars
from crypto_pipeline.exchange.book import BarView, SpreadModel, bar_view
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


def bar_wire(bar: BarView) -> dict[str, object]:
    return {
        "t": rfc3339(bar.open_ns),
        "o": bar.open,
        "h": bar.high,
        "l": bar.low,
        "c": bar.close,
        "v": bar.volume,
        "n": bar.trade_count,
        "vw": bar.vwap,
    }


def _encode_token(symbol: str, t_ns: int) -> str:
    return base64.urlsafe_b64encode(f"{symbol}|{t_ns}".encode()).decode()


def _decode_token(token: str) -> tuple[str, int]:
    try:
        symbol, t_ns = base64.urlsafe_b64decode(token.encode()).decode().rsplit("|", 1)
        return symbol, int(t_ns)
    except (ValueError, UnicodeDecodeError):
        raise unprocessable("invalid page_token") from None


class MarketData:
    def __init__(self, store: BarStore, spread: SpreadModel) -> None:
        self.store = store
        self.spread = spread

    def symbols(self) -> list[str]:
        return self.store.symbols()

    # --- latest values ----------------------------------------------------------------------
    def last_bar(self, symbol: str, now_ns: int) -> BarView | None:
        """The latest completed bar of the finest timeframe recorded for `symbol`."""
        bars = self.store.finest(symbol)
        if bars is None:
            return None
        count = bars.known_count(now_ns)
        return bar_view(symbol, bars, count - 1) if count else None

    def latest_quote(self, bar: BarView) -> dict[str, object]:
        quote = self.spread.quote(bar)
        return {
            "t": rfc3339(bar.known_ns),
            "bp": quote.bid_price,
            "bs": quote.bid_size,
            "ap": quote.ask_price,
            "as": quote.ask_size,
        }

    @staticmethod
    def latest_trade(bar: BarView) -> dict[str, object]:
        # The bar-close print: the bar's close at the time it became known (see docs/exchange.md).
        return {
            "t": rfc3339(bar.known_ns),
            "p": bar.close,
            "s": bar.volume,
            "i": bar.index,
            "tks": "B" if bar.close >= bar.open else "S",
        }

    def latest_book(self, bar: BarView) -> dict[str, object]:
        book = self.spread.book(bar)
        return {
            "t": rfc3339(bar.known_ns),
            "b": [{"p": level.price, "s": level.size} for level in book.bids],
            "a": [{"p": level.price, "s": level.size} for level in book.asks],
        }

    def latest(self, kind: str, symbols: list[str], now_ns: int) -> dict[str, dict[str, object]]:
        result: dict[str, dict[str, object]] = {}
        for symbol in symbols:
            bar = self.last_bar(symbol, now_ns)
            if bar is None:
                continue
            if kind == "bars":
                result[symbol] = bar_wire(bar)
            elif kind == "quotes":
                result[symbol] = self.latest_quote(bar)
            elif kind == "trades":
                result[symbol] = self.latest_trade(bar)
            else:
                result[symbol] = self.latest_book(bar)
        return result

    # --- snapshots ----------------------------------------------------------------------------
    def day_bar(self, symbol: str, day_start_ns: int, now_ns: int) -> dict[str, object] | None:
        """The day's bar built from the completed finest bars of that day up to `now_ns`."""
        bars = self.store.finest(symbol)
        if bars is None:
            return None
        first = bars.index_at_or_after(day_start_ns)
        last = min(bars.known_count(now_ns), bars.index_at_or_after(day_start_ns + DAY_NS))
        if last <= first:
            return None
        part = slice(first, last)
        vwap = None
        if bars.vwap is not None and bars.volume[part].sum() > 0:
            vwap = float(np.nansum(bars.vwap[part] * bars.volume[part]) / bars.volume[part].sum())
        return {
            "t": rfc3339(day_start_ns),
            "o": float(bars.open[first]),
            "h": float(bars.high[part].max()),
            "l": float(bars.low[part].min()),
            "c": float(bars.close[last - 1]),
            "v": float(bars.volume[part].sum()),
            "n": None if bars.trade_count is None else float(np.nansum(bars.trade_count[part])),
            "vw": vwap,
        }

    def snapshots(self, symbols: list[str], now_ns: int) -> dict[str, dict[str, object]]:
        result: dict[str, dict[str, object]] = {}
        today = now_ns - now_ns % DAY_NS
        for symbol in symbols:
            bar = self.last_bar(symbol, now_ns)
            if bar is None:
                continue
            result[symbol] = {
                "latestTrade": self.latest_trade(bar),
                "latestQuote": self.latest_quote(bar),
                "minuteBar": bar_wire(bar),
                "dailyBar": self.day_bar(symbol, today, now_ns),
                "prevDailyBar": self.day_bar(symbol, today - DAY_NS, now_ns),
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
        limit = DEFAULT_PAGE_LIMIT if not limit else limit
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            raise unprocessable(f"invalid limit: must be between 1 and {MAX_PAGE_LIMIT}")
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


def split_symbols(raw: str | None) -> list[str]:
    symbols = [s.strip() for s in (raw or "").split(",") if s.strip()]
    if not symbols:
        raise AlpacaError(400, 40010001, "missing symbols")
    return symbols
