"""The replayer: walks the recorded bars in close-time order as the clock advances, lets the broker
match working orders, and hands the stream's messages (b, d, q, t, o) to the market data hub."""

from __future__ import annotations

import asyncio
import heapq
import logging

import msgpack

from crypto_pipeline.exchange.bars import SymbolBars
from crypto_pipeline.exchange.book import BarView, bar_view
from crypto_pipeline.exchange.broker import Broker
from crypto_pipeline.exchange.clock import ReplayClock
from crypto_pipeline.exchange.market import DAY_NS, MarketData
from crypto_pipeline.exchange.streams import MarketDataHub

log = logging.getLogger(__name__)

TICK_S = 0.02
IDLE_S = 0.01
Message = tuple[str, str, dict[str, object]]


def _ts(ns: int) -> msgpack.Timestamp:
    return msgpack.Timestamp.from_unix_nano(ns)


class Replayer:
    def __init__(self, market: MarketData, clock: ReplayClock, broker: Broker, hub: MarketDataHub) -> None:
        self.market = market
        self.clock = clock
        self.broker = broker
        self.hub = hub
        self.series: dict[str, SymbolBars] = {}
        self._heap: list[tuple[int, str, int]] = []  # (known at, symbol, bar index)
        self.bars_replayed = 0
        self.step_errors = 0
        self.ready = asyncio.Event()

    def _load(self) -> None:
        """Index every symbol's finest bars (read once, off the event loop)."""
        now = self.clock.now_ns()
        for symbol in self.market.symbols():
            bars = self.market.store.finest(symbol)
            if bars is None:
                continue
            self.series[symbol] = bars
            index = bars.known_count(now)
            if index < len(bars.ts):
                self._heap.append((int(bars.ts[index]) + bars.duration_ns, symbol, index))
        heapq.heapify(self._heap)

    @property
    def exhausted(self) -> bool:
        return not self._heap

    async def run(self) -> None:
        await asyncio.to_thread(self._load)
        self.ready.set()
        while True:
            if self.clock.as_fast_as_read:
                # Step to the next bar close, but only while someone reads: nobody is left behind.
                if not self.hub.subscribers or not self._heap:
                    await asyncio.sleep(IDLE_S)
                    continue
                self.clock.advance_to(self._heap[0][0])
            else:
                await asyncio.sleep(TICK_S)
            try:
                await self._step()
            except Exception:  # one bad step must not stop the market: log it and go on
                self.step_errors += 1
                log.exception("replay step failed at %s", self.clock.now())

    async def _step(self) -> None:
        now = self.clock.now_ns()
        completed = self._pop_completed(now)
        if self.broker.orders:
            self.broker.on_clock(now)
        if completed and self.hub.subscribers:
            await self.hub.broadcast(self._messages(completed))

    def _pop_completed(self, now: int) -> list[BarView]:
        completed: list[BarView] = []
        while self._heap and self._heap[0][0] <= now:
            _, symbol, index = heapq.heappop(self._heap)
            bars = self.series[symbol]
            completed.append(bar_view(symbol, bars, index))
            if index + 1 < len(bars.ts):
                heapq.heappush(self._heap, (int(bars.ts[index + 1]) + bars.duration_ns, symbol, index + 1))
        self.bars_replayed += len(completed)
        return completed

    def _messages(self, completed: list[BarView]) -> list[Message]:
        wanted = {
            channel: self.hub.wanted(channel)
            for channel in ("bars", "dailyBars", "quotes", "trades", "orderbooks")
        }
        everyone = {channel: "*" in symbols for channel, symbols in wanted.items()}

        def asked(channel: str, symbol: str) -> bool:
            return everyone[channel] or symbol in wanted[channel]

        messages: list[Message] = []
        for bar in completed:
            symbol = bar.symbol
            if asked("bars", symbol):
                messages.append(("bars", symbol, self._bar_message("b", bar)))
            if asked("dailyBars", symbol):
                daily = self.market.day_bar(symbol, bar.open_ns - bar.open_ns % DAY_NS, bar.known_ns)
                if daily is not None:
                    messages.append(("dailyBars", symbol, self._daily_message(symbol, bar.open_ns, daily)))
            if asked("quotes", symbol):
                quote = self.market.spread.quote(bar)
                messages.append(
                    (
                        "quotes",
                        symbol,
                        {
                            "T": "q",
                            "S": symbol,
                            "t": _ts(bar.known_ns),
                            "bp": quote.bid_price,
                            "bs": quote.bid_size,
                            "ap": quote.ask_price,
                            "as": quote.ask_size,
                        },
                    )
                )
            if asked("trades", symbol):
                trade = self.market.latest_trade(bar)
                messages.append(("trades", symbol, {**trade, "T": "t", "S": symbol, "t": _ts(bar.known_ns)}))
            if asked("orderbooks", symbol):
                messages.append(("orderbooks", symbol, self.book_message(bar)))
        return messages

    @staticmethod
    def _bar_message(kind: str, bar: BarView) -> dict[str, object]:
        return {
            "T": kind,
            "S": bar.symbol,
            "t": _ts(bar.open_ns),
            "o": bar.open,
            "h": bar.high,
            "l": bar.low,
            "c": bar.close,
            "v": bar.volume,
            "n": bar.trade_count,
            "vw": bar.vwap,
        }

    @staticmethod
    def _daily_message(symbol: str, open_ns: int, daily: dict[str, object]) -> dict[str, object]:
        day_start = open_ns - open_ns % DAY_NS
        fields = {k: v for k, v in daily.items() if k != "t"}
        return {"T": "d", "S": symbol, "t": _ts(day_start), **fields}

    def book_message(self, bar: BarView) -> dict[str, object]:
        book = self.market.spread.book(bar)
        return {
            "T": "o",
            "S": bar.symbol,
            "t": _ts(bar.known_ns),
            "b": [{"p": level.price, "s": level.size} for level in book.bids],
            "a": [{"p": level.price, "s": level.size} for level in book.asks],
            "r": True,
        }

    def book_snapshots(self, symbols: list[str]) -> list[dict[str, object]]:
        now = self.clock.now_ns()
        snapshots = []
        for symbol in symbols:
            bar = self.market.last_bar(symbol, now)
            if bar is not None:
                snapshots.append(self.book_message(bar))
        return snapshots
