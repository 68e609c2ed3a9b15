"""Fill rules: what a quote or a bar lets an order trade, and at what price.

Pure functions of the order and the market, so the rules can be read and tested on their own. The sizes,
impact and fees are Alpaca's crypto rules in `crypto_pipeline.trading.rules`:
- Impact: the price moves against the taker by `impact_coefficient x qty / bar volume` (linear).
- Participation: one order takes at most `max_participation x bar volume` from a bar; the rest waits
  (gtc) or is canceled (ioc): partial fills.
- Resting limits trade at their limit price as maker when a later bar trades through them; a bar that
  opens beyond the limit fills at the open as taker. A working order that meets a bar never fills
  outside that bar's high and low (`rules.within_bar`, the backtest's simulated venue's rule too).
- A stop-limit arms when a bar trades through its stop and then works as a limit from the next bar.
"""

from __future__ import annotations

from dataclasses import dataclass

from crypto_pipeline.exchange.book import BarView, DerivedQuote
from crypto_pipeline.trading import Liquidity, OrderSide
from crypto_pipeline.trading.rules import SlippageModel, within_bar


@dataclass(frozen=True)
class Match:
    """What one order trades against one quote or bar (before the ledger applies cash and fees)."""

    qty: float
    price: float
    liquidity: Liquidity


def fill_against_quote(
    side: OrderSide,
    qty: float,
    limit: float | None,
    quote: DerivedQuote,
    bar: BarView,
    slippage: SlippageModel,
) -> Match | None:
    """An order arriving now: it takes the touch if it is marketable (market, or a limit through it)."""
    buy = side == OrderSide.BUY
    touch = quote.ask_price if buy else quote.bid_price
    if limit is not None and (limit < touch if buy else limit > touch):
        return None
    size = min(qty, slippage.capacity(bar.volume))
    if size <= 0:
        return None
    price = slippage.taker_price(side, touch, size, bar.volume)
    if limit is not None:
        price = min(price, limit) if buy else max(price, limit)
    return Match(size, price, Liquidity.TAKER)


def fill_against_bar(
    side: OrderSide,
    qty: float,
    limit: float | None,
    half_spread: float,
    bar: BarView,
    slippage: SlippageModel,
) -> Match | None:
    """A working order meeting a later bar: market remainders take the open; limits trade through."""
    size = min(qty, slippage.capacity(bar.volume))
    if size <= 0:
        return None
    buy = side == OrderSide.BUY
    open_touch = bar.open * (1 + half_spread) if buy else bar.open * (1 - half_spread)
    # Never outside the bar it trades in (the simulated venue's rule too: `rules.within_bar`).
    taker = within_bar(slippage.taker_price(side, open_touch, size, bar.volume), bar.low, bar.high)
    if limit is None:
        return Match(size, taker, Liquidity.TAKER)
    if buy:
        if open_touch <= limit:
            return Match(size, min(limit, taker), Liquidity.TAKER)
        return Match(size, limit, Liquidity.MAKER) if bar.low < limit else None
    if open_touch >= limit:
        return Match(size, max(limit, taker), Liquidity.TAKER)
    return Match(size, limit, Liquidity.MAKER) if bar.high > limit else None


def stop_triggered(side: OrderSide, stop: float, bar: BarView) -> bool:
    return bar.high >= stop if side == OrderSide.BUY else bar.low <= stop
