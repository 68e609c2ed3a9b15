"""Fill rules: what a quote or a bar lets an order trade, at what price, and what it costs.

Pure functions of the order and the market, so the rules can be read and tested on their own.
- Impact: the price moves against the taker by `impact_coefficient x qty / bar volume` (linear).
- Participation: one order takes at most `max_participation x bar volume` from a bar; the rest waits
  (gtc) or is canceled (ioc): partial fills.
- Resting limits trade at their limit price as maker when a later bar trades through them; a bar that
  opens beyond the limit fills at the open as taker.
- A stop-limit arms when a bar trades through its stop and then works as a limit from the next bar.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from crypto_pipeline.exchange.book import BarView, DerivedQuote

QTY_DECIMALS = 9


@dataclass(frozen=True)
class FillTerms:
    impact_coefficient: float
    max_participation: float
    maker_fee_bps: float
    taker_fee_bps: float

    def fee(self, notional: float, liquidity: str) -> float:
        bps = self.maker_fee_bps if liquidity == "maker" else self.taker_fee_bps
        return notional * bps / 10_000


@dataclass(frozen=True)
class Fill:
    qty: float
    price: float
    liquidity: str


_QUANTUM = Decimal(1).scaleb(-QTY_DECIMALS)


def floor_qty(qty: float) -> float:
    """Round down to Alpaca's 9 decimals (never sell more than asked or held); decimal, not binary."""
    return float(Decimal(repr(qty)).quantize(_QUANTUM, rounding=ROUND_DOWN))


def add_qty(a: float, b: float) -> float:
    """Sum of two 9-decimal quantities, exact at 9 decimals (binary floats drift at the 1e-9 digit)."""
    return round(a + b, QTY_DECIMALS)


def capacity(bar: BarView, terms: FillTerms) -> float:
    return floor_qty(bar.volume * terms.max_participation)


def impact(qty: float, bar: BarView, terms: FillTerms) -> float:
    if bar.volume <= 0:
        return terms.impact_coefficient
    return terms.impact_coefficient * qty / bar.volume


def taker_price(side: str, reference: float, qty: float, bar: BarView, terms: FillTerms) -> float:
    move = impact(qty, bar, terms)
    return reference * (1 + move) if side == "buy" else reference * (1 - move)


def fill_against_quote(
    side: str, qty: float, limit: float | None, quote: DerivedQuote, bar: BarView, terms: FillTerms
) -> Fill | None:
    """An order arriving now: it takes the touch if it is marketable (market, or a limit through it)."""
    touch = quote.ask_price if side == "buy" else quote.bid_price
    if limit is not None and (limit < touch if side == "buy" else limit > touch):
        return None
    size = min(qty, capacity(bar, terms))
    if size <= 0:
        return None
    price = taker_price(side, touch, size, bar, terms)
    if limit is not None:
        price = min(price, limit) if side == "buy" else max(price, limit)
    return Fill(size, price, "taker")


def fill_against_bar(
    side: str, qty: float, limit: float | None, half_spread: float, bar: BarView, terms: FillTerms
) -> Fill | None:
    """A working order meeting a later bar: market remainders take the open; limits trade through."""
    size = min(qty, capacity(bar, terms))
    if size <= 0:
        return None
    open_touch = bar.open * (1 + half_spread) if side == "buy" else bar.open * (1 - half_spread)
    if limit is None:
        return Fill(size, taker_price(side, open_touch, size, bar, terms), "taker")
    if side == "buy":
        if open_touch <= limit:
            return Fill(size, min(limit, taker_price(side, open_touch, size, bar, terms)), "taker")
        return Fill(size, limit, "maker") if bar.low < limit else None
    if open_touch >= limit:
        return Fill(size, max(limit, taker_price(side, open_touch, size, bar, terms)), "taker")
    return Fill(size, limit, "maker") if bar.high > limit else None


def stop_triggered(side: str, stop: float, bar: BarView) -> bool:
    return bar.high >= stop if side == "buy" else bar.low <= stop
