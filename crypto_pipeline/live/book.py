"""The live loop's quotes and L2 order books, per symbol, kept from `CryptoDataStream`'s raw messages.

Alpaca's `orderbooks` channel (and the local exchange's, see ../shared/ALPACA_PROTOCOL.md): a full book,
marked `"r": true`, when a symbol is subscribed (alpaca-py subscribes again after every reconnect, so a
reconnect brings a fresh one), then updates whose levels carry absolute sizes, a size of 0 removing the
level. A message is checked whole before any of it is applied: a malformed one changes nothing. But an
update that could not be applied leaves the book unknown (its next updates would apply to a wrong book),
so the symbol's book is marked lost, ignored until the next full book, and the caller asks for one by
subscribing the symbol again (`MalformedMessage.lost`). Nothing is guessed: a crossed book, or one with
an empty side, gives no snapshot.

Memory is bounded: at most `max_levels` levels per side are kept (the best ones; the rest is trimmed
now and then). The top of the book stays exact unless more than that many levels near the touch vanish
before the next full book; depth is only ever read from the best `depth_levels`.

The stream's handlers call `on_quote` / `on_book` in the stream's thread while the loop reads views in
its own: one lock guards it all (a dict update under it costs microseconds).
"""

from __future__ import annotations

import heapq
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from crypto_pipeline.state import OrderBookSnapshot

MAX_LEVELS = 200  # per side; Binance's depth snapshot has 1000, the prompt reads 10
# The levels OrderBookSnapshot's depth (so the imbalance) sums: as many as the exchange's derived books.
DEPTH_LEVELS = 10
_TRIM_SLACK = 0.25  # trim once a side holds 25% more than `max_levels`: sorting on every update is too dear


class MalformedMessage(ValueError):
    """A quote or book message that was skipped; `lost` names the symbol whose book it left unknown."""

    def __init__(self, reason: str, lost: str | None = None) -> None:
        super().__init__(reason)
        self.lost = lost


@dataclass(frozen=True)
class Quote:
    bid: float
    bid_size: float
    ask: float
    ask_size: float
    at: datetime


@dataclass(frozen=True)
class BookView:
    """The book of one symbol as the loop read it: its snapshot and the time of its last message."""

    symbol: str
    snapshot: OrderBookSnapshot
    at: datetime

    def age(self, now: datetime) -> timedelta:
        return max(now - self.at, timedelta(0))

    def journal_json(self) -> dict[str, Any]:
        """The journal's `order_book` value: the snapshot, its derived figures and its time."""
        snap = self.snapshot
        return {
            "time": self.at.isoformat(),
            **snap.model_dump(),
            "spread_bps": _finite(snap.spread_bps),
            "imbalance": _finite(snap.imbalance),
        }


@dataclass
class _Book:
    bids: dict[float, float] = field(default_factory=dict)
    asks: dict[float, float] = field(default_factory=dict)
    at: datetime | None = None
    known: bool = False  # a full book arrived and no update has been lost since


@dataclass
class BookCounts:
    quotes: int = 0
    book_resets: int = 0
    book_updates: int = 0
    levels_removed: int = 0
    updates_ignored: int = 0  # updates to a book that is lost, waiting for a full one
    books_lost: int = 0


