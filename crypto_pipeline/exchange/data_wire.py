"""Alpaca's crypto market data wire shapes, written once for REST and the websocket: a bar, a quote, a
trade and an order book. REST stamps times as RFC 3339 strings; the websocket stamps them as msgpack
timestamps and adds the message type `T` and the symbol `S` to the same fields."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import msgpack

from crypto_pipeline.exchange.book import BarView, DerivedBook, DerivedQuote
from crypto_pipeline.exchange.wire import rfc3339

Stamp = Callable[[int], object]  # ns -> the wire's time value
PriceLevel = tuple[float, float]  # (price, size)


def stream_time(ns: int) -> msgpack.Timestamp:
    """The websocket's time value (alpaca-py decodes msgpack timestamps)."""
    return msgpack.Timestamp.from_unix_nano(ns)


def stream_message(kind: str, symbol: str, fields: dict[str, object]) -> dict[str, object]:
    """A websocket message: the fields of a shape (stamped with `stream_time`) plus type and symbol.
    Added in place, not copied: the stream builds tens of thousands a second (key order is free)."""
    fields["T"] = kind
    fields["S"] = symbol
    return fields


def bar_wire(bar: BarView, stamp: Stamp = rfc3339) -> dict[str, object]:
    """A bar stamped with its open time; alpaca-py wants all eight fields (`n`, `vw` may be null)."""
    return {
        "t": stamp(bar.open_ns),
        "o": bar.open,
        "h": bar.high,
        "l": bar.low,
        "c": bar.close,
        "v": bar.volume,
        "n": bar.trade_count,
        "vw": bar.vwap,
    }


def quote_wire(at_ns: int, quote: DerivedQuote, stamp: Stamp = rfc3339) -> dict[str, object]:
    return {
        "t": stamp(at_ns),
        "bp": quote.bid_price,
        "bs": quote.bid_size,
        "ap": quote.ask_price,
        "as": quote.ask_size,
    }


def trade_wire(
    at_ns: int, price: float, size: float, trade_id: int, taker_side: str, stamp: Stamp = rfc3339
) -> dict[str, object]:
    return {"t": stamp(at_ns), "p": price, "s": size, "i": trade_id, "tks": taker_side}


def book_wire(
    at_ns: int, bids: Iterable[PriceLevel], asks: Iterable[PriceLevel], stamp: Stamp = rfc3339
) -> dict[str, object]:
    """Best levels first on both sides."""
    return {
        "t": stamp(at_ns),
        "b": [{"p": price, "s": size} for price, size in bids],
        "a": [{"p": price, "s": size} for price, size in asks],
    }


def derived_book_wire(at_ns: int, book: DerivedBook, stamp: Stamp = rfc3339) -> dict[str, object]:
    """The spread model's book (levels as `Level` records) in the same shape."""
    return book_wire(
        at_ns,
        ((level.price, level.size) for level in book.bids),
        ((level.price, level.size) for level in book.asks),
        stamp,
    )
