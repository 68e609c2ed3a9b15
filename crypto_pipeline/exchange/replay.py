"""The replayer: walks the recorded bars (in close-time order) and the websocket capture (in receive-time
order) as the clock advances, lets the paper desk match working orders, and hands the stream's messages
(b, u, d, q, t, o) to the market data hub, in time order."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from bisect import bisect_right

from crypto_pipeline.exchange.bars import SymbolBars
from crypto_pipeline.exchange.book import BarView, bar_view
from crypto_pipeline.exchange.capture import CaptureDay, CapturedSymbol, ReplayEvent
from crypto_pipeline.exchange.clock import ReplayClock
from crypto_pipeline.exchange.data_wire import (
    bar_wire,
    book_wire,
    quote_wire,
    stream_message,
    stream_time,
    trade_wire,
)
from crypto_pipeline.exchange.depth import BookState
from crypto_pipeline.exchange.desk import PaperDesk
from crypto_pipeline.exchange.market import DAY_NS, MarketData
from crypto_pipeline.exchange.streams import MarketDataHub

log = logging.getLogger(__name__)

TICK_S = 0.02
IDLE_S = 0.01
YIELD_EVERY_S = 0.002
Message = tuple[str, str, dict[str, object]]
_CHANNEL_OF = {"q": "quotes", "t": "trades", "o": "orderbooks", "b": "bars", "u": "updatedBars"}
_CHANNELS = ("bars", "updatedBars", "dailyBars", "quotes", "trades", "orderbooks")


def book_message(symbol: str, book: BookState, reset: bool) -> dict[str, object]:
    message = stream_message("o", symbol, book_wire(book.event_ns, book.bids, book.asks, stream_time))
    if reset:
        message["r"] = True  # the subscriber replaces its book instead of applying the levels
    return message


class _Wanted:
    """Who wants what, computed once per step."""

    def __init__(self, hub: MarketDataHub) -> None:
        self._wanted = {channel: hub.wanted(channel) for channel in _CHANNELS}

    def __call__(self, channel: str, symbol: str) -> bool:
        chosen = self._wanted[channel]
        return "*" in chosen or symbol in chosen


class Replayer:
    def __init__(self, market: MarketData, clock: ReplayClock, desk: PaperDesk, hub: MarketDataHub) -> None:
        self.market = market
        self.clock = clock
        self.desk = desk
        self.hub = hub
        self.series: dict[str, SymbolBars] = {}
        self._heap: list[tuple[int, str, int]] = []  # (known at, symbol, bar index)
        # Capture days being replayed, with the index of their next event.
        self._cursors: dict[CaptureDay, int] = {}
        # Market time up to which every message has been handed to the hub: new book subscribers get
        # the book as of this instant, so the updates that follow apply to it exactly.
        self.processed_ns = clock.now_ns()
        self.bars_replayed = 0
        self.capture_events_replayed = 0
        self.step_errors = 0
        self.ready = asyncio.Event()

    def _load(self) -> None:
        """Index every symbol's finest bars, and the capture if the clock starts in reach of one (read
        once, off the event loop)."""
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
        self.processed_ns = now  # bars known by now are history, not news: so are captured messages
        for day in self._days_to_attach(now):
            day.load()
            self._attach(day)

    # --- the capture -----------------------------------------------------------------------------
    def _days_to_attach(self, now_ns: int) -> list[CaptureDay]:
        capture = self.market.capture
        if capture is None:
            return []
        return [day for day in capture.days if day not in self._cursors and day.in_reach(now_ns)]

    def _attach(self, day: CaptureDay) -> None:
        """Replay a loaded day from the first event not yet due at the last step."""
        self._cursors[day] = bisect_right(day.event_times, self.processed_ns)

    async def _attach_due_days(self, now_ns: int) -> None:
        for day in self._days_to_attach(now_ns):
            await asyncio.to_thread(day.load)
            self._attach(day)

    def _pop_capture(self, now_ns: int) -> list[tuple[CapturedSymbol, ReplayEvent]]:
        events: list[tuple[CapturedSymbol, ReplayEvent]] = []
        for day, cursor in self._cursors.items():
            end = bisect_right(day.event_times, now_ns, lo=cursor)
            events += [(day.symbols[event.symbol], event) for event in day.events[cursor:end]]
            self._cursors[day] = end
        self.capture_events_replayed += len(events)
        return events

    def _next_due_ns(self) -> int | None:
        """When the next thing happens: a bar closes, a captured message arrives, or a capture day
        comes in reach (so that it is loaded before its first message is due)."""
        due = [self._heap[0][0]] if self._heap else []
        for day, cursor in self._cursors.items():
            if cursor < len(day.event_times):
                due.append(day.event_times[cursor])
        if self.market.capture is not None:
            due += [
                day.day_start_ns
                for day in self.market.capture.days
                if day not in self._cursors and day.day_start_ns > self.processed_ns
            ]
        return min(due) if due else None

    @property
    def exhausted(self) -> bool:
        return self._next_due_ns() is None

    # --- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        await asyncio.to_thread(self._load)
        self.ready.set()
        if self.clock.stepped:
            return  # its owner steps it: see advance_to
        yielded_at = time.monotonic()
        while True:
            if self.clock.as_fast_as_read:
                # Step to the next event, but only while someone reads: nobody is left behind.
                due = self._next_due_ns()
                if due is None or not self.hub.has_readers:
                    await asyncio.sleep(IDLE_S)
                    continue
                self.clock.advance_to(due)
            else:
                await asyncio.sleep(TICK_S)
            try:
                await self._step()
            except Exception:  # one bad step must not stop the market: log it and go on
                self.step_errors += 1
                log.exception("replay step failed at %s", self.clock.now())
            if self.clock.as_fast_as_read and time.monotonic() - yielded_at >= YIELD_EVERY_S:
                # Let the connections run now and then: often enough for prompt REST answers, seldom
                # enough that steps queue up and the writers send them in few, large frames.
                await asyncio.sleep(0)
                yielded_at = time.monotonic()

    async def advance_to(self, target_ns: int) -> int:
        """Move a clock that runs by hand to `target_ns`, one event at a time, exactly as a reader of an
        as-fast-as-read replay would see it: every bar close and captured message in between is a step
        (orders matched, messages broadcast). Returns the number of steps taken."""
        if not self.clock.runs_by_hand:
            raise RuntimeError("a clock running in real time cannot be stepped")
        await self.ready.wait()
        steps = 0
        while (due := self._next_due_ns()) is not None and due <= target_ns:
            self.clock.advance_to(due)
            await self._step()
            steps += 1
        if target_ns > self.clock.now_ns():
            self.clock.advance_to(target_ns)
            await self._step()
            steps += 1
        return steps

    async def _step(self) -> None:
        now = self.clock.now_ns()
        await self._attach_due_days(now)
        completed = self._pop_completed(now)
        events = self._pop_capture(now)
        self.processed_ns = now
        if self.desk.orders:
            self.desk.on_clock(now)
        if (completed or events) and self.hub.subscribers:
            await self.hub.broadcast(self._messages(completed, events))

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

    # --- messages --------------------------------------------------------------------------------
    def _messages(
        self, completed: list[BarView], events: list[tuple[CapturedSymbol, ReplayEvent]]
    ) -> list[Message]:
        """The step's messages in time order; one daily bar per symbol and day (its latest state)."""
        asked = _Wanted(self.hub)
        timed: list[tuple[int, Message]] = []
        daily: dict[tuple[str, int], int] = {}  # (symbol, day start) -> as of
        for bar in completed:
            timed += [(bar.known_ns, message) for message in self._bar_messages(bar, asked)]
            if asked("dailyBars", bar.symbol):
                daily[(bar.symbol, bar.open_ns - bar.open_ns % DAY_NS)] = bar.known_ns
        for captured, event in events:
            channel = _CHANNEL_OF[event.kind]
            if asked(channel, event.symbol):
                timed.append((event.at_ns, (channel, event.symbol, self._capture_message(captured, event))))
            if event.kind in ("b", "u") and asked("dailyBars", event.symbol):
                minute = captured.bars[event.index].bar.open_ns
                daily[(event.symbol, minute - minute % DAY_NS)] = event.at_ns
        for (symbol, day_start), as_of in daily.items():
            day_bar = self.market.day_bar(symbol, day_start, as_of)
            if day_bar is not None:
                timed.append((as_of, ("dailyBars", symbol, self.bar_message("d", day_bar))))
        timed.sort(key=lambda pair: pair[0])  # stable: same-instant messages keep their order
        return [message for _, message in timed]

    def _captured(self, symbol: str, t_ns: int) -> CapturedSymbol | None:
        return self.market.captured(symbol, t_ns)

    def _bar_messages(self, bar: BarView, asked: _Wanted) -> list[Message]:
        """A recorded bar's messages; inside a capture the captured stream stands in for its derived
        quote, print and book, and the captured minute bars for the bar itself."""
        symbol = bar.symbol
        captured = self._captured(symbol, bar.known_ns)
        messages: list[Message] = []
        if asked("bars", symbol) and not (
            captured is not None and captured.covers_minutes_of(bar.open_ns, bar.known_ns)
        ):
            messages.append(("bars", symbol, self.bar_message("b", bar)))
        if asked("quotes", symbol) and (captured is None or captured.quote_at(bar.known_ns) is None):
            quote = self.market.latest_quote(bar, stream_time)
            messages.append(("quotes", symbol, stream_message("q", symbol, quote)))
        if asked("trades", symbol) and (captured is None or captured.trade_at(bar.known_ns) is None):
            trade = self.market.latest_trade(bar, stream_time)
            messages.append(("trades", symbol, stream_message("t", symbol, trade)))
        if asked("orderbooks", symbol) and (captured is None or captured.book_at(bar.known_ns) is None):
            messages.append(("orderbooks", symbol, self.book_message(bar)))
        return messages

    def _capture_message(self, captured: CapturedSymbol, event: ReplayEvent) -> dict[str, object]:
        symbol = event.symbol
        if event.kind == "q":
            at, quote = captured.quotes[event.index]
            return stream_message("q", symbol, quote_wire(at, quote, stream_time))
        if event.kind == "t":
            trade = captured.trades[event.index]
            fields = trade_wire(
                trade.trade_ns, trade.price, trade.size, trade.id, trade.taker_side, stream_time
            )
            return stream_message("t", symbol, fields)
        if event.kind == "o":
            # A full book resets the subscriber's; so does a lost one (empty: its levels are unknown now).
            step = captured.book.steps[event.index]
            return book_message(symbol, BookState(step.event_ns, step.bids, step.asks), step.kind != "diff")
        version = captured.bars[event.index]
        return self.bar_message(version.kind, version.bar)

    @staticmethod
    def bar_message(kind: str, bar: BarView) -> dict[str, object]:
        """A bar on the websocket: `b` (minute bar), `u` (its correction) or `d` (the day so far)."""
        return stream_message(kind, bar.symbol, bar_wire(bar, stream_time))

    def book_message(self, bar: BarView) -> dict[str, object]:
        """The spread model's full book for a bar-only symbol (always a reset)."""
        message = stream_message("o", bar.symbol, self.market.latest_book(bar, stream_time))
        message["r"] = True
        return message

    def book_snapshots(self, symbols: list[str]) -> list[dict[str, object]]:
        """Full books for new orderbook subscribers, as of the last step (see `processed_ns`)."""
        at = self.processed_ns
        snapshots = []
        for symbol in symbols:
            captured = self._captured(symbol, at)
            book = captured.book_at(at) if captured is not None else None
            if book is not None:
                snapshots.append(book_message(symbol, book, reset=True))
                continue
            bar = self.market.last_bar(symbol, at)
            if bar is not None:
                snapshots.append(self.book_message(bar))
        return snapshots