class LiveBooks:
    """Latest quote and L2 book of each of `symbols`; messages for other symbols are ignored."""

    def __init__(
        self, symbols: Iterable[str], max_levels: int = MAX_LEVELS, depth_levels: int = DEPTH_LEVELS
    ) -> None:
        if depth_levels > max_levels:
            raise ValueError("depth_levels must not exceed max_levels")
        self.max_levels, self.depth_levels = max_levels, depth_levels
        self._books = {symbol: _Book() for symbol in symbols}
        self._quotes: dict[str, Quote] = {}
        self._lock = threading.Lock()
        self.counts = BookCounts()

    # --- the stream's side ----------------------------------------------------------------------
    def on_quote(self, message: Mapping[str, Any]) -> None:
        """One raw `q` message; MalformedMessage says what is wrong with a bad one."""
        symbol = _symbol(message)
        try:
            at = _time(message)
            values = [_number(message.get(k), k) for k in ("bp", "bs", "ap", "as")]
        except ValueError as exc:
            raise MalformedMessage(f"quote {symbol}: {exc}") from None
        bid, bid_size, ask, ask_size = values
        if bid <= 0 or ask <= 0 or bid_size < 0 or ask_size < 0:
            raise MalformedMessage(f"quote {symbol}: price not positive or size negative")
        if symbol not in self._books:
            return
        with self._lock:
            self._quotes[symbol] = Quote(bid, bid_size, ask, ask_size, at)
            self.counts.quotes += 1

    def on_book(self, message: Mapping[str, Any]) -> None:
        """One raw `o` message: a full book (`r`) replaces the symbol's, an update is applied to it."""
        symbol = _symbol(message)
        tracked = symbol in self._books
        try:
            at = _time(message)
            reset = message.get("r", False)
            if not isinstance(reset, bool):
                raise ValueError(f"bad reset flag {reset!r}")
            bids, asks = _levels(message.get("b"), "b"), _levels(message.get("a"), "a")
        except ValueError as exc:
            if tracked:
                self._lose(symbol)
            raise MalformedMessage(f"orderbook {symbol}: {exc}", lost=symbol if tracked else None) from None
        if not tracked:
            return
        with self._lock:
            book = self._books[symbol]
            if reset:
                book.bids = {p: s for p, s in bids if s > 0}
                book.asks = {p: s for p, s in asks if s > 0}
                book.known = True
                self.counts.book_resets += 1
            elif not book.known:
                self.counts.updates_ignored += 1
                return
            else:
                self.counts.levels_removed += _apply(book.bids, bids) + _apply(book.asks, asks)
                self.counts.book_updates += 1
            book.at = at
            for side, best_first in ((book.bids, True), (book.asks, False)):
                if len(side) > self.max_levels * (1 + _TRIM_SLACK):
                    _trim(side, self.max_levels, best_first)

    def _lose(self, symbol: str) -> None:
        with self._lock:
            book = self._books[symbol]
            if book.known:
                self.counts.books_lost += 1
            book.known = False
            book.bids, book.asks = {}, {}

    # --- the loop's side ------------------------------------------------------------------------
    def quote(self, symbol: str) -> Quote | None:
        with self._lock:
            return self._quotes.get(symbol)

    def top(self, symbol: str, levels: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """The best `levels` (price, size) of each side, best first; empty while the book is unknown."""
        with self._lock:
            return self._top(symbol, levels)[1:]

    def view(self, symbol: str) -> BookView | None:
        """The symbol's book as an `OrderBookSnapshot` (depth over `depth_levels`), or None when it is
        unknown, has an empty side or is crossed."""
        with self._lock:
            at, bids, asks = self._top(symbol, self.depth_levels)
        if at is None or not bids or not asks or bids[0][0] >= asks[0][0]:
            return None
        snapshot = OrderBookSnapshot(
            bid=bids[0][0],
            ask=asks[0][0],
            bid_depth=sum(size for _, size in bids),
            ask_depth=sum(size for _, size in asks),
        )
        return BookView(symbol, snapshot, at)

    def _top(
        self, symbol: str, levels: int
    ) -> tuple[datetime | None, list[tuple[float, float]], list[tuple[float, float]]]:
        book = self._books.get(symbol)
        if book is None or not book.known:
            return None, [], []
        return book.at, heapq.nlargest(levels, book.bids.items()), heapq.nsmallest(levels, book.asks.items())

    def levels_kept(self) -> int:
        with self._lock:
            return sum(len(b.bids) + len(b.asks) for b in self._books.values())


def _apply(side: dict[float, float], levels: list[tuple[float, float]]) -> int:
    removed = 0
    for price, size in levels:
        if size > 0:
            side[price] = size
        elif side.pop(price, None) is not None:
            removed += 1
    return removed


def _trim(side: dict[float, float], keep: int, best_first_high: bool) -> None:
    best = heapq.nlargest(keep, side) if best_first_high else heapq.nsmallest(keep, side)
    kept = {price: side[price] for price in best}
    side.clear()
    side.update(kept)


def _symbol(message: Mapping[str, Any]) -> str:
    symbol = message.get("S") if isinstance(message, Mapping) else None
    if not isinstance(symbol, str) or not symbol:
        raise MalformedMessage("no symbol")
    return symbol


def _time(message: Mapping[str, Any]) -> datetime:
    stamp = message.get("t")
    if hasattr(stamp, "to_datetime"):  # msgpack's Timestamp
        stamp = stamp.to_datetime()
    if not isinstance(stamp, datetime):
        raise ValueError(f"bad time {type(stamp).__name__}")
    return stamp.astimezone(UTC) if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"bad {name} {value!r}")
    return float(value)


def _levels(raw: object, name: str) -> list[tuple[float, float]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError(f"bad {name} levels {type(raw).__name__}")
    levels = []
    for level in raw:
        if not isinstance(level, Mapping):
            raise ValueError(f"bad {name} level {level!r}")
        price, size = _number(level.get("p"), f"{name} price"), _number(level.get("s"), f"{name} size")
        if price <= 0 or size < 0:
            raise ValueError(f"{name} level price not positive or size negative")
        levels.append((price, size))
    return levels


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
